//! Cluster-wide single flight for blob fills: exactly one replica fetches a blob from upstream
//! while the others wait for the object to appear.
//!
//! Why not a conditional put (`If-None-Match: *`): Garage, the object store the tests run, does
//! not implement it (garage_api_s3 2.5.0 reads no precondition header on PutObject; two
//! "exclusive" creates both succeed), and neither do several other S3-compatible stores. This
//! lease needs only read-after-write consistency of PUT and LIST, which Garage, MinIO and AWS S3
//! all give:
//!
//! 1. a contender writes its own *intent* object `leases/<alg>/<hex>/<contender>`;
//! 2. it lists `leases/<alg>/<hex>/`: intents not rewritten for a whole TTL belong to replicas
//!    that died or hung and are deleted; if no other live intent is there, it holds the lease;
//!    otherwise it deletes its own intent and backs off (a random delay before the next try).
//!
//! Two contenders that both write before either lists both see each other and both back off
//! (never both win); one that lists before the other writes wins, and the later one sees it.
//! The holder rewrites its intent every third of the TTL. Expiry compares the store's
//! `Last-Modified` with this machine's clock: replicas and store must keep their clocks within a
//! fraction of the TTL.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dockerproxy_core::reference::Digest;
use futures_util::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::task::JoinHandle;

use super::remote::{CALL_TIMEOUT, Remote, bounded};

/// Deletes an intent whose attempt was abandoned half-way (the lookup's future dropped between
/// the PUT and the verdict), so it cannot block the other replicas for a whole TTL.
struct IntentGuard {
    remote: Arc<Remote>,
    path: Option<Path>,
}

impl IntentGuard {
    fn disarm(mut self) -> Path {
        self.path.take().unwrap_or_else(|| Path::from(""))
    }
}

impl Drop for IntentGuard {
    fn drop(&mut self) {
        let Some(path) = self.path.take() else {
            return;
        };
        let remote = self.remote.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = bounded(CALL_TIMEOUT, remote.store.delete(&path)).await;
            });
        }
    }
}

/// The outcome of one attempt.
#[derive(Debug)]
pub enum Attempt {
    /// This replica holds the lease: it fills.
    Won(Lease),
    /// Another replica holds a live lease, or a tie: try again after a random delay.
    Held,
}

/// A held lease. Renewed in the background until dropped; dropping it deletes the intent.
#[derive(Debug)]
pub struct Lease {
    remote: Arc<Remote>,
    path: Path,
    renew: JoinHandle<()>,
    release: bool,
}

impl Lease {
    /// Stops renewing without releasing, as a replica killed mid-fill would: the lease then
    /// expires after its TTL (tests).
    pub fn abandon(mut self) {
        self.release = false;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renew.abort();
        if !self.release {
            return;
        }
        let remote = self.remote.clone();
        let path = self.path.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = bounded(CALL_TIMEOUT, remote.store.delete(&path)).await;
            });
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A contender name unique across replicas and attempts: `<replica>-<pid>-<n>`, with only
/// characters that are safe in a key.
fn contender(replica: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let safe: String = replica
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(40)
        .collect();
    format!(
        "{safe}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A random back-off delay below `max` (std's per-process random hasher keys, no new crate).
pub fn jitter(max: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i64(now_ms());
    let ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(h.finish() % ms)
}

/// One attempt to take the fill lease of `digest`.
pub async fn try_acquire(
    remote: &Arc<Remote>,
    registry: &str,
    digest: &Digest,
    ttl: Duration,
    replica: &str,
) -> Result<Attempt, object_store::Error> {
    let dir = remote.lease_dir(registry, digest);
    let me = dir.clone().join(contender(replica));
    let body = Bytes::from(replica.to_owned());
    let guard = IntentGuard {
        remote: remote.clone(),
        path: Some(me.clone()),
    };
    bounded(CALL_TIMEOUT, remote.store.put(&me, body.clone().into())).await?;
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let mut others = 0usize;
    let metas = bounded(CALL_TIMEOUT, async {
        let mut list = remote.store.list(Some(&dir));
        let mut metas = Vec::new();
        while let Some(meta) = list.next().await {
            metas.push(meta?);
        }
        Ok(metas)
    })
    .await?;
    let mut expired = Vec::new();
    for meta in metas {
        if meta.location == me {
            continue;
        }
        if now_ms().saturating_sub(meta.last_modified.timestamp_millis()) >= ttl_ms {
            expired.push(meta.location);
        } else {
            others += 1;
        }
    }
    for path in expired {
        tracing::warn!(
            digest = %digest,
            "shared store: a fill lease expired (its replica stopped renewing); dropping it"
        );
        let _ = bounded(CALL_TIMEOUT, remote.store.delete(&path)).await;
    }
    if others > 0 {
        // The guard deletes the intent.
        drop(guard);
        return Ok(Attempt::Held);
    }
    let me = guard.disarm();
    let renew = {
        let remote = remote.clone();
        let path = me.clone();
        tokio::spawn(async move {
            let every = (ttl / 3).max(Duration::from_millis(200));
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) =
                    bounded(CALL_TIMEOUT, remote.store.put(&path, body.clone().into())).await
                {
                    tracing::warn!(error = %e, "shared store: lease renewal failed");
                }
            }
        })
    };
    Ok(Attempt::Won(Lease {
        remote: remote.clone(),
        path: me,
        renew,
        release: true,
    }))
}
