//! The client × scenario matrix: podman, containerd (`ctr`) and dockerd pulling through the proxy
//! from a real `docker-registry` in every upstream mode (skopeo's row is tests/proxy_pull.rs):
//!
//! | scenario | upstream |
//! |---|---|
//! | 1 `anonymous` | plain HTTP, no auth |
//! | 2 `token_anonymous` | bearer tokens, public repositories, no client credentials |
//! | 3 `token_credentials` | bearer tokens, `private/secret` pulled as alice (anonymous refused) |
//! | 4 `basic` | htpasswd Basic, client credentials |
//! | 5 `tls` | HTTPS with a private CA that only the proxy trusts (`ca_bundle`) |
//! | 6 `cdn_redirect` | bearer tokens, blob GETs redirected to a CDN that answers 400 to `Authorization` |
//!
//! One test bed, one proxy (cache enabled, as deployed), one containerd and one dockerd per
//! scenario; each client gets a fresh store. Clients reach the proxy through a recording
//! [`FaultFront`] (a transparent forwarder, so every request a client sent can be asserted on):
//!
//! * podman by mirror host: `FRONT/<repo>:<tag>`, `--creds alice:secret` when credentials apply;
//! * ctr through a `hosts.toml` mirror for `docker.io` (`?ns=docker.io` on every request),
//!   `--user alice:secret` when credentials apply;
//! * dockerd with the front as `--registry-mirror` (`docker pull <hub name>`), and in the
//!   credential scenarios also by the mirror's own name (`docker pull FRONT/<repo>`, COMPAT §1.6
//!   "Host mode") after `docker login FRONT`.
//!
//! Clients pull different images in the public scenarios (podman `library/busybox:latest`, ctr
//! `library/busybox:1.36`, dockerd `library/dockerv2:latest`), so every cell sends its manifest
//! and at least two blobs to the upstream rather than reading what another client cached. Every
//! cell checks the digest the client recorded against the seeded one. A cell failure does not
//! stop the scenario: the others still run, the row is printed (`MATRIX …` lines on stderr, with
//! timings) and the test fails listing every failed cell.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use dockerproxy_tests::client_auth::{
    ALICE, Creds, DOCKER_HUB_AUTH_KEY, copy_docker_auth, ctr_pull, ctr_pull_fails,
    docker_cli_config_dir, docker_login, docker_pull, docker_pull_fails, docker_rmi,
    is_auth_refusal, podman_pull, podman_pull_fails,
};
use dockerproxy_tests::clients::{
    Containerd, Dockerd, HostsNamespace, Podman, StartError, require_mount_namespace, run_ok,
    short_tempdir, skip_unless_ci, write_containerd_mirror,
};
use dockerproxy_tests::{
    FaultFront, Image, Mode, ProxyHandle, RecordedRequest, SeedOptions, TestBed,
    docker_hub_route_toml, require_tools,
};

const SMALL: SeedOptions = SeedOptions {
    big_layer_size: 1 << 20,
};

/// The containerd namespace the ctr cells pull into (and a second one for anonymous attempts).
const CTR_NS: &str = "matrix";
const CTR_ANON_NS: &str = "matrix-anon";

type CellResult = Result<String, String>;

/// Returns early from a cell with a formatted failure.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// One cell of the matrix: which client (and mode), how it went, how long it took.
struct Cell {
    client: &'static str,
    outcome: CellResult,
    took: Duration,
}

/// Everything one scenario runs: the proxy, the recording front the clients talk to, the two
/// daemons and the client state. Fields drop in order: daemons first, the directory last.
struct Scene {
    name: &'static str,
    containerd: Containerd,
    dockerd: Dockerd,
    front: FaultFront,
    _proxy: ProxyHandle,
    ns: HostsNamespace,
    hosts_dir: PathBuf,
    dockerd_dir: PathBuf,
    started: Instant,
    cells: Vec<Cell>,
    tmp: tempfile::TempDir,
}

/// The tools every scenario needs; `false` (skip) outside CI when one is missing.
fn require_everything() -> bool {
    require_tools(&[
        "docker-registry",
        "podman",
        "containerd",
        "ctr",
        "dockerd",
        "docker",
        "unshare",
    ]) && require_mount_namespace()
}

