//! A real S3-compatible object store for the shared-store tests: Garage (a distributed object
//! store, installed from crates.io by `scripts/install-test-deps.sh`), one node on 127.0.0.1,
//! with a bucket and a key made through its own CLI.
//!
//! The binary is looked up as `$GARAGE_BIN`, then `garage` in `PATH`, then the install location
//! of the test-dependency script (`/var/tmp/dockerproxy-tools/bin/garage`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{FixtureError, FixtureResult};
use crate::ports::free_port;
use crate::tools::find_tool;

/// Where `scripts/install-test-deps.sh` installs Garage.
pub const INSTALLED: &str = "/var/tmp/dockerproxy-tools/bin/garage";

/// The Garage binary, if installed.
pub fn garage_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GARAGE_BIN") {
        return find_tool(&p.to_string_lossy());
    }
    find_tool("garage").or_else(|| find_tool(INSTALLED))
}

/// True when Garage is installed. Missing under CI is a failure (panics); elsewhere the caller
/// skips, with the reason printed.
pub fn require_garage() -> bool {
    if garage_binary().is_some() {
        return true;
    }
    let message = "missing tool garage: run scripts/install-test-deps.sh";
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("{message}");
    }
    eprintln!("SKIPPED: {message}");
    false
}

/// A running one-node Garage with one bucket and one key allowed on it.
#[derive(Debug)]
pub struct Garage {
    child: Child,
    bin: PathBuf,
    config: PathBuf,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// Region name.
    pub region: String,
    /// Bucket.
    pub bucket: String,
    /// Access key id.
    pub key_id: String,
    /// Secret key.
    pub secret: String,
    /// Time from spawn to a usable bucket.
    pub ready_after: Duration,
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hex_of(seed: u64, len: usize) -> String {
    // Test credentials: fixed-format, different per run (not secret: loopback only).
    let mut out = String::with_capacity(len);
    let mut x = seed | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push_str(&format!("{x:016x}"));
    }
    out.truncate(len);
    out
}

impl Garage {
    /// Starts Garage with its metadata and data under `dir`.
    pub fn start(dir: &Path) -> FixtureResult<Self> {
        let bin = garage_binary()
            .ok_or_else(|| FixtureError::Unexpected("garage is not installed".into()))?;
        let started = Instant::now();
        let (s3, rpc, admin) = (free_port(), free_port(), free_port());
        let seed = u64::from(std::process::id()) << 20 ^ u64::from(s3);
        let config = dir.join("garage.toml");
        std::fs::create_dir_all(dir.join("meta"))?;
        std::fs::create_dir_all(dir.join("data"))?;
        let text = format!(
            r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
"#,
            meta = dir.join("meta").display(),
            data = dir.join("data").display(),
            secret = hex_of(seed, 64),
        );
        std::fs::write(&config, text)?;
        let log = std::fs::File::create(dir.join("garage.log"))?;
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&config)
            .arg("server")
            .env("RUST_LOG", "garage=warn")
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()?;
        let mut g = Self {
            child,
            bin,
            config,
            endpoint: format!("http://127.0.0.1:{s3}"),
            region: "garage".into(),
            bucket: "dockerproxy".into(),
            key_id: format!("GK{}", hex_of(seed ^ 0x5eed, 24)),
            secret: hex_of(seed ^ 0xfeed, 64),
            ready_after: Duration::ZERO,
        };
        // The node id, once the RPC layer is up.
        let node = g.retry("node id", |g| {
            let out = g.cli(&["node", "id", "-q"])?;
            let id = out.split('@').next().unwrap_or("").trim().to_owned();
            if id.len() < 16 {
                return Err(FixtureError::Unexpected(format!("node id: {out:?}")));
            }
            Ok(id)
        })?;
        let short: String = node.chars().take(16).collect();
        g.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &short])?;
        g.cli(&["layout", "apply", "--version", "1"])?;
        let (key_id, secret) = (g.key_id.clone(), g.secret.clone());
        g.retry("key import", |g| {
            g.cli(&[
                "key",
                "import",
                "--yes",
                "-n",
                "dockerproxy",
                &key_id,
                &secret,
            ])
        })?;
        let bucket = g.bucket.clone();
        g.cli(&["bucket", "create", &bucket])?;
        g.cli(&[
            "bucket", "allow", "--read", "--write", "--owner", &bucket, "--key", &key_id,
        ])?;
        g.ready_after = started.elapsed();
        Ok(g)
    }

    fn retry<T>(
        &mut self,
        what: &str,
        mut f: impl FnMut(&mut Self) -> FixtureResult<T>,
    ) -> FixtureResult<T> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match f(self) {
                Ok(v) => return Ok(v),
                Err(e) if Instant::now() > deadline => {
                    return Err(FixtureError::Unexpected(format!("garage {what}: {e}")));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(FixtureError::Unexpected(format!(
                    "garage exited early ({status}) during {what}"
                )));
            }
        }
    }

    /// Runs a CLI command against this node; stdout on success.
    pub fn cli(&self, args: &[&str]) -> FixtureResult<String> {
        let out = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()?;
        if !out.status.success() {
            return Err(FixtureError::Unexpected(format!(
                "garage {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The proxy's settings for this store (keys under `prefix`).
    pub fn settings(
        &self,
        prefix: &str,
        lease_ttl: Duration,
    ) -> dockerproxy_core::config::S3Settings {
        dockerproxy_core::config::S3Settings {
            endpoint: self.endpoint.clone(),
            bucket: self.bucket.clone(),
            region: self.region.clone(),
            access_key_id: self.key_id.clone(),
            secret_access_key: self.secret.clone(),
            prefix: prefix.to_owned(),
            lease_ttl,
            allow_http: true,
        }
    }

    /// The `[s3]` table of a proxy configuration using this store.
    pub fn proxy_toml(&self, lease_ttl: Duration) -> String {
        format!(
            "[s3]\nendpoint = \"{}\"\nbucket = \"{}\"\nregion = \"{}\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\nallow_http = true\nlease_ttl = \"{}ms\"\n",
            self.endpoint,
            self.bucket,
            self.region,
            self.key_id,
            self.secret,
            lease_ttl.as_millis()
        )
    }
}
