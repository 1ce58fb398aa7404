//! Real container clients driven against the proxy: podman (daemonless), containerd + `ctr` and
//! dockerd + the docker CLI (both daemons started here, each in its own temporary directory), and
//! a private mount namespace whose `/etc/hosts` maps test names (and, as a safety net, the real
//! registries) to 127.0.0.1 (TESTBED §3, §4).
//!
//! Nothing global is touched: every store, socket, state and configuration file lives under a
//! directory the test owns; daemons run in their own process group and are stopped by PID (then
//! by that process group) when their handle drops. This module never installs anything and never
//! stops a process it did not start.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::error::{FixtureError, FixtureResult, unexpected};

/// Real registry names that a client or daemon could fall back to. They all map to 127.0.0.1 in
/// a [`HostsNamespace`], so a fallback fails fast ("connection refused") instead of leaving the
/// machine.
pub const SAFETY_NET_HOSTS: &[&str] = &[
    "registry-1.docker.io",
    "index.docker.io",
    "auth.docker.io",
    "production.cloudflare.docker.com",
    "registry.docker.io",
    "docker.io",
    "hub.docker.com",
    "ghcr.io",
    "quay.io",
    "gcr.io",
    "registry.k8s.io",
    "public.ecr.aws",
    "mcr.microsoft.com",
    "registry.gitlab.com",
];

/// The longest path a unix socket address can hold (`sun_path` is 108 bytes with the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Timeout of one client command (a pull of the small seeded images takes a few seconds).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(45);

/// A temporary directory for client and daemon state, directly under `/tmp` so socket paths stay
/// short whatever `TMPDIR` says.
pub fn short_tempdir(prefix: &str) -> FixtureResult<tempfile::TempDir> {
    Ok(tempfile::Builder::new().prefix(prefix).tempdir_in("/tmp")?)
}

/// Whether the environment variable `CI` is set (non-empty).
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// Reports that the environment cannot run a test: panics under CI (every test must run there),
/// otherwise prints `SKIPPED: <reason>` and returns `false` so the test can return early.
///
/// # Panics
/// When `CI` is set.
pub fn skip_unless_ci(reason: &str) -> bool {
    if in_ci() {
        panic!("{reason}");
    }
    eprintln!("SKIPPED: {reason}");
    false
}

