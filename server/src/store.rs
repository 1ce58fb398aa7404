//! The cache store seam. The server talks to the cache only through [`Store`]; until the cache
//! lands, [`NoopStore`] answers every lookup with a miss and reports zero statistics.
//!
//! What the cache issue plugs in here (DESIGN.md §4 "The cache"):
//! - [`Store::lookup`] answers [`Action::CacheLookup`](dockerproxy_core::Action::CacheLookup);
//! - [`Store::open`] serves [`BodyPlan::Cache`](dockerproxy_core::exchange::BodyPlan::Cache);
//! - the `store` key of `BodyPlan::Upstream` is where `driver.rs` will hand the upstream body to
//!   a detached fill instead of streaming it straight to the client (see `driver::respond`);
//! - [`Store::store_manifest`] performs [`Action::CacheStore`](dockerproxy_core::Action::CacheStore);
//! - [`Store::stats`] feeds `/stats`, `/stats/cache` and the cache metric families.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use dockerproxy_core::cache_policy::CacheKey;
use dockerproxy_core::exchange::{AccessRecord, CacheQuery, CacheResult, ManifestEntry};
use http_body_util::combinators::BoxBody;

use crate::upstream::BoxError;

/// A boxed future, as returned by the object-safe store methods.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A body read from the store.
pub type StoreBody = BoxBody<Bytes, BoxError>;

/// Per-kind counters of the go-docker-proxy `/stats` object.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KindStats {
    /// Stored objects.
    pub count: u64,
    /// Lookups.
    pub requests: u64,
    /// Lookups served from the store.
    pub hits: u64,
    /// Lookups not served from the store.
    pub misses: u64,
    /// Bytes stored.
    pub size_bytes: u64,
    /// Evictions.
    pub evictions: u64,
}

/// Cache statistics for `/stats` and `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Blobs.
    pub blob: KindStats,
    /// Manifests.
    pub manifest: KindStats,
    /// Requests that joined a fetch in flight.
    pub deduplicated: u64,
    /// Requests that went through the in-flight table.
    pub inflight_total: u64,
    /// Keys currently being fetched (`<registry>/<repo>@<digest>` or `…:<tag>`).
    pub active_keys: Vec<String>,
    /// Last eviction run, milliseconds since the Unix epoch.
    pub last_cleanup_ms: Option<u64>,
}

/// The cache store as the server sees it.
pub trait Store: Send + Sync + 'static {
    /// Looks a key up, with the access facts of COMPAT.md §8.6 for the query's repository and
    /// identity. A broken store answers [`CacheResult::Miss`].
    fn lookup<'a>(&'a self, query: &'a CacheQuery) -> StoreFuture<'a, CacheResult>;

    /// Remembers an authorisation proof (a repository served to an identity; public when
    /// anonymous).
    fn record_access(&self, record: AccessRecord);

    /// A tag mapping was confirmed upstream now.
    fn tag_validated(&self, key: &CacheKey);

    /// Forgets a tag mapping.
    fn tag_drop(&self, key: &CacheKey);

    /// Opens a stored body, optionally an inclusive byte range. `None` when it vanished.
    fn open<'a>(
        &'a self,
        key: &'a CacheKey,
        range: Option<(u64, u64)>,
    ) -> StoreFuture<'a, Option<StoreBody>>;

    /// Stores a verified manifest (by digest, plus the tag mapping when set). Never fails
    /// visibly: a store error is logged by the store and the entry is simply not kept. Slow work
    /// (disk writes) is the store's to spawn.
    fn store_manifest(&self, entry: ManifestEntry);

    /// Current statistics.
    fn stats(&self) -> StoreStats;
}

/// A store that holds nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopStore;

impl Store for NoopStore {
    fn lookup<'a>(&'a self, _query: &'a CacheQuery) -> StoreFuture<'a, CacheResult> {
        Box::pin(async { CacheResult::Miss })
    }

    fn record_access(&self, _record: AccessRecord) {}

    fn tag_validated(&self, _key: &CacheKey) {}

    fn tag_drop(&self, _key: &CacheKey) {}

    fn open<'a>(
        &'a self,
        _key: &'a CacheKey,
        _range: Option<(u64, u64)>,
    ) -> StoreFuture<'a, Option<StoreBody>> {
        Box::pin(async { None })
    }

    fn store_manifest(&self, _entry: ManifestEntry) {}

    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }
}
