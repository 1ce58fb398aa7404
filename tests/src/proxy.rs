//! The proxy under test, started in-process (`dockerproxy_server::run`) on `127.0.0.1:0`, on its
//! own thread and runtime so it keeps serving while the test thread waits on a client process.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::error::{FixtureError, FixtureResult};

/// A running proxy; dropping it shuts it down (drain, then stop).
#[derive(Debug)]
pub struct ProxyHandle {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// The cache directory the proxy was given when the caller set none (removed on drop).
    own_cache: Option<tempfile::TempDir>,
}

impl ProxyHandle {
    /// Starts the proxy with `CUSTOM_DOMAIN=example.test`, the given extra environment values and
    /// TOML configuration text. Without a `CACHE_DIR` in `env` the proxy gets a fresh temporary
    /// cache directory, so tests never share cache state.
    pub fn start(env: &[(&str, &str)], toml: &str) -> FixtureResult<Self> {
        let mut map = BTreeMap::new();
        map.insert("CUSTOM_DOMAIN".to_owned(), "example.test".to_owned());
        let own_cache = if env.iter().any(|(k, _)| *k == "CACHE_DIR") {
            None
        } else {
            let dir = tempfile::Builder::new().prefix("dp-cache-").tempdir()?;
            map.insert("CACHE_DIR".to_owned(), dir.path().display().to_string());
            Some(dir)
        };
        for (k, v) in env {
            map.insert((*k).to_owned(), (*v).to_owned());
        }
        let read_file = |p: &str| std::fs::read_to_string(p).map_err(|e| e.to_string());
        let (mut config, _warnings) =
            dockerproxy_core::config::load_with(&map, Some(toml), &read_file)
                .map_err(|e| FixtureError::Unexpected(format!("proxy config: {e}")))?;
        config.secret_key = [42; 32];
        let state = dockerproxy_server::build_state(config)
            .map_err(|e| FixtureError::Unexpected(format!("proxy state: {e}")))?;
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let (tx, rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("dockerproxy".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
                        return;
                    };
                    let _ = dockerproxy_server::run(vec![listener], state, async {
                        let _ = rx.await;
                    })
                    .await;
                });
            })?;
        Ok(Self {
            addr,
            shutdown: Some(tx),
            thread: Some(thread),
            own_cache,
        })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT`, as written in image references.
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The temporary cache directory, when the proxy got one.
    pub fn cache_dir(&self) -> Option<&std::path::Path> {
        self.own_cache.as_ref().map(tempfile::TempDir::path)
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// TOML for a proxy whose Docker-Hub-flavoured `docker.io` route points at `upstream`, reachable
/// as the mirror host `127.0.0.1` (so clients can use `127.0.0.1:PORT/<repo>`), with the given
/// realm and redirect-target origins allowed (loopback test servers are plain-http
/// "development" upstreams).
pub fn docker_hub_route_toml(upstream: &str, realms: &[String], extra: &str) -> String {
    let realms: Vec<String> = realms.iter().map(|r| format!("{r:?}")).collect();
    let exceptions: Vec<String> = std::iter::once(upstream.to_owned())
        .chain(realms.iter().map(|r| r.trim_matches('"').to_owned()))
        .filter_map(|u| url::Url::parse(&u).ok())
        .filter_map(|u| {
            Some(format!(
                "\"{}:{}\"",
                u.host_str()?,
                u.port_or_known_default()?
            ))
        })
        .collect();
    format!(
        r#"mirror_hosts = ["127.0.0.1"]
{extra}
[routes."docker.io"]
upstream = "{upstream}"
development = true
realm_allowlist = [{realms}]
address_exceptions = [{exceptions}]
"#,
        realms = realms.join(", "),
        exceptions = exceptions.join(", "),
    )
}
