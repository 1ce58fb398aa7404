//! The shared store (issue 9): replicas behind a load balancer share one S3-compatible object
//! store and fetch each blob from upstream once per cluster.
//!
//! Each replica keeps its own [`DiskStore`] (memory index, local files, local single flight,
//! tags, links and access proofs); this layer adds the object store behind it:
//!
//! ```text
//! lookup(blob) ─ local hit ─────────────────────────────► Blob (local file)
//!              ─ local miss, object in the store ───────► Blob (streamed from the store)
//!              ─ local leader, no object:
//!                   lease won ──► Miss + claim ─► upstream GET ─► local fill ─► upload ─► release
//!                   lease held ─► poll until the object appears ─► Blob (from the store)
//!                                 or the lease expires ─► take over
//! ```
//!
//! Authorisation never comes from the store: an object found there is answered with the local
//! access facts (links, public marks, grants), so an unproven repository still costs one
//! upstream HEAD as the client before any byte is served (COMPAT.md §8.6), and nothing read
//! from the store creates a link. Manifests by digest are shared the same way; tag mappings stay
//! per replica (revalidated with HEAD). Bytes read from the store in full are verified again.

pub mod http;
pub mod lease;
pub mod remote;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dockerproxy_core::cache_policy::CacheKey;
use dockerproxy_core::exchange::{AccessRecord, CacheQuery, CacheResult, ManifestEntry};
use dockerproxy_core::reference::Digest;
use dockerproxy_core::verifier::Verifier;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;

use self::lease::{Attempt, Lease};
use self::remote::Remote;
use crate::cache::DiskStore;
use crate::cache::shared_hooks::BlobStatus;
use crate::store::{FillClaim, FillRequest, Store, StoreBody, StoreFuture, StoreStats};
use crate::upstream::BoxError;

/// Longest a request waits for another replica's fill before fetching on its own.
pub const MAX_WAIT: Duration = Duration::from_secs(600);
/// How often a waiting replica looks for the object or an expired lease.
const POLL: Duration = Duration::from_millis(200);
/// How often an uploader looks whether the local fill committed.
const COMMIT_POLL: Duration = Duration::from_millis(100);

/// Shared-store settings.
#[derive(Clone, Debug)]
pub struct SharedSettings {
    /// Lease time-to-live.
    pub lease_ttl: Duration,
    /// Longest a request waits for another replica's fill before fetching on its own.
    pub max_wait: Duration,
    /// This replica's name, written into its leases (diagnostics only).
    pub replica: String,
}

/// The local disk store plus the object store.
pub struct SharedStore {
    local: DiskStore,
    remote: Arc<Remote>,
    settings: SharedSettings,
    /// The store's listing was started.
    scanned: std::sync::atomic::AtomicBool,
}

impl core::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SharedStore")
            .field("local", &self.local)
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

/// The claim of a replica that won the cluster lease: the local claim plus the lease.
struct SharedClaim {
    local: FillClaim,
    lease: Lease,
}

impl SharedStore {
    /// Layers `remote` over `local`. The listing of the store runs in the background, started
    /// here inside a runtime, else by the first lookup.
    pub fn new(local: DiskStore, remote: Remote, settings: SharedSettings) -> Self {
        let store = Self {
            local,
            remote: Arc::new(remote),
            settings,
            scanned: std::sync::atomic::AtomicBool::new(false),
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            store.start_scan();
        }
        store
    }

