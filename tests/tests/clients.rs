//! The real clients pulling through the proxy from a real `docker-registry`, each in one of the
//! client modes of COMPAT §1.6, each checking the pulled manifest digest against the seeded one:
//!
//! * podman by mirror host (`127.0.0.1:PORT/library/busybox`) and through a `registries.conf`
//!   mirror for `docker.io` (no `ns`);
//! * containerd + ctr through a `hosts.toml` mirror (`?ns=docker.io` on every request);
//! * dockerd with the proxy as `registry-mirrors` (`/v2/library/<name>`, no `ns`);
//! * Host routing (cloudflare-docker-proxy style): `docker.example.test:PORT/busybox` from inside a
//!   private mount namespace whose `/etc/hosts` maps the name to 127.0.0.1 (skopeo and podman
//!   follow the proxy's 301 to `library/`).
//!
//! Daemons and clients that could fall back to the real Docker Hub run inside a namespace whose
//! hosts file sends those names to 127.0.0.1 too.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use dockerproxy_tests::clients::{
    Containerd, Dockerd, HostsNamespace, Podman, StartError, parse_ctr_images,
    require_mount_namespace, run_ok, short_tempdir, skip_unless_ci, write_containerd_mirror,
};
use dockerproxy_tests::content::sha256_digest;
use dockerproxy_tests::{
    FaultFront, Image, Mode, ProxyHandle, RecordedRequest, SeedOptions, TestBed,
    docker_hub_route_toml, require_tools,
};

const SMALL: SeedOptions = SeedOptions {
    big_layer_size: 1 << 20,
};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A proxy in front of the bed's registry with its own cache directory (so no other test's cache
/// answers for the upstream).
fn start_proxy(bed: &TestBed, cache: &Path) -> ProxyHandle {
    let cache = cache.display().to_string();
    let toml = docker_hub_route_toml(bed.registry.base_url(), &[], "");
    ProxyHandle::start(&[("CACHE_DIR", cache.as_str())], &toml).expect("start the proxy")
}

/// Asserts that the upstream registry served the manifest by tag or digest and every blob of
/// `image` (the proxy may add a query such as `ns=`).
fn assert_upstream_served(bed: &TestBed, image: &Image) {
    let requests = bed.registry.upstream_requests();
    let seen = |method: &str, path: &str| {
        requests
            .iter()
            .any(|(m, p)| m == method && p.split('?').next() == Some(path))
    };
    let repo = &image.repo;
    let manifest_by_tag = format!("/v2/{repo}/manifests/{}", image.tag);
    let manifest_by_digest = format!("/v2/{repo}/manifests/{}", image.manifest.digest);
    assert!(
        seen("GET", &manifest_by_tag) || seen("GET", &manifest_by_digest),
        "the upstream never served the manifest of {repo}; it saw {requests:?}"
    );
    for blob in image.blobs() {
        let path = format!("/v2/{repo}/blobs/{}", blob.digest);
        assert!(
            seen("GET", &path),
            "the upstream never served {path}; it saw {requests:?}"
        );
    }
}

