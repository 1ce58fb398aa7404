//! The two-level cache store (DESIGN.md §4 "The cache", COMPAT.md §8): a memory [`index`] over
//! content-addressed files on disk ([`layout`]), an append-only [`journal`] for what file names
//! cannot say, single-flight blob [`fill`]s streamed to every client ([`reader`]), eviction
//! ([`evict`]) and statistics ([`stats`]).
//!
//! ```text
//! lookup(blob) ─┬─ committed, size ok ─────────────► Blob{size, access}        (HIT)
//!               ├─ fill in flight ─────────────────► Blob{size, access}        (joins the fill)
//!               ├─ claimed by a leader ── wait ────► (fill started: join | released: retry)
//!               └─ nothing ── lead ────────────────► Lead + FillClaim          (leader)
//! start_fill(claim) ─► detached fill task ─► readers tail the temp file ─► commit | abort
//! ```
//!
//! Startup: `CACHE_DIR` created, exclusive lock, `tmp/` emptied, index rebuilt from `blobs/`
//! and the journal. Any failure there means serving without a cache (see [`DiskStore::open`]).

mod commit;
pub mod evict;
pub mod fill;
pub mod index;
pub mod journal;
pub mod layout;
mod lookup;
mod manifest;
mod open;
pub mod reader;
pub mod shared_hooks;
mod startup;
pub mod stats;

use self::lookup::ClaimGuard;
pub use self::open::ReadGuard;

use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dockerproxy_core::cache_policy::CacheKey;
use dockerproxy_core::config::CacheSettings;
use dockerproxy_core::exchange::{AccessRecord, CacheQuery, CacheResult, ManifestEntry};
use dockerproxy_core::reference::{Digest, Name};
use dockerproxy_core::token::Identity;
use tokio::sync::watch;

use self::fill::Fill;
use self::index::{HashMap, HashSet, Index};
use self::journal::{Journal, Record};
use self::layout::Layout;
use self::stats::Counters;
use crate::store::{FillClaim, FillRequest, Store, StoreBody, StoreFuture, StoreStats};

/// Minimum time between two logged disk errors.
const DISK_ERROR_LOG_EVERY_MS: u64 = 10_000;

/// Store settings (from [`CacheSettings`]).
#[derive(Clone, Debug)]
pub struct Settings {
    /// How long a public mark and a tag mapping stay fresh, ms.
    pub manifest_ttl_ms: u64,
    /// `max_stale`, in ms: how long a public mark allows serving a stale tag.
    pub max_stale_ms: u64,
    /// Idle age after which entries are deleted, ms (0 = none).
    pub blob_ttl_ms: u64,
    /// Size cap in bytes (0 = none).
    pub max_size: u64,
    /// How long a lookup waits for another request's claim to become a fill.
    pub claim_wait: Duration,
    /// Period of the expiry sweep.
    pub sweep_every: Duration,
    /// Fault injection for tests: fill writes past this offset fail as if the disk were full.
    pub fail_writes_after: Option<u64>,
}

impl Settings {
    /// Settings from the configuration; `claim_wait` bounds the single-flight wait.
    pub fn from_config(c: &CacheSettings, claim_wait: Duration) -> Self {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let blob_ttl_ms = ms(c.blob_ttl);
        let sweep = if blob_ttl_ms == 0 {
            Duration::from_secs(300)
        } else {
            (c.blob_ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(300))
        };
        Self {
            manifest_ttl_ms: ms(c.manifest_ttl),
            max_stale_ms: ms(c.max_stale),
            blob_ttl_ms,
            max_size: c.max_size,
            claim_wait,
            sweep_every: sweep,
            fail_writes_after: None,
        }
    }
}

/// A slot of the in-flight table.
enum Slot {
    /// A leader looked the blob up and is asking upstream; waiters watch the sender (dropped
    /// when the slot changes).
    Claimed {
        id: u64,
        repository: Name,
        _wake: watch::Sender<()>,
        wake: watch::Receiver<()>,
    },
    /// A fill is running.
    Filling(Arc<Fill>),
}

/// Everything behind the lock.
struct State {
    index: Index,
    inflight: HashMap<(String, Digest), Slot>,
    /// Stale tags being revalidated by one request; others wait for its HEAD (the sender is
    /// dropped when the revalidating request answers, waking them).
    revalidating: HashMap<CacheKey, (u64, watch::Sender<()>)>,
    journal: Journal,
    counters: Counters,
}

/// The shared store.
pub struct Inner {
    layout: Layout,
    settings: Settings,
    state: Mutex<State>,
    next_id: AtomicU64,
    sweeper: AtomicBool,
    last_disk_error: AtomicU64,
}

