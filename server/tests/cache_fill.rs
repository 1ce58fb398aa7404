//! Single-flight fills through the running server (DESIGN.md §4, COMPAT.md §8.4): one upstream
//! GET for N concurrent cold pulls, first bytes before the fill ends, late joiners, wrong bytes
//! aborting every client without a trace on disk, a cut upstream resumed with `Range`, a client
//! leaving without cancelling the fill, and Range requests on a fill and on a committed blob.

mod cache_common;
mod common;

use std::time::Duration;

use cache_common::{
    Behaviour, blob_path, bytes, cache_config, committed, eventually, pull, temp_dir, temp_files,
    upstream,
};
use common::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_flight_n_concurrent_cold_pulls_make_one_upstream_get() {
    const N: usize = 8;
    let blob = bytes(4 << 20, 1);
    let mut b = Behaviour::blob(blob.clone());
    // 64 frames of 64 KiB, 25 ms apart: the fill takes about 1.6 s.
    b.delay = Duration::from_millis(25);
    let up = upstream(b).await;
    let dir = temp_dir("single-flight");
    let server = Server::start(cache_config(up.addr, &dir, "")).await;
    let path = blob_path(&blob);

    let t0 = std::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..N - 1 {
        let (addr, path) = (server.addr, path.clone());
        tasks.push(tokio::spawn(async move { pull(addr, &path, "").await }));
    }
    // A late joiner, well into the fill.
    let (addr, p2) = (server.addr, path.clone());
    let late = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(600)).await;
        pull(addr, &p2, "").await
    });
    let mut pulls = Vec::new();
    for t in tasks {
        pulls.push(t.await.unwrap());
    }
    let late = late.await.unwrap();
    let fill_duration = t0.elapsed();

    assert_eq!(up.count("GET", "/blobs/"), 1, "{:?}", up.requests());
    let mut misses = 0;
    for p in pulls.iter().chain(std::iter::once(&late)) {
        assert_eq!(p.status, 200, "{}", p.head);
        assert!(p.complete, "{}", p.head);
        assert!(p.body == blob.as_ref(), "bytes differ");
        if p.header("x-cache").as_deref() == Some("MISS") {
            misses += 1;
        }
    }
    assert_eq!(misses, 1, "one leader, every other pull joins the fill");
    let firsts: Vec<Duration> = pulls.iter().filter_map(|p| p.first_byte).collect();
    let slowest_first = firsts.iter().max().copied().unwrap();
    println!(
        "single flight: {N} pulls, {} upstream GET; fill {:?}; first bytes after {:?}..{:?}; late joiner first byte {:?} (started at 600 ms)",
        up.count("GET", "/blobs/"),
        fill_duration,
        firsts.iter().min().unwrap(),
        slowest_first,
        late.first_byte
    );
    assert!(
        slowest_first < Duration::from_millis(900),
        "waiters got bytes only after {slowest_first:?} (fill took {fill_duration:?})"
    );

    // Committed, then a hit with no upstream request.
    assert!(eventually(|| committed(&dir).len() == 1).await);
    assert_eq!(std::fs::read(&committed(&dir)[0]).unwrap(), blob.to_vec());
    assert_eq!(temp_files(&dir), 0);
    let hit = pull(server.addr, &path, "").await;
    assert_eq!(hit.header("x-cache").as_deref(), Some("HIT"));
    assert!(hit.complete && hit.body == blob.as_ref());
    assert_eq!(up.count("GET", "/blobs/"), 1);

    let stats = common::request(server.addr, "GET", "/stats", "x").await;
    let v: serde_json::Value = serde_json::from_str(&stats.text()).unwrap();
    assert_eq!(v["cache"]["blob"]["count"], 1, "{v}");
    assert_eq!(v["cache"]["totalSize"], blob.len() as u64, "{v}");
    assert_eq!(v["cache"]["deduplication"], N as u64 - 1, "{v}");
    let metrics = common::request(server.addr, "GET", "/metrics", "x")
        .await
        .text();
    assert!(
        metrics.contains(&format!(
            "dockerproxy_coalesced_requests_total{{kind=\"blob\"}} {}",
            N - 1
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("dockerproxy_cache_objects{kind=\"blob\"} 1"),
        "{metrics}"
    );
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_bytes_abort_every_client_and_leave_nothing() {
    let expected = bytes(1 << 20, 2);
    let mut wrong = expected.to_vec();
    let last = wrong.len() - 1;
    wrong[last] ^= 1;
    let mut b = Behaviour::blob(wrong.into());
    b.delay = Duration::from_millis(20);
    let up = upstream(b).await;
    let dir = temp_dir("wrong-bytes");
    let server = Server::start(cache_config(up.addr, &dir, "")).await;
    let path = blob_path(&expected);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (addr, path) = (server.addr, path.clone());
        tasks.push(tokio::spawn(async move { pull(addr, &path, "").await }));
    }
    for t in tasks {
        let p = t.await.unwrap();
        assert!(!p.complete, "a client saw a clean end: {}", p.head);
        assert!(p.body.len() < expected.len());
    }
    assert_eq!(up.count("GET", "/blobs/"), 1);
    assert!(committed(&dir).is_empty());
    assert!(eventually(|| temp_files(&dir) == 0).await, "temp file left");
    let metrics = common::request(server.addr, "GET", "/metrics", "x")
        .await
        .text();
    assert!(
        metrics.contains(
            "dockerproxy_integrity_failures_total{registry=\"local.test\",kind=\"blob\"} 1"
        ),
        "{metrics}"
    );
    // Not sticky: the next pull fetches again.
    let p = pull(server.addr, &path, "").await;
    assert!(!p.complete);
    assert_eq!(up.count("GET", "/blobs/"), 2);
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_mid_fill_resumes_with_range_and_commits() {
    let blob = bytes(3 << 20, 3);
    let mut b = Behaviour::blob(blob.clone());
    b.cut_after = Some(1 << 20);
    let up = upstream(b).await;
    let dir = temp_dir("resume");
    let server = Server::start(cache_config(up.addr, &dir, "")).await;
    let p = pull(server.addr, &blob_path(&blob), "").await;
    assert_eq!(p.status, 200, "{}", p.head);
    assert!(p.complete, "{}", p.head);
    assert!(p.body == blob.as_ref());
    let ranges: Vec<String> = up.requests().into_iter().filter_map(|s| s.range).collect();
    assert_eq!(ranges.len(), 1, "{:?}", up.requests());
    let from: u64 = ranges[0]
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .unwrap()
        .parse()
        .unwrap();
    assert!(from > 0 && from <= 1 << 20, "{}", ranges[0]);
    assert!(eventually(|| committed(&dir).len() == 1).await);
    assert_eq!(std::fs::read(&committed(&dir)[0]).unwrap(), blob.to_vec());
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_does_not_cancel_the_fill() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let blob = bytes(2 << 20, 4);
    let mut b = Behaviour::blob(blob.clone());
    b.delay = Duration::from_millis(20);
    let up = upstream(b).await;
    let dir = temp_dir("disconnect");
    let server = Server::start(cache_config(up.addr, &dir, "")).await;
    let path = blob_path(&blob);
    {
        let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let raw = format!("GET {path} HTTP/1.1\r\nHost: local.example.com\r\n\r\n");
        s.write_all(raw.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0);
        // Leave mid-body.
    }
    assert!(
        eventually(|| committed(&dir).len() == 1).await,
        "the fill did not finish without its client"
    );
    let hit = pull(server.addr, &path, "").await;
    assert_eq!(hit.header("x-cache").as_deref(), Some("HIT"));
    assert!(hit.complete && hit.body == blob.as_ref());
    assert_eq!(up.count("GET", "/blobs/"), 1);
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_from_an_inflight_fill_and_from_a_committed_blob() {
    let blob = bytes(2 << 20, 5);
    let mut b = Behaviour::blob(blob.clone());
    b.delay = Duration::from_millis(20);
    let up = upstream(b).await;
    let dir = temp_dir("range");
    let server = Server::start(cache_config(up.addr, &dir, "")).await;
    let path = blob_path(&blob);
    let (addr, p) = (server.addr, path.clone());
    let leader = tokio::spawn(async move { pull(addr, &p, "").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = pull(server.addr, &path, "Range: bytes=100-199\r\n").await;
    assert_eq!(r.status, 206, "{}", r.head);
    assert!(r.complete);
    assert_eq!(r.body, blob[100..200].to_vec());
    assert_eq!(
        r.header("content-range").as_deref(),
        Some(format!("bytes 100-199/{}", blob.len()).as_str())
    );
    let l = leader.await.unwrap();
    assert!(l.complete && l.body == blob.as_ref());
    assert_eq!(up.count("GET", "/blobs/"), 1, "{:?}", up.requests());

    assert!(eventually(|| committed(&dir).len() == 1).await);
    let r = pull(server.addr, &path, "Range: bytes=1000000-\r\n").await;
    assert_eq!(r.status, 206, "{}", r.head);
    assert!(r.complete);
    assert_eq!(r.body, blob[1_000_000..].to_vec());
    assert_eq!(r.header("x-cache").as_deref(), Some("HIT"));
    let r = pull(
        server.addr,
        &path,
        &format!("Range: bytes={}-\r\n", blob.len()),
    )
    .await;
    assert_eq!(r.status, 416, "{}", r.head);
    assert_eq!(up.count("GET", "/blobs/"), 1);
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disk_full_mid_fill_detaches_the_writer_and_clients_still_get_verified_bytes() {
    use std::sync::Arc;

    use dockerproxy_server::cache::{DiskStore, Settings};
    use dockerproxy_server::{ServerOptions, ServerState};

    let blob = bytes(2 << 20, 6);
    let mut b = Behaviour::blob(blob.clone());
    b.delay = Duration::from_millis(10);
    let up = upstream(b).await;
    let unused = temp_dir("disk-full-config");
    let dir = temp_dir("disk-full");
    let config = cache_config(up.addr, &unused, "");
    let options = ServerOptions::from_config(&config);
    let mut settings = Settings::from_config(&config.cache, Duration::from_secs(5));
    settings.fail_writes_after = Some(512 * 1024);
    let store = DiskStore::open(dir.to_str().unwrap(), settings).unwrap();
    let state = ServerState::new(config, options)
        .unwrap()
        .with_store(Arc::new(store));
    let server = Server::start_with_state(Arc::new(state)).await;
    let path = blob_path(&blob);
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let (addr, path) = (server.addr, path.clone());
        tasks.push(tokio::spawn(async move { pull(addr, &path, "").await }));
    }
    for t in tasks {
        let p = t.await.unwrap();
        assert_eq!(p.status, 200, "{}", p.head);
        assert!(p.complete, "{}", p.head);
        assert!(p.body == blob.as_ref(), "bytes differ");
    }
    assert_eq!(up.count("GET", "/blobs/"), 1);
    assert!(eventually(|| temp_files(&dir) == 0).await, "temp file left");
    assert!(committed(&dir).is_empty(), "a detached fill committed");
    // Nothing stored: the next pull fetches again (and the disk is still "full").
    let p = pull(server.addr, &path, "").await;
    assert_eq!(p.header("x-cache").as_deref(), Some("MISS"));
    assert!(p.complete && p.body == blob.as_ref());
    assert_eq!(up.count("GET", "/blobs/"), 2);
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&unused);
}