/// Returns `true` when this process can create a private mount namespace and bind-mount a hosts
/// file (root, `unshare` installed). Otherwise behaves like [`skip_unless_ci`].
///
/// # Panics
/// When the namespace is unavailable and `CI` is set.
pub fn require_mount_namespace() -> bool {
    let probe = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "true"])
        .stdin(Stdio::null())
        .output();
    match probe {
        Ok(out) if out.status.success() => true,
        Ok(out) => skip_unless_ci(&format!(
            "cannot create a private mount namespace (root needed): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => skip_unless_ci(&format!("cannot run unshare: {e}")),
    }
}

/// A private mount namespace recipe: commands wrapped by [`HostsNamespace::wrap`] see `hosts` as
/// `/etc/hosts`, `etc_docker` as `/etc/docker` (when that directory exists on the machine, so
/// dockerd's `key.json` lands in the test's directory) and an empty tmpfs as
/// `/var/lib/containers` (when it exists: podman 4.3 and skopeo write their blob-info cache
/// there whatever `--root` says). The real files are never modified.
#[derive(Debug, Clone)]
pub struct HostsNamespace {
    hosts: PathBuf,
    etc_docker: PathBuf,
}

impl HostsNamespace {
    /// Writes `dir/hosts` (localhost, `names`, and [`SAFETY_NET_HOSTS`], all on loopback) and
    /// creates `dir/etc-docker`.
    pub fn new(dir: &Path, names: &[&str]) -> FixtureResult<Self> {
        std::fs::create_dir_all(dir)?;
        let hosts = dir.join("hosts");
        let mut text = String::from("127.0.0.1 localhost\n::1 localhost ip6-localhost\n");
        for name in names.iter().chain(SAFETY_NET_HOSTS) {
            text.push_str(&format!("127.0.0.1 {name}\n"));
        }
        std::fs::write(&hosts, text)?;
        let etc_docker = dir.join("etc-docker");
        std::fs::create_dir_all(&etc_docker)?;
        Ok(Self { hosts, etc_docker })
    }

    /// The hosts file bound over `/etc/hosts`.
    pub fn hosts_path(&self) -> &Path {
        &self.hosts
    }

    /// Rebuilds `cmd` (program, arguments, environment changes and working directory) so that it
    /// runs inside a fresh private mount namespace with the bind mounts. `unshare` does not fork
    /// and `sh` execs the program, so the child's PID is the program's own.
    pub fn wrap(&self, cmd: &Command) -> Command {
        const SCRIPT: &str = r#"mount --bind "$0" /etc/hosts || exit 121
if [ -d /etc/docker ]; then mount --bind "$1" /etc/docker || exit 122; fi
if [ -d /var/lib/containers ]; then mount -t tmpfs -o mode=0700 tmpfs /var/lib/containers || exit 123; fi
shift
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
            .arg(&self.hosts)
            .arg(&self.etc_docker)
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (key, value) in cmd.get_envs() {
            match value {
                Some(v) => wrapped.env(key, v),
                None => wrapped.env_remove(key),
            };
        }
        if let Some(dir) = cmd.get_current_dir() {
            wrapped.current_dir(dir);
        }
        wrapped
    }
}

/// Runs a client command to completion with [`CLIENT_TIMEOUT`]; the process is killed if the
/// timeout passes (or the future is dropped).
pub async fn run(cmd: Command) -> FixtureResult<Output> {
    run_with_timeout(cmd, CLIENT_TIMEOUT).await
}

/// Like [`run`] with an explicit timeout.
pub async fn run_with_timeout(cmd: Command, timeout: Duration) -> FixtureResult<Output> {
    let shown = describe(&cmd);
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    match tokio::time::timeout(timeout, cmd.output()).await {
        Ok(out) => Ok(out?),
        Err(_) => Err(unexpected(format!("{shown} timed out after {timeout:?}"))),
    }
}

/// Runs a client command and returns its trimmed stdout; a non-zero exit is an error carrying
/// the command line, stdout and stderr.
pub async fn run_ok(cmd: Command) -> FixtureResult<String> {
    let shown = describe(&cmd);
    let out = run(cmd).await?;
    if !out.status.success() {
        return Err(unexpected(format!(
            "{shown} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `program arg arg …`, for messages.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A long-running process started by a test, in its own process group, with stdout and stderr
/// in a log file. Dropping it sends SIGTERM to its PID, waits up to 10 s, then SIGKILLs its
/// process group (daemons such as dockerd start helpers: containerd, shims) and reaps it.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    child: std::process::Child,
    log_path: PathBuf,
}

impl Daemon {
    /// Spawns `cmd` with stdin closed and output appended to `log_path`.
    pub fn spawn(name: &str, mut cmd: Command, log_path: &Path) -> FixtureResult<Self> {
        use std::os::unix::process::CommandExt as _;
        let log = std::fs::File::create(log_path)?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| unexpected(format!("cannot start {name} ({}): {e}", describe(&cmd))))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log_path: log_path.to_path_buf(),
        })
    }

    /// The daemon's PID (also its process group ID).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// An error when the process has exited (with its status and log tail).
    pub fn check_alive(&mut self) -> FixtureResult<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => Err(unexpected(format!(
                "{} exited with {status}; log tail:\n{}",
                self.name,
                self.log_tail(30)
            ))),
        }
    }

    fn signal(target: &str, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, "--", target])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = self.pid().to_string();
        if matches!(self.child.try_wait(), Ok(None)) {
            Self::signal(&pid, "-TERM");
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // Helpers left in the group (a managed containerd, shims) go too; the group is ours.
        Self::signal(&format!("-{pid}"), "-KILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `probe` every 100 ms until it succeeds, the daemon exits, or `timeout` passes.
async fn wait_until_ready(
    daemon: &mut Daemon,
    timeout: Duration,
    probe: impl Fn() -> Command,
) -> FixtureResult<()> {
    let deadline = Instant::now() + timeout;
    loop {
        daemon.check_alive()?;
        let last = match run_with_timeout(probe(), Duration::from_secs(5)).await {
            Ok(out) if out.status.success() => return Ok(()),
            Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            return Err(unexpected(format!(
                "{} not ready after {timeout:?} (last probe: {last}); log tail:\n{}",
                daemon.name,
                daemon.log_tail(30)
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn check_socket_path(path: &Path) -> FixtureResult<()> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(unexpected(format!(
            "socket path {} is {len} bytes (max {MAX_SOCKET_PATH})",
            path.display()
        )));
    }
    Ok(())
}

/// podman with a private store: `--root`, `--runroot`, `--tmpdir`, `--network-config-dir` and
/// `TMPDIR` under `dir`, the vfs driver, cgroupfs, no events, its own `registries.conf` (via `CONTAINERS_REGISTRIES_CONF`), always run
/// inside a [`HostsNamespace`] (which also hides the global blob-info cache).
#[derive(Debug)]
pub struct Podman {
    dir: PathBuf,
    registries_conf: PathBuf,
    ns: HostsNamespace,
}

impl Podman {
    /// Prepares `dir` with an empty `registries.conf` (no search registries, no mirrors).
    pub fn new(dir: &Path, ns: &HostsNamespace) -> FixtureResult<Self> {
        std::fs::create_dir_all(dir)?;
        let registries_conf = dir.join("registries.conf");
        std::fs::write(&registries_conf, "unqualified-search-registries = []\n")?;
        std::fs::write(dir.join("containers.conf"), "")?;
        std::fs::create_dir_all(dir.join("tmp"))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            registries_conf,
            ns: ns.clone(),
        })
    }

    /// Replaces `registries.conf` with one that mirrors `docker.io` to `mirror` (`host:port`,
    /// plain HTTP), as in TESTBED §3.
    pub fn use_docker_io_mirror(&self, mirror: &str) -> FixtureResult<()> {
        let text = format!(
            r#"unqualified-search-registries = ["docker.io"]

[[registry]]
prefix = "docker.io"
location = "registry-1.docker.io"

[[registry.mirror]]
location = "{mirror}"
insecure = true
"#
        );
        std::fs::write(&self.registries_conf, text)?;
        Ok(())
    }

    /// `podman <global options> ARGS…`, wrapped in the namespace.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("podman");
        // TMPDIR: layer downloads go there instead of /var/tmp.
        cmd.env("CONTAINERS_REGISTRIES_CONF", &self.registries_conf)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("TMPDIR", self.dir.join("tmp"))
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"))
            .arg("--network-config-dir")
            .arg(self.dir.join("cni"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "none",
            ])
            .args(args);
        self.ns.wrap(&cmd)
    }

    /// `podman image inspect --format '{{.Digest}}' REF`: the manifest digest podman recorded.
    pub async fn image_digest(&self, reference: &str) -> FixtureResult<String> {
        run_ok(self.command(&["image", "inspect", "--format", "{{.Digest}}", reference])).await
    }
}

/// A containerd 1.6 daemon with its own root, state and sockets under `dir`, the CRI plugin
/// disabled, started inside `ns` (it resolves names itself).
#[derive(Debug)]
pub struct Containerd {
    sock: PathBuf,
    ns: HostsNamespace,
    daemon: Daemon,
}

impl Containerd {
    /// Writes `dir/containerd.toml`, starts containerd and waits until `ctr version` answers.
    pub async fn start(dir: &Path, ns: &HostsNamespace) -> FixtureResult<Self> {
        std::fs::create_dir_all(dir)?;
        let sock = dir.join("ctd.sock");
        check_socket_path(&dir.join("ctd.sock.ttrpc"))?;
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

# Only the CRI plugin reads this (disabled here); ctr takes --hosts-dir instead.
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "{hosts_dir}"
"#,
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            sock = sock.display(),
            hosts_dir = dir.join("certs.d").display(),
        );
        let config_path = dir.join("containerd.toml");
        std::fs::write(&config_path, config)?;
        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(&config_path);
        let mut daemon = Daemon::spawn("containerd", ns.wrap(&cmd), &dir.join("containerd.log"))?;
        let probe_sock = sock.clone();
        wait_until_ready(&mut daemon, Duration::from_secs(20), || {
            let mut c = Command::new("ctr");
            c.arg("--address").arg(&probe_sock).arg("version");
            c
        })
        .await?;
        Ok(Self {
            sock,
            ns: ns.clone(),
            daemon,
        })
    }

    /// `ctr --address SOCK -n NAMESPACE ARGS…`, run inside the hosts namespace (ctr resolves
    /// registry names in the client).
    pub fn ctr(&self, namespace: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.sock)
            .args(["-n", namespace])
            .args(args);
        self.ns.wrap(&cmd)
    }

    /// The daemon (log, PID).
    pub fn daemon(&mut self) -> &mut Daemon {
        &mut self.daemon
    }
}

/// Writes `hosts_dir/<registry>/hosts.toml` making `mirror` (e.g. `http://127.0.0.1:PORT`) the
/// pull/resolve host for `registry`, with `server` as the fallback (COMPAT §1.6: containerd then
/// sends `?ns=<registry>` on every request to the mirror).
pub fn write_containerd_mirror(
    hosts_dir: &Path,
    registry: &str,
    server: &str,
    mirror: &str,
) -> FixtureResult<PathBuf> {
    let dir = hosts_dir.join(registry);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("hosts.toml");
    std::fs::write(
        &path,
        format!(
            "server = \"{server}\"\n\n[host.\"{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    )?;
    Ok(path)
}

/// One row of `ctr images ls`: `(name, media type, target digest)`.
pub fn parse_ctr_images(listing: &str) -> Vec<(String, String, String)> {
    listing
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            Some((
                cols.next()?.to_owned(),
                cols.next()?.to_owned(),
                cols.next()?.to_owned(),
            ))
        })
        .collect()
}

/// Why a daemon did not start: the environment (missing kernel feature, not root) or something
/// else. Tests skip outside CI only for the first kind.
#[derive(Debug)]
pub enum StartError {
    /// The daemon exited or never became ready; the text holds its log tail.
    Environment(String),
    /// A fixture error before the daemon ran (file, path).
    Fixture(FixtureError),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Environment(msg) => write!(f, "the daemon cannot run here: {msg}"),
            Self::Fixture(e) => write!(f, "{e}"),
        }
    }
}