impl Scene {
    /// Starts the proxy (Docker Hub route → `upstream`, with `realms` allowed and `extra` TOML),
    /// the recording front, containerd (with a `docker.io` hosts.toml mirror at the front) and
    /// dockerd (with the front as registry mirror). `started` is when the test began (timings
    /// include the test bed). `None` when dockerd cannot run here (skip).
    async fn start(
        started: Instant,
        name: &'static str,
        upstream: &str,
        realms: &[String],
        extra: &str,
    ) -> Option<Self> {
        let setup = Instant::now();
        let tmp = short_tempdir("dp-mx-").unwrap();
        let cache = tmp.path().join("cache").display().to_string();
        let proxy = ProxyHandle::start(
            &[("CACHE_DIR", cache.as_str())],
            &docker_hub_route_toml(upstream, realms, extra),
        )
        .expect("start the proxy");
        let front = FaultFront::forward(&proxy.base_url()).unwrap();
        let ns = HostsNamespace::new(&tmp.path().join("ns"), &[]).unwrap();
        let hosts_dir = tmp.path().join("certs.d");
        write_containerd_mirror(
            &hosts_dir,
            "docker.io",
            "https://registry-1.docker.io",
            &front.base_url(),
        )
        .unwrap();
        let dockerd_dir = tmp.path().join("d");
        let containerd_dir = tmp.path().join("c");
        let mirrors = [front.base_url()];
        let insecure = [front.host_port()];
        let (containerd, dockerd) = tokio::join!(
            Containerd::start(&containerd_dir, &ns),
            Dockerd::start(&dockerd_dir, &ns, &mirrors, &insecure)
        );
        let containerd = containerd.expect("start containerd");
        let dockerd = match dockerd {
            Ok(d) => d,
            Err(StartError::Environment(reason)) => {
                skip_unless_ci(&format!("dockerd cannot run on this machine: {reason}"));
                return None;
            }
            Err(e @ StartError::Fixture(_)) => panic!("{e}"),
        };
        eprintln!(
            "[{name}] test bed ready after {:.1?}, proxy, front and daemons after {:.1?} more",
            setup.duration_since(started),
            setup.elapsed()
        );
        Some(Self {
            name,
            containerd,
            dockerd,
            front,
            _proxy: proxy,
            ns,
            hosts_dir,
            dockerd_dir,
            started,
            cells: Vec::new(),
            tmp,
        })
    }

    /// `127.0.0.1:FRONTPORT`, the mirror host clients name in references.
    fn mirror(&self) -> String {
        self.front.host_port()
    }

    /// A fresh podman store for one cell.
    fn podman(&self, label: &str) -> Podman {
        Podman::new(&self.tmp.path().join(format!("podman-{label}")), &self.ns).unwrap()
    }

    /// Records a finished cell.
    fn record(&mut self, client: &'static str, (outcome, took): (CellResult, Duration)) {
        match &outcome {
            Ok(note) => eprintln!("[{}] {client}: ok in {took:.1?} ({note})", self.name),
            Err(e) => eprintln!("[{}] {client}: FAILED in {took:.1?}: {e}", self.name),
        }
        self.cells.push(Cell {
            client,
            outcome,
            took,
        });
    }

    /// Prints the matrix row and fails the test if any cell failed (with daemon log tails).
    fn finish(mut self) {
        let total = self.started.elapsed();
        let row: Vec<String> = self
            .cells
            .iter()
            .map(|c| {
                let verdict = if c.outcome.is_ok() { "ok" } else { "FAIL" };
                format!("{}: {verdict} {:.1?}", c.client, c.took)
            })
            .collect();
        eprintln!(
            "MATRIX | {} | {} | total {total:.1?}",
            self.name,
            row.join(" | ")
        );
        let failed: Vec<String> = self
            .cells
            .iter()
            .filter_map(|c| {
                c.outcome
                    .as_ref()
                    .err()
                    .map(|e| format!("{}: {e}", c.client))
            })
            .collect();
        if failed.is_empty() {
            return;
        }
        let mut logs = String::new();
        if self
            .cells
            .iter()
            .any(|c| c.outcome.is_err() && c.client.starts_with("ctr"))
        {
            logs.push_str("\ncontainerd log:\n");
            logs.push_str(&self.containerd.daemon().log_tail(20));
        }
        if self
            .cells
            .iter()
            .any(|c| c.outcome.is_err() && c.client.starts_with("dockerd"))
        {
            logs.push_str("\ndockerd log:\n");
            logs.push_str(&self.dockerd.daemon().log_tail(30));
        }
        panic!(
            "scenario {}: {} cell(s) failed:\n{}{logs}",
            self.name,
            failed.len(),
            failed.join("\n")
        );
    }
}

