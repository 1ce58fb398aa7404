//! The proxy under test as a separate process: the real `dockerproxy` binary, configured with
//! environment values and `--config FILE`, so a test can `kill -9` it and start it again on the
//! same cache directory (SECURITY.md §2.15).
//!
//! The binary is looked up next to the test executable (`target/<profile>/dockerproxy`, the test
//! itself lives in `target/<profile>/deps/`); `DOCKERPROXY_BIN` overrides the path. When it is
//! missing (or `DOCKERPROXY_REBUILD` is set) it is built once with
//! `cargo build -p dockerproxy-server --bin dockerproxy` into the same target directory.
//!
//! Every start writes its own log file (`proxy-<n>.log` in the work directory), so the logs of
//! killed runs stay readable. The process is killed (SIGKILL, by its PID) when the handle drops.
//! [`tmpfs_wrapper`] runs the process in a private mount namespace with a size-limited tmpfs as
//! its cache directory.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::error::{FixtureError, FixtureResult, unexpected};
use crate::ports::free_port;

/// How long a start may take until `/readyz` answers.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

static BUILD: Mutex<Option<PathBuf>> = Mutex::new(None);
static STARTS: AtomicUsize = AtomicUsize::new(0);

/// The `dockerproxy` binary: `DOCKERPROXY_BIN`, else `<target>/<profile>/dockerproxy` next to
/// the running test executable, built with cargo (once per test process) when it is missing, or
/// when `DOCKERPROXY_REBUILD` is set. A binary older than the test executable may predate the
/// code under test: that is only reported (a rebuild can take a minute when other builds changed
/// the shared target directory), so run `cargo build -p dockerproxy-server --bin dockerproxy`
/// before the tests.
pub fn binary() -> FixtureResult<PathBuf> {
    if let Some(path) = std::env::var_os("DOCKERPROXY_BIN").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let mut built = BUILD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(bin) = built.as_ref() {
        return Ok(bin.clone());
    }
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| unexpected(format!("no profile directory above {}", exe.display())))?;
    let bin = profile_dir.join("dockerproxy");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let older = matches!((modified(&bin), modified(&exe)), (Some(b), Some(e)) if b < e);
    if older {
        eprintln!(
            "proxy_process: {} is older than the test executable; rebuild it (or set DOCKERPROXY_REBUILD=1) if the server changed",
            bin.display()
        );
    }
    let rebuild = std::env::var_os("DOCKERPROXY_REBUILD").is_some_and(|v| !v.is_empty());
    if (rebuild || !bin.exists())
        && let Err(e) = cargo_build(profile_dir)
    {
        if !bin.exists() {
            return Err(e);
        }
        eprintln!("proxy_process: {e}; using the existing {}", bin.display());
    }
    if !bin.exists() {
        return Err(unexpected(format!("{} was not built", bin.display())));
    }
    *built = Some(bin.clone());
    Ok(bin)
}