/// dockerd 20.10 with its own data-root, exec-root, pidfile and socket under `dir`, vfs, no
/// iptables and no bridge, the given `registry-mirrors` and insecure registries, started inside
/// `ns`. The CLI gets a fresh `--config` directory.
#[derive(Debug)]
pub struct Dockerd {
    sock: PathBuf,
    cli_config: PathBuf,
    daemon: Daemon,
}

impl Dockerd {
    /// Starts dockerd and waits (up to 30 s) until `docker version` reaches it.
    pub async fn start(
        dir: &Path,
        ns: &HostsNamespace,
        mirrors: &[String],
        insecure: &[String],
    ) -> Result<Self, StartError> {
        let sock = dir.join("d.sock");
        let exec_root = dir.join("exec");
        // dockerd's managed containerd listens on exec-root/containerd/containerd.sock.ttrpc.
        check_socket_path(&exec_root.join("containerd/containerd.sock.ttrpc"))
            .map_err(StartError::Fixture)?;
        check_socket_path(&sock).map_err(StartError::Fixture)?;
        let cli_config = dir.join("cli");
        for d in [&cli_config, &dir.to_path_buf()] {
            std::fs::create_dir_all(d).map_err(|e| StartError::Fixture(e.into()))?;
        }
        // An empty daemon.json of our own: the machine's /etc/docker/daemon.json is never read.
        let daemon_json = dir.join("daemon.json");
        std::fs::write(&daemon_json, "{}\n").map_err(|e| StartError::Fixture(e.into()))?;
        let mut cmd = Command::new("dockerd");
        cmd.arg("--config-file")
            .arg(&daemon_json)
            .arg("--data-root")
            .arg(dir.join("root"))
            .arg("--exec-root")
            .arg(&exec_root)
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", sock.display()))
            .args([
                "--storage-driver",
                "vfs",
                "--iptables=false",
                "--ip-masq=false",
                "--bridge=none",
            ]);
        for m in mirrors {
            cmd.arg("--registry-mirror").arg(m);
        }
        for r in insecure {
            cmd.arg("--insecure-registry").arg(r);
        }
        let mut daemon = Daemon::spawn("dockerd", ns.wrap(&cmd), &dir.join("dockerd.log"))
            .map_err(|e| StartError::Environment(e.to_string()))?;
        let probe_sock = sock.clone();
        let probe_cfg = cli_config.clone();
        wait_until_ready(&mut daemon, Duration::from_secs(30), move || {
            docker_cli(
                &probe_sock,
                &probe_cfg,
                &["version", "--format", "{{.Server.Version}}"],
            )
        })
        .await
        .map_err(|e| StartError::Environment(e.to_string()))?;
        Ok(Self {
            sock,
            cli_config,
            daemon,
        })
    }

