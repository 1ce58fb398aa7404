//! The four contenders, each started as its own pinned process on core 0: dockerproxy (release
//! binary), distribution 2.8 in proxy mode (TESTBED §1.5), nginx `proxy_cache` and nginx static
//! with sendfile (TESTBED §6.2).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::procs::Server;

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Kind {
    /// dockerproxy.
    Ours,
    /// distribution (`docker-registry`) in proxy mode.
    Dist,
    /// nginx `proxy_cache`.
    NginxCache,
    /// nginx serving the same files statically with sendfile.
    NginxStatic,
}

impl Kind {
    /// Short name for tables and JSON.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Ours => "dockerproxy",
            Self::Dist => "distribution",
            Self::NginxCache => "nginx-cache",
            Self::NginxStatic => "nginx-static",
        }
    }
}

/// What every contender needs to know.
#[derive(Debug, Clone)]
pub(crate) struct Env {
    /// Scratch directory of the run.
    pub(crate) work: PathBuf,
    /// The dockerproxy release binary.
    pub(crate) dockerproxy: PathBuf,
    /// The static root (`v2/<repo>/blobs/…`, `v2/<repo>/manifests/…`).
    pub(crate) static_root: PathBuf,
    /// CPU core for servers.
    pub(crate) core: u32,
    /// Extra environment for dockerproxy.
    pub(crate) ours_env: Vec<(String, String)>,
}

/// Per-start options.
#[derive(Debug, Clone)]
pub(crate) struct Opts {
    /// Upstream the caching contenders fetch from (the registry or the slow relay).
    pub(crate) upstream: SocketAddr,
    /// Manifest/tag freshness (dockerproxy `CACHE_MANIFEST_TTL`, nginx `proxy_cache_valid`).
    pub(crate) manifest_ttl_secs: u64,
    /// Cache directory; reused across restarts when the same path is passed.
    pub(crate) cache_dir: PathBuf,
}

/// A started contender.
#[derive(Debug)]
pub(crate) struct Contender {
    /// Which one.
    pub(crate) kind: Kind,
    /// Its process(es).
    pub(crate) server: Server,
    /// `http://127.0.0.1:PORT`.
    pub(crate) base: String,
}

/// Starts `kind` and waits until `GET /v2/` answers.
pub(crate) async fn start(kind: Kind, env: &Env, opts: &Opts) -> Result<Contender, String> {
    let port = dockerproxy_tests::ports::free_port();
    let dir = env.work.join(format!("{}-{port}", kind.name()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&opts.cache_dir).map_err(|e| e.to_string())?;
    let log = dir.join("server.log");
    let s = |v: &str| v.to_owned();
    let server = match kind {
        Kind::Ours => {
            let toml = dockerproxy_tests::proxy::docker_hub_route_toml(
                &format!("http://{}", opts.upstream),
                &[],
                "",
            );
            let conf = dir.join("dockerproxy.toml");
            std::fs::write(&conf, toml).map_err(|e| e.to_string())?;
            let mut env_vars = vec![
                (s("PORT"), port.to_string()),
                (s("CUSTOM_DOMAIN"), s("example.test")),
                (s("CACHE_DIR"), opts.cache_dir.display().to_string()),
                (
                    s("CACHE_MANIFEST_TTL"),
                    format!("{}s", opts.manifest_ttl_secs),
                ),
            ];
            env_vars.extend(env.ours_env.iter().cloned());
            let program = env.dockerproxy.display().to_string();
            let args = vec![s("--config"), conf.display().to_string()];
            Server::spawn(env.core, &program, &args, &env_vars, log)
        }
        Kind::Dist => {
            // JSON is YAML: the same trick as the test fixtures.
            let yaml = serde_json::json!({
                "version": "0.1",
                "log": {"level": "info"},
                "storage": {
                    "filesystem": {"rootdirectory": opts.cache_dir},
                    "delete": {"enabled": true},
                    "cache": {"blobdescriptor": "inmemory"},
                },
                "http": {"addr": format!("127.0.0.1:{port}"), "secret": "bench-secret"},
                "health": {"storagedriver": {"enabled": false}},
                "proxy": {"remoteurl": format!("http://{}", opts.upstream)},
            });
            let conf = dir.join("registry.yml");
            std::fs::write(&conf, yaml.to_string()).map_err(|e| e.to_string())?;
            let args = vec![s("serve"), conf.display().to_string()];
            Server::spawn(env.core, "/usr/bin/docker-registry", &args, &[], log)
        }
        Kind::NginxCache | Kind::NginxStatic => {
            let conf = dir.join("nginx.conf");
            let text = if kind == Kind::NginxCache {
                nginx_cache_conf(&dir, port, opts)
            } else {
                nginx_static_conf(&dir, port, &env.static_root)
            };
            std::fs::create_dir_all(dir.join("tmp")).map_err(|e| e.to_string())?;
            std::fs::write(&conf, text).map_err(|e| e.to_string())?;
            let args = vec![
                s("-c"),
                conf.display().to_string(),
                s("-p"),
                format!("{}/", dir.display()),
            ];
            Server::spawn(env.core, "/usr/sbin/nginx", &args, &[], log)
        }
    }
    .map_err(|e| format!("{}: spawn: {e}", kind.name()))?;
    let mut c = Contender {
        kind,
        server,
        base: format!("http://127.0.0.1:{port}"),
    };
    wait_ready(&mut c).await?;
    if matches!(kind, Kind::NginxCache | Kind::NginxStatic) {
        c.server.adopt_children();
    }
    Ok(c)
}

async fn wait_ready(c: &mut Contender) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| e.to_string())?;
    let url = format!("{}/v2/", c.base);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if !c.server.alive() {
            return Err(format!(
                "{} exited at start; log:\n{}",
                c.kind.name(),
                c.server.log_text()
            ));
        }
        if client.get(&url).send().await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} not ready after 20 s; log:\n{}",
                c.kind.name(),
                c.server.log_text()
            ));
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

