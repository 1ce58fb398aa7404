//! The cache end to end (issue 4, COMPAT.md §8 and §9 cases 44–58, 72, 73, SECURITY.md §2.11,
//! §2.15): a real `docker-registry` upstream, real clients (skopeo, dockerd, containerd), the
//! proxy in-process or as the real binary in a separate process (for `kill -9` and mount
//! namespaces). Upstream requests are counted in the registry's access log; a fault or mangling
//! front sits in between only where a real registry cannot misbehave (slow link, wrong bytes,
//! 503 on a HEAD).
//!
//! The figures asked for the closing note are printed with a `FIGURES:` prefix (run with
//! `--nocapture` to see them).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dockerproxy_tests::clients::{
    HostsNamespace, StartError, require_mount_namespace, short_tempdir, skip_unless_ci,
};
use dockerproxy_tests::content::{ALL_MANIFEST_TYPES, Blob, Prng, sha256_digest};
use dockerproxy_tests::corrupt::{CorruptFront, Mangle};
use dockerproxy_tests::proxy_process::{ProxyProcess, binary, tmpfs_wrapper};
use dockerproxy_tests::warm::{
    blob_gets, ctr_pull_fresh, dockerd_pull_fresh, image_requests, manifest_gets, skopeo_pull,
};
use dockerproxy_tests::{
    Action, FaultFront, Mode, PathMatch, ProxyHandle, PushAuth, Pusher, Rule, SeedOptions, TestBed,
    docker_hub_route_toml, require_tools,
};
use reqwest::header::HeaderMap;

const SMALL: SeedOptions = SeedOptions {
    big_layer_size: 1 << 20,
};
const MIB: usize = 1 << 20;

// ----------------------------------------------------------------------------------------------
// Helpers
// ----------------------------------------------------------------------------------------------

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(50))
        .build()
        .expect("reqwest client")
}

fn accept_all() -> String {
    ALL_MANIFEST_TYPES.join(", ")
}

fn realm_origins(bed: &TestBed) -> Vec<String> {
    bed.token_server
        .as_ref()
        .map(|t| format!("http://{}", t.addr()))
        .into_iter()
        .collect()
}

/// A proxy (in-process) on the cache directory `dir`, its Docker Hub route at `upstream`.
fn proxy_on(
    dir: &Path,
    upstream: &str,
    realms: &[String],
    extra_toml: &str,
    env: &[(&str, &str)],
) -> ProxyHandle {
    let dir = dir.display().to_string();
    let mut env = env.to_vec();
    env.push(("CACHE_DIR", &dir));
    ProxyHandle::start(&env, &docker_hub_route_toml(upstream, realms, extra_toml))
        .expect("start the proxy")
}

/// One GET read to its end (or its failure), hashed on the fly.
#[derive(Debug)]
struct Fetched {
    status: u16,
    headers: HeaderMap,
    len: u64,
    digest: String,
    /// Why the body (or the request) ended abnormally; `None` for a clean end.
    error: Option<String>,
    /// When the first body byte arrived.
    first_byte: Option<Instant>,
    /// A copy of the first 64 KiB (to check error bodies).
    head: Vec<u8>,
}

impl Fetched {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    fn x_cache(&self) -> String {
        self.header("x-cache").unwrap_or_default()
    }

    /// A clean, complete `200` carrying exactly `blob`.
    fn is_blob(&self, blob: &Blob) -> bool {
        self.status == 200
            && self.error.is_none()
            && self.len == blob.size()
            && self.digest == blob.digest
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.head).into_owned()
    }
}

async fn fetch(c: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Fetched {
    let mut req = c.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            return Fetched {
                status: 0,
                headers: HeaderMap::new(),
                len: 0,
                digest: String::new(),
                error: Some(format!("{e:?}")),
                first_byte: None,
                head: Vec::new(),
            };
        }
    };
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut len = 0u64;
    let mut first_byte = None;
    let mut head = Vec::new();
    let error = loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if first_byte.is_none() && !chunk.is_empty() {
                    first_byte = Some(Instant::now());
                }
                if head.len() < 65536 {
                    head.extend_from_slice(&chunk[..chunk.len().min(65536 - head.len())]);
                }
                len += chunk.len() as u64;
                ctx.update(&chunk);
            }
            Ok(None) => break None,
            Err(e) => break Some(format!("{e:?}")),
        }
    };
    Fetched {
        status,
        headers,
        len,
        digest: format!("sha256:{}", hex::encode(ctx.finish().as_ref())),
        error,
        first_byte,
        head,
    }
}

/// A metric sample's value (`series` written exactly as in the exposition, labels included).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map_or(0.0, |v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("bad sample {series} {v}"))
        })
}

async fn metrics(c: &reqwest::Client, base: &str) -> String {
    c.get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body")
}

/// Every regular file under `dir` (recursively); empty when `dir` does not exist.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

fn total_size(files: &[PathBuf]) -> u64 {
    files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

/// Where the cache commits `digest`: `blobs/sha256/<hex[0..2]>/<hex>`.
fn committed_path(cache: &Path, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    cache.join("blobs/sha256").join(&hex[..2]).join(hex)
}

/// Hashes every committed file under `cache/blobs/`; returns (files checked, files whose content
/// does not hash to their name).
fn verify_blobs(cache: &Path) -> (usize, Vec<String>) {
    let files = files_under(&cache.join("blobs"));
    let mut bad = Vec::new();
    for f in &files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let data = std::fs::read(f).unwrap_or_default();
        if sha256_digest(&data) != format!("sha256:{name}") {
            bad.push(format!("{} ({} bytes)", f.display(), data.len()));
        }
    }
    (files.len(), bad)
}

async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The registry's access log settles just after each response.
async fn settled_requests(bed: &TestBed) -> Vec<(String, String)> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    bed.registry.upstream_requests()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