    fn start_scan(&self) {
        // A plain load first: every lookup passes here, and only the first may write.
        if self.scanned.load(std::sync::atomic::Ordering::Relaxed)
            || self
                .scanned
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let scan = self.remote.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            match scan.scan().await {
                Ok(n) => tracing::info!(
                    blobs = n,
                    ms = started.elapsed().as_millis() as u64,
                    "shared store: index rebuilt from the object store"
                ),
                Err(e) => tracing::warn!(error = %e, "shared store: listing failed"),
            }
        });
    }

    /// A blob the local store misses.
    async fn blob_miss(
        &self,
        query: &CacheQuery,
        registry: &str,
        digest: &Digest,
        claim: Option<FillClaim>,
    ) -> (CacheResult, Option<FillClaim>) {
        if let Some(size) = self.remote.blob_size(registry, digest).await {
            return (self.remote_hit(query, digest, size), None);
        }
        tracing::debug!(digest = %digest, leader = claim.is_some(), "shared store: blob miss");
        // Only the local leader (a GET that would fill) takes part in the cluster's single
        // flight; the others of this replica wait behind its local claim.
        let Some(claim) = claim else {
            return (CacheResult::Miss, None);
        };
        let deadline = Instant::now() + self.settings.max_wait;
        loop {
            let attempt = lease::try_acquire(
                &self.remote,
                registry,
                digest,
                self.settings.lease_ttl,
                &self.settings.replica,
            )
            .await;
            match attempt {
                Ok(Attempt::Won(lease)) => {
                    // The object may have landed between the HEAD and the lease.
                    self.remote.forget(registry, digest);
                    if let Some(size) = self.remote.blob_size(registry, digest).await {
                        return (self.remote_hit(query, digest, size), None);
                    }
                    tracing::debug!(digest = %digest, "shared store: fill lease won");
                    let shared = SharedClaim {
                        local: claim,
                        lease,
                    };
                    return (CacheResult::Lead, Some(FillClaim::new(shared)));
                }
                Ok(Attempt::Held) => {}
                Err(e) => {
                    // The store is unusable: behave as a lone replica.
                    tracing::warn!(error = %e, "shared store: lease attempt failed");
                    return (CacheResult::Lead, Some(claim));
                }
            }
            if Instant::now() >= deadline {
                tracing::warn!(digest = %digest, "shared store: gave up waiting for another replica's fill");
                return (CacheResult::Lead, Some(claim));
            }
            tokio::time::sleep(POLL + lease::jitter(POLL)).await;
            if let Some(size) = self.remote.blob_size(registry, digest).await {
                return (self.remote_hit(query, digest, size), None);
            }
        }
    }

    fn remote_hit(&self, query: &CacheQuery, digest: &Digest, size: u64) -> CacheResult {
        CacheResult::Blob {
            size,
            access: self.local.access(query, Some(digest)),
        }
    }

    /// After the local fill commits, uploads it and releases the lease (an aborted fill just
    /// releases it, so a waiting replica takes over at once).
    fn upload_after_commit(&self, registry: String, digest: Digest, lease: Lease) {
        let local = self.local.clone();
        let remote = self.remote.clone();
        tokio::spawn(async move {
            let size = loop {
                match local.blob_status(&registry, &digest) {
                    BlobStatus::Committed(size) => break Some(size),
                    BlobStatus::InFlight => tokio::time::sleep(COMMIT_POLL).await,
                    BlobStatus::Absent => break None,
                }
            };
            // Every early return drops the lease, which releases it.
            let Some(size) = size else {
                return;
            };
            let Some((file, _guard)) = local.open_committed(&digest, size) else {
                return;
            };
            let started = Instant::now();
            let file = match file.try_clone() {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(error = %e, "shared store: cannot reopen the committed file");
                    return;
                }
            };
            match remote.upload_blob(&registry, &digest, file, size).await {
                Ok(()) => tracing::info!(
                    digest = %digest,
                    bytes = size,
                    ms = started.elapsed().as_millis() as u64,
                    "shared store: blob uploaded"
                ),
                Err(e) => {
                    tracing::warn!(digest = %digest, error = %e, "shared store: upload failed")
                }
            }
            drop(lease);
        });
    }

    /// A body streamed from the store, all of it or the inclusive `range`. The whole object is
    /// always read through a [`Verifier`], and the last byte the client gets is sent only once
    /// the digest matched: a wrong object (whole or ranged) ends in an aborted body, is deleted
    /// from the store and fetched again from upstream by the next request.
    async fn remote_body(
        &self,
        registry: &str,
        digest: &Digest,
        size: u64,
        range: Option<(u64, u64)>,
    ) -> Option<StoreBody> {
        let stream = match self.remote.blob_stream(registry, digest).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "shared store: blob GET failed");
                self.remote.forget(registry, digest);
                return None;
            }
        };
        let (first, end) = match range {
            Some((a, b)) => (a, b.saturating_add(1)),
            None => (0, size),
        };
        let mut cut = RangeCut::new(first, end);
        let mut verifier = Verifier::new(digest.clone(), Some(size));
        let remote = self.remote.clone();
        let (registry, digest) = (registry.to_owned(), digest.clone());
        // A pump task gives the body back-pressure (a bounded queue) and keeps the store's
        // stream, which is not `Sync`, out of the body.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, BoxError>>(4);
        tokio::spawn(async move {
            let mut stream = stream;
            loop {
                let next = tokio::time::timeout(remote::IDLE_TIMEOUT, stream.next()).await;
                let chunk = match next {
                    Ok(Some(Ok(c))) => c,
                    Ok(None) => break,
                    Ok(Some(Err(e))) => {
                        let _ = tx.send(Err(Box::new(e))).await;
                        return;
                    }
                    Err(_) => {
                        let _ = tx.send(Err("shared store read stalled".into())).await;
                        return;
                    }
                };
                let released = match verifier.push(&chunk) {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!(digest = %digest, error = %e, "shared store: corrupt object; deleting it");
                        let _ = tx.send(Err(Box::new(e))).await;
                        remote.delete_blob(&registry, &digest).await;
                        return;
                    }
                };
                if let Some(part) = cut.take(&released)
                    && tx.send(Ok(part)).await.is_err()
                {
                    return;
                }
            }
            match verifier.finish() {
                Ok(tail) => {
                    if let Some(part) = cut.take(&tail) {
                        let _ = tx.send(Ok(part)).await;
                    }
                    if let Some(last) = cut.last() {
                        let _ = tx.send(Ok(last)).await;
                    }
                }
                Err(e) => {
                    tracing::error!(digest = %digest, error = %e, "shared store: corrupt object; deleting it");
                    let _ = tx.send(Err(Box::new(e))).await;
                    remote.delete_blob(&registry, &digest).await;
                }
            }
        });
        Some(BodyExt::boxed(QueueBody { rx }))
    }
}

