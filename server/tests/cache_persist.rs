//! Persistence of the cache (SECURITY.md §2.15, COMPAT.md §8.7): a restart serves hits with no
//! upstream request, leftovers of a crash are never served, eviction under a small cap, an
//! unusable `CACHE_DIR` means serving without a cache, and one process per directory.

mod cache_common;
mod common;

use std::time::Duration;

use cache_common::{
    Behaviour, blob_path, bytes, cache_config, committed, eventually, pull, temp_dir, temp_files,
    upstream,
};
use common::Server;
use dockerproxy_core::verifier::sha256_digest;
use dockerproxy_server::cache::{DiskStore, Settings};
use dockerproxy_server::store::Store;

const DOCKER_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";

fn manifest_for(blob: &[u8]) -> bytes::Bytes {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{DOCKER_V2}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":{},"digest":"{}"}},"layers":[]}}"#,
        blob.len(),
        sha256_digest(blob)
    )
    .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_serves_hits_with_zero_upstream_requests() {
    let blob = bytes(300 * 1024, 10);
    let manifest = manifest_for(&blob);
    let mut b = Behaviour::blob(blob.clone());
    b.manifest = Some((manifest.clone(), DOCKER_V2));
    let up = upstream(b).await;
    let dir = temp_dir("restart");
    let server = Server::start(cache_config(up.addr, &dir, "")).await;
    let tag = "/v2/team/app/manifests/latest";
    let m = pull(server.addr, tag, "").await;
    assert_eq!(m.status, 200, "{}", m.head);
    assert_eq!(m.header("x-cache").as_deref(), Some("MISS"));
    assert_eq!(m.body, manifest.to_vec());
    let p = pull(server.addr, &blob_path(&blob), "").await;
    assert!(p.complete && p.body == blob.as_ref());
    // Hot manifest from memory.
    let m = pull(server.addr, tag, "").await;
    assert_eq!(m.header("x-cache").as_deref(), Some("HIT"), "{}", m.head);
    assert!(eventually(|| committed(&dir).len() == 2).await);
    // Both entries journalled (the journal line follows the rename).
    let journalled = || {
        let j = std::fs::read_to_string(dir.join("journal")).unwrap_or_default();
        j.contains("\"t\":\"b\"") && j.contains("\"t\":\"m\"")
    };
    assert!(eventually(journalled).await);
    server.stop().await;

    let before = up.requests().len();
    let server = Server::start(cache_config(up.addr, &dir, "")).await;
    let ready = common::request(server.addr, "GET", "/readyz", "x").await;
    assert_eq!(ready.text(), "{\"status\":\"ready\"}\n");
    let m = pull(server.addr, tag, "").await;
    assert_eq!(m.status, 200, "{}", m.head);
    assert_eq!(m.header("x-cache").as_deref(), Some("HIT"), "{}", m.head);
    assert_eq!(m.body, manifest.to_vec());
    assert_eq!(
        m.header("docker-content-digest"),
        Some(sha256_digest(&manifest).to_string())
    );
    let by_digest = format!("/v2/team/app/manifests/{}", sha256_digest(&manifest));
    let m = pull(server.addr, &by_digest, "").await;
    assert_eq!(m.header("x-cache").as_deref(), Some("HIT"), "{}", m.head);
    let p = pull(server.addr, &blob_path(&blob), "").await;
    assert_eq!(p.header("x-cache").as_deref(), Some("HIT"), "{}", p.head);
    assert!(p.complete && p.body == blob.as_ref());
    assert_eq!(up.requests().len(), before, "{:?}", up.requests());
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_leftovers_are_never_served() {
    let good = bytes(200 * 1024, 11);
    let orphan = bytes(100 * 1024, 12);
    let mut b = Behaviour::blob(good.clone());
    b.others = vec![orphan.clone()];
    let up = upstream(b).await;
    let dir = temp_dir("crash");
    let content = |body: &[u8]| {
        let d = sha256_digest(body);
        dir.join(d.storage_path())
    };
    // Junk in tmp/, a truncated committed file with a journal line giving its real size, a
    // complete file without any journal line (orphan), a foreign file and a torn journal line.
    std::fs::create_dir_all(dir.join("tmp/sub")).unwrap();
    std::fs::write(dir.join("tmp/fill-1-1"), b"partial").unwrap();
    std::fs::write(dir.join("tmp/sub/x"), b"x").unwrap();
    let good_path = content(&good);
    std::fs::create_dir_all(good_path.parent().unwrap()).unwrap();
    std::fs::write(&good_path, &good[..1000]).unwrap();
    let orphan_path = content(&orphan);
    std::fs::create_dir_all(orphan_path.parent().unwrap()).unwrap();
    std::fs::write(&orphan_path, &orphan[..]).unwrap();
    std::fs::create_dir_all(dir.join("blobs/sha256/zz")).unwrap();
    std::fs::write(dir.join("blobs/sha256/zz/hello"), b"foreign").unwrap();
    let journal = format!(
        "{{\"t\":\"b\",\"r\":\"local.test\",\"d\":\"{}\",\"s\":{}}}\n{{\"t\":\"l\",\"r\":\"local.test\",\"n\":\"team/app\",\"d\":[\"{}\"]}}\n{{\"t\":\"p\",\"r\":\"local.test\",\"n\":\"team/ap",
        sha256_digest(&good),
        good.len(),
        sha256_digest(&good)
    );
    std::fs::write(dir.join("journal"), journal).unwrap();

    let server = Server::start(cache_config(up.addr, &dir, "")).await;
    assert_eq!(temp_files(&dir), 0, "tmp/ not emptied");
    assert!(
        !good_path.exists(),
        "a short committed file survived the start"
    );
    assert!(
        dir.join("blobs/sha256/zz/hello").exists(),
        "foreign files are left alone"
    );

    let p = pull(server.addr, &blob_path(&good), "").await;
    assert_eq!(p.header("x-cache").as_deref(), Some("MISS"), "{}", p.head);
    assert!(p.complete && p.body == good.as_ref());
    let p = pull(server.addr, &blob_path(&orphan), "").await;
    assert_eq!(p.header("x-cache").as_deref(), Some("MISS"), "{}", p.head);
    assert!(p.complete && p.body == orphan.as_ref());
    assert_eq!(up.count("GET", "/blobs/"), 2);

    // Truncated behind the index while running: a miss and a fresh fetch, never a short 200.
    assert!(eventually(|| good_path.exists()).await);
    assert!(
        eventually(|| std::fs::metadata(&good_path).is_ok_and(|m| m.len() == good.len() as u64))
            .await
    );
    let hit = pull(server.addr, &blob_path(&good), "").await;
    assert_eq!(hit.header("x-cache").as_deref(), Some("HIT"));
    std::fs::write(&good_path, &good[..10]).unwrap();
    let p = pull(server.addr, &blob_path(&good), "").await;
    assert_eq!(p.header("x-cache").as_deref(), Some("MISS"), "{}", p.head);
    assert!(p.complete && p.body == good.as_ref());
    assert_eq!(up.count("GET", "/blobs/"), 3);
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_under_a_small_cap_is_lru_by_last_read() {
    let blobs: Vec<bytes::Bytes> = (0..3).map(|i| bytes(128 * 1024, 20 + i)).collect();
    let mut b = Behaviour::blob(blobs[0].clone());
    b.others = blobs.clone();
    let up = upstream(b).await;
    let dir = temp_dir("evict");
    let server = Server::start(cache_config(up.addr, &dir, "cache_max_size = \"300KiB\"")).await;
    let file = |i: usize| dir.join(sha256_digest(&blobs[i]).storage_path());
    for i in [0, 1] {
        let p = pull(server.addr, &blob_path(&blobs[i]), "").await;
        assert!(p.complete);
        assert!(eventually(|| file(i).exists()).await);
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Blob 0 read again: blob 1 is now the least recently read.
    let p = pull(server.addr, &blob_path(&blobs[0]), "").await;
    assert_eq!(p.header("x-cache").as_deref(), Some("HIT"));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let p = pull(server.addr, &blob_path(&blobs[2]), "").await;
    assert!(p.complete);
    assert!(
        eventually(|| file(2).exists() && !file(1).exists()).await,
        "blob 1 not evicted"
    );
    assert!(file(0).exists());
    let metrics = common::request(server.addr, "GET", "/metrics", "x")
        .await
        .text();
    assert!(
        metrics.contains("dockerproxy_cache_evictions_total{kind=\"blob\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "dockerproxy_cache_size_bytes{{kind=\"blob\"}} {}",
            2 * 128 * 1024
        )),
        "{metrics}"
    );
    let p = pull(server.addr, &blob_path(&blobs[1]), "").await;
    assert_eq!(p.header("x-cache").as_deref(), Some("MISS"));
    assert!(p.complete && p.body == blobs[1].as_ref());
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn unusable_cache_dir_serves_from_upstream_and_reports_it() {
    let blob = bytes(100 * 1024, 30);
    let up = upstream(Behaviour::blob(blob.clone())).await;
    let base = temp_dir("unusable");
    std::fs::create_dir_all(&base).unwrap();
    // A regular file where a directory is needed: not creatable, whoever runs the test.
    std::fs::write(base.join("file"), b"x").unwrap();
    let dir = base.join("file/cache");
    let server = Server::start(cache_config(up.addr, &dir, "")).await;
    let ready = common::request(server.addr, "GET", "/readyz", "x").await;
    assert_eq!(ready.status, 200);
    let v: serde_json::Value = serde_json::from_str(&ready.text()).unwrap();
    assert_eq!(v["status"], "ready");
    assert!(
        v["cache"].as_str().unwrap().starts_with("disabled: "),
        "{v}"
    );
    for _ in 0..2 {
        let p = pull(server.addr, &blob_path(&blob), "").await;
        assert_eq!(p.status, 200, "{}", p.head);
        assert!(p.complete && p.body == blob.as_ref());
    }
    assert_eq!(up.count("GET", "/blobs/"), 2);
    server.stop().await;
    let _ = std::fs::remove_dir_all(&base);
}

#[tokio::test]
async fn temp_dir_lost_at_runtime_still_serves_the_client() {
    let blob = bytes(300 * 1024, 31);
    let up = upstream(Behaviour::blob(blob.clone())).await;
    let dir = temp_dir("no-tmp");
    let server = Server::start(cache_config(up.addr, &dir, "")).await;
    std::fs::remove_dir_all(dir.join("tmp")).unwrap();
    std::fs::write(dir.join("tmp"), b"not a directory").unwrap();
    let p = pull(server.addr, &blob_path(&blob), "").await;
    assert_eq!(p.status, 200, "{}", p.head);
    assert!(p.complete && p.body == blob.as_ref());
    assert!(committed(&dir).is_empty());
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn one_process_per_cache_dir() {
    let dir = temp_dir("lock");
    let settings = || Settings {
        manifest_ttl_ms: 600_000,
        max_stale_ms: 86_400_000,
        blob_ttl_ms: 0,
        max_size: 0,
        claim_wait: Duration::from_secs(1),
        sweep_every: Duration::from_secs(60),
        fail_writes_after: None,
    };
    let first = DiskStore::open(dir.to_str().unwrap(), settings()).unwrap();
    let second = DiskStore::open(dir.to_str().unwrap(), settings());
    let reason = second.unwrap_err();
    assert!(reason.contains("in use"), "{reason}");
    assert_eq!(first.stats().blob.count, 0);
    drop(first);
    assert!(DiskStore::open(dir.to_str().unwrap(), settings()).is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}