// ----------------------------------------------------------------------------------------------
// 1. Single flight under load (COMPAT 51, 54, 55)
// ----------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compat_54_fifty_concurrent_cold_gets_one_upstream_get_streamed_to_all() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    const N: usize = 50;
    let bed = TestBed::start_with(
        Mode::Plain,
        SeedOptions {
            big_layer_size: 64 * MIB,
        },
    )
    .await;
    let big = bed.seeded.big.layers[0].clone();
    // A slow link: 1 MiB every 50 ms, so the upstream transfer takes about 3.2 s.
    let front = CorruptFront::start(
        bed.registry.base_url(),
        Mangle::Trickle {
            chunk: MIB,
            interval: Duration::from_millis(50),
        },
    )
    .unwrap();
    let cache = bed.tmp.path().join("cache");
    let proxy = proxy_on(&cache, &front.base_url(), &[], "", &[]);
    let path = format!("/v2/library/big/blobs/{}", big.digest);
    let url = format!("{}{path}", proxy.base_url());

    let c = client();
    let t0 = Instant::now();
    // Watches for the commit: the fill ends when the verified file is renamed into place.
    let committed = committed_path(&cache, &big.digest);
    let watcher = tokio::spawn(async move {
        while !committed.exists() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Instant::now()
    });
    let tasks: Vec<_> = (0..N)
        .map(|_| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let f = fetch(&c, &url, &[]).await;
                (started, f, Instant::now())
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let all_done = t0.elapsed();
    let fill_end = tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .expect("the blob was never committed")
        .unwrap();
    let fill = fill_end - t0;

    let upstream_gets = bed
        .registry
        .wait_for_count("GET", &path, 1, Duration::from_secs(2))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let upstream_gets_settled = bed.registry.count("GET", &path);
    assert_eq!(upstream_gets, 1);
    assert_eq!(
        upstream_gets_settled,
        1,
        "exactly one upstream GET for {N} cold pulls; the registry saw {:?}",
        bed.registry.upstream_requests()
    );
    assert_eq!(front.count("GET", &path), 1);

    let mut waiter_ttfb = Vec::new();
    let mut misses = 0;
    for (started, f, _) in &results {
        assert!(
            f.is_blob(&big),
            "status {} len {} of {} error {:?}",
            f.status,
            f.len,
            big.size(),
            f.error
        );
        let ttfb = f.first_byte.expect("a body byte") - *started;
        if f.x_cache() == "MISS" {
            misses += 1;
        } else {
            waiter_ttfb.push((ttfb, f.first_byte.expect("first byte")));
        }
    }
    assert_eq!(misses, 1, "one leader; every other client joins its fill");
    for (ttfb, at) in &waiter_ttfb {
        assert!(
            *at < fill_end,
            "a waiter got its first byte after {ttfb:?}, after the fill ended at {fill:?}"
        );
    }
    let mut ttfbs: Vec<Duration> = waiter_ttfb.iter().map(|(d, _)| *d).collect();
    ttfbs.sort();
    let slowest_client = results.iter().map(|(s, _, e)| *e - *s).max().unwrap();
    println!(
        "FIGURES: {N} concurrent cold GETs of a {} MiB blob over a trickled link: {upstream_gets_settled} upstream GET; \
         fill (first request -> verified commit) {fill:?}; waiters' first byte min {:?} median {:?} p95 {:?} max {:?}; \
         slowest client complete after {slowest_client:?}; all {N} done after {all_done:?}",
        big.size() >> 20,
        ttfbs[0],
        percentile(&ttfbs, 0.5),
        percentile(&ttfbs, 0.95),
        ttfbs[ttfbs.len() - 1],
    );

    // COMPAT 55: over 50 MB, cached: the next GET is a HIT with no upstream request.
    let hit = fetch(&c, &url, &[]).await;
    assert!(hit.is_blob(&big));
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!(
        hit.header("docker-content-digest").as_deref(),
        Some(big.digest.as_str())
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(bed.registry.count("GET", &path), 1);
    let m = metrics(&c, &proxy.base_url()).await;
    assert!(
        metric(&m, "dockerproxy_coalesced_requests_total{kind=\"blob\"}") >= (N - 1) as f64,
        "{m}"
    );
}

// ----------------------------------------------------------------------------------------------
// 2. Wrong bytes (COMPAT 52)
// ----------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compat_52_wrong_bytes_never_end_cleanly_and_are_not_cached() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    let bed = TestBed::start_with(
        Mode::Plain,
        SeedOptions {
            big_layer_size: 4 * MIB,
        },
    )
    .await;
    let big = bed.seeded.big.layers[0].clone();
    let front =
        CorruptFront::start(bed.registry.base_url(), Mangle::FlipByte(big.size() / 2)).unwrap();
    let cache = bed.tmp.path().join("cache");
    let proxy = proxy_on(&cache, &front.base_url(), &[], "", &[]);
    let path = format!("/v2/library/big/blobs/{}", big.digest);
    let url = format!("{}{path}", proxy.base_url());
    let c = client();

    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move { fetch(&c, &url, &[]).await })
        })
        .collect();
    for t in tasks {
        let f = t.await.unwrap();
        assert!(
            f.status != 200 || f.error.is_some(),
            "a clean end after wrong bytes: status {} len {} digest {} x-cache {}",
            f.status,
            f.len,
            f.digest,
            f.x_cache()
        );
        assert_ne!(f.digest, big.digest);
        assert!(
            f.len < big.size(),
            "the tail is withheld: {} of {}",
            f.len,
            big.size()
        );
    }
    let first_wave = bed
        .registry
        .wait_for_count("GET", &path, 1, Duration::from_secs(2))
        .await;
    assert!(first_wave >= 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first_wave = bed.registry.count("GET", &path);

    // Nothing committed, no temp file left.
    assert!(!committed_path(&cache, &big.digest).exists());
    assert!(
        eventually(Duration::from_secs(3), || files_under(&cache.join("tmp"))
            .is_empty())
        .await,
        "{:?}",
        files_under(&cache.join("tmp"))
    );
    let m = metrics(&c, &proxy.base_url()).await;
    let failures = metric(
        &m,
        "dockerproxy_integrity_failures_total{registry=\"docker.io\",kind=\"blob\"}",
    );
    assert!(failures >= 1.0, "{m}");

    // The next GET goes upstream again (no negative cache, nothing stored).
    let again = fetch(&c, &url, &[]).await;
    assert!(!again.is_blob(&big));
    assert!(again.status != 200 || again.error.is_some());
    assert_eq!(
        bed.registry
            .wait_for_count("GET", &path, first_wave + 1, Duration::from_secs(2))
            .await,
        first_wave + 1
    );

    // Good bytes again: MISS, complete, then a HIT.
    front.set_mangle(Mangle::None);
    let good = fetch(&c, &url, &[]).await;
    assert!(good.is_blob(&big), "{good:?}");
    assert_eq!(good.x_cache(), "MISS");
    assert!(
        eventually(Duration::from_secs(3), || committed_path(
            &cache,
            &big.digest
        )
        .exists())
        .await
    );
    let hit = fetch(&c, &url, &[]).await;
    assert!(hit.is_blob(&big));
    assert_eq!(hit.x_cache(), "HIT");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(bed.registry.count("GET", &path), first_wave + 2);
    let m = metrics(&c, &proxy.base_url()).await;
    println!(
        "FIGURES: wrong bytes: {first_wave} upstream GET(s) for 5 concurrent clients, integrity failures {}",
        metric(
            &m,
            "dockerproxy_integrity_failures_total{registry=\"docker.io\",kind=\"blob\"}"
        )
    );
}

// ----------------------------------------------------------------------------------------------
// 3. Restart (COMPAT 57)
// ----------------------------------------------------------------------------------------------

async fn skopeo_copy(src: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new("skopeo");
    cmd.args(["--insecure-policy", "copy", "--src-tls-verify=false"])
        .args(extra)
        .arg(format!("docker://{src}"))
        .arg(format!("dir:{}", out.display()))
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(45), cmd.output())
        .await
        .expect("skopeo timed out")
        .expect("run skopeo")
}

