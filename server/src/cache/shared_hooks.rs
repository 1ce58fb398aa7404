//! What the shared store ([`crate::shared`]) asks of the local disk store: the access facts of a
//! query without a lookup, where a blob stands (committed, filling, absent), and an open
//! committed file to upload.

use std::fs::File;
use std::sync::Arc;

use dockerproxy_core::cache_policy::CacheKey;
use dockerproxy_core::exchange::{Access, CacheQuery};
use dockerproxy_core::reference::Digest;

use super::{DiskStore, ReadGuard, Slot, now_ms};

/// Where a blob stands in the local store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobStatus {
    /// Committed, of this size.
    Committed(u64),
    /// A fill (or a claim about to become one) is in flight.
    InFlight,
    /// Neither.
    Absent,
}

impl DiskStore {
    /// The access facts of COMPAT.md §8.6 for `query` and `digest` (`None` for tags).
    pub fn access(&self, query: &CacheQuery, digest: Option<&Digest>) -> Access {
        let s = &self.inner.settings;
        let st = self.inner.lock();
        let registry = match &query.key {
            CacheKey::Blob { registry, .. }
            | CacheKey::Manifest { registry, .. }
            | CacheKey::Tag { registry, .. } => registry,
        };
        st.index.access(
            registry,
            &query.repository,
            &query.identity,
            digest,
            now_ms(),
            (s.manifest_ttl_ms, s.max_stale_ms),
        )
    }

    /// Where the blob `digest` of `registry` stands.
    pub fn blob_status(&self, registry: &str, digest: &Digest) -> BlobStatus {
        let st = self.inner.lock();
        if let Some(size) = st.index.blob(registry, digest) {
            return BlobStatus::Committed(size);
        }
        match st.inflight.get(&(registry.to_owned(), digest.clone())) {
            Some(Slot::Claimed { .. } | Slot::Filling(_)) => BlobStatus::InFlight,
            None => BlobStatus::Absent,
        }
    }

    /// Opens the committed blob `digest` of `size` bytes; the guard keeps eviction away.
    pub fn open_committed(&self, digest: &Digest, size: u64) -> Option<(Arc<File>, ReadGuard)> {
        self.inner.open_file(digest, size)
    }
}