/// Runs a cell and measures it.
async fn timed(cell: impl Future<Output = CellResult>) -> (CellResult, Duration) {
    let start = Instant::now();
    let outcome = cell.await;
    (outcome, start.elapsed())
}

fn summary(requests: &[RecordedRequest]) -> Vec<String> {
    requests
        .iter()
        .map(|r| format!("{} {} -> {}", r.method, r.path, r.status))
        .collect()
}

/// Whether the upstream registry has served the manifest of `image` (by tag or digest, GET or
/// HEAD): the cell reached the upstream instead of the cache.
fn upstream_served_manifest(bed: &TestBed, image: &Image) -> bool {
    let by_tag = format!("/v2/{}/manifests/{}", image.repo, image.tag);
    let by_digest = format!("/v2/{}/manifests/{}", image.repo, image.manifest.digest);
    bed.registry.upstream_requests().iter().any(|(_, p)| {
        let path = p.split('?').next().unwrap_or_default();
        path == by_tag || path == by_digest
    })
}

/// Token requests since `since` that carried credentials (Basic, a password or a refresh token).
fn token_requests_with_credentials(bed: &TestBed, since: usize) -> usize {
    bed.token_server()
        .requests()
        .iter()
        .skip(since)
        .filter(|r| {
            r.authorization || r.param("password").is_some() || r.param("refresh_token").is_some()
        })
        .count()
}

/// podman by mirror host: `FRONT/<repo>:<tag>`, digest checked. Returns a note with the
/// reference pulled.
async fn podman_cell(
    scene: &Scene,
    label: &str,
    image: &Image,
    creds: Option<Creds<'_>>,
) -> CellResult {
    let podman = scene.podman(label);
    let reference = format!("{}/{}:{}", scene.mirror(), image.repo, image.tag);
    let digest = podman_pull(&podman, &reference, creds).await.map_err(err)?;
    ensure!(
        digest == image.manifest.digest,
        "podman recorded {digest} for {reference}, seeded {}",
        image.manifest.digest
    );
    Ok(reference)
}

/// ctr through the hosts.toml mirror: `docker.io/<repo>:<tag>`, digest checked, and every
/// request it sent to the mirror during the cell carried `ns=docker.io`.
async fn ctr_cell(scene: &Scene, image: &Image, creds: Option<Creds<'_>>) -> CellResult {
    let before = scene.front.requests().len();
    let reference = format!("docker.io/{}:{}", image.repo, image.tag);
    let digest = ctr_pull(
        &scene.containerd,
        CTR_NS,
        &scene.hosts_dir,
        &reference,
        creds,
    )
    .await
    .map_err(err)?;
    ensure!(
        digest == image.manifest.digest,
        "ctr listed {digest} for {reference}, seeded {}",
        image.manifest.digest
    );
    let sent: Vec<RecordedRequest> = scene.front.requests().into_iter().skip(before).collect();
    let manifest_path = format!("/v2/{}/manifests/", image.repo);
    ensure!(
        sent.iter().any(|r| r.path.starts_with(&manifest_path)),
        "ctr never asked the mirror for {manifest_path}: {:?}",
        summary(&sent)
    );
    // The proxy's token realm carries `?ns=` too, so even /v2/auth requests have it.
    ensure!(
        sent.iter().all(|r| r.path.contains("ns=docker.io")),
        "ctr requests without ns=docker.io: {:?}",
        summary(&sent)
    );
    Ok(reference)
}

