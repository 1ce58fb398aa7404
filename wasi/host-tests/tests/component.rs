//! The WASI component served by an embedded wasmtime host (a fresh instance per request), pulled
//! through by real clients from a real token-auth `docker-registry`: skopeo pulls and verifies
//! digests, a blob redirect to a CDN that rejects `Authorization` works, an unknown host gets the
//! route listing, wrong blob bytes abort the response, and the component's deadlines reach the
//! host as `request-options`.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Instant;

use dockerproxy_tests::content::sha256_digest;
use dockerproxy_tests::corrupt::{CorruptFront, Mangle};
use dockerproxy_tests::{
    FaultFront, Image, Mode, SeedOptions, TestBed, docker_hub_route_toml, require_tools,
};
use dockerproxy_wasi_tests::{HostOptions, WasiHost};

const SMALL: SeedOptions = SeedOptions {
    big_layer_size: 1 << 20,
};

/// `host:port` of an `http://host:port` base URL.
fn authority(base: &str) -> String {
    base.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned()
}

/// False (test skipped) when the `wasm32-wasip2` target is missing; under CI a failure.
fn require_wasm_target() -> bool {
    if dockerproxy_wasi_tests::can_build_component() {
        return true;
    }
    let message = "missing the wasm32-wasip2 target: run `rustup target add wasm32-wasip2`";
    assert!(
        std::env::var_os("CI").is_none_or(|v| v.is_empty()),
        "{message}"
    );
    eprintln!("SKIPPED: {message}");
    false
}

/// A host serving the component with the TOML `config` and `CUSTOM_DOMAIN=example.test`, allowed
/// to reach only `outbound` base URLs.
fn start_host(config: &str, outbound: &[String]) -> WasiHost {
    let started = Instant::now();
    let host = WasiHost::start(HostOptions {
        env: vec![
            ("CUSTOM_DOMAIN".into(), "example.test".into()),
            ("DOCKERPROXY_CONFIG".into(), config.into()),
        ],
        allowed_outbound: outbound.iter().map(|b| authority(b)).collect(),
    })
    .expect("start the wasmtime host");
    eprintln!(
        "wasi host ready in {:?} (component build {:?}, compile {:?})",
        started.elapsed(),
        dockerproxy_wasi_tests::build_component()
            .map(|(_, t)| t)
            .ok(),
        dockerproxy_wasi_tests::compile_time()
    );
    host
}

fn realm_origin(bed: &TestBed) -> Vec<String> {
    bed.token_server
        .as_ref()
        .map(|t| format!("http://{}", t.addr()))
        .into_iter()
        .collect()
}

fn out_dir(bed: &TestBed, name: &str) -> PathBuf {
    bed.tmp.path().join(name)
}

