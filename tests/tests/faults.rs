//! Fault injection (issue 8, SECURITY.md §3): one or more tests per fault class, each asserting
//! the class's "Survived" outcome, that a legitimate client keeps getting correct bytes during
//! and after the fault, and (where memory could grow) that the proxy process's resident set stays
//! under a stated bound. The proxy runs as the real `dockerproxy` binary in its own process, so
//! VmRSS/VmHWM and open descriptors are read from `/proc/<pid>/status` and `/proc/<pid>/fd`.
//! Hostile upstreams, redirect targets and realms are raw TCP servers ([`RawServer`]) that count
//! every connection, so "no connection reached X" is observed, not assumed.
//!
//! Already covered elsewhere (not repeated here):
//! - class 1: `core/tests/compat_exchange.rs::absolute_form_and_connect_are_refused` (core
//!   level); `server/tests/timeouts.rs::{header_read_timeout_really_fires,
//!   a_silent_connection_is_closed_too}`.
//! - class 2: `core/tests/compat_exchange.rs::invalid_names_tags_digests_are_400_without_upstream`,
//!   `core/tests/grammar_props.rs` (differential parsers, path builder under the root).
//! - class 3: `tests/tests/cache_e2e.rs::compat_52_wrong_bytes_never_end_cleanly_and_are_not_cached`,
//!   `tests/tests/compat_server.rs::security_2_4_wrong_blob_bytes_abort_and_count`,
//!   `server/tests/cache_fill.rs::wrong_bytes_abort_every_client_and_leave_nothing`,
//!   `server/tests/verify_abort.rs`, `core/tests/exchange_scenarios.rs::manifest_with_lying_digest_header_is_502_and_not_stored`.
//!   Added here: HTML 200s, oversized chunked manifests, content-encoded bodies.
//! - class 4: `compat_server.rs::{compat_37_slow_blob_completes_while_bytes_flow_and_a_stall_aborts,
//!   compat_74_upstream_cut_mid_blob_aborts_the_client_stream, compat_34_upstream_errors_relayed_or_mapped}`
//!   (429/503), `server/tests/cache_fill.rs::cut_mid_fill_resumes_with_range_and_commits`.
//! - class 5: `compat_server.rs::compat_42_redirect_loop_is_502`,
//!   `compat_38_39_cdn_redirect_followed_without_authorization_and_with_range`,
//!   `core/tests/exchange_scenarios.rs::redirect_chain_over_the_hop_limit_is_502`,
//!   `core/tests/policy_cases.rs` (downgrades, schemes, userinfo as pure decisions).
//! - class 6: `core/tests/auth_cases.rs::malformed_challenge_never_yields_a_realm`,
//!   `core/tests/policy_cases.rs::realm_policy`, `core/tests/challenge_props.rs`.
//! - class 7: `cache_e2e.rs::compat_48_private_content_cached_for_alice_is_refused_to_anonymous_clients`,
//!   `compat_server.rs::compat_67_68_configured_credentials_serve_anonymous_clients_without_leaking`.
//! - class 8: `cache_e2e.rs::{full_tmpfs_cache_still_serves_blobs_larger_than_the_disk,
//!   read_only_cache_dir_at_start_*, cache_dir_becoming_read_only_at_runtime_keeps_serving}`,
//!   `server/tests/cache_persist.rs::{crash_leftovers_are_never_served, one_process_per_cache_dir,
//!   temp_dir_lost_at_runtime_still_serves_the_client}`,
//!   `server/tests/cache_fill.rs::disk_full_mid_fill_detaches_the_writer_and_clients_still_get_verified_bytes`.
//! - class 9: `cache_e2e.rs::compat_54_fifty_concurrent_cold_gets_one_upstream_get_streamed_to_all`,
//!   `server/tests/cache_fill.rs::{single_flight_n_concurrent_cold_pulls_make_one_upstream_get,
//!   client_disconnect_does_not_cancel_the_fill}`, `server/tests/cache_revalidate.rs`; the soak
//!   (`tests/tests/soak.rs`) runs many concurrent mixed pulls under faults.
//! - class 11: `cache_e2e.rs::{kill_9_during_fills_in_a_loop_leaves_no_partial_entry,
//!   compat_57_restart_on_the_same_cache_dir_serves_hits_without_upstream_gets}`,
//!   `server/tests/cache_rebuild.rs`, `server/tests/timeouts.rs::shutdown_drains_then_returns`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dockerproxy_tests::content::{OCI_MANIFEST, sha256_digest};
use dockerproxy_tests::corrupt::{CorruptFront, Mangle};
use dockerproxy_tests::faults_kit::{
    LegitLoop, RawAction, RawRequest, RawServer, RssSampler, fd_count, http_response, legit_get,
    raw_exchange,
};
use dockerproxy_tests::proxy_process::{ProxyProcess, binary};
use dockerproxy_tests::{Mode, SeedOptions, TestBed, require_tools};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const SMALL: SeedOptions = SeedOptions {
    big_layer_size: 1 << 20,
};
const MIB: u64 = 1 << 20;
/// Peak resident set (VmHWM) allowed for the debug-build proxy in any single fault test.
const RSS_BOUND_KIB: u64 = 192 * 1024;

// ----------------------------------------------------------------------------------------------
// Helpers
// ----------------------------------------------------------------------------------------------

fn quoted(items: &[String]) -> String {
    items
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A proxy configuration: mirror host `127.0.0.1` → the Docker-Hub-flavoured route at
/// `upstream` (a plain-http development upstream), with exactly these realm origins and address
/// exceptions. `extra` goes before the route table (e.g. a `[limits]` table).
fn route_toml(upstream: &str, realms: &[String], exceptions: &[String], extra: &str) -> String {
    format!(
        "mirror_hosts = [\"127.0.0.1\"]\n{extra}\n[routes.\"docker.io\"]\nupstream = \"{upstream}\"\ndevelopment = true\nrealm_allowlist = [{}]\naddress_exceptions = [{}]\n",
        quoted(realms),
        quoted(exceptions)
    )
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned()
}

/// Starts the binary with `CACHE_DIR=<work>/cache`.
async fn start_proxy(work: &Path, toml: &str, env: &[(&str, &str)]) -> ProxyProcess {
    let cache = work.join("cache").display().to_string();
    let mut env = env.to_vec();
    env.push(("CACHE_DIR", &cache));
    ProxyProcess::start(work, &env, toml)
        .await
        .expect("start the dockerproxy binary")
}

fn addr_of(p: &ProxyProcess) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], p.port()))
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client")
}

/// Every regular file under `dir`.
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
    out.sort();
    out
}

/// Files under `work` outside `work/cache`, without the proxy's own logs and configuration.
fn outside_cache(work: &Path) -> Vec<PathBuf> {
    files_under(work)
        .into_iter()
        .filter(|p| {
            !p.starts_with(work.join("cache"))
                && !p.to_string_lossy().ends_with(".log")
                && !p.ends_with("proxy.toml")
        })
        .collect()
}

/// Files under `cache/blobs` whose content does not hash to their name.
fn corrupt_cache_files(cache: &Path) -> Vec<String> {
    files_under(&cache.join("blobs"))
        .into_iter()
        .filter(|f| {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            let data = std::fs::read(f).unwrap_or_default();
            sha256_digest(&data) != format!("sha256:{name}")
        })
        .map(|f| f.display().to_string())
        .collect()
}

fn assert_no_panic(proc: &ProxyProcess) {
    let log = proc.log();
    assert!(!log.contains("panicked"), "the proxy panicked; log:\n{log}");
}

fn assert_rss_bounded(what: &str, sampler: &RssSampler) {
    let peak = sampler.peak_kib();
    println!("FAULTS: {what}: peak RSS {} MiB", peak / 1024);
    assert!(
        peak < RSS_BOUND_KIB,
        "{what}: peak RSS {peak} KiB over the bound {RSS_BOUND_KIB} KiB"
    );
}

fn assert_legit(what: &str, report: &dockerproxy_tests::faults_kit::LegitReport) {
    println!(
        "FAULTS: {what}: legitimate client {} ok, {} failed, slowest {:?}",
        report.ok,
        report.failures.len(),
        report.max_latency
    );
    assert!(report.ok > 0, "{what}: the legitimate client got nothing");
    assert!(
        report.failures.is_empty(),
        "{what}: the legitimate client failed: {:?}",
        report.failures
    );
}

/// A small, valid OCI image manifest (empty config, no layers) and its digest.
fn good_manifest() -> (Vec<u8>, String) {
    let body = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2}},"layers":[]}}"#
    )
    .into_bytes();
    let digest = sha256_digest(&body);
    (body, digest)
}

fn manifest_reply(body: &[u8]) -> Vec<u8> {
    http_response(
        200,
        &[
            ("Content-Type", OCI_MANIFEST),
            ("Docker-Content-Digest", &sha256_digest(body)),
            ("Docker-Distribution-Api-Version", "registry/2.0"),
        ],
        body,
    )
}

fn blob_reply(data: &[u8]) -> Vec<u8> {
    http_response(
        200,
        &[
            ("Content-Type", "application/octet-stream"),
            ("Docker-Content-Digest", &sha256_digest(data)),
        ],
        data,
    )
}

fn ping_reply() -> Vec<u8> {
    http_response(
        200,
        &[
            ("Content-Type", "application/json"),
            ("Docker-Distribution-Api-Version", "registry/2.0"),
        ],
        b"{}",
    )
}

/// Reads a response body to its end; (bytes, error that ended it).
async fn read_body(mut resp: reqwest::Response) -> (Vec<u8>, Option<String>) {
    let mut buf = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => buf.extend_from_slice(&c),
            Ok(None) => return (buf, None),
            Err(e) => return (buf, Some(format!("{e:?}"))),
        }
    }
}

fn oci_code(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["errors"][0]["code"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("<no OCI code: {}>", String::from_utf8_lossy(body)))
}