fn assert_skopeo_pulled(out: &std::process::Output, dir: &Path, image: &dockerproxy_tests::Image) {
    assert!(
        out.status.success(),
        "skopeo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest = std::fs::read(dir.join("manifest.json")).expect("manifest.json");
    assert_eq!(sha256_digest(&manifest), image.manifest.digest);
    for blob in image.blobs() {
        assert_eq!(
            sha256_digest(&std::fs::read(dir.join(blob.hex())).expect("blob file")),
            blob.digest
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_57_restart_on_the_same_cache_dir_serves_hits_without_upstream_gets() {
    if !require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let bed = TestBed::start_with(Mode::Plain, SMALL).await;
    let image = bed.seeded.busybox.clone();
    let cache = bed.tmp.path().join("cache");
    let src_of = |p: &ProxyHandle| format!("{}/library/busybox:latest", p.host_port());

    let proxy = proxy_on(&cache, bed.registry.base_url(), &[], "", &[]);
    let out_dir = bed.tmp.path().join("pull-1");
    let out = skopeo_copy(&src_of(&proxy), &out_dir, &[]).await;
    assert_skopeo_pulled(&out, &out_dir, &image);
    drop(proxy);
    let before = settled_requests(&bed).await;
    assert!(
        blob_gets(&bed.registry).len() > image.layers.len(),
        "the cold pull fetched the blobs: {before:?}"
    );

    let started = Instant::now();
    let proxy = proxy_on(&cache, bed.registry.base_url(), &[], "", &[]);
    let restart = started.elapsed();
    let out_dir = bed.tmp.path().join("pull-2");
    let out = skopeo_copy(&src_of(&proxy), &out_dir, &[]).await;
    assert_skopeo_pulled(&out, &out_dir, &image);
    let after = settled_requests(&bed).await;
    let new: Vec<_> = after[before.len()..].to_vec();
    println!(
        "FIGURES: restart (in-process, build_state) {restart:?}; upstream requests of the warm pull: {new:?}"
    );
    let gets: Vec<_> = new
        .iter()
        .filter(|(m, p)| m == "GET" && (p.contains("/blobs/") || p.contains("/manifests/")))
        .collect();
    assert!(
        gets.is_empty(),
        "no manifest or blob GET after the restart: {gets:?}"
    );
    // Public content within the TTL: no request for the image at all; only the `/v2/` ping that
    // skopeo sends (the proxy forwards pings, COMPAT §2) may reach the registry.
    let other: Vec<_> = new.iter().filter(|(_, p)| p != "/v2/").collect();
    assert!(
        other.is_empty(),
        "public content after a restart causes no upstream request: {other:?}"
    );

    // Direct: every object is a HIT.
    let c = client();
    for blob in image.blobs() {
        let f = fetch(
            &c,
            &format!(
                "{}/v2/library/busybox/blobs/{}",
                proxy.base_url(),
                blob.digest
            ),
            &[],
        )
        .await;
        assert!(f.is_blob(blob));
        assert_eq!(f.x_cache(), "HIT");
    }
    let f = fetch(
        &c,
        &format!(
            "{}/v2/library/busybox/manifests/{}",
            proxy.base_url(),
            image.manifest.digest
        ),
        &[("Accept", &accept_all())],
    )
    .await;
    assert!(f.is_blob(&image.manifest), "{f:?}");
    assert_eq!(f.x_cache(), "HIT");
    let after_direct = settled_requests(&bed).await;
    assert_eq!(
        after_direct.len(),
        after.len(),
        "{:?}",
        &after_direct[after.len()..]
    );
}

// ----------------------------------------------------------------------------------------------
// 4. kill -9 during fills, in a loop, on the real binary (SECURITY §2.15)
// ----------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_fills_in_a_loop_leaves_no_partial_entry() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    // Built (when stale) before the clock starts.
    binary().expect("the dockerproxy binary");
    let suite = Instant::now();
    let bed = TestBed::start_with(
        Mode::Plain,
        SeedOptions {
            big_layer_size: 16 * MIB,
        },
    )
    .await;
    let big = bed.seeded.big.layers[0].clone();
    // 256 KiB every 30 ms: the fill takes about 1.9 s.
    let front = CorruptFront::start(
        bed.registry.base_url(),
        Mangle::Trickle {
            chunk: 256 << 10,
            interval: Duration::from_millis(30),
        },
    )
    .unwrap();
    let fill_estimate = Duration::from_millis(30 * 64);
    let work = bed.tmp.path().join("proc");
    let cache = bed.tmp.path().join("cache");
    let cache_s = cache.display().to_string();
    let toml = docker_hub_route_toml(&front.base_url(), &[], "");
    let env = [("CACHE_DIR", cache_s.as_str())];
    let big_path = format!("/v2/library/big/blobs/{}", big.digest);
    let small: Vec<(String, Blob)> = bed
        .seeded
        .images()
        .into_iter()
        .filter(|i| i.repo != "private/secret")
        .flat_map(|i| {
            i.blobs()
                .map(|b| (i.repo.clone(), b.clone()))
                .collect::<Vec<_>>()
        })
        .filter(|(_, b)| b.size() < MIB as u64)
        .collect();
    let c = client();
    let mut prng = Prng::new(4);
    const CYCLES: usize = 20;
    const SPREAD: usize = 12;
    let mut ready_times = Vec::new();
    let mut index_times = Vec::new();
    let mut leftovers_seen = 0;
    let mut killed_mid_transfer = 0;
    let mut committed_before_kill = 0;
    let mut files_checked = 0;

    for cycle in 0..CYCLES {
        let tmp_before = files_under(&cache.join("tmp")).len();
        leftovers_seen += tmp_before;
        let proc = ProxyProcess::start(&work, &env, &toml).await.unwrap();
        ready_times.push(proc.ready_after());
        if let Some(ms) = proc.index_load_ms() {
            index_times.push(ms);
        }
        // tmp/ was emptied at start, and every committed file hashes to its name.
        let tmp_after = files_under(&cache.join("tmp"));
        assert!(
            tmp_after.is_empty(),
            "cycle {cycle}: temp files after the restart: {tmp_after:?}"
        );
        let (n, bad) = verify_blobs(&cache);
        files_checked += n;
        assert!(
            bad.is_empty(),
            "cycle {cycle}: committed files whose content is not their digest: {bad:?}"
        );

        // A small blob, completely: a committed entry and a journal line per cycle.
        let (repo, blob) = &small[cycle % small.len()];
        let f = fetch(
            &c,
            &format!("{}/v2/{repo}/blobs/{}", proc.base_url(), blob.digest),
            &[],
        )
        .await;
        assert!(f.is_blob(blob), "cycle {cycle}: {f:?}");

        // Anything the index serves is complete.
        if committed_path(&cache, &big.digest).exists() {
            let f = fetch(&c, &format!("{}{big_path}", proc.base_url()), &[]).await;
            assert!(
                f.is_blob(&big),
                "cycle {cycle}: a committed big blob served partially: {f:?}"
            );
            assert_eq!(f.x_cache(), "HIT");
            // Forget it (the process is dead then) so the next cycles fill again.
            proc.kill9();
            std::fs::remove_file(committed_path(&cache, &big.digest)).unwrap();
            committed_before_kill += 1;
            continue;
        }

        // A fill, killed at a varying point (some near or after its end, in the commit).
        // The first cycles spread over the transfer; the last ones aim at its end (last bytes,
        // verification, fsync, rename).
        let fill_ms = fill_estimate.as_millis() as u64;
        let delay = if cycle < SPREAD {
            Duration::from_millis(
                50 + cycle as u64 * fill_ms / SPREAD as u64 + prng.next_u64() % 100,
            )
        } else {
            Duration::from_millis(fill_ms - 150 + prng.next_u64() % 450)
        };
        let (c2, url) = (c.clone(), format!("{}{big_path}", proc.base_url()));
        let getter = tokio::spawn(async move { fetch(&c2, &url, &[]).await });
        tokio::time::sleep(delay).await;
        proc.kill9();
        let f = getter.await.unwrap();
        if f.is_blob(&big) {
            committed_before_kill += 1;
        } else {
            // Never a clean end with a short or wrong body.
            assert!(
                f.error.is_some() || f.status != 200,
                "cycle {cycle}: clean end of a partial body: {f:?}"
            );
            killed_mid_transfer += 1;
        }
        if committed_path(&cache, &big.digest).exists() {
            let data = std::fs::read(committed_path(&cache, &big.digest)).unwrap();
            assert_eq!(
                sha256_digest(&data),
                big.digest,
                "cycle {cycle}: a committed file after kill -9 is wrong"
            );
        }
        eprintln!(
            "cycle {cycle}: killed after {delay:?}; client got {} of {} bytes ({:?}); temp files left {}",
            f.len,
            big.size(),
            f.error
                .as_deref()
                .map(|e| e.chars().take(60).collect::<String>()),
            files_under(&cache.join("tmp")).len()
        );
    }

    // Last: a restart, a complete fill, a kill -9 after the commit, a restart: a HIT.
    let proc = ProxyProcess::start(&work, &env, &toml).await.unwrap();
    assert!(files_under(&cache.join("tmp")).is_empty());
    let (_, bad) = verify_blobs(&cache);
    assert!(bad.is_empty(), "{bad:?}");
    let f = fetch(&c, &format!("{}{big_path}", proc.base_url()), &[]).await;
    assert!(f.is_blob(&big), "{f:?}");
    assert!(
        eventually(Duration::from_secs(5), || committed_path(
            &cache,
            &big.digest
        )
        .exists())
        .await
    );
    proc.kill9();
    let proc = ProxyProcess::start(&work, &env, &toml).await.unwrap();
    let upstream_before = bed.registry.count("GET", &big_path);
    let f = fetch(&c, &format!("{}{big_path}", proc.base_url()), &[]).await;
    assert!(f.is_blob(&big), "{f:?}");
    assert_eq!(f.x_cache(), "HIT");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(bed.registry.count("GET", &big_path), upstream_before);
    let (n, bad) = verify_blobs(&cache);
    assert!(bad.is_empty(), "{bad:?}");
    ready_times.push(proc.ready_after());
    if let Some(ms) = proc.index_load_ms() {
        index_times.push(ms);
    }
    let final_log = proc.log();
    drop(proc);

    ready_times.sort();
    println!(
        "FIGURES: kill -9 loop: {CYCLES} cycles + 2 final restarts in {:?}; {killed_mid_transfer} kills mid-transfer, {committed_before_kill} fills completed before the kill; \
         {leftovers_seen} leftover temp files found before restarts, 0 after; {files_checked} committed-file checks, 0 partial or wrong; \
         spawn -> /readyz 200: min {:?} median {:?} max {:?}; 'cache index built' elapsed_ms: {index_times:?}; final cache: {n} files",
        suite.elapsed(),
        ready_times[0],
        ready_times[ready_times.len() / 2],
        ready_times[ready_times.len() - 1],
    );
    assert!(
        killed_mid_transfer >= SPREAD - 2,
        "most kills land during a transfer"
    );
    assert!(final_log.contains("cache index built"), "{final_log}");
}

// ----------------------------------------------------------------------------------------------
// 5. Eviction under the cap (§8.7)
// ----------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_keeps_the_cache_under_cache_max_size() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    let bed = TestBed::start_with(Mode::Plain, SMALL).await;
    let repo = "library/evict";
    let blobs: Vec<Blob> = (0..6u64)
        .map(|i| Blob::new("application/octet-stream", Prng::new(1000 + i).bytes(MIB)))
        .collect();
    let mut pusher = Pusher::new(bed.registry.base_url(), PushAuth::None).unwrap();
    for b in &blobs {
        pusher.push_blob(repo, b).await.unwrap();
    }
    const CAP: u64 = 3 * MIB as u64;
    let cache = bed.tmp.path().join("cache");
    let proxy = proxy_on(
        &cache,
        bed.registry.base_url(),
        &[],
        "cache_max_size = \"3MiB\"",
        &[],
    );
    let c = client();
    let url = |b: &Blob| format!("{}/v2/{repo}/blobs/{}", proxy.base_url(), b.digest);
    let mut sizes = Vec::new();
    for b in &blobs {
        let f = fetch(&c, &url(b), &[]).await;
        assert!(f.is_blob(b), "{f:?}");
        assert_eq!(f.x_cache(), "MISS");
        assert!(
            eventually(Duration::from_secs(3), || committed_path(&cache, &b.digest)
                .exists())
            .await,
            "the latest blob is committed"
        );
        let now = total_size(&files_under(&cache.join("blobs")))
            + total_size(&files_under(&cache.join("tmp")));
        assert!(
            now <= CAP + MIB as u64,
            "over the cap plus one in-flight blob: {now}"
        );
        assert!(
            eventually(Duration::from_secs(3), || total_size(&files_under(
                &cache.join("blobs")
            )) <= CAP)
            .await,
            "cache stays over the cap: {}",
            total_size(&files_under(&cache.join("blobs")))
        );
        sizes.push(total_size(&files_under(&cache.join("blobs"))));
    }
    let m = metrics(&c, &proxy.base_url()).await;
    let evictions = metric(&m, "dockerproxy_cache_evictions_total{kind=\"blob\"}");
    assert!(
        evictions >= 3.0,
        "6 MiB pulled under a 3 MiB cap: {evictions} evictions\n{m}"
    );
    assert!(
        metric(&m, "dockerproxy_cache_size_bytes{kind=\"blob\"}") <= CAP as f64,
        "{m}"
    );
    // The first blob (least recently read) was evicted: fetched again, still correct.
    assert!(!committed_path(&cache, &blobs[0].digest).exists());
    let path0 = format!("/v2/{repo}/blobs/{}", blobs[0].digest);
    let before = bed.registry.count("GET", &path0);
    let f = fetch(&c, &url(&blobs[0]), &[]).await;
    assert!(f.is_blob(&blobs[0]));
    assert_eq!(f.x_cache(), "MISS");
    assert_eq!(
        bed.registry
            .wait_for_count("GET", &path0, before + 1, Duration::from_secs(2))
            .await,
        before + 1
    );
    // The most recent one is still a HIT.
    let last = blobs.last().unwrap();
    let f = fetch(&c, &url(last), &[]).await;
    assert!(f.is_blob(last));
    assert_eq!(f.x_cache(), "HIT");
    println!(
        "FIGURES: eviction: cache size after each of 6 x 1 MiB pulls under a 3 MiB cap: {sizes:?}; evictions {evictions}"
    );
}

// ----------------------------------------------------------------------------------------------
// 6. Disk full, read-only disk (SECURITY §2.15)
// ----------------------------------------------------------------------------------------------

/// Files under `dir` as the process `pid` sees them (its private mount namespace).
fn ns_path(pid: u32, dir: &Path) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root{}", dir.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_tmpfs_cache_still_serves_blobs_larger_than_the_disk() {
    if !require_tools(&["docker-registry", "unshare", "skopeo"]) || !require_mount_namespace() {
        return;
    }
    let bed = TestBed::start_with(
        Mode::Plain,
        SeedOptions {
            big_layer_size: 8 * MIB,
        },
    )
    .await;
    let big = bed.seeded.big.layers[0].clone();
    let cache = bed.tmp.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let cache_s = cache.display().to_string();
    let proc = ProxyProcess::start_wrapped(
        &bed.tmp.path().join("proc"),
        &[("CACHE_DIR", &cache_s)],
        &docker_hub_route_toml(bed.registry.base_url(), &[], ""),
        tmpfs_wrapper(&cache, "2m", false),
    )
    .await
    .unwrap();
    assert!(
        !proc.ready_body().contains("disabled"),
        "{}",
        proc.ready_body()
    );
    let view = ns_path(proc.pid(), &cache);
    assert!(view.join("blobs").is_dir(), "the cache lives on the tmpfs");
    let c = client();
    let url = format!("{}/v2/library/big/blobs/{}", proc.base_url(), big.digest);
    for round in 0..2 {
        let f = fetch(&c, &url, &[]).await;
        assert!(
            f.is_blob(&big),
            "round {round}: {f:?}\nlog:\n{}",
            proc.log()
        );
        assert_ne!(f.x_cache(), "HIT");
    }
    // The failed writes left nothing behind: the small blobs are still cached.
    assert!(
        eventually(Duration::from_secs(3), || files_under(&view.join("tmp"))
            .is_empty())
        .await,
        "{:?}",
        files_under(&view.join("tmp"))
    );
    assert!(!committed_path(&view, &big.digest).exists());
    let out_dir = bed.tmp.path().join("skopeo-big");
    let out = skopeo_copy(
        &format!("{}/library/big:latest", proc.host_port()),
        &out_dir,
        &[],
    )
    .await;
    assert_skopeo_pulled(&out, &out_dir, &bed.seeded.big);
    let busybox = &bed.seeded.busybox.layers[0];
    let burl = format!(
        "{}/v2/library/busybox/blobs/{}",
        proc.base_url(),
        busybox.digest
    );
    assert_eq!(fetch(&c, &burl, &[]).await.x_cache(), "MISS");
    assert!(
        eventually(Duration::from_secs(3), || committed_path(
            &view,
            &busybox.digest
        )
        .exists())
        .await
    );
    let f = fetch(&c, &burl, &[]).await;
    assert!(f.is_blob(busybox));
    assert_eq!(f.x_cache(), "HIT");
    let used = total_size(&files_under(&view));
    assert!(used <= 2 * MIB as u64, "{used}");
    let log = proc.log();
    assert!(
        log.contains("cache disk error") || log.contains("No space left"),
        "the disk error is logged:\n{log}"
    );
    println!(
        "FIGURES: full 2 MiB tmpfs: an 8 MiB blob served 3 times from upstream, correct; small blobs still cached ({used} bytes used)"
    );
}

/// A proxy process whose `CACHE_DIR` is a read-only tmpfs from the start; returns the bed, the
/// process, `/readyz`'s first body and two GETs of a busybox layer.
async fn read_only_at_start() -> (TestBed, ProxyProcess, serde_json::Value, Vec<Fetched>) {
    let bed = TestBed::start_with(Mode::Plain, SMALL).await;
    let cache = bed.tmp.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let cache_s = cache.display().to_string();
    let proc = ProxyProcess::start_wrapped(
        &bed.tmp.path().join("proc"),
        &[("CACHE_DIR", &cache_s)],
        &docker_hub_route_toml(bed.registry.base_url(), &[], ""),
        tmpfs_wrapper(&cache, "2m", true),
    )
    .await
    .unwrap();
    let body: serde_json::Value = serde_json::from_str(proc.ready_body()).expect("readyz JSON");
    let c = client();
    let blob = &bed.seeded.busybox.layers[0];
    let url = format!(
        "{}/v2/library/busybox/blobs/{}",
        proc.base_url(),
        blob.digest
    );
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(fetch(&c, &url, &[]).await);
    }
    (bed, proc, body, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_cache_dir_at_start_serves_from_upstream_and_says_disabled() {
    if !require_tools(&["docker-registry", "unshare"]) || !require_mount_namespace() {
        return;
    }
    let (bed, proc, body, got) = read_only_at_start().await;
    assert_eq!(body["status"], "ready", "{body}");
    let cache_field = body["cache"].as_str().unwrap_or_default();
    assert!(cache_field.starts_with("disabled: "), "{body}");
    let blob = &bed.seeded.busybox.layers[0];
    for f in &got {
        assert!(f.is_blob(blob), "{f:?}");
        assert_ne!(f.x_cache(), "HIT");
    }
    let path = format!("/v2/library/busybox/blobs/{}", blob.digest);
    assert_eq!(
        bed.registry
            .wait_for_count("GET", &path, 2, Duration::from_secs(2))
            .await,
        2
    );
    let readyz = client()
        .get(format!("{}/readyz", proc.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(readyz.status(), 200);
    assert!(
        proc.log().contains("cache disabled"),
        "the reason is logged:\n{}",
        proc.log()
    );
    println!("FIGURES: read-only CACHE_DIR at start: /readyz {body}");
}

/// COMPAT §8.3: `BYPASS` when the store was not used (here: no usable store at all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_cache_dir_at_start_answers_x_cache_bypass() {
    if !require_tools(&["docker-registry", "unshare"]) || !require_mount_namespace() {
        return;
    }
    let (_bed, _proc, _body, got) = read_only_at_start().await;
    for f in &got {
        assert_eq!(f.x_cache(), "BYPASS");
    }
}

/// Makes directories immutable (`chattr +i`) and undoes it on drop, so the temporary directory
/// can be removed whatever happens.
struct Immutable(Vec<PathBuf>);

impl Immutable {
    fn set(dirs: &[PathBuf]) -> Self {
        for d in dirs {
            let st = std::process::Command::new("chattr")
                .arg("+i")
                .arg(d)
                .status()
                .unwrap();
            assert!(st.success(), "chattr +i {}", d.display());
        }
        Self(dirs.to_vec())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::process::Command::new("chattr")
                .arg("-i")
                .arg(d)
                .status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_dir_becoming_read_only_at_runtime_keeps_serving() {
    if !require_tools(&["docker-registry", "chattr"]) {
        return;
    }
    let bed = TestBed::start_with(
        Mode::Plain,
        SeedOptions {
            big_layer_size: 4 * MIB,
        },
    )
    .await;
    let cache = bed.tmp.path().join("cache");
    let cache_s = cache.display().to_string();
    let proc = ProxyProcess::start(
        &bed.tmp.path().join("proc"),
        &[("CACHE_DIR", &cache_s)],
        &docker_hub_route_toml(bed.registry.base_url(), &[], ""),
    )
    .await
    .unwrap();
    let c = client();
    let cached = &bed.seeded.busybox.layers[0];
    let curl = format!(
        "{}/v2/library/busybox/blobs/{}",
        proc.base_url(),
        cached.digest
    );
    assert!(fetch(&c, &curl, &[]).await.is_blob(cached));
    assert!(
        eventually(Duration::from_secs(3), || committed_path(
            &cache,
            &cached.digest
        )
        .exists())
        .await
    );

    // No new file can be created in tmp/ or blobs/ any more (EPERM), as on a read-only disk.
    let mut dirs = vec![
        cache.join("tmp"),
        cache.join("blobs"),
        cache.join("blobs/sha256"),
    ];
    dirs.extend(
        std::fs::read_dir(cache.join("blobs/sha256"))
            .unwrap()
            .flatten()
            .map(|e| e.path()),
    );
    let guard = Immutable::set(&dirs);
    let big = &bed.seeded.big.layers[0];
    let path = format!("/v2/library/big/blobs/{}", big.digest);
    for round in 0..2 {
        let f = fetch(&c, &format!("{}{path}", proc.base_url()), &[]).await;
        assert!(f.is_blob(big), "round {round}: {f:?}\nlog:\n{}", proc.log());
        assert_ne!(f.x_cache(), "HIT");
    }
    assert_eq!(
        bed.registry
            .wait_for_count("GET", &path, 2, Duration::from_secs(2))
            .await,
        2
    );
    // What was cached is still served.
    let f = fetch(&c, &curl, &[]).await;
    assert!(f.is_blob(cached));
    assert_eq!(f.x_cache(), "HIT");
    let readyz = c
        .get(format!("{}/readyz", proc.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(readyz.status(), 200);
    let log = proc.log();
    assert!(
        log.contains("cache disk error"),
        "the write error is logged:\n{log}"
    );
    drop(guard);
    drop(proc);
}

// ----------------------------------------------------------------------------------------------
// 7. Private repository (COMPAT 48, SECURITY §2.11)
// ----------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_48_private_content_cached_for_alice_is_refused_to_anonymous_clients() {
    if !require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let bed = TestBed::start_with(Mode::Token, SMALL).await;
    let image = bed.seeded.private_secret.clone();
    let cache = bed.tmp.path().join("cache");
    let proxy = proxy_on(
        &cache,
        bed.registry.base_url(),
        &realm_origins(&bed),
        "",
        &[],
    );
    let src = format!("{}/private/secret:1.0", proxy.host_port());
    let out_dir = bed.tmp.path().join("alice-1");
    let out = skopeo_copy(&src, &out_dir, &["--src-creds", "alice:secret"]).await;
    assert_skopeo_pulled(&out, &out_dir, &image);
    for blob in image.blobs() {
        assert!(
            eventually(Duration::from_secs(3), || committed_path(
                &cache,
                &blob.digest
            )
            .exists())
            .await,
            "cached: {}",
            blob.digest
        );
    }
    let gets_before = blob_gets(&bed.registry).len();
    assert!(gets_before >= 2);

    // Anonymous, by digest: refused, and not one cached byte.
    let c = client();
    let mut objects = vec![(
        format!("manifests/{}", image.manifest.digest),
        image.manifest.clone(),
    )];
    objects.extend(
        image
            .blobs()
            .map(|b| (format!("blobs/{}", b.digest), b.clone())),
    );
    let mut refusals = Vec::new();
    for (what, blob) in &objects {
        let url = format!("{}/v2/private/secret/{what}", proxy.base_url());
        for auth in [None, Some("Bearer not-a-valid-token")] {
            let mut headers = vec![("Accept", accept_all())];
            if let Some(a) = auth {
                headers.push(("Authorization", a.to_owned()));
            }
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let f = fetch(&c, &url, &h).await;
            refusals.push(format!(
                "{what} {} -> {}",
                if auth.is_some() {
                    "bad token"
                } else {
                    "anonymous"
                },
                f.status
            ));
            assert!(
                matches!(f.status, 401 | 403 | 404),
                "{what} with {auth:?}: {} {}",
                f.status,
                f.text()
            );
            assert_ne!(f.x_cache(), "HIT");
            assert_ne!(f.digest, blob.digest);
            let needle = &blob.data[..blob.data.len().min(32)];
            assert!(
                !f.head.windows(needle.len()).any(|w| w == needle),
                "{what}: cached bytes in the refusal"
            );
        }
    }
    // The secret layer asked for through a public repository (SECURITY §2.11 blob links): the
    // upstream does not link it there, so nothing is served.
    let secret_layer = &image.layers[0];
    let f = fetch(
        &c,
        &format!(
            "{}/v2/library/busybox/blobs/{}",
            proxy.base_url(),
            secret_layer.digest
        ),
        &[],
    )
    .await;
    refusals.push(format!(
        "library/busybox/blobs/<secret layer> anonymous -> {}",
        f.status
    ));
    assert!(
        matches!(f.status, 401 | 403 | 404),
        "{} {}",
        f.status,
        f.text()
    );
    assert_ne!(f.digest, secret_layer.digest);
    assert_ne!(f.x_cache(), "HIT");
    // Anonymous by tag too.
    let f = fetch(
        &c,
        &format!("{}/v2/private/secret/manifests/1.0", proxy.base_url()),
        &[("Accept", &accept_all())],
    )
    .await;
    assert!(
        matches!(f.status, 401 | 403 | 404),
        "{} {}",
        f.status,
        f.text()
    );
    let anon_out = bed.tmp.path().join("anon");
    let out = skopeo_copy(&src, &anon_out, &[]).await;
    assert!(
        !out.status.success(),
        "an anonymous skopeo pull of the private image must fail"
    );

    // alice again: HITs, with no blob GET upstream.
    let token_url = format!(
        "{}/v2/auth?service=x&scope=repository:private/secret:pull",
        proxy.base_url()
    );
    let resp = c
        .get(&token_url)
        .basic_auth("alice", Some("secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    let token = v["token"]
        .as_str()
        .or(v["access_token"].as_str())
        .expect("token")
        .to_owned();
    let bearer = format!("Bearer {token}");
    for (what, blob) in &objects {
        let url = format!("{}/v2/private/secret/{what}", proxy.base_url());
        let f = fetch(
            &c,
            &url,
            &[("Accept", &accept_all()), ("Authorization", &bearer)],
        )
        .await;
        assert!(f.is_blob(blob), "{what}: {f:?}");
        assert_eq!(f.x_cache(), "HIT", "{what}");
    }
    let out_dir = bed.tmp.path().join("alice-2");
    let out = skopeo_copy(&src, &out_dir, &["--src-creds", "alice:secret"]).await;
    assert_skopeo_pulled(&out, &out_dir, &image);
    let after = settled_requests(&bed).await;
    assert_eq!(
        blob_gets(&bed.registry).len(),
        gets_before,
        "alice's second pull is served from the cache: {after:?}"
    );
    println!(
        "FIGURES: private repository: {refusals:?}; alice: HITs, {gets_before} upstream blob GETs in all"
    );
}

// ----------------------------------------------------------------------------------------------
// 8. Tag revalidation (COMPAT 44, 72, 73)
// ----------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_44_72_tag_ttl_then_one_revalidation_head() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    let bed = TestBed::start_with(Mode::Plain, SMALL).await;
    let front = FaultFront::forward(bed.registry.base_url()).unwrap();
    let cache = bed.tmp.path().join("cache");
    let proxy = proxy_on(
        &cache,
        &front.base_url(),
        &[],
        "",
        &[("CACHE_MANIFEST_TTL", "2s")],
    );
    let c = client();
    let path = "/v2/library/busybox/manifests/latest";
    let url = format!("{}{path}", proxy.base_url());
    let accept = accept_all();
    let want = &bed.seeded.busybox.manifest;
    let headers = [("Accept", accept.as_str())];
    let get = || fetch(&c, &url, &headers);

    // 44: twice within the TTL: one upstream GET, the second a HIT with no upstream request.
    let first = get().await;
    assert!(first.is_blob(want), "{first:?}");
    assert_eq!(first.x_cache(), "MISS");
    let t_first = Instant::now();
    assert_eq!(
        bed.registry
            .wait_for_count("GET", path, 1, Duration::from_secs(2))
            .await,
        1
    );
    let front_before = front.requests().len();
    let second = get().await;
    assert!(second.is_blob(want));
    assert_eq!(second.x_cache(), "HIT");
    assert_eq!(second.header("content-type"), first.header("content-type"));
    assert_eq!(
        second.header("docker-content-digest").as_deref(),
        Some(want.digest.as_str())
    );
    assert!(
        t_first.elapsed() < Duration::from_secs(2),
        "the second GET was within the TTL"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        front.requests().len(),
        front_before,
        "no upstream request within the TTL: {:?}",
        &front.requests()[front_before..]
    );

    // 72: after the TTL: exactly one HEAD, no GET, HIT.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let third = get().await;
    assert!(third.is_blob(want));
    assert_eq!(third.x_cache(), "HIT");
    assert_eq!(
        bed.registry
            .wait_for_count("HEAD", path, 1, Duration::from_secs(2))
            .await,
        1
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(bed.registry.count("HEAD", path), 1);
    assert_eq!(bed.registry.count("GET", path), 1);
    let revalidation: Vec<_> = front.requests()[front_before..]
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(revalidation, vec![format!("HEAD {path}")]);
}

/// A tagged manifest cached, the TTL passed, the upstream answering 503 to the revalidation
/// HEAD. `recent_blob_miss`: an anonymous blob MISS of the same repository (an upstream success,
/// hence a public mark) 1 s before the tag goes stale.
async fn stale_on_503(recent_blob_miss: bool) -> (Fetched, Vec<String>, String) {
    let bed = TestBed::start_with(Mode::Plain, SMALL).await;
    let front = FaultFront::forward(bed.registry.base_url()).unwrap();
    let cache = bed.tmp.path().join("cache");
    let proxy = proxy_on(
        &cache,
        &front.base_url(),
        &[],
        "",
        &[("CACHE_MANIFEST_TTL", "2s")],
    );
    let c = client();
    let url = format!("{}/v2/library/busybox/manifests/latest", proxy.base_url());
    let accept = accept_all();
    let want = &bed.seeded.busybox.manifest;
    let first = fetch(&c, &url, &[("Accept", &accept)]).await;
    assert!(first.is_blob(want));
    assert_eq!(first.x_cache(), "MISS");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    if recent_blob_miss {
        let config = &bed.seeded.busybox.config;
        let f = fetch(
            &c,
            &format!(
                "{}/v2/library/busybox/blobs/{}",
                proxy.base_url(),
                config.digest
            ),
            &[],
        )
        .await;
        assert!(f.is_blob(config));
        assert_eq!(f.x_cache(), "MISS");
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    front.add_rule(Rule::new(PathMatch::Manifest, Action::status(503)).method("HEAD"));
    let stale = fetch(&c, &url, &[("Accept", &accept)]).await;
    let seen = front
        .requests()
        .iter()
        .map(|r| format!("{} {} -> {}", r.method, r.path, r.status))
        .collect();
    let m = metrics(&c, &proxy.base_url()).await;
    (stale, seen, m)
}

fn assert_stale_hit(stale: &Fetched, want: &Blob, seen: &[String], m: &str) {
    assert_eq!(stale.status, 200, "{}; upstream saw {seen:?}", stale.text());
    assert!(stale.is_blob(want));
    assert_eq!(stale.x_cache(), "HIT");
    let warning = stale.header("warning").unwrap_or_default();
    assert!(
        warning.starts_with("299 ") && warning.to_ascii_lowercase().contains("stale"),
        "Warning: {warning:?}"
    );
    let heads: Vec<_> = seen.iter().filter(|r| r.starts_with("HEAD ")).collect();
    assert_eq!(
        heads.len(),
        1,
        "one revalidation HEAD (answered 503): {seen:?}"
    );
    assert!(heads[0].ends_with("-> 503"));
    assert!(
        metric(m, "dockerproxy_stale_served_total{registry=\"docker.io\"}") >= 1.0,
        "{m}"
    );
}

/// COMPAT 73 with the repository proven public by another anonymous upstream success 1 s
/// earlier: the stale copy is served with a `Warning`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_73_stale_hit_on_503_when_the_repository_was_public_recently() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    let want = dockerproxy_tests::content::build_cached(SMALL.big_layer_size)
        .unwrap()
        .busybox
        .manifest;
    let (stale, seen, m) = stale_on_503(true).await;
    assert_stale_hit(&stale, &want, &seen, &m);
}

/// COMPAT 73 as written: a public repository whose tag went stale, upstream 503 on the HEAD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_73_stale_hit_on_503_for_a_public_repository() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    let want = dockerproxy_tests::content::build_cached(SMALL.big_layer_size)
        .unwrap()
        .busybox
        .manifest;
    let (stale, seen, m) = stale_on_503(false).await;
    assert_stale_hit(&stale, &want, &seen, &m);
}

// ----------------------------------------------------------------------------------------------
// 9. Real clients pull warm images with zero upstream blob GETs
// ----------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_skopeo_pull_makes_no_upstream_blob_get() {
    if !require_tools(&["docker-registry", "skopeo", "unshare"]) || !require_mount_namespace() {
        return;
    }
    let bed = TestBed::start_with(Mode::Plain, SMALL).await;
    let tmp = short_tempdir("dp-warm-sk-").unwrap();
    let proxy = proxy_on(
        &tmp.path().join("cache"),
        bed.registry.base_url(),
        &[],
        "",
        &[],
    );
    let ns = HostsNamespace::new(&tmp.path().join("ns"), &[]).unwrap();
    let source = format!("{}/myorg/team/app:1.0", proxy.host_port());
    skopeo_pull(&ns, &source, &tmp.path().join("cold"), &bed.seeded.app)
        .await
        .unwrap();
    let _ = settled_requests(&bed).await;
    let (blobs_cold, manifests_cold) = (blob_gets(&bed.registry), manifest_gets(&bed.registry));
    assert_eq!(
        blobs_cold.len(),
        bed.seeded.app.blobs().count(),
        "{blobs_cold:?}"
    );
    let cold = image_requests(&bed.registry);
    skopeo_pull(&ns, &source, &tmp.path().join("warm"), &bed.seeded.app)
        .await
        .unwrap();
    let _ = settled_requests(&bed).await;
    assert_eq!(
        blob_gets(&bed.registry),
        blobs_cold,
        "the warm pull made no upstream blob GET"
    );
    assert_eq!(
        manifest_gets(&bed.registry),
        manifests_cold,
        "nor a manifest GET"
    );
    let warm = image_requests(&bed.registry);
    assert_eq!(
        warm[cold.len()..],
        [] as [String; 0],
        "public content within the TTL: no upstream request for the image"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_dockerd_pull_through_registry_mirror_makes_no_upstream_blob_get() {
    if !require_tools(&["docker-registry", "dockerd", "docker", "unshare"])
        || !require_mount_namespace()
    {
        return;
    }
    let started = Instant::now();
    let bed = TestBed::start_with(Mode::Plain, SMALL).await;
    let tmp = short_tempdir("dp-warm-dk-").unwrap();
    let proxy = proxy_on(
        &tmp.path().join("cache"),
        bed.registry.base_url(),
        &[],
        "",
        &[],
    );
    let ns = HostsNamespace::new(&tmp.path().join("ns"), &[]).unwrap();
    let image = &bed.seeded.busybox;
    let mut pulled = Vec::new();
    let mut blob_counts = Vec::new();
    let mut all: Vec<Vec<String>> = Vec::new();
    for round in ["cold", "warm"] {
        match dockerd_pull_fresh(
            &tmp.path().join(round),
            &ns,
            &proxy.base_url(),
            "busybox:latest",
        )
        .await
        {
            Ok(p) => pulled.push(p),
            Err(StartError::Environment(reason)) => {
                skip_unless_ci(&format!("dockerd cannot run on this machine: {reason}"));
                return;
            }
            Err(e @ StartError::Fixture(_)) => panic!("{round}: {e}"),
        }
        let _ = settled_requests(&bed).await;
        blob_counts.push(blob_gets(&bed.registry));
        all.push(image_requests(&bed.registry));
    }
    let warm_only = all[1][all[0].len()..].to_vec();
    eprintln!("upstream image requests of the warm pull: {warm_only:?}");
    // The client resolves the tag with a HEAD and fetches the manifest by digest. A HEAD on a
    // tag the proxy never GOT by tag is forwarded (COMPAT §8.4: it *may* record the mapping), so
    // the one upstream request allowed is that HEAD; never a GET.
    assert!(
        warm_only.len() <= 1
            && warm_only
                .iter()
                .all(|r| r.starts_with("HEAD ") && r.contains("/manifests/latest")),
        "the warm pull asked the upstream for more than the tag HEAD: {warm_only:?}"
    );
    for p in &pulled {
        assert_eq!(p.repo_digest, format!("busybox@{}", image.manifest.digest));
        assert_eq!(p.id, image.config.digest);
    }
    assert_eq!(
        blob_counts[0].len(),
        image.blobs().count(),
        "{:?}",
        blob_counts[0]
    );
    assert_eq!(
        blob_counts[1], blob_counts[0],
        "the warm pull made no upstream blob GET"
    );
    eprintln!("dockerd warm scenario took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_containerd_pull_through_hosts_toml_makes_no_upstream_blob_get() {
    if !require_tools(&["docker-registry", "containerd", "ctr", "unshare"])
        || !require_mount_namespace()
    {
        return;
    }
    let started = Instant::now();
    let bed = TestBed::start_with(Mode::Plain, SMALL).await;
    let tmp = short_tempdir("dp-warm-ctd-").unwrap();
    let proxy = proxy_on(
        &tmp.path().join("cache"),
        bed.registry.base_url(),
        &[],
        "",
        &[],
    );
    let ns = HostsNamespace::new(&tmp.path().join("ns"), &[]).unwrap();
    let image = &bed.seeded.busybox;
    let mut blob_counts = Vec::new();
    let mut all: Vec<Vec<String>> = Vec::new();
    for round in ["cold", "warm"] {
        let digest = ctr_pull_fresh(
            &tmp.path().join(round),
            &ns,
            &proxy.base_url(),
            "docker.io/library/busybox:latest",
        )
        .await
        .unwrap();
        assert_eq!(digest, image.manifest.digest, "{round}");
        let _ = settled_requests(&bed).await;
        blob_counts.push(blob_gets(&bed.registry));
        all.push(image_requests(&bed.registry));
    }
    let warm_only = all[1][all[0].len()..].to_vec();
    eprintln!("upstream image requests of the warm pull: {warm_only:?}");
    // The client resolves the tag with a HEAD and fetches the manifest by digest. A HEAD on a
    // tag the proxy never GOT by tag is forwarded (COMPAT §8.4: it *may* record the mapping), so
    // the one upstream request allowed is that HEAD; never a GET.
    assert!(
        warm_only.len() <= 1
            && warm_only
                .iter()
                .all(|r| r.starts_with("HEAD ") && r.contains("/manifests/latest")),
        "the warm pull asked the upstream for more than the tag HEAD: {warm_only:?}"
    );
    assert_eq!(
        blob_counts[0].len(),
        image.blobs().count(),
        "{:?}",
        blob_counts[0]
    );
    assert_eq!(
        blob_counts[1], blob_counts[0],
        "the warm pull made no upstream blob GET"
    );
    eprintln!("containerd warm scenario took {:?}", started.elapsed());
}
