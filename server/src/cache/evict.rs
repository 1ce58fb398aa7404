//! What to delete (COMPAT.md §8.7, SECURITY.md §2.15): over `cache_max_size`, blobs by least
//! recent read, unreferenced ones (orphans, blobs no cached manifest lists) before referenced
//! ones; past `CACHE_BLOB_TTL` without a read, any entry. Never a file being read or filled.
//!
//! Planning is pure; the store removes the planned entries from the index, journals them and
//! deletes the files.

use super::index::HashSet;

use dockerproxy_core::reference::Digest;

use super::index::Index;

/// Total bytes of committed content.
pub fn total_size(index: &Index) -> u64 {
    index
        .entries
        .values()
        .filter(|e| e.on_disk)
        .fold(0u64, |acc, e| acc.saturating_add(e.size))
}

/// Blobs to evict so the total fits in `cap` (0 = no cap).
pub fn over_cap(index: &Index, busy: &HashSet<Digest>, cap: u64) -> Vec<Digest> {
    let mut total = total_size(index);
    if cap == 0 || total <= cap {
        return Vec::new();
    }
    let mut candidates: Vec<(bool, u64, &Digest, u64)> = index
        .entries
        .iter()
        .filter(|(d, e)| {
            e.on_disk && e.readers == 0 && e.manifest_of.is_empty() && !busy.contains(*d)
        })
        .map(|(d, e)| (index.refs.contains_key(d), e.last_read, d, e.size))
        .collect();
    candidates.sort_unstable_by_key(|c| (c.0, c.1));
    let mut out = Vec::new();
    for (_, _, d, size) in candidates {
        if total <= cap {
            break;
        }
        total = total.saturating_sub(size);
        out.push(d.clone());
    }
    out
}

/// Entries not read for `ttl_ms` (0 = no age limit).
pub fn expired(index: &Index, busy: &HashSet<Digest>, now: u64, ttl_ms: u64) -> Vec<Digest> {
    if ttl_ms == 0 {
        return Vec::new();
    }
    index
        .entries
        .iter()
        .filter(|(d, e)| {
            e.on_disk
                && e.readers == 0
                && !busy.contains(*d)
                && now.saturating_sub(e.last_read) > ttl_ms
        })
        .map(|(d, _)| d.clone())
        .collect()
}

