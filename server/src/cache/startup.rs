//! Opening a cache directory (SECURITY.md §2.15): create it, take the exclusive lock, empty
//! `tmp/`, check it is writable, rebuild the index from `blobs/` (sizes from the files) and the
//! journal (which registry holds what; lines whose file is missing are ignored, files whose size
//! disagrees are deleted), compact the journal when it pays, and log what was found and how long
//! it took.

use super::index::HashMap;
use std::fs::{File, OpenOptions};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::index::Index;
use super::journal::Journal;
use super::layout::Layout;
use super::stats::Counters;
use super::{DiskStore, Inner, Settings, State, evict};

impl DiskStore {
    /// Opens (creating) the cache at `dir`: lock, temp files wiped, index rebuilt from `blobs/`
    /// plus the journal. `Err` carries a reason for `"cache":"disabled: <reason>"`.
    pub fn open(dir: &str, settings: Settings) -> Result<Self, String> {
        let started = Instant::now();
        let layout = Layout::new(dir);
        let wiped = layout
            .prepare()
            .map_err(|e| format!("cannot prepare {dir}: {e}"))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(layout.lock())
            .map_err(|e| format!("cannot open the lock file in {dir}: {e}"))?;
        #[allow(clippy::incompatible_msrv)] // File::try_lock: Rust 1.89; the toolchain is newer.
        lock.try_lock()
            .map_err(|e| format!("{dir} is in use by another process ({e})"))?;
        probe_writable(&layout).map_err(|e| format!("{dir} is not writable: {e}"))?;

        let mut index = Index::default();
        for (digest, size, modified) in layout.scan() {
            index.add_file(digest, size, modified);
        }
        let files = index.entries.len();
        let (records, lines) = Journal::replay(&layout.journal())
            .map_err(|e| format!("cannot read the journal in {dir}: {e}"))?;
        let mut bad = Vec::new();
        for r in records {
            if let Some(d) = index.replay(r) {
                bad.push(d);
            }
        }
        for d in &bad {
            let _ = std::fs::remove_file(layout.content(d));
        }
        index.recount_refs();
        let mut journal = Journal::open(&layout.journal(), lines)
            .map_err(|e| format!("cannot open the journal in {dir}: {e}"))?;
        if lines > 2 * index.live_records() + 1000
            && let Err(e) = journal.compact(&index.records())
        {
            tracing::warn!(error = %e, "journal compaction failed");
        }
        let orphans = index.entries.values().filter(|e| e.is_orphan()).count();
        let bytes = evict::total_size(&index);
        let inner = Arc::new(Inner {
            layout,
            settings,
            state: Mutex::new(State {
                index,
                inflight: HashMap::default(),
                revalidating: HashMap::default(),
                journal,
                counters: Counters::default(),
            }),
            next_id: AtomicU64::new(1),
            sweeper: AtomicBool::new(false),
            last_disk_error: AtomicU64::new(0),
        });
        tracing::info!(
            dir,
            files,
            bytes,
            orphans,
            dropped = bad.len(),
            temp_files_removed = wiped,
            journal_lines = lines,
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "cache index built"
        );
        inner.enforce_cap();
        Ok(Self {
            inner,
            _lock: Arc::new(lock),
        })
    }

    /// Runs one expiry sweep now (also done periodically).
    pub fn sweep(&self) {
        self.inner.sweep();
    }

    /// The cache root.
    pub fn root(&self) -> &std::path::Path {
        self.inner.layout.root()
    }
}

/// Creates, writes and removes a file in `tmp/`.
fn probe_writable(layout: &Layout) -> std::io::Result<()> {
    use std::io::Write;
    let p = layout
        .tmp_dir()
        .join(format!("probe-{}", std::process::id()));
    let mut f = File::create(&p)?;
    f.write_all(b"probe")?;
    drop(f);
    std::fs::remove_file(&p)
}