// ----------------------------------------------------------------------------------------------
// Class 1: malformed or oversized requests
// ----------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// 4xx (or 505), or a close without any answer.
    Reject,
    /// Anything but a server error or a hang.
    NoServerError,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn class_01_malformed_requests_get_4xx_or_close_and_others_are_served() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    binary().expect("the dockerproxy binary");
    let bed = TestBed::start_with(Mode::Plain, SMALL).await;
    // A target the proxy must never dial, even though the address policy would allow it.
    let counter = RawServer::counter().unwrap();
    let toml = route_toml(
        bed.registry.base_url(),
        &[],
        &[bed.host_port(), counter.host_port()],
        "[limits]\nclient_header_timeout = \"2s\"",
    );
    let proc = start_proxy(&bed.tmp.path().join("p"), &toml, &[]).await;
    let addr = addr_of(&proc);
    let host = proc.host_port();
    let blob = bed.seeded.busybox.config.clone();
    let legit_url = format!(
        "{}/v2/library/busybox/blobs/{}",
        proc.base_url(),
        blob.digest
    );
    legit_get(&legit_url, &blob.digest).await.expect("warm-up");
    let sampler = RssSampler::start(proc.pid(), Duration::from_millis(20));
    let fds_before = fd_count(proc.pid());
    let legit = LegitLoop::spawn(
        legit_url.clone(),
        blob.digest.clone(),
        Duration::from_millis(20),
    );

    let cnt = counter.host_port();
    let long_line = format!(
        "GET /v2/{} HTTP/1.1\r\nHost: {host}\r\n\r\n",
        "a".repeat(100_000)
    );
    let many_headers = format!(
        "GET /v2/ HTTP/1.1\r\nHost: {host}\r\n{}\r\n",
        (0..200)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    let big_header = format!(
        "GET /v2/ HTTP/1.1\r\nHost: {host}\r\nX-Big: {}\r\n\r\n",
        "b".repeat(100 * 1024)
    );
    let unwanted_body = format!(
        "GET /v2/library/busybox/blobs/{} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 200000\r\n\r\n{}",
        blob.digest,
        "z".repeat(200_000)
    );
    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        ("request line of 100 KB", long_line.into_bytes(), Expect::Reject),
        ("200 header lines", many_headers.into_bytes(), Expect::Reject),
        ("one 100 KiB header", big_header.into_bytes(), Expect::Reject),
        (
            "obs-fold",
            format!("GET /v2/ HTTP/1.1\r\nHost: {host}\r\nX-A: a\r\n  folded\r\n\r\n").into_bytes(),
            Expect::Reject,
        ),
        (
            "Content-Length and Transfer-Encoding",
            format!("POST /v2/ HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /v2/ HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes(),
            Expect::Reject,
        ),
        (
            "two different Content-Length",
            format!("GET /v2/ HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab").into_bytes(),
            Expect::Reject,
        ),
        (
            "control character in the target",
            format!("GET /v2/\x01 HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes(),
            Expect::Reject,
        ),
        (
            "NUL in a header value",
            format!("GET /v2/ HTTP/1.1\r\nHost: {host}\r\nX-A: a\0b\r\n\r\n").into_bytes(),
            Expect::Reject,
        ),
        (
            "bare LF line ends with a CR in a name",
            format!("GET /v2/ HTTP/1.1\nHost: {host}\nX\rY: z\n\n").into_bytes(),
            Expect::Reject,
        ),
        (
            "missing Host",
            b"GET /v2/library/busybox/manifests/latest HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(),
            Expect::Reject,
        ),
        (
            "two Host headers",
            format!("GET /v2/library/busybox/manifests/latest HTTP/1.1\r\nHost: {host}\r\nHost: {cnt}\r\nConnection: close\r\n\r\n").into_bytes(),
            Expect::Reject,
        ),
        (
            "userinfo in Host",
            format!("GET /v2/library/busybox/manifests/latest HTTP/1.1\r\nHost: user:pw@{host}\r\nConnection: close\r\n\r\n").into_bytes(),
            Expect::Reject,
        ),
        (
            "absolute-form target at a dialable host",
            format!("GET http://{cnt}/v2/library/busybox/manifests/latest HTTP/1.1\r\nHost: {cnt}\r\nConnection: close\r\n\r\n").into_bytes(),
            Expect::Reject,
        ),
        (
            "CONNECT",
            format!("CONNECT {cnt} HTTP/1.1\r\nHost: {cnt}\r\n\r\n").into_bytes(),
            Expect::Reject,
        ),
        (
            "OPTIONS *",
            format!("OPTIONS * HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes(),
            Expect::Reject,
        ),
        ("HTTP/0.9", b"GET /v2/\r\n\r\n".to_vec(), Expect::Reject),
        (
            "HTTP/2.0 on an HTTP/1 request line",
            format!("GET /v2/ HTTP/2.0\r\nHost: {host}\r\n\r\n").into_bytes(),
            Expect::Reject,
        ),
        (
            "h2 prior-knowledge preface on a plain listener",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0".to_vec(),
            Expect::Reject,
        ),
        (
            "TLS ClientHello on a plain listener",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03".to_vec(),
            Expect::Reject,
        ),
        (
            "a 1000-byte method",
            format!("{} /v2/ HTTP/1.1\r\nHost: {host}\r\n\r\n", "G".repeat(1000)).into_bytes(),
            Expect::Reject,
        ),
        (
            "DELETE of a manifest",
            format!("DELETE /v2/library/busybox/manifests/latest HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes(),
            Expect::Reject,
        ),
        (
            "HTTP/1.0",
            format!("GET /v2/ HTTP/1.0\r\nHost: {host}\r\n\r\n").into_bytes(),
            Expect::NoServerError,
        ),
        ("an unwanted body on a GET", unwanted_body.into_bytes(), Expect::NoServerError),
    ];

    const ROUNDS: usize = 8;
    let mut set = tokio::task::JoinSet::new();
    for round in 0..ROUNDS {
        for (i, (name, bytes, expect)) in cases.iter().enumerate() {
            let (name, bytes, expect) = (name.to_string(), bytes.clone(), *expect);
            set.spawn(async move {
                let reply = raw_exchange(addr, &bytes, Duration::from_secs(8)).await;
                (round, i, name, expect, reply)
            });
        }
    }
    let mut outcomes = Vec::new();
    while let Some(r) = set.join_next().await {
        let (round, _i, name, expect, reply) = r.unwrap();
        let ok = match (expect, reply.status) {
            (_, None) => reply.closed,
            (Expect::Reject, Some(s)) => (400..500).contains(&s) || s == 505,
            (Expect::NoServerError, Some(s)) => s < 500,
        };
        if round == 0 {
            outcomes.push(format!(
                "{name}: {:?} closed={} after {:?}",
                reply.status, reply.closed, reply.elapsed
            ));
        }
        assert!(
            ok,
            "{name} (round {round}): {expect:?} expected, got status {:?} closed={} timed_out={} head {:?}",
            reply.status,
            reply.closed,
            reply.timed_out,
            reply.head.chars().take(300).collect::<String>()
        );
    }
    outcomes.sort();
    for o in &outcomes {
        println!("FAULTS: class 1: {o}");
    }
    // Once the attack stopped, descriptors return to the baseline.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = legit.finish().await;
    assert_legit("class 1", &report);
    assert_eq!(
        counter.connections(),
        0,
        "the proxy dialled the absolute-form/CONNECT target"
    );
    let fds_after = fd_count(proc.pid());
    assert!(
        fds_after <= fds_before + 16,
        "descriptors {fds_before} -> {fds_after}"
    );
    assert_rss_bounded("class 1", &sampler);
    legit_get(&legit_url, &blob.digest)
        .await
        .expect("served after the attack");
    assert_no_panic(&proc);
}

// ----------------------------------------------------------------------------------------------
// Class 2: invalid names, tags, digests and paths
// ----------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn class_02_hostile_names_digests_and_parameters_are_400_without_upstream_traffic() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    binary().expect("the dockerproxy binary");
    let bed = TestBed::start_with(Mode::Plain, SMALL).await;
    let toml = route_toml(bed.registry.base_url(), &[], &[bed.host_port()], "");
    let work = bed.tmp.path().join("p");
    // A file next to the cache that traversal would aim at.
    std::fs::create_dir_all(work.join("etc")).unwrap();
    std::fs::write(work.join("etc/passwd"), "root:x:0:0").unwrap();
    let proc = start_proxy(&work, &toml, &[]).await;
    let addr = addr_of(&proc);
    let host = proc.host_port();
    let blob = bed.seeded.busybox.config.clone();
    let legit_url = format!(
        "{}/v2/library/busybox/blobs/{}",
        proc.base_url(),
        blob.digest
    );
    legit_get(&legit_url, &blob.digest).await.expect("warm-up");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let upstream_before = bed.registry.upstream_requests().len();
    let outside_before = outside_cache(&work);
    let legit = LegitLoop::spawn(
        legit_url.clone(),
        blob.digest.clone(),
        Duration::from_millis(20),
    );

    let hex = blob.hex().to_owned();
    let upper = hex.to_ascii_uppercase();
    let long_name = "a".repeat(10_000);
    let long_tag = "t".repeat(129);
    let name_cases = [
        "/v2/library/../etc/manifests/latest".to_owned(),
        "/v2/library/%2e%2e/etc/manifests/latest".to_owned(),
        "/v2/library/%2E%2E/manifests/latest".to_owned(),
        "/v2/library/./busybox/manifests/latest".to_owned(),
        "/v2/library//busybox/manifests/latest".to_owned(),
        "/v2/library%2fbusybox/manifests/latest".to_owned(),
        "/v2/library%252fbusybox/manifests/latest".to_owned(),
        "/v2/library%252e%252e/busybox/manifests/latest".to_owned(),
        "/v2/library/busy%00box/manifests/latest".to_owned(),
        "/v2/library/busy%0d%0abox/manifests/latest".to_owned(),
        "/v2/library/Busybox/manifests/latest".to_owned(),
        // A Cyrillic "о" (homoglyph), percent-encoded UTF-8.
        "/v2/library/busyb%D0%BEx/manifests/latest".to_owned(),
        "/v2/library/busyb%C0%AFx/manifests/latest".to_owned(),
        format!("/v2/{long_name}/manifests/latest"),
        format!("/v2/library/{}/manifests/latest", "a/".repeat(200)),
    ];
    let tag_cases = [
        "/v2/library/busybox/manifests/..%2f..%2fetc%2fpasswd".to_owned(),
        "/v2/library/busybox/manifests/-latest".to_owned(),
        "/v2/library/busybox/manifests/lat%00est".to_owned(),
        "/v2/library/busybox/manifests/.latest".to_owned(),
        format!("/v2/library/busybox/manifests/{long_tag}"),
    ];
    let digest_cases = [
        "/v2/library/busybox/blobs/sha256:../../../../etc/passwd".to_owned(),
        "/v2/library/busybox/blobs/sha256:%2e%2e%2f%2e%2e%2fetc%2fpasswd".to_owned(),
        "/v2/library/busybox/blobs/sha256%3a..%2f..%2fetc".to_owned(),
        format!("/v2/library/busybox/blobs/sha256:{upper}"),
        format!("/v2/library/busybox/blobs/sha256:{}", &hex[..63]),
        format!("/v2/library/busybox/blobs/sha256:{hex}0"),
        format!("/v2/library/busybox/blobs/sha256:{hex}%00"),
        format!("/v2/library/busybox/blobs/sha384:{}", "a".repeat(96)),
        format!("/v2/library/busybox/blobs/md5:{}", "a".repeat(32)),
        format!("/v2/library/busybox/blobs/SHA256:{hex}"),
        format!("/v2/library/busybox/blobs/sha256+b64:{hex}"),
        format!("/v2/library/busybox/manifests/sha256:{upper}"),
        format!("/v2/library/busybox/manifests/sha384:{}", "b".repeat(96)),
        format!("/v2/library/busybox/blobs/{hex}"),
    ];
    let groups: [(&str, &[String], &[&str]); 3] = [
        ("name", &name_cases, &["NAME_INVALID"]),
        (
            "tag",
            &tag_cases,
            &["TAG_INVALID", "MANIFEST_INVALID", "NAME_INVALID"],
        ),
        (
            "digest",
            &digest_cases,
            &[
                "DIGEST_INVALID",
                "UNSUPPORTED",
                "NAME_INVALID",
                "TAG_INVALID",
            ],
        ),
    ];
    let mut seen = Vec::new();
    for (group, paths, codes) in groups {
        for path in paths {
            for method in ["GET", "HEAD"] {
                let req = format!(
                    "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                );
                let reply = raw_exchange(addr, req.as_bytes(), Duration::from_secs(8)).await;
                let short: String = path.chars().take(90).collect();
                assert!(
                    matches!(reply.status, Some(400) | Some(404) | Some(414) | Some(431)),
                    "{group} {method} {short}: status {:?} head {:?}",
                    reply.status,
                    reply.head
                );
                if method == "GET" && reply.status == Some(400) {
                    let code = oci_code(&reply.body);
                    assert!(
                        codes.contains(&code.as_str()),
                        "{group} {short}: code {code}, expected one of {codes:?}"
                    );
                    seen.push(format!("{group} {short} -> 400 {code}"));
                } else if method == "GET" {
                    seen.push(format!("{group} {short} -> {:?}", reply.status));
                }
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let upstream = bed.registry.upstream_requests()[upstream_before..].to_vec();
    assert!(
        upstream.is_empty(),
        "invalid requests reached the upstream: {upstream:?}"
    );
    for s in &seen {
        println!("FAULTS: class 2: {s}");
    }
    let report = legit.finish().await;
    assert_legit("class 2", &report);
    let outside_after = outside_cache(&work);
    assert_eq!(
        outside_before, outside_after,
        "files appeared outside the cache root"
    );
    assert_eq!(
        std::fs::read_to_string(work.join("etc/passwd")).unwrap(),
        "root:x:0:0"
    );
    assert!(corrupt_cache_files(&work.join("cache")).is_empty());
    assert_no_panic(&proc);
}

/// SECURITY §2.2: "the `n` pagination value is clamped or rejected". The proxy forwards any `n`
/// verbatim (e.g. `n=99999999999999999999999`) to the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class_02_hostile_pagination_is_clamped_or_rejected() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    binary().expect("the dockerproxy binary");
    let bed = TestBed::start_with(Mode::Plain, SMALL).await;
    let toml = route_toml(bed.registry.base_url(), &[], &[bed.host_port()], "");
    let proc = start_proxy(&bed.tmp.path().join("p"), &toml, &[]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = bed.registry.upstream_requests().len();
    let params = [
        "/v2/library/busybox/tags/list?n=99999999999999999999999",
        "/v2/library/busybox/tags/list?n=-1",
        "/v2/library/busybox/tags/list?n=1e9",
        "/v2/library/busybox/tags/list?n=2147483648",
        "/v2/library/busybox/tags/list?n=10&n=20",
    ];
    for p in params {
        let resp = client()
            .get(format!("{}{p}", proc.base_url()))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        assert!(matches!(status, 200 | 400), "{p}: {status}");
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    for (m, p) in &bed.registry.upstream_requests()[before..] {
        assert_eq!(m, "GET");
        let ns: Vec<&str> = p
            .split(['?', '&'])
            .filter_map(|kv| kv.strip_prefix("n="))
            .collect();
        assert!(ns.len() <= 1, "several n forwarded: {p}");
        if let Some(n) = ns.first() {
            let n: u64 = n
                .parse()
                .unwrap_or_else(|_| panic!("forwarded a non-numeric n: {p}"));
            assert!(n <= 100_000, "forwarded n={n} unclamped: {p}");
        }
    }
    assert_no_panic(&proc);
}

// ----------------------------------------------------------------------------------------------
// Class 4: upstream transport faults
// ----------------------------------------------------------------------------------------------

/// `HTTP/1.1 <status>` head with these header lines, ending with the blank line.
fn head(status: u16, lines: &[String]) -> Vec<u8> {
    let mut h = format!("HTTP/1.1 {status} X\r\n");
    for l in lines {
        h.push_str(l);
        h.push_str("\r\n");
    }
    h.push_str("\r\n");
    h.into_bytes()
}

fn limits_1s() -> &'static str {
    "[limits]\nconnect_timeout = \"1s\"\nheader_timeout = \"1s\"\nidle_timeout = \"1s\""
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn class_04_upstream_transport_faults_end_in_clean_errors_within_the_timeouts() {
    binary().expect("the dockerproxy binary");
    let tmp = tempfile::tempdir().unwrap();
    let (good, good_digest) = good_manifest();
    let trickled = vec![b'q'; 3000];
    let cut = vec![b'c'; 100_000];
    let (trickled_d, cut_d) = (sha256_digest(&trickled), sha256_digest(&cut));
    let healed = Arc::new(AtomicBool::new(false));
    let script = {
        let (good, cut, healed) = (good.clone(), cut.clone(), healed.clone());
        let (trickled_d, cut_d) = (trickled_d.clone(), cut_d.clone());
        Arc::new(move |r: &RawRequest| -> RawAction {
            let path = r.path();
            let healed = healed.load(Ordering::SeqCst);
            if path == "/v2/" {
                return RawAction::Respond(ping_reply());
            }
            if path.starts_with("/v2/library/good/") || (healed && path.contains("/manifests/")) {
                return RawAction::Respond(manifest_reply(&good));
            }
            if path.starts_with("/v2/library/hang/") {
                return RawAction::Hang;
            }
            if path.starts_with("/v2/library/stall/") {
                let mut h = head(
                    200,
                    &[
                        format!("Content-Type: {OCI_MANIFEST}"),
                        format!("Content-Length: {}", good.len()),
                    ],
                );
                h.extend_from_slice(&good[..50]);
                return RawAction::Stream {
                    head: h,
                    chunk: good[50..].to_vec(),
                    times: 1,
                    interval: Duration::from_secs(30),
                };
            }
            if path.starts_with("/v2/library/huge/") {
                return RawAction::Stream {
                    head: head(500, &["Content-Type: text/html".into()]),
                    chunk: vec![b'x'; 64 << 10],
                    times: 1600,
                    interval: Duration::ZERO,
                };
            }
            if path.starts_with("/v2/library/hugecl/") {
                return RawAction::Stream {
                    head: head(
                        503,
                        &[
                            "Content-Type: text/html".into(),
                            "Content-Length: 104857600".into(),
                        ],
                    ),
                    chunk: vec![b'x'; 64 << 10],
                    times: 1600,
                    interval: Duration::ZERO,
                };
            }
            if path.ends_with(&trickled_d) {
                return RawAction::Stream {
                    head: head(
                        200,
                        &[
                            "Content-Type: application/octet-stream".into(),
                            "Content-Length: 3000".into(),
                            format!("Docker-Content-Digest: {trickled_d}"),
                        ],
                    ),
                    chunk: vec![b'q'; 150],
                    times: 20,
                    interval: Duration::from_millis(250),
                };
            }
            if path.ends_with(&cut_d) {
                if healed {
                    return RawAction::Respond(blob_reply(&cut));
                }
                return RawAction::Stream {
                    head: head(
                        200,
                        &[
                            "Content-Type: application/octet-stream".into(),
                            "Content-Length: 100000".into(),
                            format!("Docker-Content-Digest: {cut_d}"),
                        ],
                    ),
                    chunk: vec![b'c'; 1000],
                    times: 5,
                    interval: Duration::ZERO,
                };
            }
            RawAction::RespondClose(http_response(404, &[], b"{}"))
        })
    };
    let upstream = RawServer::start(script).unwrap();
    let toml = route_toml(
        &upstream.base_url(),
        &[],
        &[upstream.host_port()],
        limits_1s(),
    );
    let work = tmp.path().join("p");
    let proc = start_proxy(&work, &toml, &[]).await;
    let base = proc.base_url();
    let legit_url = format!("{base}/v2/library/good/manifests/{good_digest}");
    legit_get(&legit_url, &good_digest).await.expect("warm-up");
    let sampler = RssSampler::start(proc.pid(), Duration::from_millis(20));
    let legit = LegitLoop::spawn(
        legit_url.clone(),
        good_digest.clone(),
        Duration::from_millis(25),
    );

    let c = client();
    let get = |path: String| {
        let c = c.clone();
        let url = format!("{base}{path}");
        tokio::spawn(async move {
            let started = Instant::now();
            match c.get(&url).header("accept", OCI_MANIFEST).send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let (body, err) = read_body(resp).await;
                    (Some(status), body, err, started.elapsed())
                }
                Err(e) => (None, Vec::new(), Some(format!("{e:?}")), started.elapsed()),
            }
        })
    };
    let hang = get("/v2/library/hang/manifests/x".into());
    let stall = get("/v2/library/stall/manifests/x".into());
    let huge = get("/v2/library/huge/manifests/x".into());
    let hugecl = get("/v2/library/hugecl/manifests/x".into());
    let trickle = get(format!("/v2/library/trickle/blobs/{trickled_d}"));
    let cutr = get(format!("/v2/library/cut/blobs/{cut_d}"));

    let (s, body, _, t) = hang.await.unwrap();
    assert_eq!(
        s,
        Some(504),
        "headers never arrive: {}",
        String::from_utf8_lossy(&body)
    );
    assert!(t < Duration::from_secs(4), "504 only after {t:?}");
    let (s, body, _, t) = stall.await.unwrap();
    assert!(
        matches!(s, Some(502 | 504)),
        "stall mid-manifest: {s:?} {}",
        String::from_utf8_lossy(&body)
    );
    assert!(t < Duration::from_secs(5), "stall answered after {t:?}");
    for (what, h) in [
        ("5xx, close-delimited 100 MiB", huge),
        ("5xx, Content-Length 100 MiB", hugecl),
    ] {
        let (s, body, _, t) = h.await.unwrap();
        assert_eq!(s, Some(502), "{what}");
        assert_eq!(oci_code(&body), "UNAVAILABLE", "{what}");
        assert!(
            body.len() < 64 << 10,
            "{what}: {} bytes relayed",
            body.len()
        );
        assert!(
            !String::from_utf8_lossy(&body).contains("xxxx"),
            "{what}: upstream HTML relayed"
        );
        assert!(t < Duration::from_secs(5), "{what}: answered after {t:?}");
    }
    let (s, body, err, t) = trickle.await.unwrap();
    assert_eq!(s, Some(200));
    assert!(err.is_none(), "trickled blob aborted: {err:?}");
    assert_eq!(sha256_digest(&body), trickled_d);
    assert!(t > Duration::from_secs(4), "not trickled? {t:?}");
    let (s, body, err, _) = cutr.await.unwrap();
    let clean_wrong = s == Some(200) && err.is_none() && sha256_digest(&body) != cut_d;
    assert!(
        !clean_wrong,
        "a cut blob ended cleanly with {} bytes",
        body.len()
    );
    assert!(
        s != Some(200) || err.is_some() || sha256_digest(&body) == cut_d,
        "cut blob: {s:?} {err:?}"
    );

    // Connection refused: another proxy whose upstream port is closed.
    let closed = dockerproxy_tests::free_addr();
    let toml2 = route_toml(
        &format!("http://{closed}"),
        &[],
        &[closed.to_string()],
        limits_1s(),
    );
    let refused = start_proxy(&tmp.path().join("r"), &toml2, &[]).await;
    let started = Instant::now();
    let resp = c
        .get(format!(
            "{}/v2/library/good/manifests/latest",
            refused.base_url()
        ))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap();
    assert!(matches!(status, 502 | 504), "refused: {status}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        !String::from_utf8_lossy(&body).contains(&closed.port().to_string()),
        "the error names the internal address: {}",
        String::from_utf8_lossy(&body)
    );
    assert_no_panic(&refused);
    drop(refused);

    // Once the faults clear, the same requests succeed (no failure is sticky).
    healed.store(true, Ordering::SeqCst);
    let (s, body, err, _) = get("/v2/library/hang/manifests/x".into()).await.unwrap();
    assert_eq!((s, err), (Some(200), None));
    assert_eq!(sha256_digest(&body), good_digest);
    let (s, body, err, _) = get(format!("/v2/library/cut/blobs/{cut_d}")).await.unwrap();
    assert_eq!((s, err), (Some(200), None));
    assert_eq!(sha256_digest(&body), cut_d);

    let report = legit.finish().await;
    assert_legit("class 4", &report);
    assert_rss_bounded("class 4", &sampler);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cache = work.join("cache");
    assert!(corrupt_cache_files(&cache).is_empty());
    let tmp_files = files_under(&cache.join("tmp"));
    assert!(tmp_files.is_empty(), "temp files left: {tmp_files:?}");
    assert_no_panic(&proc);
}

/// SECURITY §2.5: "Idempotent GET/HEAD are retried once when a pooled connection turns out to be
/// dead." The upstream answers the first request of each connection and closes every later one
/// without an answer (a keep-alive connection that died while pooled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class_04_dead_pooled_connection_is_retried_once() {
    binary().expect("the dockerproxy binary");
    let tmp = tempfile::tempdir().unwrap();
    let (good, good_digest) = good_manifest();
    let upstream = RawServer::start(Arc::new(move |r: &RawRequest| {
        if r.index_on_conn == 0 {
            if r.path() == "/v2/" {
                RawAction::Respond(ping_reply())
            } else {
                RawAction::Respond(manifest_reply(&good))
            }
        } else {
            RawAction::Close
        }
    }))
    .unwrap();
    let toml = route_toml(
        &upstream.base_url(),
        &[],
        &[upstream.host_port()],
        limits_1s(),
    );
    let proc = start_proxy(&tmp.path().join("p"), &toml, &[("CACHE_ENABLED", "false")]).await;
    let c = client();
    let mut statuses = Vec::new();
    for i in 0..6 {
        let resp = c
            .get(format!(
                "{}/v2/library/pool/manifests/t{i}",
                proc.base_url()
            ))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        let s = resp.status().as_u16();
        let body = resp.bytes().await.unwrap();
        if s == 200 {
            assert_eq!(sha256_digest(&body), good_digest);
        }
        statuses.push(s);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reqs = upstream.requests();
    println!(
        "FAULTS: class 4 dead pooled connections: statuses {statuses:?}; upstream saw {:?}",
        reqs.iter()
            .map(|r| (r.conn, r.index_on_conn))
            .collect::<Vec<_>>()
    );
    assert!(
        reqs.iter().any(|r| r.index_on_conn > 0),
        "the proxy never reused a pooled connection, so the test proved nothing"
    );
    assert!(statuses.iter().all(|s| *s == 200), "statuses {statuses:?}");
    assert_no_panic(&proc);
}

// ----------------------------------------------------------------------------------------------
// Class 5: redirect abuse
// ----------------------------------------------------------------------------------------------

fn redirect_data(i: usize) -> Vec<u8> {
    format!("redirect case {i} ").repeat(200).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn class_05_hostile_redirects_are_502_without_any_connection_to_the_target() {
    binary().expect("the dockerproxy binary");
    let tmp = tempfile::tempdir().unwrap();
    // Allowed by the address policy (an exception), so only the redirect rules can stop a dial.
    let allowed = RawServer::counter().unwrap();
    // Not in the exceptions: a loopback address the policy denies.
    let denied = RawServer::counter().unwrap();
    // Positive control: an allowed target without tricks, which the proxy does dial.
    let control = RawServer::counter().unwrap();
    let (a, d, dp, ctl) = (
        allowed.host_port(),
        denied.host_port(),
        denied.addr().port(),
        control.host_port(),
    );
    let locations: Vec<String> = vec![
        "file:///etc/passwd".into(),
        format!("ftp://{a}/x"),
        format!("gopher://{a}/x"),
        format!("http://user:pw@{a}/cdn/x"),
        format!("http://{d}/cdn/x"),
        format!("http://2130706433:{dp}/cdn/x"),
        format!("http://0x7f.1:{dp}/cdn/x"),
        format!("http://0177.0.0.1:{dp}/cdn/x"),
        format!("http://0.0.0.0:{dp}/cdn/x"),
        format!("http://[::ffff:127.0.0.1]:{dp}/cdn/x"),
        format!("http://localhost:{dp}/cdn/x"),
    ];
    let n = locations.len();
    let healed = Arc::new(AtomicBool::new(false));
    let script = {
        let (locations, healed) = (locations.clone(), healed.clone());
        Arc::new(move |r: &RawRequest| -> RawAction {
            let path = r.path().to_owned();
            if path == "/v2/" {
                return RawAction::Respond(ping_reply());
            }
            let redirect =
                |to: &str| RawAction::Respond(http_response(307, &[("Location", to)], b""));
            // /v2/library/r<i>/blobs/<digest>
            if let Some(i) = path
                .strip_prefix("/v2/library/r")
                .and_then(|rest| rest.split('/').next())
                .and_then(|i| i.parse::<usize>().ok())
            {
                if healed.load(Ordering::SeqCst) || i == locations.len() + 1 {
                    return RawAction::Respond(blob_reply(&redirect_data(i)));
                }
                if i == locations.len() {
                    // Relative redirect to the same (allowed) host: followed.
                    return redirect(&format!("/cdn/{i}"));
                }
                return redirect(&locations[i]);
            }
            if let Some(i) = path
                .strip_prefix("/cdn/")
                .and_then(|i| i.parse::<usize>().ok())
            {
                return RawAction::Respond(blob_reply(&redirect_data(i)));
            }
            if path.starts_with("/v2/library/chain/") {
                let hop: usize = r
                    .target()
                    .split("hop=")
                    .nth(1)
                    .and_then(|h| h.parse().ok())
                    .unwrap_or(0);
                return redirect(&format!("{path}?hop={}", hop + 1));
            }
            RawAction::RespondClose(http_response(404, &[], b"{}"))
        })
    };
    let upstream = RawServer::start(script).unwrap();
    let toml = route_toml(
        &upstream.base_url(),
        &[],
        &[upstream.host_port(), a.clone(), ctl.clone()],
        limits_1s(),
    );
    let work = tmp.path().join("p");
    let proc = start_proxy(&work, &toml, &[]).await;
    let base = proc.base_url();
    let (good, good_digest) = good_manifest();
    drop(good);
    let c = client();
    let get = |path: String| {
        let c = c.clone();
        let url = format!("{base}{path}");
        async move {
            let resp = c.get(&url).send().await.unwrap();
            let status = resp.status().as_u16();
            let loc = resp
                .headers()
                .get("location")
                .map(|v| v.to_str().unwrap_or("").to_owned());
            let (body, err) = read_body(resp).await;
            (status, loc, body, err)
        }
    };
    let _ = good_digest;
    for (i, loc) in locations.iter().enumerate() {
        let digest = sha256_digest(&redirect_data(i));
        let (status, location, body, _) = get(format!("/v2/library/r{i}/blobs/{digest}")).await;
        println!("FAULTS: class 5: Location {loc} -> {status}");
        assert_eq!(status, 502, "Location {loc}: {status} {location:?}");
        assert!(
            location.is_none(),
            "Location {loc} relayed to the client: {location:?}"
        );
        let text = String::from_utf8_lossy(&body);
        assert!(
            !text.contains(&a) && !text.contains(&d) && !text.contains("passwd"),
            "the error names the target: {text}"
        );
    }
    // Relative redirect on the same host: followed, verified, served.
    let digest = sha256_digest(&redirect_data(n));
    let (status, _, body, err) = get(format!("/v2/library/r{n}/blobs/{digest}")).await;
    assert_eq!((status, err), (200, None), "relative redirect");
    assert_eq!(sha256_digest(&body), digest);
    // An endless relative chain: 502 after the hop limit.
    let digest = sha256_digest(b"chain");
    let (status, _, _, _) = get(format!("/v2/library/chain/blobs/{digest}")).await;
    assert_eq!(status, 502, "endless redirect chain");
    let chain = upstream
        .requests()
        .iter()
        .filter(|r| r.path().starts_with("/v2/library/chain/"))
        .count();
    assert!(
        chain <= 6,
        "{chain} requests along the chain (1 + 5 hops at most)"
    );
    // The control: a plain redirect to an allowed address is dialled (the counters work).
    let ctl_upstream = RawServer::start({
        let ctl = ctl.clone();
        Arc::new(move |_r: &RawRequest| {
            RawAction::Respond(http_response(
                307,
                &[("Location", &format!("http://{ctl}/cdn/x"))],
                b"",
            ))
        })
    })
    .unwrap();
    let toml2 = route_toml(
        &ctl_upstream.base_url(),
        &[],
        &[ctl_upstream.host_port(), ctl.clone()],
        limits_1s(),
    );
    let proc2 = start_proxy(&tmp.path().join("ctl"), &toml2, &[]).await;
    let resp = c
        .get(format!(
            "{}/v2/library/x/blobs/{}",
            proc2.base_url(),
            sha256_digest(b"x")
        ))
        .send()
        .await
        .unwrap();
    assert!(resp.status().as_u16() >= 500);
    assert!(
        control.connections() >= 1,
        "the control redirect was not dialled"
    );
    drop(proc2);

    assert_eq!(
        allowed.connections(),
        0,
        "a refused redirect target was dialled"
    );
    assert_eq!(
        denied.connections(),
        0,
        "a denied (internal) redirect target was dialled"
    );
    // Nothing redirect-related was cached: healed, the same digests are fetched and served.
    healed.store(true, Ordering::SeqCst);
    for i in [1usize, 3, 4] {
        let digest = sha256_digest(&redirect_data(i));
        let (status, _, body, err) = get(format!("/v2/library/r{i}/blobs/{digest}")).await;
        assert_eq!((status, err), (200, None), "case {i} after healing");
        assert_eq!(sha256_digest(&body), digest);
    }
    assert!(corrupt_cache_files(&work.join("cache")).is_empty());
    let log = proc.log();
    assert!(!log.contains("user:pw"), "userinfo logged in clear");
    assert_no_panic(&proc);
}

// ----------------------------------------------------------------------------------------------
// Class 6: authentication protocol abuse
// ----------------------------------------------------------------------------------------------

fn challenge_reply(challenge: &[u8]) -> Vec<u8> {
    let mut out = b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nDocker-Distribution-Api-Version: registry/2.0\r\nWWW-Authenticate: ".to_vec();
    out.extend_from_slice(challenge);
    out.extend_from_slice(b"\r\nContent-Length: 2\r\n\r\n{}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn class_06_hostile_challenges_never_send_a_token_request_off_the_allowlist() {
    binary().expect("the dockerproxy binary");
    let tmp = tempfile::tempdir().unwrap();
    let off = RawServer::counter().unwrap();
    let case = Arc::new(AtomicUsize::new(0));
    let challenges: Arc<std::sync::Mutex<Vec<Vec<u8>>>> =
        Arc::new(std::sync::Mutex::new(Vec::new()));
    let script = {
        let (case, challenges) = (case.clone(), challenges.clone());
        Arc::new(move |r: &RawRequest| -> RawAction {
            if r.path().starts_with("/token") {
                return RawAction::Respond(http_response(
                    200,
                    &[("Content-Type", "application/json")],
                    br#"{"token":"abc","expires_in":300}"#,
                ));
            }
            let c = challenges.lock().unwrap()[case.load(Ordering::SeqCst)].clone();
            RawAction::Respond(challenge_reply(&c))
        })
    };
    let upstream = RawServer::start(script).unwrap();
    let (o, u) = (off.host_port(), upstream.host_port());
    let mut list: Vec<Vec<u8>> = vec![
        format!(r#"Bearer realm="http://{o}/token",service="s""#).into_bytes(),
        format!(r#"Bearer realm="http://{o}/token"#).into_bytes(),
        format!("Bearer realm=http://{o}/token service=s").into_bytes(),
        format!(r#"Bearer realm="http://{u}/token",realm="http://{o}/token",service="s""#)
            .into_bytes(),
        format!(r#"Bearer realm="http://{o}/token",realm="http://{u}/token",service="s""#)
            .into_bytes(),
        [
            format!(r#"Bearer realm="http://{o}/tok"#).as_bytes(),
            b"\xff\xfe",
            b"en\",service=\"s\"",
        ]
        .concat(),
        format!(
            r#"Bearer realm="http://{o}/token",service="s",x="{}""#,
            "y".repeat(60_000)
        )
        .into_bytes(),
        format!(r#"Basic realm="x", Bearer realm="http://{o}/token",service="s""#).into_bytes(),
        format!(r#"Bearer realm="http://user:pw@{u}/token",service="s""#).into_bytes(),
        format!(r#"Bearer realm="http://{u}@{o}/token",service="s""#).into_bytes(),
        format!(r#"Bearer service="s",realm="http://{o}/to\"ken""#).into_bytes(),
        format!(r#"Bearer realm="http://{u}/token",service="s",scope="repository:a:push""#)
            .into_bytes(),
        b"Bearer".to_vec(),
        b"Bearer ,,,,=,=\"".to_vec(),
    ];
    let n = list.len();
    challenges.lock().unwrap().append(&mut list);
    let toml = route_toml(
        &upstream.base_url(),
        &[upstream.base_url()],
        &[u.clone(), o.clone()],
        limits_1s(),
    );
    let c = client();
    for i in 0..n {
        case.store(i, Ordering::SeqCst);
        // A fresh proxy per case: realm discovery starts from scratch.
        let proc = start_proxy(&tmp.path().join(format!("p{i}")), &toml, &[]).await;
        let ours = format!("{}/v2/auth", proc.base_url());
        let resp = c
            .get(format!(
                "{}/v2/auth?scope=repository:library/x:pull&service=s",
                proc.base_url()
            ))
            .send()
            .await
            .unwrap();
        let auth_status = resp.status().as_u16();
        let auth_body = resp.bytes().await.unwrap();
        let resp = c
            .get(format!("{}/v2/library/x/manifests/latest", proc.base_url()))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let challenge: Vec<String> = resp
            .headers()
            .get_all("www-authenticate")
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        println!(
            "FAULTS: class 6: challenge #{i}: /v2/auth -> {auth_status}, manifest -> {status} {:?}",
            challenge
                .iter()
                .map(|c| c.chars().take(120).collect::<String>())
                .collect::<Vec<_>>()
        );
        assert!(
            matches!(auth_status, 200 | 401 | 403 | 400 | 502 | 504),
            "#{i}: /v2/auth {auth_status}"
        );
        assert!(auth_body.len() <= 1 << 20);
        assert!(matches!(status, 401 | 502), "#{i}: manifest {status}");
        for ch in &challenge {
            assert!(
                !ch.contains(&o),
                "#{i}: the off-list realm reached the client: {ch}"
            );
            assert!(
                !ch.contains(&u),
                "#{i}: the upstream's realm reached the client: {ch}"
            );
            assert!(!ch.contains('\r') && !ch.contains('\n'));
            assert!(ch.matches("realm=").count() <= 1, "#{i}: {ch}");
            // Basic realms are names, relayed unchanged (COMPAT 75); Bearer realms are ours.
            if ch.starts_with("Bearer") && ch.contains("realm=") {
                assert!(
                    ch.contains(&format!("realm=\"{ours}\"")),
                    "#{i}: realm not ours: {ch}"
                );
            }
        }
        assert_eq!(
            off.connections(),
            0,
            "#{i}: a token request went to the off-list realm"
        );
        assert_no_panic(&proc);
    }
    let token_reqs: Vec<String> = upstream
        .requests()
        .iter()
        .filter(|r| r.path().starts_with("/token"))
        .map(|r| r.target().to_owned())
        .collect();
    // Only the well-formed allowlisted challenges (#3 or #4 may pick the first realm, #11)
    // may ever have reached /token, and never with push.
    for t in &token_reqs {
        assert!(!t.contains("push"), "a push scope went to the realm: {t}");
    }
    println!("FAULTS: class 6: token requests at the allowlisted realm: {token_reqs:?}");
    assert_eq!(off.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn class_06_hostile_token_responses_are_bounded() {
    hostile_token_responses(false).await;
}

/// SECURITY §2.1/§2.6: every `Location` the proxy emits is relative or built from configuration,
/// and token requests never follow redirects. The proxy does not follow the token endpoint's 302
/// (no connection reaches the target) but relays its `Location` (an arbitrary URL chosen by the
/// upstream) to the client, which then follows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class_06_token_endpoint_redirect_is_not_relayed() {
    hostile_token_responses(true).await;
}

async fn hostile_token_responses(only_redirect: bool) {
    binary().expect("the dockerproxy binary");
    let tmp = tempfile::tempdir().unwrap();
    let off = RawServer::counter().unwrap();
    let o = off.host_port();
    let tcase = Arc::new(AtomicUsize::new(0));
    let upstream_addr = Arc::new(std::sync::Mutex::new(String::new()));
    let script = {
        let (tcase, ua, o) = (tcase.clone(), upstream_addr.clone(), o.clone());
        Arc::new(move |r: &RawRequest| -> RawAction {
            if !r.path().starts_with("/token") {
                let u = ua.lock().unwrap().clone();
                return RawAction::Respond(challenge_reply(
                    format!(r#"Bearer realm="http://{u}/token",service="s""#).as_bytes(),
                ));
            }
            let json = |body: &[u8]| {
                RawAction::Respond(http_response(
                    200,
                    &[("Content-Type", "application/json")],
                    body,
                ))
            };
            match tcase.load(Ordering::SeqCst) {
                0 => RawAction::Respond(http_response(
                    200,
                    &[("Content-Type", "text/html")],
                    b"<html>nope</html>",
                )),
                1 => json(format!(r#"{{"token":"{}"}}"#, "a".repeat(2 << 20)).as_bytes()),
                2 => json(b"{}"),
                3 => json(br#"{"access_token":"abc"}"#),
                4 => json(br#"{"token":"abc","expires_in":1e300}"#),
                5 => json(br#"{"token":"abc","expires_in":-5}"#),
                6 => RawAction::Respond(http_response(
                    302,
                    &[("Location", &format!("http://{o}/steal"))],
                    b"",
                )),
                7 => RawAction::Hang,
                8 => RawAction::Stream {
                    head: head(500, &["Content-Type: text/html".into()]),
                    chunk: vec![b'x'; 64 << 10],
                    times: 800,
                    interval: Duration::ZERO,
                },
                _ => {
                    let mut h = head(200, &["Content-Type: application/json".into()]);
                    h.extend_from_slice(br#"{"token":""#);
                    RawAction::Stream {
                        head: h,
                        chunk: vec![b'a'; 64 << 10],
                        times: 800,
                        interval: Duration::ZERO,
                    }
                }
            }
        })
    };
    let upstream = RawServer::start(script).unwrap();
    *upstream_addr.lock().unwrap() = upstream.host_port();
    let u = upstream.host_port();
    let toml = route_toml(
        &upstream.base_url(),
        &[upstream.base_url()],
        &[u.clone(), o.clone()],
        limits_1s(),
    );
    let proc = start_proxy(&tmp.path().join("p"), &toml, &[]).await;
    let sampler = RssSampler::start(proc.pid(), Duration::from_millis(20));
    let c = client();
    let names = [
        "HTML 200",
        "2 MiB JSON",
        "{}",
        "access_token only",
        "expires_in 1e300",
        "expires_in -5",
        "302 to an allowed address",
        "no answer",
        "500 with 50 MiB",
        "endless 200 JSON",
    ];
    for (t, name) in names.iter().enumerate() {
        if only_redirect != (t == 6) {
            continue;
        }
        tcase.store(t, Ordering::SeqCst);
        let started = Instant::now();
        let resp = c
            .get(format!(
                "{}/v2/auth?scope=repository:library/t{t}:pull&service=s",
                proc.base_url()
            ))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let loc = resp
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap_or("").to_owned());
        let (body, _err) = read_body(resp).await;
        println!(
            "FAULTS: class 6: token response {name}: {status}, {} bytes, {:?}",
            body.len(),
            started.elapsed()
        );
        // A token endpoint's redirect is relayed as is (never followed); everything else is
        // relayed or mapped to a clean error.
        assert!(matches!(status, 200 | 401 | 502 | 504), "{name}: {status}");
        assert!(
            body.len() <= (1 << 20) + (64 << 10),
            "{name}: {} bytes relayed",
            body.len()
        );
        assert!(
            loc.as_deref().is_none_or(|l| !l.contains(&o)),
            "{name}: Location relayed: {loc:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "{name}: took {:?}",
            started.elapsed()
        );
        if t == 1 || t >= 8 {
            assert_ne!(
                status, 200,
                "{name}: an oversized token response was accepted"
            );
        }
    }
    assert_eq!(
        off.connections(),
        0,
        "a token-endpoint redirect was followed"
    );
    // A scope flood: refused, or capped before it reaches the realm.
    tcase.store(4, Ordering::SeqCst);
    let before = upstream.requests().len();
    let scopes: String = (0..1000)
        .map(|i| format!("&scope=repository:library/s{i}:pull"))
        .collect();
    let resp = c
        .get(format!("{}/v2/auth?service=s{scopes}", proc.base_url()))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    assert!(
        matches!(status, 200 | 400 | 414 | 431),
        "scope flood: {status}"
    );
    for r in &upstream.requests()[before..] {
        let n = r.target().matches("scope=").count();
        assert!(n <= 32, "{n} scopes forwarded to the realm");
    }
    println!("FAULTS: class 6: 1000-scope flood -> {status}");
    assert_rss_bounded("class 6 token responses", &sampler);
    assert_no_panic(&proc);
}

// ----------------------------------------------------------------------------------------------
// Class 7: token reuse across identities
// ----------------------------------------------------------------------------------------------

fn jwt_sub(token: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v["sub"].as_str().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class_07_tokens_are_never_shared_across_identities() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    binary().expect("the dockerproxy binary");
    let bed = TestBed::start_with(Mode::Token, SMALL).await;
    let ts = bed.token_server();
    let realm = format!("http://{}", ts.addr());
    let toml = route_toml(
        bed.registry.base_url(),
        std::slice::from_ref(&realm),
        &[bed.host_port(), host_port(&realm)],
        "",
    );
    let proc = start_proxy(&bed.tmp.path().join("p"), &toml, &[]).await;
    ts.clear_requests();
    let c = client();
    let users: [(&str, Option<&str>); 3] = [
        ("alice", Some("Basic YWxpY2U6c2VjcmV0")),
        ("bob", Some("Basic Ym9iOmh1bnRlcjI=")),
        ("anonymous", None),
    ];
    let mut tokens: Vec<(String, String)> = Vec::new();
    for round in 0..3 {
        for (user, auth) in users {
            for scope in [
                "repository:private/secret:pull",
                "repository:library/busybox:pull",
            ] {
                let mut req = c.get(format!(
                    "{}/v2/auth?scope={scope}&service=test-registry",
                    proc.base_url()
                ));
                if let Some(a) = auth {
                    req = req.header("authorization", a);
                }
                let resp = req.send().await.unwrap();
                assert_eq!(resp.status(), 200, "{user} {scope} round {round}");
                let v: serde_json::Value =
                    serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
                let tok = v["token"]
                    .as_str()
                    .or(v["access_token"].as_str())
                    .unwrap()
                    .to_owned();
                let sub = jwt_sub(&tok);
                let want = (user != "anonymous").then(|| user.to_owned());
                assert_eq!(sub, want, "{user} got a token issued to {sub:?}");
                tokens.push((user.to_owned(), tok));
            }
        }
    }
    for (u1, t1) in &tokens {
        for (u2, t2) in &tokens {
            assert!(u1 == u2 || t1 != t2, "{u1} and {u2} share a token");
        }
    }
    // The token server saw each identity under its own credentials.
    let reqs = ts.requests();
    for user in ["alice", "bob"] {
        assert!(
            reqs.iter().any(|r| r.basic_user.as_deref() == Some(user)),
            "no token request as {user}"
        );
    }
    assert!(
        reqs.iter().any(|r| !r.authorization),
        "no anonymous token request"
    );
    // Alice's cached private manifest is not served to bob or to anonymous clients.
    let alice_tok = &tokens.iter().find(|(u, _)| u == "alice").unwrap().1;
    let path = "/v2/private/secret/manifests/1.0";
    let resp = c
        .get(format!("{}{path}", proc.base_url()))
        .header("accept", OCI_MANIFEST)
        .bearer_auth(alice_tok)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "alice reads her private manifest");
    let bob_tok = &tokens
        .iter()
        .find(|(u, t)| u == "bob" && jwt_sub(t).as_deref() == Some("bob"))
        .unwrap()
        .1;
    for (who, auth) in [("bob", Some(bob_tok.as_str())), ("anonymous", None)] {
        let mut req = c
            .get(format!("{}{path}", proc.base_url()))
            .header("accept", OCI_MANIFEST);
        if let Some(t) = auth {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        assert_ne!(
            resp.status(),
            200,
            "{who} got alice's cached private manifest"
        );
    }
    println!(
        "FAULTS: class 7: {} tokens for 3 identities, {} token requests, none shared",
        tokens.len(),
        reqs.len()
    );
    assert_no_panic(&proc);
}

// ----------------------------------------------------------------------------------------------
// Class 10: slow or abusive clients
// ----------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn class_10_slowloris_and_idle_floods_are_closed_and_legit_clients_served() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    binary().expect("the dockerproxy binary");
    let bed = TestBed::start_with(Mode::Plain, SMALL).await;
    let toml = route_toml(
        bed.registry.base_url(),
        &[],
        &[bed.host_port()],
        "[limits]\nclient_header_timeout = \"2s\"",
    );
    let proc = start_proxy(&bed.tmp.path().join("p"), &toml, &[]).await;
    let addr = addr_of(&proc);
    let blob = bed.seeded.busybox.config.clone();
    let legit_url = format!(
        "{}/v2/library/busybox/blobs/{}",
        proc.base_url(),
        blob.digest
    );
    legit_get(&legit_url, &blob.digest).await.expect("warm-up");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fds_before = fd_count(proc.pid());
    let sampler = RssSampler::start(proc.pid(), Duration::from_millis(20));
    let legit = LegitLoop::spawn(
        legit_url.clone(),
        blob.digest.clone(),
        Duration::from_millis(20),
    );
    const IDLE: usize = 500;
    const SLOW: usize = 200;
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..IDLE + SLOW {
        // In waves: the proxy's listen backlog is 128, and a burst beyond it leaves client-side
        // "connected" sockets the proxy never accepted (SYN cookies), which prove nothing.
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        let slow = i >= IDLE;
        set.spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
            let opened = Instant::now();
            let local = s.local_addr().ok()?;
            let text = b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
            let mut sent = 0;
            let mut buf = [0u8; 1024];
            loop {
                if slow && sent < text.len() {
                    if s.write_all(&text[sent..sent + 1]).await.is_err() {
                        return Some(opened.elapsed());
                    }
                    sent += 1;
                }
                match tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return Some(opened.elapsed()),
                    Ok(Ok(_)) => {} // a 408 or similar before the close
                    Err(_) => {}
                }
                if opened.elapsed() > Duration::from_secs(20) {
                    eprintln!("still open after 20 s: slow={slow} sent={sent} local={local}");
                    return None;
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fds_during = fd_count(proc.pid());
    let mut closed_after = Vec::new();
    let mut never_closed = 0;
    while let Some(r) = set.join_next().await {
        match r.unwrap() {
            Some(t) => closed_after.push(t),
            None => never_closed += 1,
        }
    }
    closed_after.sort();
    let report = legit.finish().await;
    println!(
        "FAULTS: class 10: {IDLE} idle + {SLOW} slowloris connections: {} closed (median {:?}, max {:?}), {never_closed} still open after 20 s; attack lasted {:?}",
        closed_after.len(),
        closed_after.get(closed_after.len() / 2),
        closed_after.last(),
        started.elapsed()
    );
    println!(
        "FAULTS: class 10: proxy descriptors {fds_before} before, {fds_during} during the flood"
    );
    assert!(
        fds_during >= fds_before + (IDLE + SLOW) * 9 / 10,
        "the proxy did not hold the flood's connections ({fds_during} descriptors)"
    );
    assert_legit("class 10 slowloris", &report);
    assert!(
        report.max_latency < Duration::from_secs(2),
        "legit answers slowed to {:?}",
        report.max_latency
    );
    assert_eq!(never_closed, 0, "connections outlived the header timeout");
    assert_eq!(
        closed_after.len(),
        IDLE + SLOW,
        "connections refused outright"
    );
    assert!(
        *closed_after.last().unwrap() < Duration::from_secs(6),
        "closed only after {:?} (client_header_timeout 2 s)",
        closed_after.last()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fds_after = fd_count(proc.pid());
    assert!(
        fds_after <= fds_before + 16,
        "descriptors {fds_before} -> {fds_after}"
    );
    assert_rss_bounded("class 10 slowloris", &sampler);
    assert_no_panic(&proc);
}

/// Opens a connection with a tiny receive buffer, asks for `path` and reads `per_tick` bytes
/// every `tick` for `duration`; returns the bytes read.
async fn slow_reader(
    addr: SocketAddr,
    path: String,
    per_tick: usize,
    tick: Duration,
    duration: Duration,
) -> usize {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut total = 0;
    let mut buf = vec![0u8; per_tick];
    while started.elapsed() < duration {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
        tokio::time::sleep(tick).await;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn class_10_slow_readers_of_a_big_blob_keep_memory_flat() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    binary().expect("the dockerproxy binary");
    let bed = TestBed::start_with(
        Mode::Plain,
        SeedOptions {
            big_layer_size: 48 << 20,
        },
    )
    .await;
    let big = bed.seeded.big.layers[0].clone();
    let small = bed.seeded.busybox.config.clone();
    let toml = route_toml(bed.registry.base_url(), &[], &[bed.host_port()], "");
    for (label, env) in [
        ("cache off", vec![("CACHE_ENABLED", "false")]),
        ("cache on", vec![]),
    ] {
        let proc = start_proxy(&bed.tmp.path().join(label.replace(' ', "-")), &toml, &env).await;
        let addr = addr_of(&proc);
        let legit_url = format!(
            "{}/v2/library/busybox/blobs/{}",
            proc.base_url(),
            small.digest
        );
        legit_get(&legit_url, &small.digest).await.expect("warm-up");
        let base_kib = dockerproxy_tests::faults_kit::rss_kib(proc.pid());
        let sampler = RssSampler::start(proc.pid(), Duration::from_millis(20));
        let legit = LegitLoop::spawn(legit_url, small.digest.clone(), Duration::from_millis(50));
        let path = format!("/v2/library/big/blobs/{}", big.digest);
        let mut readers = tokio::task::JoinSet::new();
        for _ in 0..4 {
            readers.spawn(slow_reader(
                addr,
                path.clone(),
                16 << 10,
                Duration::from_millis(50),
                Duration::from_secs(6),
            ));
        }
        let mut read = Vec::new();
        while let Some(r) = readers.join_next().await {
            read.push(r.unwrap());
        }
        let report = legit.finish().await;
        let peak = sampler.peak_kib();
        println!(
            "FAULTS: class 10 slow readers ({label}): 4 readers of a {} MiB blob read {:?} bytes in 6 s; RSS {} MiB at start, peak {} MiB",
            big.size() / MIB,
            read,
            base_kib / 1024,
            peak / 1024
        );
        assert_legit(&format!("class 10 slow readers ({label})"), &report);
        assert!(
            read.iter().all(|n| *n > 0 && (*n as u64) < big.size()),
            "{read:?}"
        );
        // Four readers of a 48 MiB blob: buffering even one whole blob would exceed this.
        assert!(
            peak < base_kib + 40 * 1024,
            "{label}: RSS grew from {base_kib} KiB to {peak} KiB"
        );
        assert!(peak < RSS_BOUND_KIB);
        assert_no_panic(&proc);
    }
}

/// What is wrong with an answer to a Range request on `blob`, if anything.
fn range_problem(
    status: u16,
    content_range: Option<&str>,
    body: &[u8],
    err: Option<&str>,
    blob: &dockerproxy_tests::Blob,
) -> Option<String> {
    if let Some(e) = err {
        return Some(format!("{status} aborted: {e}"));
    }
    match status {
        200 => (sha256_digest(body) != blob.digest).then(|| "200 with wrong bytes".to_owned()),
        206 => {
            let Some(cr) = content_range else {
                return Some(format!(
                    "206 without Content-Range (multipart?), {} bytes",
                    body.len()
                ));
            };
            let parsed = cr
                .strip_prefix("bytes ")
                .and_then(|r| r.split_once('/'))
                .and_then(|(span, total)| {
                    let (a, b) = span.split_once('-')?;
                    Some((
                        a.parse::<usize>().ok()?,
                        b.parse::<usize>().ok()?,
                        total.parse::<u64>().ok()?,
                    ))
                });
            match parsed {
                Some((a, b, total)) if total == blob.size() && a <= b && b < blob.data.len() => {
                    (body != &blob.data[a..=b]).then(|| format!("206 {cr} with wrong bytes"))
                }
                _ => Some(format!("206 with a bad Content-Range {cr}")),
            }
        }
        416 => (content_range != Some(&format!("bytes */{}", blob.size())))
            .then(|| format!("416 with Content-Range {content_range:?}")),
        other => Some(format!("status {other}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class_10_range_abuse_answers_200_206_or_416() {
    range_abuse(false).await;
}

/// SECURITY §2.4: "malformed or multiple ranges are ignored (full 200)", 206 only on verified
/// content. On a cold blob, `Range: bytes=0-0,1-1,…` (1000 ranges) is forwarded and the
/// upstream's `multipart/byteranges` 206 (no `Content-Range`, unverified bytes) is relayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class_10_multi_range_on_a_cold_blob_is_a_full_200() {
    range_abuse(true).await;
}

async fn range_abuse(cold_multi_only: bool) {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    binary().expect("the dockerproxy binary");
    let bed = TestBed::start_with(Mode::Plain, SMALL).await;
    let toml = route_toml(bed.registry.base_url(), &[], &[bed.host_port()], "");
    let proc = start_proxy(&bed.tmp.path().join("p"), &toml, &[]).await;
    let sampler = RssSampler::start(proc.pid(), Duration::from_millis(20));
    let many: String = (0..1000)
        .map(|i| format!("{i}-{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let overlapping: String = (0..1000).map(|_| "0-").collect::<Vec<_>>().join(",");
    let ranges = vec![
        format!("bytes={many}"),
        format!("bytes={overlapping}"),
        "bytes=0-18446744073709551615".into(),
        "bytes=18446744073709551615-".into(),
        "bytes=18446744073709551616-1".into(),
        "bytes=-18446744073709551616".into(),
        "bytes=-18446744073709551615".into(),
        "bytes=99999999999-".into(),
        "bytes=5-2".into(),
        "bytes=-0".into(),
        "bytes=0-".into(),
        "bytes=--1".into(),
        "bytes=0-0,-1".into(),
        "bytes= 1 - 2 ".into(),
        "items=0-1".into(),
        "bytes=".into(),
        format!("bytes=0-{}", "9".repeat(5000)),
    ];
    let c = client();
    let mut counts = std::collections::BTreeMap::new();
    let mut problems = Vec::new();
    // The big layer first uncached (pass-through to a fill), then cached; a manifest too.
    let big = bed.seeded.big.layers[0].clone();
    let manifest = bed.seeded.busybox.manifest.clone();
    for round in 0..2 {
        for (path, blob) in [
            (format!("/v2/library/big/blobs/{}", big.digest), &big),
            (
                format!("/v2/library/busybox/manifests/{}", manifest.digest),
                &manifest,
            ),
        ] {
            for (ri, range) in ranges.iter().enumerate() {
                // The cold multi-range case is the ignored BUG test's.
                if cold_multi_only != (round == 0 && ri == 0) {
                    continue;
                }
                let resp = c
                    .get(format!("{}{path}", proc.base_url()))
                    .header("accept", OCI_MANIFEST)
                    .header("range", range)
                    .send()
                    .await
                    .unwrap();
                let status = resp.status().as_u16();
                let cr = resp
                    .headers()
                    .get("content-range")
                    .map(|v| v.to_str().unwrap().to_owned());
                let (body, err) = read_body(resp).await;
                let short = format!(
                    "round {round} {} {}",
                    &path[..22],
                    range.chars().take(40).collect::<String>()
                );
                if let Some(problem) =
                    range_problem(status, cr.as_deref(), &body, err.as_deref(), blob)
                {
                    problems.push(format!("{short}: {problem}"));
                }
                *counts.entry(status).or_insert(0) += 1;
            }
        }
    }
    println!("FAULTS: class 10 Range abuse: statuses {counts:?}");
    for p in &problems {
        println!("FAULTS: class 10 Range abuse: {p}");
    }
    assert!(
        problems.is_empty(),
        "{} bad answers: {problems:#?}",
        problems.len()
    );
    legit_get(
        &format!("{}/v2/library/big/blobs/{}", proc.base_url(), big.digest),
        &big.digest,
    )
    .await
    .expect("served after the Range abuse");
    assert_rss_bounded("class 10 Range abuse", &sampler);
    assert_no_panic(&proc);
}

// ----------------------------------------------------------------------------------------------
// Class 11: process lifecycle
// ----------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn class_11_sigterm_drains_in_flight_transfers_and_exits_0() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    binary().expect("the dockerproxy binary");
    let bed = TestBed::start_with(
        Mode::Plain,
        SeedOptions {
            big_layer_size: 6 << 20,
        },
    )
    .await;
    let big = bed.seeded.big.layers[0].clone();
    // 256 KiB every 120 ms: about 3 s per transfer.
    let front = CorruptFront::start(
        bed.registry.base_url(),
        Mangle::Trickle {
            chunk: 256 << 10,
            interval: Duration::from_millis(120),
        },
    )
    .unwrap();
    let toml = route_toml(&front.base_url(), &[], &[host_port(&front.base_url())], "");
    let work = bed.tmp.path().join("p");
    let proc = start_proxy(&work, &toml, &[]).await;
    let base = proc.base_url();
    let url = format!("{base}/v2/library/big/blobs/{}", big.digest);
    let c = client();
    let mut transfers = Vec::new();
    for _ in 0..3 {
        let (c, url) = (c.clone(), url.clone());
        transfers.push(tokio::spawn(async move {
            let resp = c.get(&url).send().await.unwrap();
            let status = resp.status().as_u16();
            let (body, err) = read_body(resp).await;
            (status, sha256_digest(&body), body.len(), err)
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let started = Instant::now();
    let terminated = tokio::task::spawn_blocking(move || proc.terminate(Duration::from_secs(20)));
    // While draining, new connections are refused or answered 503.
    tokio::time::sleep(Duration::from_millis(300)).await;
    match c.get(format!("{base}/v2/")).send().await {
        Err(_) => {}
        Ok(r) => assert_eq!(r.status(), 503, "a new request during the drain"),
    }
    let exited_0 = terminated.await.unwrap();
    let took = started.elapsed();
    for t in transfers {
        let (status, digest, len, err) = t.await.unwrap();
        assert_eq!(
            (status, err.as_deref()),
            (200, None),
            "an in-flight transfer was cut ({len} bytes)"
        );
        assert_eq!(digest, big.digest);
    }
    println!(
        "FAULTS: class 11: SIGTERM with 3 transfers in flight: exit 0 = {exited_0} after {took:?}"
    );
    assert!(exited_0, "no clean exit 0 within 20 s");
    assert!(
        took < Duration::from_secs(16),
        "drain took {took:?} (drain timeout 15 s)"
    );
    let cache = work.join("cache");
    assert!(corrupt_cache_files(&cache).is_empty());
    assert!(
        files_under(&cache.join("tmp")).is_empty(),
        "temp files after a clean exit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class_11_unsafe_configuration_is_refused_at_start() {
    let bin = binary().expect("the dockerproxy binary");
    let tmp = tempfile::tempdir().unwrap();
    let cases: [(&str, &str, &[&str]); 8] = [
        (
            "unknown route key",
            "[routes.\"docker.io\"]\nupstrem = \"https://registry-1.docker.io\"\n",
            &["upstrem"],
        ),
        (
            "unknown top-level key",
            "cache_max_sise = 10\n",
            &["cache_max_sise"],
        ),
        (
            "unknown limits key",
            "[limits]\nheader_timout = \"1s\"\n",
            &["header_timout"],
        ),
        (
            "http upstream without development",
            "[routes.\"docker.io\"]\nupstream = \"http://127.0.0.1:5000\"\n",
            &["development", "http"],
        ),
        (
            "wildcard host",
            "[routes.\"evil.example\"]\nupstream = \"https://evil.example\"\nhost = \"*.example.com\"\n",
            &["host", "*"],
        ),
        (
            "duplicate host",
            "[routes.\"a.example\"]\nupstream = \"https://a.example\"\nhost = \"x.example.com\"\n[routes.\"b.example\"]\nupstream = \"https://b.example\"\nhost = \"x.example.com\"\n",
            &["x.example.com", "duplicate"],
        ),
        (
            "address exception wider than one host:port",
            "[routes.\"docker.io\"]\nupstream = \"http://127.0.0.1:5000\"\ndevelopment = true\naddress_exceptions = [\"127.0.0.0/8\"]\n",
            &["address_exceptions", "127.0.0.0/8"],
        ),
        (
            "credentials with an empty realm allowlist",
            "[routes.\"r.example\"]\nupstream = \"https://r.example\"\nrealm_allowlist = []\n[routes.\"r.example\".credentials]\nusername = \"u\"\npassword = \"p\"\n",
            &["realm", "allowlist"],
        ),
    ];
    for (i, (name, toml, words)) in cases.iter().enumerate() {
        let path = tmp.path().join(format!("bad-{i}.toml"));
        std::fs::write(&path, toml).unwrap();
        let port = dockerproxy_tests::free_port().to_string();
        let cache = tmp.path().join(format!("cache-{i}"));
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CUSTOM_DOMAIN", "example.test")
            .env("PORT", &port)
            .env("CACHE_DIR", &cache)
            .arg("--config")
            .arg(&path)
            .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(10), cmd.output())
            .await
            .unwrap_or_else(|_| panic!("{name}: the proxy started with an unsafe configuration"))
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        println!(
            "FAULTS: class 11: {name}: exit {:?}: {}",
            out.status.code(),
            stderr.trim()
        );
        assert!(!out.status.success(), "{name}: exit 0");
        assert!(
            words.iter().any(|w| stderr.contains(w)),
            "{name}: the message names none of {words:?}: {stderr}"
        );
    }
}

// ----------------------------------------------------------------------------------------------
// Class 3: wrong bytes from upstream (what the existing tests do not cover)
// ----------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn class_03_html_200s_oversized_and_encoded_manifests_are_not_served_or_cached() {
    binary().expect("the dockerproxy binary");
    let tmp = tempfile::tempdir().unwrap();
    let (good, good_digest) = good_manifest();
    // Manifests never fetched before (a cached digest would be served from the cache).
    let other: Vec<u8> = [&good[..], b" "].concat();
    let other_digest = sha256_digest(&other);
    let other2: Vec<u8> = [&good[..], b"  "].concat();
    let other2_digest = sha256_digest(&other2);
    let blob = vec![b'h'; 5000];
    let blob_digest = sha256_digest(&blob);
    let html = {
        let mut h = b"<html><body>Sign in to continue".to_vec();
        h.resize(blob.len(), b' ');
        h
    };
    let healed = Arc::new(AtomicBool::new(false));
    let script = {
        let (good, blob, html, healed) = (good.clone(), blob.clone(), html.clone(), healed.clone());
        let (blob_digest, other, other2) = (blob_digest.clone(), other.clone(), other2.clone());
        Arc::new(move |r: &RawRequest| -> RawAction {
            let path = r.path();
            let healed = healed.load(Ordering::SeqCst);
            if path == "/v2/" {
                return RawAction::Respond(ping_reply());
            }
            if path.ends_with(&blob_digest) {
                return RawAction::Respond(if healed {
                    blob_reply(&blob)
                } else {
                    // A web page of exactly the blob's length (goharbor/harbor #23882).
                    http_response(200, &[("Content-Type", "text/html")], &html)
                });
            }
            if healed && path.starts_with("/v2/library/html/") {
                return RawAction::Respond(manifest_reply(&other));
            }
            if healed && path.starts_with("/v2/library/gzip/") {
                return RawAction::Respond(manifest_reply(&other2));
            }
            if healed || path.starts_with("/v2/library/good/") {
                return RawAction::Respond(manifest_reply(&good));
            }
            if path.starts_with("/v2/library/html/") {
                return RawAction::Respond(http_response(
                    200,
                    &[("Content-Type", "text/html")],
                    b"<html>login</html>",
                ));
            }
            if path.starts_with("/v2/library/huge/") {
                // 8 MiB, chunked, no length.
                let mut h = head(
                    200,
                    &[
                        format!("Content-Type: {OCI_MANIFEST}"),
                        "Transfer-Encoding: chunked".into(),
                    ],
                );
                h.extend_from_slice(b"10000\r\n");
                let mut chunk = vec![b' '; 0x10000];
                chunk.extend_from_slice(b"\r\n10000\r\n");
                return RawAction::Stream {
                    head: h,
                    chunk,
                    times: 128,
                    interval: Duration::ZERO,
                };
            }
            if path.starts_with("/v2/library/gzip/") {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                std::io::Write::write_all(&mut enc, &other2).unwrap();
                let gz = enc.finish().unwrap();
                return RawAction::Respond(http_response(
                    200,
                    &[("Content-Type", OCI_MANIFEST), ("Content-Encoding", "gzip")],
                    &gz,
                ));
            }
            RawAction::RespondClose(http_response(404, &[], b"{}"))
        })
    };
    let upstream = RawServer::start(script).unwrap();
    let toml = route_toml(
        &upstream.base_url(),
        &[],
        &[upstream.host_port()],
        limits_1s(),
    );
    let work = tmp.path().join("p");
    let proc = start_proxy(&work, &toml, &[]).await;
    let base = proc.base_url();
    let legit_url = format!("{base}/v2/library/good/manifests/{good_digest}");
    legit_get(&legit_url, &good_digest).await.expect("warm-up");
    let sampler = RssSampler::start(proc.pid(), Duration::from_millis(20));
    let legit = LegitLoop::spawn(legit_url, good_digest.clone(), Duration::from_millis(25));
    let c = client();
    let cases = [
        (
            "HTML 200 for a manifest by digest",
            format!("/v2/library/html/manifests/{other_digest}"),
        ),
        (
            "HTML 200 of the blob's length",
            format!("/v2/library/html/blobs/{blob_digest}"),
        ),
        (
            "8 MiB chunked manifest by tag",
            "/v2/library/huge/manifests/latest".to_owned(),
        ),
        (
            "8 MiB chunked manifest by digest",
            format!("/v2/library/huge/manifests/{other_digest}"),
        ),
        (
            "gzip-encoded manifest by digest",
            format!("/v2/library/gzip/manifests/{other2_digest}"),
        ),
    ];
    for (name, path) in &cases {
        for _ in 0..2 {
            let resp = c
                .get(format!("{base}{path}"))
                .header("accept", OCI_MANIFEST)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let (body, err) = read_body(resp).await;
            println!(
                "FAULTS: class 3: {name}: {status}, {} bytes, aborted {}",
                body.len(),
                err.is_some()
            );
            let wrong = status == 200 && err.is_none();
            assert!(
                !wrong,
                "{name}: a clean 200 with {} bytes ({})",
                body.len(),
                sha256_digest(&body)
            );
            assert!(status == 200 || status == 502, "{name}: {status}");
            assert!(
                !String::from_utf8_lossy(&body).contains("<html>"),
                "{name}: upstream HTML relayed"
            );
        }
    }
    let report = legit.finish().await;
    assert_legit("class 3", &report);
    assert_rss_bounded("class 3", &sampler);
    assert!(corrupt_cache_files(&work.join("cache")).is_empty());
    // Healed: the same digests are fetched again (nothing poisoned) and served.
    healed.store(true, Ordering::SeqCst);
    legit_get(
        &format!("{base}/v2/library/html/blobs/{blob_digest}"),
        &blob_digest,
    )
    .await
    .expect("the blob after healing");
    legit_get(
        &format!("{base}/v2/library/gzip/manifests/{other2_digest}"),
        &other2_digest,
    )
    .await
    .expect("the manifest after healing");
    legit_get(
        &format!("{base}/v2/library/html/manifests/{other_digest}"),
        &other_digest,
    )
    .await
    .expect("the manifest after healing");
    assert_no_panic(&proc);
}

/// SECURITY §2.4: "One satisfiable range on verified content → 206"; "the client gets the right
/// bytes (200/206), an error status, or a visibly incomplete body". On a blob that is not cached
/// yet, a `Range` request is served from the verified fill of the whole blob (COMPAT.md §8.4):
/// a byte flipped by the upstream never reaches the client in a clean 206 (it used to, when the
/// upstream's 206 was relayed; more in `tests/tests/range_fill.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class_03_range_on_a_cold_blob_never_relays_unverified_bytes() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    binary().expect("the dockerproxy binary");
    let bed = TestBed::start_with(Mode::Plain, SMALL).await;
    let front = CorruptFront::start(bed.registry.base_url(), Mangle::FlipByte(10)).unwrap();
    let toml = route_toml(&front.base_url(), &[], &[host_port(&front.base_url())], "");
    let proc = start_proxy(&bed.tmp.path().join("p"), &toml, &[]).await;
    let big = bed.seeded.big.layers[0].clone();
    let resp = client()
        .get(format!(
            "{}/v2/library/big/blobs/{}",
            proc.base_url(),
            big.digest
        ))
        .header("range", "bytes=100-5099")
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let (body, err) = read_body(resp).await;
    println!(
        "FAULTS: class 3: cold Range with a flipped upstream byte: {status}, {} bytes, aborted {}",
        body.len(),
        err.is_some()
    );
    if err.is_none() && status == 206 {
        let diff = body
            .iter()
            .zip(&big.data[100..5100])
            .position(|(a, b)| a != b);
        assert!(
            body.len() == 5000 && diff.is_none(),
            "a clean 206 with wrong bytes (first difference at {diff:?})"
        );
    }
    if err.is_none() && status == 200 {
        assert_eq!(
            sha256_digest(&body),
            big.digest,
            "a clean 200 with wrong bytes"
        );
    }
}