/// The body of a response and the error that ended it early, if any.
async fn read_body(mut resp: reqwest::Response) -> (Vec<u8>, Option<reqwest::Error>) {
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => body.extend_from_slice(&c),
            Ok(None) => return (body, None),
            Err(e) => return (body, Some(e)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_registry_pull_through_the_component_anonymous_and_with_credentials() {
    if !require_wasm_target() || !require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let bed = TestBed::start_with(Mode::Token, SMALL).await;
    let realms = realm_origin(&bed);
    let toml = docker_hub_route_toml(bed.registry.base_url(), &realms, "");
    let mut outbound = realms.clone();
    outbound.push(bed.registry.base_url().to_owned());
    let host = start_host(&toml, &outbound);

    let started = Instant::now();
    let dir = out_dir(&bed, "anon");
    let out = pull(
        &format!("{}/library/busybox:latest", host.host_port()),
        &dir,
        &[],
    )
    .await;
    assert_pulled(&out, &dir, &bed.seeded.busybox);
    eprintln!(
        "anonymous busybox pull through the component: {:?}",
        started.elapsed()
    );
    assert!(
        !bed.token_server().requests().is_empty(),
        "the token server was asked through the component's /v2/auth"
    );

    // A private repository: refused anonymously, served with the client's credentials.
    let dir = out_dir(&bed, "private-anon");
    let out = pull(
        &format!("{}/private/secret:1.0", host.host_port()),
        &dir,
        &[],
    )
    .await;
    assert!(
        !out.status.success(),
        "anonymous pull of a private repository must fail"
    );
    let dir = out_dir(&bed, "private-alice");
    let out = pull(
        &format!("{}/private/secret:1.0", host.host_port()),
        &dir,
        &["--src-creds", "alice:secret"],
    )
    .await;
    assert_pulled(&out, &dir, &bed.seeded.private_secret);

    // Every outbound request went to the allowlisted upstream or realm, with the core's
    // deadlines (SECURITY.md §2.5 defaults) as request-options.
    let env =
        std::collections::BTreeMap::from([("CUSTOM_DOMAIN".to_owned(), "example.test".to_owned())]);
    let (config, _) = dockerproxy_core::config::load(&env, Some(&toml)).unwrap();
    let sent = host.outbound();
    assert!(sent.len() >= 4, "{sent:?}");
    for r in &sent {
        assert!(r.allowed, "{r:?}");
        let o = r.options.expect("request-options passed");
        assert_eq!(
            o.connect_timeout,
            Some(config.limits.connect_timeout),
            "{r:?}"
        );
        assert_eq!(
            o.first_byte_timeout,
            Some(config.limits.header_timeout),
            "{r:?}"
        );
        assert_eq!(
            o.between_bytes_timeout,
            Some(config.limits.idle_timeout),
            "{r:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_redirect_to_a_cdn_rejecting_authorization() {
    if !require_wasm_target() || !require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let bed = TestBed::start_with(Mode::Token, SMALL).await;
    let cdn = FaultFront::cdn(&bed.storage).unwrap();
    let front = FaultFront::redirecting_blobs(bed.registry.base_url(), &cdn.base_url()).unwrap();
    let mut realms = realm_origin(&bed);
    realms.push(cdn.base_url());
    let toml = docker_hub_route_toml(&front.base_url(), &realms, "");
    let mut outbound = realms.clone();
    outbound.push(front.base_url());
    let host = start_host(&toml, &outbound);

    let dir = out_dir(&bed, "cdn");
    let out = pull(
        &format!("{}/library/busybox:latest", host.host_port()),
        &dir,
        &[],
    )
    .await;
    assert_pulled(&out, &dir, &bed.seeded.busybox);
    let cdn_requests = cdn.requests();
    assert!(!cdn_requests.is_empty(), "blobs came from the CDN");
    assert!(
        cdn_requests
            .iter()
            .all(|r| r.header("authorization").is_none()),
        "the CDN never sees Authorization"
    );
    assert!(
        cdn_requests.iter().all(|r| r.status == 200),
        "{cdn_requests:?}"
    );
    let cdn_authority = authority(&cdn.base_url());
    assert!(host.outbound().iter().any(|r| r.authority == cdn_authority));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_gets_the_route_listing_and_local_endpoints_answer() {
    if !require_wasm_target() {
        return;
    }
    let toml = docker_hub_route_toml("http://127.0.0.1:9", &[], "");
    let host = start_host(&toml, &[]);
    let client = reqwest::Client::new();

    let resp = client
        .get(format!("{}/v2/", host.base_url()))
        .header("host", "unknown.example.org")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let listing: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(listing["message"], "Available registry routes");
    // The docker.io route was pointed at the test upstream; the other built-in routes remain.
    assert_eq!(
        listing["routes"]["docker.example.test"],
        "http://127.0.0.1:9"
    );
    assert_eq!(listing["routes"]["quay.example.test"], "https://quay.io");
    assert_eq!(listing["routes"]["127.0.0.1"], "http://127.0.0.1:9");

    let resp = client
        .get(format!("{}/health", host.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let health: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["version"], dockerproxy_core::VERSION);
    let resp = client
        .head(format!("{}/readyz", host.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = client
        .get(format!("{}/metrics", host.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    // The upstream is not in the host's allowlist: the host refuses, the client gets a 5xx
    // OCI error and nothing was dialled.
    let resp = client
        .get(format!(
            "{}/v2/library/busybox/manifests/latest",
            host.base_url()
        ))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_server_error(), "{}", resp.status());
    let sent = host.outbound();
    assert!(
        !sent.is_empty() && sent.iter().all(|r| !r.allowed),
        "{sent:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_blob_bytes_abort_the_response_before_the_last_byte() {
    if !require_wasm_target() || !require_tools(&["docker-registry"]) {
        return;
    }
    let bed = TestBed::start_with(Mode::Plain, SMALL).await;
    let blob = &bed.seeded.big.layers[0];
    let size = blob.data.len() as u64;
    // The very last byte is wrong: only the verifier's held-back tail can stop it.
    let front = CorruptFront::start(bed.registry.base_url(), Mangle::FlipByte(size - 1)).unwrap();
    let toml = docker_hub_route_toml(&front.base_url(), &[], "");
    let host = start_host(&toml, &[front.base_url()]);
    let client = reqwest::Client::new();
    let url = format!("{}/v2/library/big/blobs/{}", host.base_url(), blob.digest);

    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // No cache in the component.
    assert_eq!(
        resp.headers().get("x-cache").and_then(|v| v.to_str().ok()),
        Some("BYPASS")
    );
    let (body, err) = read_body(resp).await;
    assert!(
        err.is_some(),
        "wrong bytes ended cleanly ({} of {size} bytes)",
        body.len()
    );
    assert!((body.len() as u64) < size, "the last byte was delivered");
    assert_eq!(body[..], blob.data[..body.len()]);

    front.set_mangle(Mangle::None);
    let (body, err) = read_body(client.get(&url).send().await.unwrap()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(sha256_digest(&body), blob.digest);
}

fn assert_pulled(out: &Output, dir: &Path, image: &Image) {
    dockerproxy_tests::skopeo::assert_pulled(out, dir, image, "");
}

async fn pull(src: &str, out: &Path, extra: &[&str]) -> Output {
    dockerproxy_tests::skopeo::pull(src, out, extra).await
}