/// `cargo build -p dockerproxy-server --bin dockerproxy` into the target directory above
/// `profile_dir`.
fn cargo_build(profile_dir: &Path) -> FixtureResult<()> {
    let target_dir = profile_dir
        .parent()
        .ok_or_else(|| unexpected("no target directory"))?;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| unexpected("no workspace directory"))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .env("CARGO_TARGET_DIR", target_dir)
        .args(["build", "-p", "dockerproxy-server", "--bin", "dockerproxy"]);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let out = cmd.stdin(Stdio::null()).output()?;
    if !out.status.success() {
        return Err(unexpected(format!(
            "cargo build of dockerproxy failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// Rebuilds a command so it runs in a private mount namespace where `dir` is a fresh tmpfs of
/// `size` (e.g. `"2m"`), remounted read-only before the program starts when `read_only`. The
/// program's PID is the child's own (`unshare` does not fork, `sh` execs). The test sees the
/// namespace's view of `dir` under `/proc/<pid>/root<dir>`.
pub fn tmpfs_wrapper(dir: &Path, size: &str, read_only: bool) -> impl Fn(&Command) -> Command {
    let dir = dir.to_path_buf();
    let size = size.to_owned();
    move |cmd: &Command| {
        const SCRIPT: &str = r#"dir="$0"; size="$1"; ro="$2"; shift 2
mount -t tmpfs -o "size=$size,mode=0755" tmpfs "$dir" || exit 121
if [ "$ro" = ro ]; then mount -o remount,ro "$dir" || exit 122; fi
exec "$@""#;
        let mut wrapped = Command::new("unshare");
        wrapped
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                SCRIPT,
            ])
            .arg(&dir)
            .arg(&size)
            .arg(if read_only { "ro" } else { "rw" })
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (key, value) in cmd.get_envs() {
            match value {
                Some(v) => wrapped.env(key, v),
                None => wrapped.env_remove(key),
            };
        }
        wrapped
    }
}

/// A running `dockerproxy` process; dropping it kills it (SIGKILL).
#[derive(Debug)]
pub struct ProxyProcess {
    child: Child,
    port: u16,
    log_path: PathBuf,
    ready_after: Duration,
    ready_body: String,
}

impl ProxyProcess {
    /// Starts the binary with `CUSTOM_DOMAIN=example.test`, a free `PORT`, the given environment
    /// (on top of a cleared one holding only `PATH`) and `toml` written to
    /// `work_dir/proxy.toml`, then waits until `/readyz` answers 200.
    pub async fn start(work_dir: &Path, env: &[(&str, &str)], toml: &str) -> FixtureResult<Self> {
        Self::start_inner(work_dir, env, toml, None).await
    }

    /// Like [`ProxyProcess::start`], running the command built by `wrap` (see
    /// [`tmpfs_wrapper`]); `wrap` gets the plain command.
    pub async fn start_wrapped(
        work_dir: &Path,
        env: &[(&str, &str)],
        toml: &str,
        wrap: impl Fn(&Command) -> Command,
    ) -> FixtureResult<Self> {
        Self::start_inner(work_dir, env, toml, Some(&wrap)).await
    }

    async fn start_inner(
        work_dir: &Path,
        env: &[(&str, &str)],
        toml: &str,
        wrap: Option<&dyn Fn(&Command) -> Command>,
    ) -> FixtureResult<Self> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once(work_dir, env, toml, wrap).await {
                Err(FixtureError::Unexpected(msg))
                    if attempt < 3 && msg.contains("Address already in use") => {}
                other => return other,
            }
        }
    }

    async fn start_once(
        work_dir: &Path,
        env: &[(&str, &str)],
        toml: &str,
        wrap: Option<&dyn Fn(&Command) -> Command>,
    ) -> FixtureResult<Self> {
        let bin = binary()?;
        std::fs::create_dir_all(work_dir)?;
        let config_path = work_dir.join("proxy.toml");
        std::fs::write(&config_path, toml)?;
        let n = STARTS.fetch_add(1, Ordering::Relaxed);
        let log_path = work_dir.join(format!("proxy-{n}.log"));
        let log = std::fs::File::create(&log_path)?;
        let port = free_port();
        let mut cmd = Command::new(&bin);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CUSTOM_DOMAIN", "example.test")
            .env("PORT", port.to_string());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.arg("--config").arg(&config_path);
        if let Some(wrap) = wrap {
            cmd = wrap(&cmd);
        }
        let started = Instant::now();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut proc = Self {
            child,
            port,
            log_path,
            ready_after: Duration::ZERO,
            ready_body: String::new(),
        };
        proc.ready_body = proc.wait_ready(started).await?;
        proc.ready_after = started.elapsed();
        Ok(proc)
    }

    async fn wait_ready(&mut self, started: Instant) -> FixtureResult<String> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()?;
        let url = format!("{}/readyz", self.base_url());
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(unexpected(format!(
                    "dockerproxy exited with {status}; log:\n{}",
                    self.log()
                )));
            }
            if let Ok(resp) = client.get(&url).send().await
                && resp.status() == 200
            {
                return Ok(resp.text().await.unwrap_or_default());
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(unexpected(format!(
                    "dockerproxy on port {} not ready after {READY_TIMEOUT:?}; log:\n{}",
                    self.port,
                    self.log()
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The port it listens on (every address).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The process ID (the binary's own, also when wrapped).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Time from spawn to the first `/readyz` 200.
    pub fn ready_after(&self) -> Duration {
        self.ready_after
    }

    /// The body of that first `/readyz` 200.
    pub fn ready_body(&self) -> &str {
        &self.ready_body
    }

    /// This run's log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// This run's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The `elapsed_ms` of the "cache index built" log line, if it was logged.
    pub fn index_load_ms(&self) -> Option<u64> {
        let log = self.log();
        let line = log.lines().find(|l| l.contains("cache index built"))?;
        let rest = &line[line.find("elapsed_ms")? + "elapsed_ms".len()..];
        let digits: String = rest
            .trim_start_matches(['=', '"', ':', ' '])
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    }

    /// `kill -9` and reap.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait up to `timeout` for a clean exit; returns whether it exited 0.
    pub fn terminate(mut self, timeout: Duration) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
