//! A `Range` GET of a blob that is not cached yet (COMPAT.md §8.4, SECURITY.md §2.4, issue 8):
//! the proxy fetches the whole blob once (no `Range` upstream), verifies it while filling the
//! cache, and answers the client's range from the growing fill. A lying upstream yields an
//! aborted response and nothing committed.
//!
//! The proxy is the real `dockerproxy` binary; the upstream is the real `docker-registry`
//! behind a recording [`FaultFront`] (and, for the lying case, a byte-flipping [`CorruptFront`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use dockerproxy_tests::content::sha256_digest;
use dockerproxy_tests::corrupt::{CorruptFront, Mangle};
use dockerproxy_tests::fault_front::FaultFront;
use dockerproxy_tests::proxy_process::{ProxyProcess, binary};
use dockerproxy_tests::{Mode, SeedOptions, TestBed, require_tools};

const SEED: SeedOptions = SeedOptions {
    big_layer_size: 2 << 20,
};

fn route_toml(upstream: &str) -> String {
    let host_port = upstream.trim_start_matches("http://").trim_end_matches('/');
    format!(
        "mirror_hosts = [\"127.0.0.1\"]\n[routes.\"docker.io\"]\nupstream = \"{upstream}\"\n\
         development = true\naddress_exceptions = [\"{host_port}\"]\n"
    )
}

async fn start_proxy(work: &Path, upstream: &str) -> ProxyProcess {
    let cache = work.join("cache").display().to_string();
    ProxyProcess::start(work, &[("CACHE_DIR", &cache)], &route_toml(upstream))
        .await
        .expect("start the dockerproxy binary")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("reqwest client")
}

/// Status, `Content-Range`, `X-Cache`, the bytes received and the transport error, if any.
struct Got {
    status: u16,
    content_range: Option<String>,
    x_cache: Option<String>,
    body: Vec<u8>,
    err: Option<String>,
}

async fn get(url: &str, range: Option<&str>) -> Got {
    let mut req = client().get(url);
    if let Some(r) = range {
        req = req.header("range", r);
    }
    let mut resp = req.send().await.expect("a response head");
    let h = |n: &str| {
        resp.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let (status, content_range, x_cache) =
        (resp.status().as_u16(), h("content-range"), h("x-cache"));
    let mut body = Vec::new();
    let err = loop {
        match resp.chunk().await {
            Ok(Some(c)) => body.extend_from_slice(&c),
            Ok(None) => break None,
            Err(e) => break Some(format!("{e:?}")),
        }
    };
    Got {
        status,
        content_range,
        x_cache,
        body,
        err,
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => out.push(e.path()),
                _ => {}
            }
        }
    }
    out
}