    /// `docker -H unix://SOCK --config DIR ARGS…` (the CLI needs no namespace: the daemon pulls).
    pub fn docker(&self, args: &[&str]) -> Command {
        docker_cli(&self.sock, &self.cli_config, args)
    }

    /// The daemon (log, PID).
    pub fn daemon(&mut self) -> &mut Daemon {
        &mut self.daemon
    }
}

fn docker_cli(sock: &Path, config: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("docker");
    cmd.env_remove("DOCKER_HOST")
        .env_remove("DOCKER_CONTEXT")
        .arg("--config")
        .arg(config)
        .arg("-H")
        .arg(format!("unix://{}", sock.display()))
        .args(args);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctr_listing_is_parsed() {
        let listing = "REF TYPE DIGEST SIZE PLATFORMS LABELS\n\
            docker.io/library/busybox:latest application/vnd.oci.image.manifest.v1+json sha256:abc 1.0 MiB linux/amd64 -\n";
        assert_eq!(
            parse_ctr_images(listing),
            vec![(
                "docker.io/library/busybox:latest".to_owned(),
                "application/vnd.oci.image.manifest.v1+json".to_owned(),
                "sha256:abc".to_owned()
            )]
        );
    }

    #[test]
    fn wrap_keeps_program_args_and_env() {
        let dir = short_tempdir("dp-ns-").unwrap();
        let ns = HostsNamespace::new(dir.path(), &["docker.example.test"]).unwrap();
        let hosts = std::fs::read_to_string(ns.hosts_path()).unwrap();
        assert!(hosts.contains("127.0.0.1 docker.example.test\n"));
        assert!(hosts.contains("127.0.0.1 registry-1.docker.io\n"));
        let mut cmd = Command::new("echo");
        cmd.arg("hi").env("A", "b");
        let shown = describe(&ns.wrap(&cmd));
        assert!(shown.starts_with("unshare --mount --propagation private -- sh -c "));
        assert!(shown.ends_with(" echo hi"), "{shown}");
    }
}
