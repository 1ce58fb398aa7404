//! Lookups with single flight (COMPAT.md §8.4, §8.6): blobs and digest manifests by key, tags
//! through their mapping, each answered with the request's [`Access`](dockerproxy_core::exchange::Access).
//!
//! For a blob miss the first lookup becomes the leader and gets a [`FillClaim`]; concurrent
//! lookups of that key wait (bounded by `claim_wait`) until the claim turns into a fill, which
//! they join, or is released, when one of them becomes the new leader. Every waiter is answered
//! with its own access facts, so the exchange still checks each one.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Instant;

use bytes::Bytes;
use dockerproxy_core::Timestamp;
use dockerproxy_core::cache_policy::CacheKey;
use dockerproxy_core::exchange::{CacheQuery, CacheResult};
use dockerproxy_core::reference::Digest;
use tokio::sync::watch;

use super::index::TagEntry;
use super::{Inner, Slot, now_ms};
use crate::store::FillClaim;

/// The store's [`FillClaim`] guard: dropping it releases the claim unless it became a fill.
pub(super) struct ClaimGuard {
    inner: Weak<Inner>,
    key: (String, Digest),
    pub(super) id: u64,
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let mut st = inner.lock();
        if matches!(st.inflight.get(&self.key), Some(Slot::Claimed { id, .. }) if *id == self.id) {
            // Dropping the slot drops its sender: every waiter wakes and one becomes the leader.
            st.inflight.remove(&self.key);
        }
    }
}

/// The guard of a tag revalidation: the request holding it is the one that revalidates a stale
/// tag with its HEAD; dropping it (when that request has answered, after its `TagValidated`,
/// `TagDrop` or new mapping) wakes the requests that waited instead of sending their own HEAD.
pub(super) struct RevalidateGuard {
    inner: Weak<Inner>,
    key: CacheKey,
    id: u64,
}

impl Drop for RevalidateGuard {
    fn drop(&mut self) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let mut st = inner.lock();
        if st
            .revalidating
            .get(&self.key)
            .is_some_and(|(id, _)| *id == self.id)
        {
            // Dropping the sender wakes every waiter.
            st.revalidating.remove(&self.key);
        }
    }
}

/// What a blob lookup found under the lock.
enum BlobStep {
    Committed(u64),
    Done(CacheResult, Option<FillClaim>),
    Wait(watch::Receiver<()>),
}

impl Inner {
    fn blob_step(
        self: &Arc<Self>,
        query: &CacheQuery,
        registry: &str,
        digest: &Digest,
        lead: bool,
        deadline: Instant,
    ) -> BlobStep {
        let mut st = self.lock();
        if let Some(size) = st.index.blob(registry, digest) {
            return BlobStep::Committed(size);
        }
        let key = (registry.to_owned(), digest.clone());
        match st.inflight.get(&key) {
            Some(Slot::Filling(fill)) => {
                let Some(size) = fill.size else {
                    // No announced length: cannot answer a joiner's Content-Length.
                    st.counters.lookup(true, false);
                    return BlobStep::Done(CacheResult::Miss, None);
                };
                let access = st.index.access(
                    registry,
                    &query.repository,
                    &query.identity,
                    Some(digest),
                    now_ms(),
                    (self.settings.manifest_ttl_ms, self.settings.max_stale_ms),
                );
                st.counters.lookup(true, true);
                st.counters.deduplicated += 1;
                st.counters.inflight_total += 1;
                BlobStep::Done(CacheResult::Blob { size, access }, None)
            }
            Some(Slot::Claimed { wake, .. }) => {
                if Instant::now() >= deadline {
                    st.counters.lookup(true, false);
                    return BlobStep::Done(CacheResult::Miss, None);
                }
                BlobStep::Wait(wake.clone())
            }
            None => {
                st.counters.lookup(true, false);
                if !lead {
                    return BlobStep::Done(CacheResult::Miss, None);
                }
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let (tx, rx) = watch::channel(());
                st.inflight.insert(
                    key.clone(),
                    Slot::Claimed {
                        id,
                        repository: query.repository.clone(),
                        _wake: tx,
                        wake: rx,
                    },
                );
                st.counters.inflight_total += 1;
                let claim = FillClaim::new(ClaimGuard {
                    inner: Arc::downgrade(self),
                    key,
                    id,
                });
                // The leader's answer says the store will fill: a Range GET is served from it.
                BlobStep::Done(CacheResult::Lead, Some(claim))
            }
        }
    }