fn nginx_common(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nmaster_process on;\nworker_processes 1;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\nevents {{ worker_connections 4096; }}\n"
    )
}

fn nginx_http_common(dir: &Path) -> String {
    let t = dir.join("tmp");
    let t = t.display();
    format!(
        "access_log off;\nkeepalive_requests 1000000;\n\
         client_body_temp_path {t}/body;\nproxy_temp_path {t}/proxy;\n\
         fastcgi_temp_path {t}/fastcgi;\nuwsgi_temp_path {t}/uwsgi;\nscgi_temp_path {t}/scgi;\n"
    )
}

/// nginx `proxy_cache` peer, TESTBED §6.2.
fn nginx_cache_conf(dir: &Path, port: u16, opts: &Opts) -> String {
    let cache = opts.cache_dir.display();
    let up = opts.upstream;
    let ttl = opts.manifest_ttl_secs;
    format!(
        r#"{common}
http {{
{http}
proxy_cache_path {cache} levels=1:2 keys_zone=reg:10m max_size=20g inactive=7d use_temp_path=off;
upstream registry {{ server {up}; keepalive 32; }}
server {{
  listen 127.0.0.1:{port};
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_set_header Host $http_host;
  proxy_read_timeout 900s;
  add_header X-Cache $upstream_cache_status always;
  location ~ "^/v2/.+/blobs/sha256:[0-9a-f]{{64}}$" {{
    proxy_pass http://registry;
    proxy_cache reg; proxy_cache_key $uri; proxy_cache_valid 200 7d;
    proxy_cache_lock on; proxy_cache_lock_timeout 10m; proxy_cache_lock_age 10m;
    proxy_ignore_headers Cache-Control Expires Set-Cookie;
  }}
  location ~ ^/v2/.+/manifests/ {{
    proxy_pass http://registry;
    proxy_cache reg; proxy_cache_key "$uri|$http_accept"; proxy_cache_valid 200 {ttl}s;
    proxy_cache_lock on; proxy_cache_use_stale error timeout updating; proxy_cache_background_update on;
    proxy_ignore_headers Cache-Control Expires Set-Cookie;
  }}
  location / {{ proxy_pass http://registry; }}
}}
}}
"#,
        common = nginx_common(dir),
        http = nginx_http_common(dir),
    )
}

/// nginx static anchor with sendfile, TESTBED §6.2.
fn nginx_static_conf(dir: &Path, port: u16, root: &Path) -> String {
    let root = root.display();
    format!(
        r#"{common}
http {{
{http}
server {{
  listen 127.0.0.1:{port};
  root {root};
  sendfile on; tcp_nopush on; sendfile_max_chunk 2m;
  location ~ /manifests/ {{ default_type application/vnd.oci.image.manifest.v1+json; }}
  location / {{ default_type application/octet-stream; }}
}}
}}
"#,
        common = nginx_common(dir),
        http = nginx_http_common(dir),
    )
}
