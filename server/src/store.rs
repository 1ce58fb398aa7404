//! The cache store seam. The server talks to the cache only through [`Store`]; [`NoopStore`]
//! answers every lookup with a miss and reports zero statistics (cache off or unusable), and
//! [`crate::cache::DiskStore`] is the real two-level store (DESIGN.md §4 "The cache").
//!
//! - [`Store::lookup`] answers [`Action::CacheLookup`](dockerproxy_core::Action::CacheLookup);
//!   for a blob miss the first caller may get a [`FillClaim`]: concurrent lookups of that key
//!   wait for the claim's fill instead of going upstream (single flight);
//! - [`Store::start_fill`] takes over the upstream body of a cacheable `200` blob and returns the
//!   client's body, read from the growing fill;
//! - [`Store::open`] serves [`BodyPlan::Cache`](dockerproxy_core::exchange::BodyPlan::Cache);
//! - [`Store::store_manifest`] performs [`Action::CacheStore`](dockerproxy_core::Action::CacheStore);
//! - [`Store::stats`] feeds `/stats`, `/stats/cache` and the cache metric families.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use dockerproxy_core::cache_policy::CacheKey;
use dockerproxy_core::exchange::{
    AccessRecord, CacheQuery, CacheResult, ManifestEntry, StoreTarget, UpstreamRequest,
};
use dockerproxy_core::reference::Digest;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;

use crate::upstream::{BoxError, UpstreamClient};

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

/// A pending claim on a blob fill, handed to the first missing lookup (the leader). While the
/// driver holds it, concurrent lookups of the same key wait; giving it to
/// [`Store::start_fill`] turns it into a running fill, dropping it releases the key (one waiter
/// then becomes the new leader).
pub struct FillClaim {
    inner: Box<dyn Any + Send + Sync>,
}

impl core::fmt::Debug for FillClaim {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FillClaim").finish_non_exhaustive()
    }
}

impl FillClaim {
    /// Wraps a store-specific guard (its `Drop` releases the claim).
    pub fn new<T: Any + Send + Sync>(guard: T) -> Self {
        Self {
            inner: Box::new(guard),
        }
    }

    /// The store-specific guard, when it is a `T`.
    pub fn downcast<T: Any>(self) -> Option<T> {
        self.inner.downcast::<T>().ok().map(|b| *b)
    }

    /// The store-specific guard when it is a `T`, else the claim back unchanged.
    pub fn try_downcast<T: Any>(self) -> Result<T, Self> {
        match self.inner.downcast::<T>() {
            Ok(b) => Ok(*b),
            Err(inner) => Err(Self { inner }),
        }
    }
}

/// Everything a fill needs: the upstream body of a cacheable `200` blob answer and how to ask
/// for the rest again if the connection is cut.
pub struct FillRequest {
    /// Where the verified blob is stored.
    pub target: StoreTarget,
    /// The digest the bytes must hash to.
    pub digest: Digest,
    /// The upstream `Content-Length`, when given.
    pub content_length: Option<u64>,
    /// The upstream body.
    pub body: Incoming,
    /// The request that produced `body` (the last redirect hop), for a `Range: bytes=N-` resume.
    pub request: Option<UpstreamRequest>,
    /// The claim the lookup handed out, if any.
    pub claim: Option<FillClaim>,
    /// The upstream client, for resumes.
    pub client: UpstreamClient,
}

impl core::fmt::Debug for FillRequest {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FillRequest")
            .field("digest", &self.digest)
            .field("content_length", &self.content_length)
            .finish_non_exhaustive()
    }
}

/// The cache store as the server sees it.
pub trait Store: Send + Sync + 'static {
    /// Looks a key up, with the access facts of COMPAT.md §8.6 for the query's repository and
    /// identity. A broken store answers [`CacheResult::Miss`]. With `lead` (a GET that would fill
    /// on a miss), a blob miss may come with a [`FillClaim`]; concurrent lookups of that key wait
    /// (bounded) for its fill and are then answered from it.
    fn lookup<'a>(
        &'a self,
        query: &'a CacheQuery,
        lead: bool,
    ) -> StoreFuture<'a, (CacheResult, Option<FillClaim>)>;

    /// Takes over the upstream body of a cacheable blob: a detached fill verifies and stores it,
    /// and the returned body streams it to the client as it lands. `Err` gives the request back
    /// when the store cannot fill (the caller then relays the body itself).
    fn start_fill(&self, fill: FillRequest) -> Result<StoreBody, Box<FillRequest>>;

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
    fn lookup<'a>(
        &'a self,
        _query: &'a CacheQuery,
        _lead: bool,
    ) -> StoreFuture<'a, (CacheResult, Option<FillClaim>)> {
        Box::pin(async { (CacheResult::Miss, None) })
    }

    fn start_fill(&self, fill: FillRequest) -> Result<StoreBody, Box<FillRequest>> {
        Err(Box::new(fill))
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
