//! Real clients pulling real images through the proxy from a real `docker-registry`: plain,
//! token (anonymous and with credentials), Basic, TLS upstream, a blob redirect to a CDN that
//! rejects `Authorization`, the path-prefix mode and a multi-arch index. Every pull verifies
//! digests (skopeo checks every blob; the tests compare the manifest with the seeded bytes).

use std::path::{Path, PathBuf};
use std::process::Output;

use dockerproxy_tests::content::sha256_digest;
use dockerproxy_tests::skopeo::{assert_pulled as assert_pulled_ctx, pull};
use dockerproxy_tests::{
    FaultFront, Image, Mode, ProxyHandle, SeedOptions, TestBed, docker_hub_route_toml,
    require_tools,
};

const SMALL: SeedOptions = SeedOptions {
    big_layer_size: 1 << 20,
};

fn out_dir(bed: &TestBed, name: &str) -> PathBuf {
    bed.tmp.path().join(name)
}

fn realm_origin(bed: &TestBed) -> Vec<String> {
    bed.token_server
        .as_ref()
        .map(|t| format!("http://{}", t.addr()))
        .into_iter()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_upstream_pull_by_mirror_host_and_path_prefix() {
    if !require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let bed = TestBed::start(Mode::Plain).await;
    let proxy = ProxyHandle::start(
        &[],
        &docker_hub_route_toml(bed.registry.base_url(), &[], ""),
    )
    .unwrap();

    let dir = out_dir(&bed, "busybox");
    let out = pull(
        &format!("{}/library/busybox:latest", proxy.host_port()),
        &dir,
        &[],
    )
    .await;
    assert_pulled(&out, &dir, &bed.seeded.busybox);
    assert!(
        bed.registry
            .count("GET", "/v2/library/busybox/manifests/latest")
            >= 1,
        "the upstream served the pull"
    );

    // Path-prefix mode: /v2/docker.io/<repo>/...
    let dir = out_dir(&bed, "prefix");
    let out = pull(
        &format!("{}/docker.io/myorg/team/app:1.0", proxy.host_port()),
        &dir,
        &[],
    )
    .await;
    assert_pulled(&out, &dir, &bed.seeded.app);

    // The 100 MiB layer streams through the verifier.
    let dir = out_dir(&bed, "big");
    let out = pull(
        &format!("{}/library/big:latest", proxy.host_port()),
        &dir,
        &[],
    )
    .await;
    assert_pulled(&out, &dir, &bed.seeded.big);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_upstream_anonymous_and_with_credentials() {
    if !require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let bed = TestBed::start_with(Mode::Token, SMALL).await;
    let proxy = ProxyHandle::start(
        &[],
        &docker_hub_route_toml(bed.registry.base_url(), &realm_origin(&bed), ""),
    )
    .unwrap();

    let dir = out_dir(&bed, "anon");
    let out = pull(
        &format!("{}/library/busybox:latest", proxy.host_port()),
        &dir,
        &[],
    )
    .await;
    assert_pulled(&out, &dir, &bed.seeded.busybox);
    let token_requests = bed.token_server().requests();
    assert!(
        !token_requests.is_empty(),
        "the token server was asked through /v2/auth"
    );

    // A private repository: refused anonymously, served with credentials.
    let dir = out_dir(&bed, "private-anon");
    let out = pull(
        &format!("{}/private/secret:1.0", proxy.host_port()),
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
        &format!("{}/private/secret:1.0", proxy.host_port()),
        &dir,
        &["--src-creds", "alice:secret"],
    )
    .await;
    assert_pulled(&out, &dir, &bed.seeded.private_secret);

    // A multi-arch OCI index with every platform.
    let dir = out_dir(&bed, "multi");
    let out = pull(
        &format!("{}/library/multi:latest", proxy.host_port()),
        &dir,
        &["--all"],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let index = std::fs::read(dir.join("manifest.json")).unwrap();
    assert_eq!(sha256_digest(&index), bed.seeded.multi.manifest.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_upstream_blob_redirect_to_cdn_rejecting_authorization() {
    if !require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let bed = TestBed::start_with(Mode::Token, SMALL).await;
    let cdn = FaultFront::cdn(&bed.storage).unwrap();
    let front = FaultFront::redirecting_blobs(bed.registry.base_url(), &cdn.base_url()).unwrap();
    let mut realms = realm_origin(&bed);
    realms.push(cdn.base_url());
    let proxy =
        ProxyHandle::start(&[], &docker_hub_route_toml(&front.base_url(), &realms, "")).unwrap();

    let dir = out_dir(&bed, "cdn");
    let out = pull(
        &format!("{}/library/busybox:latest", proxy.host_port()),
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_upstream_with_client_credentials() {
    if !require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let bed = TestBed::start_with(Mode::Basic, SMALL).await;
    let proxy = ProxyHandle::start(
        &[],
        &docker_hub_route_toml(bed.registry.base_url(), &[], ""),
    )
    .unwrap();
    let dir = out_dir(&bed, "basic");
    let out = pull(
        &format!("{}/library/busybox:latest", proxy.host_port()),
        &dir,
        &["--src-creds", "alice:secret"],
    )
    .await;
    assert_pulled(&out, &dir, &bed.seeded.busybox);
    let dir = out_dir(&bed, "basic-anon");
    let out = pull(
        &format!("{}/library/busybox:latest", proxy.host_port()),
        &dir,
        &[],
    )
    .await;
    assert!(
        !out.status.success(),
        "Basic-protected upstream must refuse an anonymous pull"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_upstream_with_private_ca() {
    if !require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let bed = TestBed::start_with(Mode::Tls, SMALL).await;
    let extra = format!("ca_bundle = {:?}", bed.pki.ca_cert.display().to_string());
    let proxy = ProxyHandle::start(
        &[],
        &docker_hub_route_toml(bed.registry.base_url(), &[], &extra),
    )
    .unwrap();
    let dir = out_dir(&bed, "tls");
    let out = pull(
        &format!("{}/library/busybox:latest", proxy.host_port()),
        &dir,
        &[],
    )
    .await;
    assert_pulled(&out, &dir, &bed.seeded.busybox);
}

fn assert_pulled(out: &Output, dir: &Path, image: &Image) {
    assert_pulled_ctx(out, dir, image, "");
}