/// Cuts `[first, end)` out of a stream of verified bytes, holding back its last byte until the
/// whole object has been verified ([`RangeCut::last`]).
struct RangeCut {
    pos: u64,
    first: u64,
    end: u64,
    last: Option<Bytes>,
}

impl RangeCut {
    fn new(first: u64, end: u64) -> Self {
        Self {
            pos: 0,
            first,
            end,
            last: None,
        }
    }

    /// The part of `chunk` (the next verified bytes) inside the range, minus its last byte.
    fn take(&mut self, chunk: &Bytes) -> Option<Bytes> {
        let start = self.pos;
        let stop = start.saturating_add(chunk.len() as u64);
        self.pos = stop;
        let hold = self.end.saturating_sub(1);
        if self.end > self.first && (start..stop).contains(&hold) {
            let at = usize::try_from(hold - start).ok()?;
            self.last = Some(chunk.slice(at..=at));
        }
        let (a, b) = (start.max(self.first), stop.min(hold));
        if a >= b {
            return None;
        }
        let (a, b) = (
            usize::try_from(a - start).ok()?,
            usize::try_from(b - start).ok()?,
        );
        Some(chunk.slice(a..b))
    }

    /// The held-back last byte of the range.
    fn last(&mut self) -> Option<Bytes> {
        self.last.take()
    }
}

impl Store for SharedStore {
    fn lookup<'a>(
        &'a self,
        query: &'a CacheQuery,
        lead: bool,
    ) -> StoreFuture<'a, (CacheResult, Option<FillClaim>)> {
        Box::pin(async move {
            self.start_scan();
            let (result, claim) = self.local.lookup(query, lead).await;
            if !matches!(result, CacheResult::Miss | CacheResult::Lead) {
                return (result, claim);
            }
            match &query.key {
                CacheKey::Blob { registry, digest } => {
                    self.blob_miss(query, registry, digest, claim).await
                }
                CacheKey::Manifest { registry, digest } => {
                    match self.remote.get_manifest(registry, digest).await {
                        Some((body, media_type))
                            if dockerproxy_core::verifier::verify_all(digest, &body).is_ok() =>
                        {
                            let result = CacheResult::Manifest {
                                digest: digest.clone(),
                                media_type,
                                body,
                                access: self.local.access(query, Some(digest)),
                                validated_at: None,
                            };
                            (result, None)
                        }
                        _ => (result, claim),
                    }
                }
                CacheKey::Tag { .. } => (result, claim),
            }
        })
    }

    fn start_fill(&self, mut fill: FillRequest) -> Result<StoreBody, Box<FillRequest>> {
        let shared = match fill
            .claim
            .take()
            .map(FillClaim::try_downcast::<SharedClaim>)
        {
            Some(Ok(shared)) => Some(shared),
            Some(Err(local)) => {
                fill.claim = Some(local);
                None
            }
            None => None,
        };
        let Some(SharedClaim { local, lease }) = shared else {
            return self.local.start_fill(fill);
        };
        fill.claim = Some(local);
        let CacheKey::Blob { registry, digest } = fill.target.key.clone() else {
            return self.local.start_fill(fill);
        };
        let body = self.local.start_fill(fill)?;
        self.upload_after_commit(registry, digest, lease);
        Ok(body)
    }

    fn record_access(&self, record: AccessRecord) {
        self.local.record_access(record);
    }

    fn tag_validated(&self, key: &CacheKey) {
        self.local.tag_validated(key);
    }

    fn tag_drop(&self, key: &CacheKey) {
        self.local.tag_drop(key);
    }

    fn open<'a>(
        &'a self,
        key: &'a CacheKey,
        range: Option<(u64, u64)>,
    ) -> StoreFuture<'a, Option<StoreBody>> {
        Box::pin(async move {
            if let Some(body) = self.local.open(key, range).await {
                return Some(body);
            }
            match key {
                CacheKey::Blob { registry, digest } => {
                    let size = self.remote.blob_size(registry, digest).await?;
                    if range.is_some_and(|(a, b)| a > b || b >= size) {
                        return None;
                    }
                    self.remote_body(registry, digest, size, range).await
                }
                CacheKey::Manifest { registry, digest } => {
                    let (body, _) = self.remote.get_manifest(registry, digest).await?;
                    dockerproxy_core::verifier::verify_all(digest, &body).ok()?;
                    let len = body.len() as u64;
                    let (start, end) = match range {
                        None => (0, len),
                        Some((a, b)) if a <= b && b < len => (a, b + 1),
                        Some(_) => return None,
                    };
                    let part = body.slice(usize::try_from(start).ok()?..usize::try_from(end).ok()?);
                    Some(Full::new(part).map_err(|never| match never {}).boxed())
                }
                CacheKey::Tag { .. } => None,
            }
        })
    }

    fn store_manifest(&self, entry: ManifestEntry) {
        let CacheKey::Manifest { registry, .. } = &entry.key else {
            self.local.store_manifest(entry);
            return;
        };
        let (registry, digest) = (registry.clone(), entry.digest.clone());
        let (media_type, body) = (entry.media_type.clone(), entry.body.clone());
        self.local.store_manifest(entry);
        let remote = self.remote.clone();
        tokio::spawn(async move {
            if let Err(e) = remote
                .put_manifest(&registry, &digest, &media_type, body)
                .await
            {
                tracing::warn!(error = %e, "shared store: manifest upload failed");
            }
        });
    }

    fn stats(&self) -> StoreStats {
        self.local.stats()
    }
}