    async fn lookup_blob(
        self: &Arc<Self>,
        query: &CacheQuery,
        registry: &str,
        digest: &Digest,
        lead: bool,
    ) -> (CacheResult, Option<FillClaim>) {
        let deadline = Instant::now() + self.settings.claim_wait;
        loop {
            match self.blob_step(query, registry, digest, lead, deadline) {
                BlobStep::Done(r, c) => return (r, c),
                BlobStep::Wait(mut rx) => {
                    // Wakes when the claim's slot changes (fill started or claim released).
                    let _ = tokio::time::timeout_at(deadline.into(), rx.changed()).await;
                }
                BlobStep::Committed(size) => {
                    let path = self.layout.content(digest);
                    let meta = tokio::fs::symlink_metadata(&path).await;
                    match meta {
                        Ok(m) if m.is_file() && m.len() == size => {
                            let now = now_ms();
                            let mut st = self.lock();
                            st.index.touch(digest, now);
                            let access = st.index.access(
                                registry,
                                &query.repository,
                                &query.identity,
                                Some(digest),
                                now,
                                (self.settings.manifest_ttl_ms, self.settings.max_stale_ms),
                            );
                            st.counters.lookup(true, true);
                            return (CacheResult::Blob { size, access }, None);
                        }
                        _ => self.drop_corrupt(digest, "missing or wrong size"),
                    }
                }
            }
        }
    }

    async fn lookup_manifest(
        &self,
        query: &CacheQuery,
        registry: &str,
        digest: &Digest,
        validated_at: Option<u64>,
    ) -> Option<CacheResult> {
        let (size, media_type, hot, on_disk) = {
            let st = self.lock();
            let (size, mt) = st.index.manifest(registry, digest)?;
            let on_disk = st.index.entries.get(digest).is_some_and(|e| e.on_disk);
            (size, mt, st.index.hot(digest), on_disk)
        };
        let body = match hot {
            Some(b) => b,
            None if !on_disk => return None,
            None => {
                let read = tokio::fs::read(self.layout.content(digest)).await;
                match read {
                    Ok(b)
                        if b.len() as u64 == size
                            && dockerproxy_core::verifier::verify_all(digest, &b).is_ok() =>
                    {
                        let b = Bytes::from(b);
                        self.lock().index.set_hot(digest.clone(), b.clone());
                        b
                    }
                    _ => {
                        self.drop_corrupt(digest, "manifest missing, short or corrupt");
                        return None;
                    }
                }
            }
        };
        let now = now_ms();
        let mut st = self.lock();
        st.index.touch(digest, now);
        let linked_digest = validated_at.is_none().then_some(digest);
        let access = st.index.access(
            registry,
            &query.repository,
            &query.identity,
            linked_digest,
            now,
            (self.settings.manifest_ttl_ms, self.settings.max_stale_ms),
        );
        Some(CacheResult::Manifest {
            digest: digest.clone(),
            media_type,
            body,
            access,
            validated_at: validated_at.map(Timestamp::from_millis),
        })
    }

    pub(super) async fn lookup(
        self: &Arc<Self>,
        query: &CacheQuery,
        lead: bool,
    ) -> (CacheResult, Option<FillClaim>) {
        self.ensure_sweeper();
        match &query.key {
            CacheKey::Blob { registry, digest } => {
                self.lookup_blob(query, registry, digest, lead).await
            }
            CacheKey::Manifest { registry, digest } => {
                let r = self.lookup_manifest(query, registry, digest, None).await;
                self.lock().counters.lookup(false, r.is_some());
                (r.unwrap_or(CacheResult::Miss), None)
            }
            CacheKey::Tag { registry, .. } => {
                // Concurrent revalidations of one stale tag share one upstream HEAD: the first
                // request revalidates, the others wait for it (once, bounded) and then see the
                // refreshed mapping.
                let mut claim = None;
                let mut waited = false;
                let tag = loop {
                    let wait = {
                        let mut st = self.lock();
                        let tag = st.index.tags.get(&query.key).cloned();
                        let stale = tag.as_ref().is_some_and(|t| {
                            now_ms().saturating_sub(t.validated_at) >= self.settings.manifest_ttl_ms
                        });
                        if !stale || waited {
                            break tag;
                        }
                        match st.revalidating.get(&query.key) {
                            Some((_, tx)) => tx.subscribe(),
                            None => {
                                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                                let (tx, _rx) = watch::channel(());
                                st.revalidating.insert(query.key.clone(), (id, tx));
                                claim = Some(FillClaim::new(RevalidateGuard {
                                    inner: Arc::downgrade(self),
                                    key: query.key.clone(),
                                    id,
                                }));
                                break tag;
                            }
                        }
                    };
                    waited = true;
                    let mut rx = wait;
                    let _ = tokio::time::timeout(self.settings.claim_wait, rx.changed()).await;
                };
                let r = match tag {
                    Some(TagEntry {
                        digest,
                        validated_at,
                    }) => {
                        self.lookup_manifest(query, registry, &digest, Some(validated_at))
                            .await
                    }
                    None => None,
                };
                self.lock().counters.lookup(false, r.is_some());
                (r.unwrap_or(CacheResult::Miss), claim)
            }
        }
    }
}
