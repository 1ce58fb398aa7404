//! Startup with a large cache (SECURITY.md §3.11): the index of 100,000 entries is rebuilt from
//! `blobs/` and the journal, and the time it takes is printed (run with `--nocapture`).

mod cache_common;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use dockerproxy_core::verifier::sha256_digest;
use dockerproxy_server::cache::{DiskStore, Settings};
use dockerproxy_server::store::Store;

const ENTRIES: usize = 100_000;

#[test]
fn rebuild_of_100k_entries_is_timed() {
    let dir = cache_common::temp_dir("rebuild-100k");
    let t0 = Instant::now();
    let mut journal = String::with_capacity(ENTRIES * 120);
    for i in 0..ENTRIES {
        let body = format!("blob {i}");
        let d = sha256_digest(body.as_bytes());
        let path = dir.join(d.storage_path());
        if i < 256 * 4 || !path.parent().unwrap().exists() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        }
        std::fs::write(&path, body.as_bytes()).unwrap();
        let _ = writeln!(
            journal,
            "{{\"t\":\"b\",\"r\":\"docker.io\",\"d\":\"{d}\",\"s\":{}}}",
            body.len()
        );
        if i % 10 == 0 {
            let _ = writeln!(
                journal,
                "{{\"t\":\"l\",\"r\":\"docker.io\",\"n\":\"library/r{}\",\"d\":[\"{d}\"]}}",
                i % 1000
            );
        }
    }
    std::fs::write(dir.join("journal"), journal).unwrap();
    let written = t0.elapsed();

    let settings = Settings {
        manifest_ttl_ms: 600_000,
        max_stale_ms: 86_400_000,
        blob_ttl_ms: 0,
        max_size: 0,
        claim_wait: Duration::from_secs(1),
        sweep_every: Duration::from_secs(60),
        fail_writes_after: None,
    };
    let t1 = Instant::now();
    let store = DiskStore::open(dir.to_str().unwrap(), settings).unwrap();
    let rebuild = t1.elapsed();
    let stats = store.stats();
    println!(
        "rebuild of {ENTRIES} entries: {rebuild:?} (writing them took {written:?}); {} bytes indexed",
        stats.blob.size_bytes
    );
    assert_eq!(stats.blob.count, ENTRIES as u64);
    assert!(rebuild < Duration::from_secs(60), "{rebuild:?}");
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
