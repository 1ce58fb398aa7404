//! A real upstream: the Debian `docker-registry` (distribution 2.8) started on a free loopback
//! port with a config we write (TESTBED §1.1), in plain, TLS, htpasswd-Basic or token mode.
//!
//! Several processes may share one storage directory, so one seeding serves every endpoint. The
//! access log (stdout) and the application log (stderr) go to one file; [`Registry::upstream_requests`]
//! counts only access-log lines (`127.0.0.1 - - …`, TESTBED §6.5). The process is killed by its PID
//! when the [`Registry`] is dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{FixtureError, FixtureResult, unexpected};
use crate::ports::free_addr;
use crate::token_server::{ISSUER, SERVICE, USERS};

/// The Debian package's binary.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// How the registry authenticates clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryAuth {
    /// No authentication.
    None,
    /// htpasswd (bcrypt) Basic auth, realm `test-basic-realm`.
    Basic {
        /// The htpasswd file (see [`write_htpasswd`]).
        htpasswd: PathBuf,
    },
    /// Bearer tokens from a token server.
    Token {
        /// The realm URL (`http://127.0.0.1:PORT/token`).
        realm: String,
        /// The `rootcertbundle` (PEM certificates; holds the token signer's certificate).
        bundle: PathBuf,
    },
}

/// What to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Storage root directory (may be shared with other registry processes).
    pub storage: PathBuf,
    /// Directory for this process's config and log files (created if missing).
    pub work_dir: PathBuf,
    /// TLS certificate and key files (PEM); `None` = plain HTTP.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Authentication.
    pub auth: RegistryAuth,
}

/// A running `docker-registry` process; dropping it kills the process.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    addr: SocketAddr,
    base_url: String,
    log_path: PathBuf,
    config_path: PathBuf,
    config: RegistryConfig,
}