/// The shared store over `local` for the `[s3]` settings; an unusable object-store
/// configuration means serving without a cache (reason kept for `/readyz`), never a replica
/// that silently stops sharing.
pub fn open(
    local: DiskStore,
    s3: &dockerproxy_core::config::S3Settings,
    tls: rustls::ClientConfig,
) -> (Arc<dyn Store>, Option<String>) {
    match Remote::new(s3, tls) {
        Ok(remote) => {
            let replica = std::env::var("HOSTNAME")
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| format!("pid-{}", std::process::id()));
            let settings = SharedSettings {
                lease_ttl: s3.lease_ttl,
                max_wait: MAX_WAIT,
                replica,
            };
            tracing::info!(
                endpoint = %s3.endpoint,
                bucket = %s3.bucket,
                lease_ttl_ms = s3.lease_ttl.as_millis() as u64,
                "shared cache store on S3"
            );
            (Arc::new(SharedStore::new(local, remote, settings)), None)
        }
        Err(e) => {
            let reason = format!("the S3 store cannot be used: {e}");
            tracing::error!(%reason, "cache disabled");
            (Arc::new(crate::store::NoopStore), Some(reason))
        }
    }
}

/// A body fed by a queue of chunks; an `Err` ends it aborted.
struct QueueBody {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, BoxError>>,
}

impl hyper::body::Body for QueueBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx
            .poll_recv(cx)
            .map(|item| item.map(|r| r.map(Frame::data)))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::RangeCut;

    fn run(first: u64, end: u64, chunks: &[&[u8]]) -> (Vec<u8>, Option<Bytes>) {
        let mut cut = RangeCut::new(first, end);
        let mut out = Vec::new();
        for c in chunks {
            if let Some(p) = cut.take(&Bytes::copy_from_slice(c)) {
                out.extend_from_slice(&p);
            }
        }
        (out, cut.last())
    }

    #[test]
    fn range_cut_holds_back_only_the_last_byte() {
        let data: Vec<u8> = (0..20).collect();
        for split in 1..20 {
            let (a, b) = data.split_at(split);
            for (first, end) in [(0u64, 20u64), (3, 9), (0, 1), (19, 20), (5, 6), (7, 20)] {
                let (out, last) = run(first, end, &[a, b]);
                let want = &data[first as usize..end as usize];
                assert_eq!(
                    &out[..],
                    &want[..want.len() - 1],
                    "split {split} range {first}..{end}"
                );
                assert_eq!(
                    last.as_deref(),
                    Some(&want[want.len() - 1..]),
                    "split {split}"
                );
            }
        }
        assert_eq!(run(0, 0, &[&data]), (Vec::new(), None));
    }
}