/// Periodic maintenance and removal, driven by the store.
mod maintain {
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Weak};

    use dockerproxy_core::reference::Digest;

    use super::super::journal::Record;
    use super::super::{Inner, busy, now_ms};

    impl Inner {
        pub(in crate::cache) fn ensure_sweeper(self: &Arc<Self>) {
            if self.sweeper.swap(true, Ordering::AcqRel) {
                return;
            }
            let Ok(handle) = tokio::runtime::Handle::try_current() else {
                self.sweeper.store(false, Ordering::Release);
                return;
            };
            let weak: Weak<Self> = Arc::downgrade(self);
            let every = self.settings.sweep_every;
            handle.spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let Some(inner) = weak.upgrade() else { return };
                    tokio::task::spawn_blocking(move || inner.sweep());
                }
            });
        }

        /// Expiry, grant purge, cap, journal compaction and sync.
        pub(in crate::cache) fn sweep(&self) {
            let now = now_ms();
            let expired = {
                let mut st = self.lock();
                st.index.purge_grants(now);
                let busy = busy(&st);
                super::expired(&st.index, &busy, now, self.settings.blob_ttl_ms)
            };
            self.remove_entries(&expired, now);
            self.enforce_cap();
            let mut st = self.lock();
            st.counters.last_cleanup_ms = Some(now);
            let live = st.index.live_records();
            if st.journal.lines() > 2 * live + 1000 {
                let records = st.index.records();
                if let Err(e) = st.journal.compact(&records) {
                    self.disk_error("journal compaction", &e);
                }
            } else if let Err(e) = st.journal.sync() {
                self.disk_error("journal sync", &e);
            }
        }

        /// Evicts blobs while the total is over the cap.
        pub(in crate::cache) fn enforce_cap(&self) {
            if self.settings.max_size == 0 {
                return;
            }
            let now = now_ms();
            let victims = {
                let st = self.lock();
                let busy = busy(&st);
                super::over_cap(&st.index, &busy, self.settings.max_size)
            };
            if !victims.is_empty() {
                self.remove_entries(&victims, now);
                self.lock().counters.last_cleanup_ms = Some(now);
            }
        }

        /// Forgets entries (journalled) and deletes their files.
        pub(in crate::cache) fn remove_entries(&self, digests: &[Digest], now: u64) {
            if digests.is_empty() {
                return;
            }
            let mut paths = Vec::new();
            {
                let mut st = self.lock();
                let busy = busy(&st);
                let mut records = Vec::new();
                for d in digests {
                    // Re-check under the lock: a reader or a fill may have started meanwhile.
                    let skip = busy.contains(d)
                        || st
                            .index
                            .entries
                            .get(d)
                            .is_none_or(|e| e.readers > 0 || !e.on_disk);
                    if skip {
                        continue;
                    }
                    if let Some(e) = st.index.remove(d) {
                        if e.manifest_of.is_empty() {
                            st.counters.blob.evictions += 1;
                        } else {
                            st.counters.manifest.evictions += 1;
                        }
                        records.push(Record::Evict { d: d.to_string() });
                        paths.push(self.layout.content(d));
                    }
                }
                self.journal(&mut st, &records);
            }
            for p in paths {
                if let Err(e) = std::fs::remove_file(&p)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    self.disk_error("evict", &e);
                }
            }
            tracing::debug!(now, "cache entries removed");
        }

        /// A committed file that is missing or has another size: forget it.
        pub(in crate::cache) fn drop_corrupt(&self, digest: &Digest, why: &str) {
            tracing::warn!(%digest, why, "cache entry dropped");
            let mut st = self.lock();
            if st.index.remove(digest).is_some() {
                self.journal(
                    &mut st,
                    &[Record::Evict {
                        d: digest.to_string(),
                    }],
                );
            }
            drop(st);
            let _ = std::fs::remove_file(self.layout.content(digest));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    #[test]
    fn lru_prefers_unreferenced_and_skips_busy_and_read() {
        let mut i = Index::default();
        i.insert_blob("r", &d('a'), 10, 1); // oldest, referenced by a manifest
        i.insert_blob("r", &d('b'), 10, 2);
        i.insert_blob("r", &d('c'), 10, 3); // being read
        i.insert_blob("r", &d('e'), 10, 4); // being filled (busy)
        i.insert_blob("r", &d('f'), 10, 5);
        i.insert_manifest("r", &d('9'), 1, "x", vec![d('a')], 9);
        i.entries.get_mut(&d('9')).unwrap().on_disk = true;
        i.entries.get_mut(&d('c')).unwrap().readers = 1;
        let busy: HashSet<Digest> = [d('e')].into_iter().collect();
        // 51 bytes, cap 31: drop 20 bytes: b (unreferenced, oldest) then f.
        assert_eq!(over_cap(&i, &busy, 31), vec![d('b'), d('f')]);
        // Tighter: the referenced blob goes last.
        assert_eq!(over_cap(&i, &busy, 21), vec![d('b'), d('f'), d('a')]);
        assert!(over_cap(&i, &busy, 0).is_empty());
        assert!(over_cap(&i, &busy, 1000).is_empty());
    }

    #[test]
    fn ttl_counts_from_the_last_read() {
        let mut i = Index::default();
        i.insert_blob("r", &d('a'), 1, 1_000);
        i.insert_blob("r", &d('b'), 1, 5_000);
        let none = HashSet::default();
        assert_eq!(expired(&i, &none, 6_000, 2_000), vec![d('a')]);
        i.touch(&d('a'), 5_500);
        assert!(expired(&i, &none, 6_000, 2_000).is_empty());
        assert!(expired(&i, &none, 1 << 40, 0).is_empty());
    }
}