impl Registry {
    /// Writes the config, starts the process and waits until `GET /v2/` answers (200 or 401).
    pub async fn start(config: RegistryConfig) -> FixtureResult<Self> {
        // The free port may be taken between our probe and the registry's bind (TESTBED §0):
        // retry with a new port when the process reports exactly that.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once(config.clone()).await {
                Err(FixtureError::Unexpected(msg))
                    if attempt < 3 && msg.contains("address already in use") => {}
                other => return other,
            }
        }
    }

    async fn start_once(config: RegistryConfig) -> FixtureResult<Self> {
        let bin = if Path::new(REGISTRY_BIN).exists() {
            PathBuf::from(REGISTRY_BIN)
        } else {
            crate::tools::find_tool("docker-registry")
                .ok_or_else(|| unexpected("docker-registry is not installed"))?
        };
        std::fs::create_dir_all(&config.work_dir)?;
        std::fs::create_dir_all(&config.storage)?;
        let addr = free_addr();
        let config_path = config.work_dir.join("registry.yml");
        std::fs::write(&config_path, config_yaml(&config, addr).to_string())?;
        let log_path = config.work_dir.join("registry.log");
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let mut registry = Self {
            child,
            addr,
            base_url: format!("{scheme}://{addr}"),
            log_path,
            config_path,
            config,
        };
        registry.wait_ready().await?;
        Ok(registry)
    }

    async fn wait_ready(&mut self) -> FixtureResult<()> {
        let client = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(2))
            .build()?;
        let url = format!("{}/v2/", self.base_url);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(unexpected(format!(
                    "docker-registry exited with {status}; log:\n{}",
                    self.log()
                )));
            }
            if let Ok(resp) = client.get(&url).send().await
                && matches!(resp.status().as_u16(), 200 | 401)
            {
                // Another process on a stolen port could have answered: ours must be alive.
                tokio::time::sleep(Duration::from_millis(20)).await;
                if self.child.try_wait()?.is_none() {
                    return Ok(());
                }
                continue;
            }
            if Instant::now() > deadline {
                return Err(unexpected(format!(
                    "docker-registry on {} not ready after 15 s; log:\n{}",
                    self.addr,
                    self.log()
                )));
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT` (no trailing slash).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `127.0.0.1:PORT`, as clients write it in image references.
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }

    /// Whether the registry serves TLS.
    pub fn is_tls(&self) -> bool {
        self.config.tls.is_some()
    }

    /// The configuration it was started with.
    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// The config file written for it.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log file (access log and application log).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log so far (empty if unreadable).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Every request the registry served so far, as `(method, path-and-query)`, from the access
    /// log lines (only those starting `127.0.0.1 - -`).
    pub fn upstream_requests(&self) -> Vec<(String, String)> {
        parse_access_log(&self.log())
    }

    /// How many access-log entries have this method and exactly this path (with query, if any).
    pub fn count(&self, method: &str, path: &str) -> usize {
        self.upstream_requests()
            .iter()
            .filter(|(m, p)| m == method && p == path)
            .count()
    }

    /// Waits (up to `timeout`) until the access log holds at least `n` entries with this method
    /// and path; the log line is written just after the response, so poll briefly. Returns the
    /// final count.
    pub async fn wait_for_count(
        &self,
        method: &str,
        path: &str,
        n: usize,
        timeout: Duration,
    ) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let count = self.count(method, path);
            if count >= n || Instant::now() > deadline {
                return count;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses the combined-format access log lines of distribution into `(method, path)`.
pub fn parse_access_log(log: &str) -> Vec<(String, String)> {
    log.lines()
        .filter(|line| line.starts_with("127.0.0.1 - -"))
        .filter_map(|line| {
            let start = line.find('"')? + 1;
            let end = start + line[start..].find('"')?;
            let mut parts = line[start..end].split(' ');
            let method = parts.next()?;
            let path = parts.next()?;
            Some((method.to_owned(), path.to_owned()))
        })
        .collect()
}

/// Writes an htpasswd file with bcrypt (`$2y$`, cost 4) entries for alice and bob.
pub fn write_htpasswd(path: &Path) -> FixtureResult<()> {
    let mut text = String::new();
    for (user, password) in USERS {
        let parts = bcrypt::hash_with_result(password, 4)
            .map_err(|e| unexpected(format!("bcrypt: {e}")))?;
        text.push_str(&format!(
            "{user}:{}\n",
            parts.format_for_version(bcrypt::Version::TwoY)
        ));
    }
    std::fs::write(path, text)?;
    Ok(())
}

/// The registry config as JSON (a subset of YAML that distribution's parser reads).
fn config_yaml(config: &RegistryConfig, addr: SocketAddr) -> serde_json::Value {
    let mut http = serde_json::json!({
        "addr": addr.to_string(),
        "secret": "dockerproxy-test-secret",
        "headers": {"X-Content-Type-Options": ["nosniff"]},
    });
    if let Some((cert, key)) = &config.tls {
        http["tls"] = serde_json::json!({"certificate": cert, "key": key});
    }
    let mut yaml = serde_json::json!({
        "version": "0.1",
        "log": {"level": "info", "accesslog": {"disabled": false}},
        "storage": {
            "filesystem": {"rootdirectory": config.storage},
            "delete": {"enabled": true},
            "cache": {"blobdescriptor": "inmemory"},
        },
        "http": http,
        "health": {"storagedriver": {"enabled": false}},
    });
    match &config.auth {
        RegistryAuth::None => {}
        RegistryAuth::Basic { htpasswd } => {
            yaml["auth"] =
                serde_json::json!({"htpasswd": {"realm": "test-basic-realm", "path": htpasswd}});
        }
        RegistryAuth::Token { realm, bundle } => {
            yaml["auth"] = serde_json::json!({"token": {
                "realm": realm, "service": SERVICE, "issuer": ISSUER, "rootcertbundle": bundle,
            }});
        }
    }
    yaml
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_log_counts_only_combined_lines() {
        let log = "time=\"x\" level=info msg=\"response completed\" http.request.method=GET\n\
                   127.0.0.1 - - [29/Nov/2026:12:10:23 +0000] \"GET /v2/x/manifests/latest HTTP/1.1\" 200 5 \"\" \"skopeo\"\n\
                   127.0.0.1 - - [29/Nov/2026:12:10:24 +0000] \"HEAD /v2/ HTTP/1.1\" 200 0 \"\" \"curl\"\n";
        assert_eq!(
            parse_access_log(log),
            vec![
                ("GET".to_owned(), "/v2/x/manifests/latest".to_owned()),
                ("HEAD".to_owned(), "/v2/".to_owned()),
            ]
        );
    }

    #[test]
    fn htpasswd_is_bcrypt_2y() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("htpasswd");
        write_htpasswd(&path).expect("htpasswd");
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("alice:$2y$04$"), "{}", lines[0]);
        let hash = lines[0].trim_start_matches("alice:");
        assert!(bcrypt::verify("secret", hash).expect("verify"));
    }
}
