//! A bounded soak (issue 8, SECURITY.md §3): the `dockerproxy` binary as a process with a cache
//! directory, a seeded real `docker-registry` upstream behind a chaos front that injects (from a
//! seeded generator) 5xx answers, cut connections, wrong bytes, delays and trickled bodies, at
//! least 10,000 mixed requests from 24 concurrent clients, and four `kill -9` + restarts of the
//! proxy during the run (each restart also drops part of the cache behind the proxy's back, so
//! cold fills, and with them faults, keep happening).
//!
//! Every answer is classified: correct (200/206 whose bytes hash to the expected digest or equal
//! the expected range slice; HEAD/tag answers whose digest header is the expected one), clean
//! error (4xx/5xx with an OCI `errors` body), visibly aborted body, or transport error (the
//! proxy was being killed). A WRONG answer (a complete 200/206 with wrong bytes, a wrong digest
//! or length header) fails the test. At the end every file under `blobs/` hashes to its name,
//! and the peak resident set (VmRSS/VmHWM sampled every 20 ms, across restarts) is under 256 MiB.
//! Figures are printed with a `SOAK:` prefix.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use dockerproxy_tests::content::{ALL_MANIFEST_TYPES, Blob, Prng, sha256_digest};
use dockerproxy_tests::faults_chaos::{ChaosFront, ChaosRates};
use dockerproxy_tests::faults_kit::RssSampler;
use dockerproxy_tests::proxy_process::{ProxyProcess, binary};
use dockerproxy_tests::{Mode, PushAuth, Pusher, SeedOptions, TestBed, require_tools};

const CLIENTS: usize = 24;
const MIN_REQUESTS: u64 = 10_000;
const RESTARTS: usize = 4;
const RSS_BOUND_KIB: u64 = 256 * 1024;
const WALL_LIMIT: Duration = Duration::from_secs(200);
const EXTRA_BLOBS: usize = 300;

/// One thing a client may ask for, with what a correct answer is.
#[derive(Debug, Clone)]
enum Target {
    Blob {
        repo: String,
        blob: Blob,
    },
    ManifestByTag {
        repo: String,
        tag: String,
        manifest: Blob,
    },
    ManifestByDigest {
        repo: String,
        manifest: Blob,
    },
    Tags {
        repo: String,
        tag: String,
    },
    Ping,
}

#[derive(Debug, Default)]
struct Tally {
    /// Requests answered with an HTTP status (transport errors are counted apart).
    requests: AtomicU64,
    correct: AtomicU64,
    clean_error: AtomicU64,
    aborted: AtomicU64,
    transport: AtomicU64,
    wrong: AtomicU64,
    statuses: Mutex<BTreeMap<String, u64>>,
    wrong_samples: Mutex<Vec<String>>,
    unclean_samples: Mutex<Vec<String>>,
}

impl Tally {
    fn status(&self, key: String) {
        *self.statuses.lock().unwrap().entry(key).or_insert(0) += 1;
    }

    fn wrong(&self, what: String) {
        self.wrong.fetch_add(1, Ordering::Relaxed);
        let mut s = self.wrong_samples.lock().unwrap();
        if s.len() < 20 {
            s.push(what);
        }
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => out.push(e.path()),
                _ => {}
            }
        }
    }
    out
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

fn is_oci_error(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .is_some_and(|v| v["errors"].is_array())
}

/// Reads a body to its end: (bytes, whether it ended with an error).
async fn read_all(mut resp: reqwest::Response) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => buf.extend_from_slice(&c),
            Ok(None) => return (buf, false),
            Err(_) => return (buf, true),
        }
    }
}

