//! Real Nginx with `ngx_http_dockerproxy_module` (nginx/, linked with libdockerproxy) in front of
//! a real token-auth `docker-registry`: skopeo pulls an image and a multi-arch index through it
//! and verifies digests, and a blob redirect to a CDN that rejects `Authorization` succeeds.
//!
//! The module is built against Debian's Nginx sources (`nginx-dev`) by `nginx/build.sh`, with
//! libdockerproxy built by a nested `cargo build -p dockerproxy-ffi` into its own target
//! directory (no lock contention with the running `cargo test`). Both are cached under
//! `target/nginx-module/`. Missing tools: fail under `CI`, else skip with a reason.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use dockerproxy_tests::content::sha256_digest;
use dockerproxy_tests::{
    FaultFront, Image, Mode, SeedOptions, TestBed, docker_hub_route_toml, free_port, require_tools,
};

const SMALL: SeedOptions = SeedOptions {
    big_layer_size: 1 << 20,
};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `target/` of this build (the test executable lives in `target/<profile>/deps/`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors()
        .nth(3)
        .expect("target/<profile>/deps/<exe>")
        .to_owned()
}

fn mtime(p: &Path) -> SystemTime {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Builds libdockerproxy and the module once per test process (tests run in parallel).
fn build_module() -> PathBuf {
    static MODULE: OnceLock<PathBuf> = OnceLock::new();
    MODULE.get_or_init(build_module_uncached).clone()
}

/// Builds libdockerproxy and the module (cached on disk); returns the module path.
fn build_module_uncached() -> PathBuf {
    let base = target_dir().join("nginx-module");
    let cargo_target = base.join("cargo");
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let out = Command::new(cargo)
        .current_dir(repo_root())
        .args(["build", "-p", "dockerproxy-ffi"])
        .env("CARGO_TARGET_DIR", &cargo_target)
        .output()
        .expect("run cargo build -p dockerproxy-ffi");
    assert!(
        out.status.success(),
        "cargo build -p dockerproxy-ffi failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lib = cargo_target.join("debug/libdockerproxy.a");
    let build = base.join("build");
    let module = build.join("objs/ngx_http_dockerproxy_module.so");
    let src = repo_root().join("nginx/ngx_http_dockerproxy_module.c");
    let header = repo_root().join("include/dockerproxy.h");
    let fresh = mtime(&module) > mtime(&lib)
        && mtime(&module) > mtime(&src)
        && mtime(&module) > mtime(&header);
    if !fresh {
        let out = Command::new("bash")
            .arg(repo_root().join("nginx/build.sh"))
            .arg(&build)
            .arg(&lib)
            .output()
            .expect("run nginx/build.sh");
        assert!(
            out.status.success(),
            "nginx/build.sh failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(module.exists(), "the module was not built");
    module
}

/// A running Nginx; killed on drop.
struct Nginx {
    child: Child,
    port: u16,
    prefix: PathBuf,
}

impl Nginx {
    fn start(module: &Path, prefix: &Path, toml: &str) -> Self {
        for d in ["logs", "tmp"] {
            std::fs::create_dir_all(prefix.join(d)).unwrap();
        }
        let port = free_port();
        let toml_path = prefix.join("dockerproxy.toml");
        std::fs::write(&toml_path, toml).unwrap();
        let p = prefix.display();
        let conf = format!(
            r#"load_module {module};
daemon off;
master_process off;
worker_processes 1;
error_log {p}/logs/error.log info;
pid {p}/logs/nginx.pid;
events {{ worker_connections 512; }}
http {{
    access_log {p}/logs/access.log;
    client_body_temp_path {p}/tmp/body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
    dockerproxy_config {toml};
    chunked_transfer_encoding off;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            dockerproxy;
        }}
        location /_dp_upstream {{
            internal;
            proxy_pass $dp_upstream_url;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;
            proxy_max_temp_file_size 0;
            proxy_redirect off;
        }}
    }}
}}
"#,
            module = module.display(),
            toml = toml_path.display(),
        );
        let conf_path = prefix.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(prefix)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(prefix.join("logs/error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nginx");
        let mut n = Self {
            child,
            port,
            prefix: prefix.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = n.child.try_wait() {
                panic!("nginx exited with {status}:\n{}", n.error_log());
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen:\n{}",
                n.error_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        n
    }

    fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.prefix.join("logs/access.log")).unwrap_or_default()
    }

    /// A raw HTTP/1.0 request; returns the whole response text.
    fn get(&self, target: &str) -> String {
        use std::io::{Read, Write};
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "GET {target} HTTP/1.0\r\nHost: {}\r\n\r\n",
            self.host_port()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// Fails on any `[alert]`, `[crit]` or `[emerg]` line of the error log.
    fn assert_no_alerts(&self) {
        let log = self.error_log();
        assert!(
            !log.lines()
                .any(|l| l.contains("[alert]") || l.contains("[crit]") || l.contains("[emerg]")),
            "nginx logged alerts:\n{log}"
        );
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.prefix.join("logs/error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn assert_pulled(out: &Output, dir: &Path, image: &Image, nginx: &Nginx) {
    let context = format!("\nnginx error.log:\n{}", nginx.error_log());
    dockerproxy_tests::skopeo::assert_pulled(out, dir, image, &context);
}

async fn pull(src: &str, out: &Path, extra: &[&str]) -> Output {
    dockerproxy_tests::skopeo::pull(src, out, extra).await
}

fn realm_origin(bed: &TestBed) -> Vec<String> {
    bed.token_server
        .as_ref()
        .map(|t| format!("http://{}", t.addr()))
        .into_iter()
        .collect()
}

fn tools_present() -> bool {
    require_tools(&["docker-registry", "skopeo", "nginx", "gcc", "make"])
        && (Path::new("/usr/share/nginx/src/configure").exists() || {
            assert!(
                std::env::var_os("CI").is_none(),
                "nginx-dev is required under CI (scripts/install-test-deps.sh installs it)"
            );
            eprintln!("SKIP: nginx-dev is not installed (/usr/share/nginx/src)");
            false
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_module_token_upstream_image_and_multi_arch_index() {
    if !tools_present() {
        return;
    }
    let module = build_module();
    let bed = TestBed::start_with(Mode::Token, SMALL).await;
    let toml = docker_hub_route_toml(bed.registry.base_url(), &realm_origin(&bed), "");
    let nginx = Nginx::start(&module, &bed.tmp.path().join("nginx"), &toml);

    // The ping is answered with the upstream's challenge, its realm rewritten to our /v2/auth.
    let ping = nginx.get("/v2/");
    assert!(ping.starts_with("HTTP/1.1 401"), "{ping}");
    let realm = format!("realm=\"http://{}/v2/auth\"", nginx.host_port());
    assert!(
        ping.lines()
            .any(|l| l.to_ascii_lowercase().starts_with("www-authenticate:") && l.contains(&realm)),
        "{ping}"
    );
    let health = nginx.get("/health");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");

    // The anonymous client gets the rewritten challenge and a token from /v2/auth.
    let dir = bed.tmp.path().join("busybox");
    let out = pull(
        &format!("{}/library/busybox:latest", nginx.host_port()),
        &dir,
        &[],
    )
    .await;
    assert_pulled(&out, &dir, &bed.seeded.busybox, &nginx);
    assert!(
        bed.registry
            .count("GET", "/v2/library/busybox/manifests/latest")
            >= 1,
        "the upstream served the pull"
    );

    // A nested repository name, and the 1 MiB layer streamed through the verifier.
    let dir = bed.tmp.path().join("big");
    let out = pull(
        &format!("{}/library/big:latest", nginx.host_port()),
        &dir,
        &[],
    )
    .await;
    assert_pulled(&out, &dir, &bed.seeded.big, &nginx);

    // A multi-arch OCI index with every platform.
    let dir = bed.tmp.path().join("multi");
    let out = pull(
        &format!("{}/library/multi:latest", nginx.host_port()),
        &dir,
        &["--all"],
    )
    .await;
    assert!(
        out.status.success(),
        "skopeo --all failed: {}\nnginx error.log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        nginx.error_log()
    );
    let index = std::fs::read(dir.join("manifest.json")).unwrap();
    assert_eq!(sha256_digest(&index), bed.seeded.multi.manifest.digest);

    // Every request went through the module: /v2/auth was served, blobs streamed with 200.
    let access = nginx.access_log();
    assert!(access.contains("\"GET /v2/auth?"), "{access}");
    assert!(
        access
            .lines()
            .any(|l| l.contains("/blobs/sha256:") && l.contains("\" 200 ")),
        "{access}"
    );
    nginx.assert_no_alerts();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_module_follows_blob_redirect_to_cdn_without_authorization() {
    if !tools_present() {
        return;
    }
    let module = build_module();
    let bed = TestBed::start_with(Mode::Token, SMALL).await;
    let cdn = FaultFront::cdn(&bed.storage).unwrap();
    let front = FaultFront::redirecting_blobs(bed.registry.base_url(), &cdn.base_url()).unwrap();
    let mut realms = realm_origin(&bed);
    realms.push(cdn.base_url());
    let toml = docker_hub_route_toml(&front.base_url(), &realms, "");
    let nginx = Nginx::start(&module, &bed.tmp.path().join("nginx"), &toml);

    let dir = bed.tmp.path().join("cdn");
    let out = pull(
        &format!("{}/library/busybox:latest", nginx.host_port()),
        &dir,
        &[],
    )
    .await;
    assert_pulled(&out, &dir, &bed.seeded.busybox, &nginx);
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
    nginx.assert_no_alerts();
}