/// dockerd through its registry mirror: `docker pull <hub name>`, repo digest and image ID
/// (the config digest) checked, and the mirror saw the manifest request.
async fn dockerd_mirror_cell(scene: &Scene, image: &Image) -> CellResult {
    let before = scene.front.requests().len();
    let name = image.repo.strip_prefix("library/").unwrap_or(&image.repo);
    let reference = format!("{name}:{}", image.tag);
    let pulled = docker_pull(&scene.dockerd, &reference).await.map_err(err)?;
    ensure!(
        pulled.has_digest(&image.manifest.digest),
        "dockerd recorded {:?} for {reference}, seeded {}",
        pulled.repo_digests,
        image.manifest.digest
    );
    ensure!(
        pulled.id == image.config.digest,
        "image ID {} is not the config digest {}",
        pulled.id,
        image.config.digest
    );
    let sent: Vec<RecordedRequest> = scene.front.requests().into_iter().skip(before).collect();
    let manifest_path = format!("/v2/{}/manifests/", image.repo);
    ensure!(
        sent.iter()
            .any(|r| r.path.starts_with(&manifest_path) && r.status == 200),
        "dockerd did not get {manifest_path} from the mirror: {:?}",
        summary(&sent)
    );
    Ok(reference)
}

/// dockerd by the mirror's own name (`docker pull FRONT/<repo>:<tag>`, after `docker login
/// FRONT`): repo digest and image ID checked.
async fn dockerd_host_cell(scene: &Scene, image: &Image) -> CellResult {
    let reference = format!("{}/{}:{}", scene.mirror(), image.repo, image.tag);
    let pulled = docker_pull(&scene.dockerd, &reference).await.map_err(err)?;
    ensure!(
        pulled.has_digest(&image.manifest.digest),
        "dockerd recorded {:?} for {reference}, seeded {}",
        pulled.repo_digests,
        image.manifest.digest
    );
    ensure!(
        pulled.id == image.config.digest,
        "image ID {} is not the config digest {}",
        pulled.id,
        image.config.digest
    );
    Ok(reference)
}

/// The three public-image cells (podman busybox:latest, ctr busybox:1.36, dockerd dockerv2), each
/// also checking that its pull reached the upstream and, with `after_each`, a scenario-specific
/// condition.
async fn public_cells(scene: &mut Scene, bed: &TestBed, after_each: &dyn Fn(&Image) -> CellResult) {
    let seeded = &bed.seeded;
    let check = |image: &Image, pulled: CellResult| -> CellResult {
        let note = pulled?;
        ensure!(
            upstream_served_manifest(bed, image),
            "the upstream never served the manifest of {}:{}",
            image.repo,
            image.tag
        );
        let extra = after_each(image)?;
        Ok(format!("{note}{extra}"))
    };
    let r = timed(async {
        check(
            &seeded.busybox,
            podman_cell(scene, "anon", &seeded.busybox, None).await,
        )
    })
    .await;
    scene.record("podman", r);
    let r = timed(async {
        check(
            &seeded.busybox_136,
            ctr_cell(scene, &seeded.busybox_136, None).await,
        )
    })
    .await;
    scene.record("ctr", r);
    let r = timed(async {
        check(
            &seeded.dockerv2,
            dockerd_mirror_cell(scene, &seeded.dockerv2).await,
        )
    })
    .await;
    scene.record("dockerd", r);
}

/// The line of a client's error output that says it was refused (for the cell's note).
fn refusal(text: &str) -> String {
    let line = text
        .lines()
        .rev()
        .find(|l| is_auth_refusal(l))
        .unwrap_or_default()
        .trim();
    let start = line.len().saturating_sub(100);
    let start = (start..line.len())
        .find(|i| line.is_char_boundary(*i))
        .unwrap_or(0);
    line[start..].to_owned()
}