/// One request against `base`, classified into `tally`.
async fn one_request(
    c: &reqwest::Client,
    base: &str,
    target: &Target,
    prng: &mut Prng,
    tally: &Tally,
) {
    let accept = ALL_MANIFEST_TYPES.join(", ");
    let roll = prng.next_u64();
    let (method, path, range, expect): (reqwest::Method, String, Option<(u64, u64)>, &str) =
        match target {
            Target::Blob { repo, blob } => {
                let path = format!("/v2/{repo}/blobs/{}", blob.digest);
                match roll % 10 {
                    0 => (reqwest::Method::HEAD, path, None, "blob-head"),
                    1..=3 if blob.size() > 1 => {
                        let a = prng.next_u64() % blob.size();
                        let b = a + prng.next_u64() % (blob.size() - a);
                        (reqwest::Method::GET, path, Some((a, b)), "blob-range")
                    }
                    _ => (reqwest::Method::GET, path, None, "blob"),
                }
            }
            Target::ManifestByTag { repo, tag, .. } => {
                let path = format!("/v2/{repo}/manifests/{tag}");
                if roll.is_multiple_of(4) {
                    (reqwest::Method::HEAD, path, None, "tag-head")
                } else {
                    (reqwest::Method::GET, path, None, "tag")
                }
            }
            Target::ManifestByDigest { repo, manifest } => (
                reqwest::Method::GET,
                format!("/v2/{repo}/manifests/{}", manifest.digest),
                None,
                "digest",
            ),
            Target::Tags { repo, .. } => (
                reqwest::Method::GET,
                format!("/v2/{repo}/tags/list"),
                None,
                "tags",
            ),
            Target::Ping => (reqwest::Method::GET, "/v2/".into(), None, "ping"),
        };
    let mut req = c
        .request(method.clone(), format!("{base}{path}"))
        .header("accept", &accept);
    if let Some((a, b)) = range {
        req = req.header("range", format!("bytes={a}-{b}"));
    }
    let Ok(resp) = req.send().await else {
        tally.transport.fetch_add(1, Ordering::Relaxed);
        tally.status(format!("{expect} transport"));
        // The proxy is being restarted: back off instead of spinning on a dead port.
        tokio::time::sleep(Duration::from_millis(100)).await;
        return;
    };
    let status = resp.status().as_u16();
    tally.requests.fetch_add(1, Ordering::Relaxed);
    tally.status(format!("{expect} {status}"));
    let digest_header = header(&resp, "docker-content-digest");
    let length_header = header(&resp, "content-length").and_then(|v| v.parse::<u64>().ok());
    let content_range = header(&resp, "content-range");
    let (body, aborted) = read_all(resp).await;
    if !(200..300).contains(&status) {
        if aborted {
            tally.aborted.fetch_add(1, Ordering::Relaxed);
        } else if method == reqwest::Method::HEAD || is_oci_error(&body) || status == 401 {
            tally.clean_error.fetch_add(1, Ordering::Relaxed);
        } else {
            tally.clean_error.fetch_add(1, Ordering::Relaxed);
            let mut s = tally.unclean_samples.lock().unwrap();
            if s.len() < 10 {
                s.push(format!(
                    "{method} {path}: {status} body {:?}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                ));
            }
        }
        return;
    }
    if aborted {
        tally.aborted.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let what = format!("{method} {path} range {range:?} -> {status}");
    let ok = match target {
        Target::Blob { blob, .. } => match (expect, status) {
            ("blob-head", 200) => {
                length_header == Some(blob.size())
                    && digest_header.as_deref().is_none_or(|d| d == blob.digest)
            }
            ("blob", 200) | ("blob-range", 200) => sha256_digest(&body) == blob.digest,
            ("blob-range", 206) => {
                let (a, b) = range.unwrap();
                content_range.as_deref() == Some(&format!("bytes {a}-{b}/{}", blob.size()))
                    && body[..] == blob.data[a as usize..=b as usize]
            }
            _ => false,
        },
        Target::ManifestByTag { manifest, .. } => {
            let digest_ok = digest_header.as_deref() == Some(manifest.digest.as_str());
            if expect == "tag-head" {
                digest_ok && length_header == Some(manifest.size())
            } else {
                digest_ok && sha256_digest(&body) == manifest.digest
            }
        }
        Target::ManifestByDigest { manifest, .. } => {
            status == 200
                && sha256_digest(&body) == manifest.digest
                && digest_header
                    .as_deref()
                    .is_none_or(|d| d == manifest.digest)
        }
        Target::Tags { tag, .. } => serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["tags"].as_array().cloned())
            .is_some_and(|tags| tags.iter().any(|t| t == tag.as_str())),
        Target::Ping => status == 200,
    };
    if ok {
        tally.correct.fetch_add(1, Ordering::Relaxed);
    } else {
        tally.status(format!("WRONG {expect} {status}"));
        tally.wrong(format!(
            "{what}: {} bytes, sha256 {}, digest header {digest_header:?}, length {length_header:?}, content-range {content_range:?}",
            body.len(),
            sha256_digest(&body)
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_ten_thousand_mixed_pulls_under_faults_and_kill_9() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    binary().expect("the dockerproxy binary");
    let suite = Instant::now();
    let bed = TestBed::start_with(
        Mode::Plain,
        SeedOptions {
            big_layer_size: 4 << 20,
        },
    )
    .await;

    // Extra cold content: 300 blobs of 1–160 KiB in `soak/data`.
    let mut prng = Prng::new(0x50a4);
    let mut pusher = Pusher::new(bed.registry.base_url(), PushAuth::None).unwrap();
    let mut extra = Vec::new();
    for _ in 0..EXTRA_BLOBS {
        let len = 1024 + (prng.next_u64() % (159 * 1024)) as usize;
        let blob = Blob::new("application/octet-stream", prng.bytes(len));
        pusher.push_blob("soak/data", &blob).await.unwrap();
        extra.push(blob);
    }

    let mut targets = vec![Target::Ping];
    for image in bed.seeded.images() {
        if image.repo == "private/secret" {
            continue;
        }
        targets.push(Target::ManifestByTag {
            repo: image.repo.clone(),
            tag: image.tag.clone(),
            manifest: image.manifest.clone(),
        });
        targets.push(Target::ManifestByDigest {
            repo: image.repo.clone(),
            manifest: image.manifest.clone(),
        });
        targets.push(Target::Tags {
            repo: image.repo.clone(),
            tag: image.tag.clone(),
        });
        for b in image.blobs() {
            targets.push(Target::Blob {
                repo: image.repo.clone(),
                blob: b.clone(),
            });
        }
    }
    for index in bed.seeded.indexes() {
        targets.push(Target::ManifestByTag {
            repo: index.repo.clone(),
            tag: index.tag.clone(),
            manifest: index.manifest.clone(),
        });
        for child in &index.children {
            targets.push(Target::ManifestByDigest {
                repo: index.repo.clone(),
                manifest: child.manifest.clone(),
            });
        }
    }
    let seeded_targets = targets.len();
    for blob in &extra {
        targets.push(Target::Blob {
            repo: "soak/data".into(),
            blob: blob.clone(),
        });
    }
    let targets = Arc::new(targets);

    let chaos = ChaosFront::start(
        bed.registry.base_url(),
        0xC4A05,
        ChaosRates {
            status_5xx: 60,
            cut: 80,
            flip: 80,
            delay: 60,
            trickle: 60,
        },
    )
    .unwrap();
    let front = chaos.base_url();
    let front_hp = front.trim_start_matches("http://").to_owned();
    let toml = format!(
        "mirror_hosts = [\"127.0.0.1\"]\n[limits]\nidle_timeout = \"2s\"\nheader_timeout = \"5s\"\n[routes.\"docker.io\"]\nupstream = \"{front}\"\ndevelopment = true\nrealm_allowlist = []\naddress_exceptions = [\"{front_hp}\"]\n"
    );
    let work = bed.tmp.path().join("proxy");
    let cache = work.join("cache");
    let cache_s = cache.display().to_string();
    let env = [("CACHE_DIR", cache_s.as_str())];
    let mut proc = ProxyProcess::start(&work, &env, &toml).await.unwrap();
    let base = Arc::new(RwLock::new(proc.base_url()));
    let sampler = RssSampler::start(proc.pid(), Duration::from_millis(20));
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));

    let mut clients = tokio::task::JoinSet::new();
    for id in 0..CLIENTS {
        let (targets, base, tally, stop) =
            (targets.clone(), base.clone(), tally.clone(), stop.clone());
        clients.spawn(async move {
            let c = reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap();
            let mut prng = Prng::new(1000 + id as u64);
            while !stop.load(Ordering::Relaxed) {
                // Half the picks among the seeded images, half among the extra blobs.
                let i = if prng.next_u64().is_multiple_of(2) {
                    (prng.next_u64() as usize) % seeded_targets
                } else {
                    (prng.next_u64() as usize) % targets.len()
                };
                let url = base.read().unwrap().clone();
                one_request(&c, &url, &targets[i], &mut prng, &tally).await;
            }
        });
    }

    // Kill -9 and restart at evenly spread request counts; each restart also drops a third of
    // the committed blob files (as a cache loss behind the index would).
    let mut restarts = 0;
    let mut restart_times = Vec::new();
    let mut dropped_files = 0;
    let mut kill_prng = Prng::new(0x9);
    while suite.elapsed() < WALL_LIMIT {
        let n = tally.requests.load(Ordering::Relaxed);
        if restarts < RESTARTS && n >= (restarts as u64 + 1) * MIN_REQUESTS / (RESTARTS as u64 + 1)
        {
            proc.kill9();
            for f in files_under(&cache.join("blobs")) {
                if kill_prng.next_u64().is_multiple_of(3) {
                    let _ = std::fs::remove_file(f);
                    dropped_files += 1;
                }
            }
            // The clients meet a dead port for a moment.
            tokio::time::sleep(Duration::from_millis(200)).await;
            proc = ProxyProcess::start(&work, &env, &toml).await.unwrap();
            sampler.set_pid(proc.pid());
            restart_times.push(proc.ready_after());
            *base.write().unwrap() = proc.base_url();
            restarts += 1;
            let leftover = files_under(&cache.join("tmp"));
            assert!(
                leftover.is_empty(),
                "temp files after restart {restarts}: {leftover:?}"
            );
        }
        if restarts == RESTARTS && n >= MIN_REQUESTS + MIN_REQUESTS / 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    while let Some(r) = clients.join_next().await {
        r.unwrap();
    }
    let faults = chaos.counts().snapshot();

    // After the faults stop, everything is served correctly (nothing sticky).
    chaos.set_enabled(false);
    let after = Tally::default();
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut prng = Prng::new(77);
    let url = proc.base_url();
    for t in targets.iter().take(seeded_targets) {
        one_request(&c, &url, t, &mut prng, &after).await;
    }
    let after_ok = after.correct.load(Ordering::Relaxed);
    let after_n = after.requests.load(Ordering::Relaxed);

    let peak = sampler.peak_kib();
    let samples = sampler.samples();
    drop(sampler);
    let final_log = proc.log();
    drop(proc);
    let blob_files = files_under(&cache.join("blobs"));
    let corrupt: Vec<String> = blob_files
        .iter()
        .filter(|f| {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            sha256_digest(&std::fs::read(f).unwrap_or_default()) != format!("sha256:{name}")
        })
        .map(|f| f.display().to_string())
        .collect();

    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!(
        "SOAK: {} answered requests (+ transport errors) from {CLIENTS} clients in {:?}: correct {}, clean errors {}, aborted bodies {}, transport errors {}, WRONG {}",
        get(&tally.requests),
        suite.elapsed(),
        get(&tally.correct),
        get(&tally.clean_error),
        get(&tally.aborted),
        get(&tally.transport),
        get(&tally.wrong)
    );
    println!("SOAK: faults injected at the upstream: {faults:?}");
    println!(
        "SOAK: kill -9 + restart: {restarts} (spawn -> ready {restart_times:?}), {dropped_files} cache files dropped behind the index"
    );
    println!(
        "SOAK: peak RSS (max of VmRSS/VmHWM over {samples} samples, all runs) {} MiB, bound {} MiB",
        peak / 1024,
        RSS_BOUND_KIB / 1024
    );
    println!(
        "SOAK: cache at the end: {} blob files, {} corrupted; after the faults stopped {after_ok}/{after_n} requests correct",
        blob_files.len(),
        corrupt.len()
    );
    println!("SOAK: statuses {:?}", tally.statuses.lock().unwrap());
    for s in tally.unclean_samples.lock().unwrap().iter() {
        println!("SOAK: error without an OCI body: {s}");
    }
    let wrong = tally.wrong_samples.lock().unwrap().clone();
    assert!(wrong.is_empty(), "WRONG answers: {wrong:#?}");
    assert_eq!(get(&tally.wrong), 0);
    assert!(corrupt.is_empty(), "corrupted cache files: {corrupt:?}");
    assert!(
        get(&tally.requests) >= MIN_REQUESTS,
        "only {} requests",
        get(&tally.requests)
    );
    assert_eq!(restarts, RESTARTS);
    assert!(peak < RSS_BOUND_KIB, "peak RSS {peak} KiB");
    assert!(
        get(&tally.correct) > get(&tally.requests) / 2,
        "mostly failures"
    );
    for (kind, n) in &faults {
        assert!(*n > 0, "no {kind} fault was injected");
    }
    assert_eq!(
        after_ok, after_n,
        "requests still failing after the faults stopped"
    );
    assert!(
        !final_log.contains("panicked"),
        "the proxy panicked:\n{final_log}"
    );
    assert!(suite.elapsed() < Duration::from_secs(240));
}