/// The disk store. The directory lock lives with this handle (owned by the server state), not
/// with the background tasks: once the server is gone, a new store may open the directory even
/// if a fill task is still finishing its last journal line.
#[derive(Clone)]
pub struct DiskStore {
    inner: Arc<Inner>,
    _lock: Arc<File>,
}

impl core::fmt::Debug for DiskStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DiskStore")
            .field("root", &self.inner.layout.root())
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    crate::state::now().as_millis()
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under the lock leaves consistent-enough data (plain maps): keep serving.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Logs a disk error, at most once per 10 s.
    pub(crate) fn disk_error(&self, what: &str, e: &std::io::Error) {
        let now = now_ms();
        let last = self.last_disk_error.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= DISK_ERROR_LOG_EVERY_MS {
            self.last_disk_error.store(now, Ordering::Relaxed);
            tracing::error!(what, error = %e, "cache disk error; serving from upstream without storing");
        } else {
            tracing::debug!(what, error = %e, "cache disk error");
        }
    }

    fn journal(&self, st: &mut State, records: &[Record]) {
        if let Err(e) = st.journal.append(records) {
            self.disk_error("journal append", &e);
        }
    }

    fn stats(&self) -> StoreStats {
        let st = self.lock();
        let mut active = Vec::new();
        for ((registry, digest), slot) in &st.inflight {
            let repo = match slot {
                Slot::Claimed { repository, .. } => repository,
                Slot::Filling(f) => &f.repository,
            };
            active.push(format!("{registry}/{}@{digest}", repo.as_str()));
        }
        active.sort();
        stats::project(&st.index, &st.counters, active)
    }
}

/// Digests being filled.
fn busy(st: &State) -> HashSet<Digest> {
    st.inflight.keys().map(|(_, d)| d.clone()).collect()
}

impl Store for DiskStore {
    fn lookup<'a>(
        &'a self,
        query: &'a CacheQuery,
        lead: bool,
    ) -> StoreFuture<'a, (CacheResult, Option<FillClaim>)> {
        Box::pin(self.inner.lookup(query, lead))
    }

    fn start_fill(&self, fill: FillRequest) -> Result<StoreBody, Box<FillRequest>> {
        self.inner.start_fill(fill)
    }

    fn record_access(&self, record: AccessRecord) {
        let AccessRecord {
            registry,
            repository,
            identity,
            anonymous,
        } = record;
        let now = now_ms();
        let every = (self.inner.settings.manifest_ttl_ms / 10).clamp(1_000, 3_600_000);
        let mut st = self.inner.lock();
        let anonymous = anonymous && identity == Identity::Anonymous;
        if st
            .index
            .record_access(&registry, &repository, &identity, anonymous, now, every)
        {
            let rec = Record::Public {
                r: registry,
                n: repository.as_str().to_owned(),
                at: now,
            };
            self.inner.journal(&mut st, &[rec]);
        }
    }

    fn tag_validated(&self, key: &CacheKey) {
        let now = now_ms();
        let mut st = self.inner.lock();
        let Some(t) = st.index.tags.get_mut(key) else {
            return;
        };
        t.validated_at = now;
        let digest = t.digest.to_string();
        if let CacheKey::Tag {
            registry,
            name,
            tag,
            accept,
        } = key
        {
            let rec = Record::Tag {
                r: registry.clone(),
                n: name.as_str().to_owned(),
                g: tag.as_str().to_owned(),
                a: accept.clone(),
                d: digest,
                v: now,
            };
            self.inner.journal(&mut st, &[rec]);
        }
    }

    fn tag_drop(&self, key: &CacheKey) {
        let mut st = self.inner.lock();
        if st.index.tags.remove(key).is_none() {
            return;
        }
        if let CacheKey::Tag {
            registry,
            name,
            tag,
            accept,
        } = key
        {
            let rec = Record::TagDrop {
                r: registry.clone(),
                n: name.as_str().to_owned(),
                g: tag.as_str().to_owned(),
                a: accept.clone(),
            };
            self.inner.journal(&mut st, &[rec]);
        }
    }

    fn open<'a>(
        &'a self,
        key: &'a CacheKey,
        range: Option<(u64, u64)>,
    ) -> StoreFuture<'a, Option<StoreBody>> {
        Box::pin(self.inner.open(key, range))
    }

    fn store_manifest(&self, entry: ManifestEntry) {
        self.inner.store_manifest(entry);
    }

    fn stats(&self) -> StoreStats {
        self.inner.stats()
    }
}