fn summary(requests: &[RecordedRequest]) -> Vec<String> {
    requests
        .iter()
        .map(|r| format!("{} {} -> {}", r.method, r.path, r.status))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_pull_by_mirror_host_and_through_registries_conf_mirror() {
    if !require_tools(&["docker-registry", "podman", "unshare"]) || !require_mount_namespace() {
        return;
    }
    let started = Instant::now();
    let bed = TestBed::start_with(Mode::Plain, SMALL).await;
    let tmp = short_tempdir("dp-podman-").unwrap();
    let proxy = start_proxy(&bed, &tmp.path().join("cache"));
    let want = &bed.seeded.busybox.manifest.digest;

    // The namespace sends a fallback to registry-1.docker.io to 127.0.0.1.
    let ns = HostsNamespace::new(&tmp.path().join("ns"), &[]).unwrap();

    // Mirror host with the registry name in the path: 127.0.0.1:PORT/library/busybox.
    let podman = Podman::new(&tmp.path().join("p1"), &ns).unwrap();
    let reference = format!("{}/library/busybox:latest", proxy.host_port());
    run_ok(podman.command(&["pull", "--tls-verify=false", &reference]))
        .await
        .unwrap();
    assert_eq!(&podman.image_digest(&reference).await.unwrap(), want);
    assert_upstream_served(&bed, &bed.seeded.busybox);

    // docker.io mirrored by registries.conf (podman sends no `ns`), recorded by a front.
    let front = FaultFront::forward(&proxy.base_url()).unwrap();
    let podman = Podman::new(&tmp.path().join("p2"), &ns).unwrap();
    podman.use_docker_io_mirror(&front.host_port()).unwrap();
    let reference = "docker.io/library/busybox:latest";
    run_ok(podman.command(&["pull", reference])).await.unwrap();
    assert_eq!(&podman.image_digest(reference).await.unwrap(), want);
    let requests = front.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.path == "/v2/library/busybox/manifests/latest" && r.status == 200),
        "podman asked the mirror for the tag: {:?}",
        summary(&requests)
    );
    assert!(
        requests.iter().all(|r| !r.path.contains("ns=")),
        "podman mirrors send no ns: {:?}",
        summary(&requests)
    );
    eprintln!("podman scenarios took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_ctr_pull_through_hosts_toml_mirror_with_ns() {
    if !require_tools(&["docker-registry", "containerd", "ctr", "unshare"])
        || !require_mount_namespace()
    {
        return;
    }
    let started = Instant::now();
    let bed = TestBed::start_with(Mode::Plain, SMALL).await;
    let tmp = short_tempdir("dp-ctd-").unwrap();
    let proxy = start_proxy(&bed, &tmp.path().join("cache"));
    // Records exactly what ctr sends to the mirror.
    let front = FaultFront::forward(&proxy.base_url()).unwrap();
    let ns = HostsNamespace::new(&tmp.path().join("ns"), &[]).unwrap();
    let containerd = Containerd::start(&tmp.path().join("c"), &ns).await.unwrap();

    let hosts_dir = tmp.path().join("certs.d");
    write_containerd_mirror(
        &hosts_dir,
        "docker.io",
        "https://registry-1.docker.io",
        &front.base_url(),
    )
    .unwrap();
    let hosts_dir = hosts_dir.display().to_string();
    let reference = "docker.io/library/busybox:latest";
    let pulled = run_ok(containerd.ctr(
        "test",
        &[
            "images",
            "pull",
            "--hosts-dir",
            &hosts_dir,
            "--snapshotter",
            "native",
            reference,
        ],
    ))
    .await;
    if let Err(e) = pulled {
        let mut containerd = containerd;
        panic!(
            "ctr pull failed: {e}\nmirror saw {:?}\ncontainerd log:\n{}",
            summary(&front.requests()),
            containerd.daemon().log_tail(20)
        );
    }

    let listing = run_ok(containerd.ctr("test", &["images", "ls"]))
        .await
        .unwrap();
    let images = parse_ctr_images(&listing);
    let (_, media_type, digest) = images
        .iter()
        .find(|(name, _, _)| name == reference)
        .unwrap_or_else(|| panic!("{reference} not in ctr images ls:\n{listing}"));
    assert_eq!(digest, &bed.seeded.busybox.manifest.digest);
    assert_eq!(media_type, OCI_MANIFEST);

    // Every request ctr sent carried ns=docker.io; the tag was resolved by HEAD; the blobs came
    // through the mirror.
    let requests = front.requests();
    eprintln!("ctr sent: {:#?}", summary(&requests));
    assert!(!requests.is_empty(), "ctr never reached the mirror");
    for r in &requests {
        let query = r.path.split_once('?').map_or("", |(_, q)| q);
        assert!(
            form_urlencoded::parse(query.as_bytes()).any(|(k, v)| k == "ns" && v == "docker.io"),
            "request without ns=docker.io: {} {}",
            r.method,
            r.path
        );
        assert!(r.status < 400, "{} {} -> {}", r.method, r.path, r.status);
    }
    assert!(
        requests
            .iter()
            .any(|r| r.method == "HEAD"
                && r.path.starts_with("/v2/library/busybox/manifests/latest?")),
        "ctr resolves the tag with HEAD: {:?}",
        summary(&requests)
    );
    for blob in bed.seeded.busybox.blobs() {
        let path = format!("/v2/library/busybox/blobs/{}?", blob.digest);
        assert!(
            requests
                .iter()
                .any(|r| r.method == "GET" && r.path.starts_with(&path)),
            "ctr fetched {path} through the mirror: {:?}",
            summary(&requests)
        );
    }
    assert_upstream_served(&bed, &bed.seeded.busybox);

    // The proxy echoes the namespace it accepted.
    let resp = reqwest::Client::new()
        .head(format!(
            "{}/v2/library/busybox/manifests/latest?ns=docker.io",
            proxy.base_url()
        ))
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get("oci-namespace")
            .and_then(|v| v.to_str().ok()),
        Some("docker.io")
    );
    assert_eq!(
        resp.headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok()),
        Some(bed.seeded.busybox.manifest.digest.as_str())
    );
    drop(containerd);
    eprintln!("containerd scenario took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerd_registry_mirror_pull() {
    if !require_tools(&["docker-registry", "dockerd", "docker", "unshare"])
        || !require_mount_namespace()
    {
        return;
    }
    let started = Instant::now();
    let bed = TestBed::start_with(Mode::Plain, SMALL).await;
    let tmp = short_tempdir("dp-dk-").unwrap();
    let proxy = start_proxy(&bed, &tmp.path().join("cache"));
    let front = FaultFront::forward(&proxy.base_url()).unwrap();
    let ns = HostsNamespace::new(&tmp.path().join("ns"), &[]).unwrap();
    let mirror = front.base_url();
    let dockerd =
        match Dockerd::start(&tmp.path().join("d"), &ns, &[mirror], &[front.host_port()]).await {
            Ok(d) => d,
            Err(StartError::Environment(reason)) => {
                skip_unless_ci(&format!("dockerd cannot run on this machine: {reason}"));
                return;
            }
            Err(e @ StartError::Fixture(_)) => panic!("{e}"),
        };
    let ready = started.elapsed();

    let pulled = run_ok(dockerd.docker(&["pull", "busybox:latest"])).await;
    if let Err(e) = pulled {
        let mut dockerd = dockerd;
        panic!(
            "docker pull failed: {e}\nmirror saw {:?}\ndockerd log:\n{}",
            summary(&front.requests()),
            dockerd.daemon().log_tail(30)
        );
    }
    let repo_digest = run_ok(dockerd.docker(&[
        "image",
        "inspect",
        "--format",
        "{{index .RepoDigests 0}}",
        "busybox:latest",
    ]))
    .await
    .unwrap();
    assert_eq!(
        repo_digest,
        format!("busybox@{}", bed.seeded.busybox.manifest.digest)
    );
    // The image ID is the config digest: dockerd checked the config and diff_ids.
    let id = run_ok(dockerd.docker(&["image", "inspect", "--format", "{{.Id}}", "busybox:latest"]))
        .await
        .unwrap();
    assert_eq!(id, bed.seeded.busybox.config.digest);

    // Docker Engine mirror mode: Docker Hub names with library/, no ns.
    let requests = front.requests();
    eprintln!("dockerd sent: {:#?}", summary(&requests));
    assert!(
        requests
            .iter()
            .any(|r| r.path.starts_with("/v2/library/busybox/manifests/")),
        "dockerd asked the mirror for library/busybox: {:?}",
        summary(&requests)
    );
    assert!(
        requests.iter().all(|r| !r.path.contains("ns=")),
        "{:?}",
        summary(&requests)
    );
    assert_upstream_served(&bed, &bed.seeded.busybox);
    drop(dockerd);
    eprintln!(
        "dockerd scenario took {:?} (daemon ready after {ready:?})",
        started.elapsed()
    );
}

