//! Counters of the store and their projection into [`StoreStats`] for `/stats`, `/stats/cache`
//! and `/metrics` (COMPAT.md §2).

use super::index::Index;
use crate::store::{KindStats, StoreStats};

/// Monotonic counters (sizes and counts are computed from the index).
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    /// Blob lookups.
    pub blob: KindStats,
    /// Manifest and tag lookups.
    pub manifest: KindStats,
    /// Lookups that joined a fill in flight.
    pub deduplicated: u64,
    /// Lookups that started or joined a fill.
    pub inflight_total: u64,
    /// Last sweep or eviction, ms since the epoch.
    pub last_cleanup_ms: Option<u64>,
}

impl Counters {
    /// Counts a lookup of a blob (`true`) or a manifest, and whether it hit.
    pub fn lookup(&mut self, blob: bool, hit: bool) {
        let k = if blob {
            &mut self.blob
        } else {
            &mut self.manifest
        };
        k.requests += 1;
        if hit {
            k.hits += 1;
        } else {
            k.misses += 1;
        }
    }
}

/// Builds the statistics: counters plus what the index holds, and the keys being fetched.
pub fn project(index: &Index, counters: &Counters, active_keys: Vec<String>) -> StoreStats {
    let mut blob = counters.blob;
    let mut manifest = counters.manifest;
    blob.count = 0;
    blob.size_bytes = 0;
    manifest.count = 0;
    manifest.size_bytes = 0;
    for e in index.entries.values() {
        blob.count += e.blob_of.len() as u64;
        manifest.count += e.manifest_of.len() as u64;
        if e.manifest_of.is_empty() {
            blob.size_bytes = blob.size_bytes.saturating_add(e.size);
        } else {
            manifest.size_bytes = manifest.size_bytes.saturating_add(e.size);
        }
    }
    StoreStats {
        blob,
        manifest,
        deduplicated: counters.deduplicated,
        inflight_total: counters.inflight_total,
        active_keys,
        last_cleanup_ms: counters.last_cleanup_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dockerproxy_core::reference::Digest;

    #[test]
    fn projection_counts_entries_per_registry_and_sizes_once() {
        let d = Digest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap();
        let mut i = Index::default();
        i.insert_blob("r1", &d, 100, 0);
        i.insert_blob("r2", &d, 100, 0);
        let mut c = Counters::default();
        c.lookup(true, true);
        c.lookup(true, false);
        c.lookup(false, false);
        let s = project(&i, &c, vec!["r1/x@sha256:a".into()]);
        assert_eq!(s.blob.count, 2);
        assert_eq!(s.blob.size_bytes, 100);
        assert_eq!((s.blob.requests, s.blob.hits, s.blob.misses), (2, 1, 1));
        assert_eq!((s.manifest.requests, s.manifest.misses), (1, 1));
        assert_eq!(s.active_keys.len(), 1);
    }
}