/// The upstream GETs of `path` the front saw, with their `Range` values.
fn upstream_gets(front: &FaultFront, path: &str) -> Vec<Option<String>> {
    front
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.split('?').next() == Some(path))
        .map(|r| r.header("range").map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_get_on_an_uncached_blob_is_one_whole_verified_get_and_206_slices_from_the_fill() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    binary().expect("the dockerproxy binary");
    let bed = TestBed::start_with(Mode::Plain, SEED).await;
    let front = FaultFront::forward(bed.registry.base_url()).unwrap();
    let work = bed.tmp.path().join("p");
    let proc = start_proxy(&work, &front.base_url()).await;
    let big = bed.seeded.big.layers[0].clone();
    let size = big.data.len();
    let path = format!("/v2/library/big/blobs/{}", big.digest);
    let url = format!("{}{path}", proc.base_url());

    // Concurrent ranged GETs of the cold blob: one whole upstream GET serves them all.
    let ranges: Vec<(usize, usize)> = vec![
        (100, 5099),
        (0, 0),
        (size - 10, size - 1),
        (size / 2, size / 2 + 70_000),
    ];
    let tasks: Vec<_> = ranges
        .iter()
        .map(|&(a, b)| {
            let url = url.clone();
            tokio::spawn(async move { get(&url, Some(&format!("bytes={a}-{b}"))).await })
        })
        .collect();
    for (task, &(a, b)) in tasks.into_iter().zip(&ranges) {
        let got = task.await.unwrap();
        assert_eq!(
            (got.status, got.err.as_deref()),
            (206, None),
            "range {a}-{b}"
        );
        assert_eq!(
            got.content_range.as_deref(),
            Some(format!("bytes {a}-{b}/{size}").as_str())
        );
        assert!(
            got.body == big.data[a..=b],
            "range {a}-{b}: {} bytes, not the blob's slice",
            got.body.len()
        );
        assert!(
            matches!(got.x_cache.as_deref(), Some("MISS" | "HIT")),
            "{:?}",
            got.x_cache
        );
    }
    let gets = upstream_gets(&front, &path);
    println!("RANGE_FILL: upstream GETs for 4 concurrent cold ranges: {gets:?}");
    assert_eq!(gets, vec![None], "exactly one upstream GET, without Range");

    // The fill was committed: the whole blob is now a hit, with no further upstream GET.
    let mut whole = get(&url, None).await;
    for _ in 0..50 {
        if whole.x_cache.as_deref() == Some("HIT") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        whole = get(&url, None).await;
    }
    assert_eq!((whole.status, whole.err.as_deref()), (200, None));
    assert_eq!(whole.x_cache.as_deref(), Some("HIT"));
    assert_eq!(sha256_digest(&whole.body), big.digest);
    let again = get(&url, Some("bytes=7-9")).await;
    assert_eq!(again.status, 206);
    assert_eq!(again.body, big.data[7..=9]);
    assert_eq!(again.x_cache.as_deref(), Some("HIT"));
    assert_eq!(upstream_gets(&front, &path).len(), 1);
    let hex = big.digest.trim_start_matches("sha256:");
    let stored: Vec<_> = files_under(&work.join("cache").join("blobs"))
        .into_iter()
        .filter(|f| f.file_name().is_some_and(|n| n == hex))
        .collect();
    assert_eq!(stored.len(), 1, "the blob is committed once");
    assert_eq!(
        sha256_digest(&std::fs::read(&stored[0]).unwrap()),
        big.digest
    );
    assert!(!proc.log().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_get_from_a_lying_upstream_aborts_and_commits_nothing() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    binary().expect("the dockerproxy binary");
    let bed = TestBed::start_with(Mode::Plain, SEED).await;
    // Byte 200 flipped: inside the requested range.
    let liar = CorruptFront::start(bed.registry.base_url(), Mangle::FlipByte(200)).unwrap();
    let front = FaultFront::forward(&liar.base_url()).unwrap();
    let work = bed.tmp.path().join("p");
    let proc = start_proxy(&work, &front.base_url()).await;
    let big = bed.seeded.big.layers[0].clone();
    let path = format!("/v2/library/big/blobs/{}", big.digest);
    let url = format!("{}{path}", proc.base_url());

    let got = get(&url, Some("bytes=100-5099")).await;
    println!(
        "RANGE_FILL: lying upstream: status {}, {} bytes, aborted {:?}",
        got.status,
        got.body.len(),
        got.err
    );
    match got.status {
        206 | 200 => assert!(
            got.err.is_some() && got.body.len() < 5000,
            "a clean answer from a lying upstream ({} bytes)",
            got.body.len()
        ),
        s => assert!(s >= 500, "status {s}"),
    }
    assert_eq!(upstream_gets(&front, &path), vec![None]);
    // Nothing committed, no temp file left; the next request fetches again (not poisoned).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cache = work.join("cache");
    assert_eq!(files_under(&cache.join("blobs")), Vec::<PathBuf>::new());
    assert_eq!(files_under(&cache.join("tmp")), Vec::<PathBuf>::new());
    let again = get(&url, Some("bytes=100-5099")).await;
    assert!(again.err.is_some() || again.status >= 500);
    assert_eq!(
        upstream_gets(&front, &path).len(),
        2,
        "a failed fill never sticks"
    );
    // An honest upstream again: the same range is served and the blob committed.
    liar.set_mangle(Mangle::None);
    let healed = get(&url, Some("bytes=100-5099")).await;
    assert_eq!((healed.status, healed.err.as_deref()), (206, None));
    assert!(healed.body == big.data[100..5100]);
    assert!(!proc.log().contains("panicked"));
}