fn realm_origin(bed: &TestBed) -> Vec<String> {
    bed.token_server
        .as_ref()
        .map(|t| format!("http://{}", t.addr()))
        .into_iter()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_1_anonymous_plain_upstream() {
    if !require_everything() {
        return;
    }
    let started = Instant::now();
    let bed = TestBed::start_with(Mode::Plain, SMALL).await;
    let Some(mut scene) =
        Scene::start(started, "anonymous", bed.registry.base_url(), &[], "").await
    else {
        return;
    };
    public_cells(&mut scene, &bed, &|_| Ok(String::new())).await;
    scene.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_2_token_anonymous() {
    if !require_everything() {
        return;
    }
    let started = Instant::now();
    let bed = TestBed::start_with(Mode::Token, SMALL).await;
    let Some(mut scene) = Scene::start(
        started,
        "token_anonymous",
        bed.registry.base_url(),
        &realm_origin(&bed),
        "",
    )
    .await
    else {
        return;
    };
    // Every client got its token through the proxy's /v2/auth, anonymously (the seeding's own
    // token requests, as alice, come before).
    let seen = std::cell::Cell::new(bed.token_server().requests().len());
    public_cells(&mut scene, &bed, &|_| {
        let requests = bed.token_server().requests();
        let new = &requests[seen.get()..];
        seen.set(requests.len());
        ensure!(!new.is_empty(), "no token request reached the token server");
        ensure!(
            new.iter()
                .all(|r| !r.authorization && r.param("password").is_none()),
            "anonymous client sent credentials: {new:?}"
        );
        Ok(format!(", {} anonymous token request(s)", new.len()))
    })
    .await;
    scene.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_3_token_with_credentials_private_repo() {
    if !require_everything() {
        return;
    }
    let started = Instant::now();
    let bed = TestBed::start_with(Mode::Token, SMALL).await;
    let Some(mut scene) = Scene::start(
        started,
        "token_credentials",
        bed.registry.base_url(),
        &realm_origin(&bed),
        "",
    )
    .await
    else {
        return;
    };
    let secret = &bed.seeded.private_secret;

    // podman as alice, then anonymously with a fresh store (the manifest is cached by now: the
    // proxy must still refuse it).
    let r = timed(async {
        let since = bed.token_server().requests().len();
        let note = podman_cell(&scene, "alice", secret, Some(ALICE)).await?;
        ensure!(
            token_requests_with_credentials(&bed, since) > 0,
            "podman's token requests carried no credentials"
        );
        let reference = format!("{}/{}:{}", scene.mirror(), secret.repo, secret.tag);
        let text = podman_pull_fails(&scene.podman("anon"), &reference, None)
            .await
            .map_err(err)?;
        ensure!(
            is_auth_refusal(&text),
            "anonymous podman pull failed otherwise: {text}"
        );
        Ok(format!("{note}; anonymous refused: {}", refusal(&text)))
    })
    .await;
    scene.record("podman", r);

    // ctr as alice through the mirror, then anonymously in another containerd namespace.
    let r = timed(async {
        let since = bed.token_server().requests().len();
        let note = ctr_cell(&scene, secret, Some(ALICE)).await?;
        ensure!(
            token_requests_with_credentials(&bed, since) > 0,
            "ctr's token requests carried no credentials"
        );
        let reference = format!("docker.io/{}:{}", secret.repo, secret.tag);
        let text = ctr_pull_fails(
            &scene.containerd,
            CTR_ANON_NS,
            &scene.hosts_dir,
            &reference,
            None,
        )
        .await
        .map_err(err)?;
        ensure!(
            is_auth_refusal(&text),
            "anonymous ctr pull failed otherwise: {text}"
        );
        Ok(format!("{note}; anonymous refused: {}", refusal(&text)))
    })
    .await;
    scene.record("ctr", r);

    // dockerd: `docker login` to the mirror host stores credentials under that host, and the
    // CLI sends them only for images named after it. A pull of the Docker Hub name through
    // `registry-mirrors` carries the Docker Hub entry instead (Docker Engine 20.10 forwards that
    // one to mirrors: moby #42022), so with only the mirror login it is anonymous and refused.
    let login_host = scene.mirror();
    let hub_name = format!("{}:{}", secret.repo, secret.tag);
    let r = timed(async {
        docker_login(&scene.dockerd, &login_host, ALICE)
            .await
            .map_err(err)?;
        let before = scene.front.requests().len();
        let since = bed.token_server().requests().len();
        let text = docker_pull_fails(&scene.dockerd, &hub_name)
            .await
            .map_err(err)?;
        let sent: Vec<RecordedRequest> = scene.front.requests().into_iter().skip(before).collect();
        // Evidence that the client sent nothing: no Basic anywhere, an anonymous /v2/auth, and
        // no credentials reached the token server (the Bearer on the manifest requests is the
        // anonymous token).
        ensure!(
            sent.iter().all(|r| !r
                .header("authorization")
                .is_some_and(|v| v.to_ascii_lowercase().starts_with("basic"))),
            "dockerd sent Basic credentials to the mirror: {:?}",
            summary(&sent)
        );
        ensure!(
            sent.iter()
                .filter(|r| r.path.starts_with("/v2/auth"))
                .all(|r| r.header("authorization").is_none()),
            "dockerd sent credentials to the mirror's /v2/auth: {:?}",
            summary(&sent)
        );
        ensure!(
            token_requests_with_credentials(&bed, since) == 0,
            "credentials reached the token server"
        );
        let manifest_path = format!("/v2/{}/manifests/", secret.repo);
        ensure!(
            sent.iter()
                .any(|r| r.path.starts_with(&manifest_path) && r.status == 401),
            "the mirror did not refuse the anonymous manifest request: {:?}\n{text}",
            summary(&sent)
        );
        Ok(format!(
            "docker login {login_host} ok; mirror pull without Hub credentials refused"
        ))
    })
    .await;
    scene.record("dockerd-login", r);

    // The same login copied to the Docker Hub key: dockerd sends it to the mirror (#42022).
    // Against a token registry `docker login` stored an identity token (the token server's
    // refresh token), so dockerd POSTs `grant_type=refresh_token` to the mirror's /v2/auth.
    // (A Docker Engine with moby PR #42023 would send nothing to mirrors; this is 20.10.)
    let r = timed(async {
        let since = bed.token_server().requests().len();
        copy_docker_auth(
            &docker_cli_config_dir(&scene.dockerd_dir),
            &login_host,
            DOCKER_HUB_AUTH_KEY,
        )
        .map_err(err)?;
        let note = dockerd_mirror_cell(&scene, secret).await?;
        ensure!(
            token_requests_with_credentials(&bed, since) > 0,
            "dockerd's token requests carried no credentials"
        );
        Ok(note)
    })
    .await;
    scene.record("dockerd-mirror", r);

    // Host mode (COMPAT §1.6): the image named after the mirror host, with the mirror login.
    let r = timed(async {
        docker_rmi(&scene.dockerd, &[&hub_name])
            .await
            .map_err(err)?;
        dockerd_host_cell(&scene, secret).await
    })
    .await;
    scene.record("dockerd-host", r);

    // Anonymous again: both entries removed, the pull through the mirror is refused there.
    let r = timed(async {
        run_ok(scene.dockerd.docker(&["logout", &login_host]))
            .await
            .map_err(err)?;
        run_ok(scene.dockerd.docker(&["logout"]))
            .await
            .map_err(err)?;
        let before = scene.front.requests().len();
        docker_pull_fails(&scene.dockerd, &hub_name)
            .await
            .map_err(err)?;
        let sent: Vec<RecordedRequest> = scene.front.requests().into_iter().skip(before).collect();
        let manifest_path = format!("/v2/{}/manifests/", secret.repo);
        let asked: Vec<&RecordedRequest> = sent
            .iter()
            .filter(|r| r.path.starts_with(&manifest_path))
            .collect();
        ensure!(
            !asked.is_empty(),
            "dockerd never asked the mirror: {:?}",
            summary(&sent)
        );
        ensure!(
            asked
                .iter()
                .all(|r| r.status == 401 || r.status == 403 || r.status == 404),
            "the mirror served the private manifest anonymously: {:?}",
            summary(&sent)
        );
        Ok("anonymous mirror pull refused".to_owned())
    })
    .await;
    scene.record("dockerd-anon", r);
    scene.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_4_basic_auth_upstream() {
    if !require_everything() {
        return;
    }
    let started = Instant::now();
    let bed = TestBed::start_with(Mode::Basic, SMALL).await;
    let Some(mut scene) = Scene::start(started, "basic", bed.registry.base_url(), &[], "").await
    else {
        return;
    };
    let seeded = &bed.seeded;
    let upstream_check = |image: &Image, note: CellResult| -> CellResult {
        let note = note?;
        ensure!(
            upstream_served_manifest(&bed, image),
            "the upstream never served the manifest of {}:{}",
            image.repo,
            image.tag
        );
        Ok(note)
    };

    let r = timed(async {
        let note = podman_cell(&scene, "alice", &seeded.busybox, Some(ALICE)).await;
        let note = upstream_check(&seeded.busybox, note)?;
        let reference = format!("{}/library/busybox:latest", scene.mirror());
        let text = podman_pull_fails(&scene.podman("anon"), &reference, None)
            .await
            .map_err(err)?;
        ensure!(
            is_auth_refusal(&text),
            "anonymous podman pull failed otherwise: {text}"
        );
        Ok(format!("{note}; anonymous refused: {}", refusal(&text)))
    })
    .await;
    scene.record("podman", r);

    let r = timed(async {
        let note = ctr_cell(&scene, &seeded.busybox_136, Some(ALICE)).await;
        upstream_check(&seeded.busybox_136, note)
    })
    .await;
    scene.record("ctr", r);

    // dockerd: the mirror login copied to the Docker Hub key for the mirror pull (see
    // matrix_3), and Host mode with the mirror login.
    let login_host = scene.mirror();
    let r = timed(async {
        docker_login(&scene.dockerd, &login_host, ALICE)
            .await
            .map_err(err)?;
        copy_docker_auth(
            &docker_cli_config_dir(&scene.dockerd_dir),
            &login_host,
            DOCKER_HUB_AUTH_KEY,
        )
        .map_err(err)?;
        let note = dockerd_mirror_cell(&scene, &seeded.dockerv2).await;
        upstream_check(&seeded.dockerv2, note)
    })
    .await;
    scene.record("dockerd-mirror", r);
    let r = timed(async {
        let note = dockerd_host_cell(&scene, &seeded.app).await;
        upstream_check(&seeded.app, note)
    })
    .await;
    scene.record("dockerd-host", r);
    scene.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_5_tls_upstream_private_ca() {
    if !require_everything() {
        return;
    }
    let started = Instant::now();
    let bed = TestBed::start_with(Mode::Tls, SMALL).await;
    // Only the proxy trusts the CA; the clients talk plain HTTP to it.
    let extra = format!("ca_bundle = {:?}", bed.pki.ca_cert.display().to_string());
    let Some(mut scene) = Scene::start(started, "tls", bed.registry.base_url(), &[], &extra).await
    else {
        return;
    };
    public_cells(&mut scene, &bed, &|_| Ok(String::new())).await;
    scene.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_6_blob_redirect_to_cdn_rejecting_authorization() {
    if !require_everything() {
        return;
    }
    let started = Instant::now();
    let bed = TestBed::start_with(Mode::Token, SMALL).await;
    let cdn = FaultFront::cdn(&bed.storage).unwrap();
    let upstream = FaultFront::redirecting_blobs(bed.registry.base_url(), &cdn.base_url()).unwrap();
    let mut realms = realm_origin(&bed);
    realms.push(cdn.base_url());
    let Some(mut scene) =
        Scene::start(started, "cdn_redirect", &upstream.base_url(), &realms, "").await
    else {
        return;
    };
    // Each client's own blobs (config and top layer) came from the CDN, every CDN answer was a
    // 200, and no CDN request carried Authorization.
    let seen = std::cell::Cell::new(cdn.requests().len());
    public_cells(&mut scene, &bed, &|image| {
        let requests = cdn.requests();
        let new = &requests[seen.get()..];
        seen.set(requests.len());
        ensure!(
            [
                &image.config.digest,
                &image.layers[image.layers.len() - 1].digest
            ]
            .iter()
            .all(|d| new.iter().any(|r| r.path.contains(d.as_str()))),
            "the CDN did not serve this image's own blobs: {:?}",
            summary(new)
        );
        ensure!(
            new.iter()
                .all(|r| r.header("authorization").is_none() && r.status == 200),
            "CDN requests: {:?}",
            new.iter()
                .map(|r| (
                    r.path.clone(),
                    r.status,
                    r.header("authorization").is_some()
                ))
                .collect::<Vec<_>>()
        );
        Ok(format!(", {} CDN GET(s) without Authorization", new.len()))
    })
    .await;
    let all = cdn.requests();
    assert!(!all.is_empty(), "no blob came from the CDN");
    assert!(
        all.iter().all(|r| r.header("authorization").is_none()),
        "a CDN request carried Authorization"
    );
    scene.finish();
}