/// `skopeo copy` inside the namespace, then the same digest checks as tests/proxy_pull.rs.
async fn skopeo_pull_in(ns: &HostsNamespace, source: &str, out: &Path, image: &Image) {
    let tmpdir = out.with_extension("tmp");
    std::fs::create_dir_all(&tmpdir).unwrap();
    let mut cmd = Command::new("skopeo");
    cmd.env("TMPDIR", &tmpdir)
        .args(["--insecure-policy", "copy", "--src-tls-verify=false"])
        .arg(format!("docker://{source}"))
        .arg(format!("dir:{}", out.display()));
    run_ok(ns.wrap(&cmd)).await.unwrap();
    let manifest = std::fs::read(out.join("manifest.json")).expect("manifest.json");
    assert_eq!(sha256_digest(&manifest), image.manifest.digest);
    for blob in image.blobs() {
        let data = std::fs::read(out.join(blob.hex())).expect("blob file");
        assert_eq!(sha256_digest(&data), blob.digest);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_routing_single_name_with_skopeo_and_podman() {
    if !require_tools(&["docker-registry", "skopeo", "podman", "unshare"])
        || !require_mount_namespace()
    {
        return;
    }
    let started = Instant::now();
    let bed = TestBed::start_with(Mode::Plain, SMALL).await;
    let tmp = short_tempdir("dp-host-").unwrap();
    // CUSTOM_DOMAIN=example.test (ProxyHandle's default) makes docker.example.test the Docker
    // Hub route host; the TOML points that route at the bed.
    let proxy = start_proxy(&bed, &tmp.path().join("cache"));
    let port = proxy.addr().port();
    let host = format!("docker.example.test:{port}");
    let ns = HostsNamespace::new(&tmp.path().join("ns"), &["docker.example.test"]).unwrap();

    // The proxy answers the single name with a 301 to library/.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .resolve("docker.example.test", proxy.addr())
        .build()
        .unwrap();
    let resp = client
        .get(format!("http://{host}/v2/busybox/manifests/latest"))
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 301);
    assert_eq!(
        resp.headers().get("location").and_then(|v| v.to_str().ok()),
        Some("/v2/library/busybox/manifests/latest")
    );

    let source = format!("{host}/busybox:latest");
    skopeo_pull_in(
        &ns,
        &source,
        &tmp.path().join("skopeo-out"),
        &bed.seeded.busybox,
    )
    .await;
    assert_upstream_served(&bed, &bed.seeded.busybox);

    let podman = Podman::new(&tmp.path().join("podman"), &ns).unwrap();
    run_ok(podman.command(&["pull", "--tls-verify=false", &source]))
        .await
        .unwrap();
    assert_eq!(
        podman.image_digest(&source).await.unwrap(),
        bed.seeded.busybox.manifest.digest
    );

    // A nested name is forwarded as is (no library/ rule).
    skopeo_pull_in(
        &ns,
        &format!("{host}/myorg/team/app:1.0"),
        &tmp.path().join("app-out"),
        &bed.seeded.app,
    )
    .await;
    eprintln!("host-routing scenarios took {:?}", started.elapsed());
}
