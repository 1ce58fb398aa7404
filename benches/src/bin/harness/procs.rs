//! Child processes of the harness: spawning pinned servers, recording every PID in the pid file
//! (the wrapper script's trap kills them if the harness dies), killing by PID, and reading peak
//! RSS and CPU time from `/proc` (TESTBED §6.4).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// PIDs started by this harness and not yet reaped.
static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Appends a PID to `$HARNESS_PIDFILE` (if set) and to the in-memory list.
pub(crate) fn record_pid(pid: u32) {
    if let Ok(mut live) = LIVE.lock() {
        live.push(pid);
    }
    if let Ok(path) = std::env::var("HARNESS_PIDFILE")
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        let _ = writeln!(f, "{pid}");
    }
}

fn forget_pid(pid: u32) {
    if let Ok(mut live) = LIVE.lock() {
        live.retain(|p| *p != pid);
    }
}

/// Sends `sig` to one PID.
pub(crate) fn signal(pid: u32, sig: i32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    if pid > 1 {
        // SAFETY: kill(2) with a positive PID we started; no memory is touched.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// Kills every PID still recorded (end of run).
pub(crate) fn kill_all_recorded() {
    let pids: Vec<u32> = LIVE.lock().map(|l| l.clone()).unwrap_or_default();
    for pid in pids {
        signal(pid, libc::SIGKILL);
    }
}

/// A server process (plus, for nginx, its worker processes).
#[derive(Debug)]
pub(crate) struct Server {
    child: Child,
    /// Extra processes counted and killed with it (nginx workers).
    pub(crate) extra: Vec<u32>,
    /// The log file (stdout + stderr).
    pub(crate) log: PathBuf,
}

impl Server {
    /// Spawns `taskset -c CORE program args…` with `env`, output to `log`.
    pub(crate) fn spawn(
        core: u32,
        program: &str,
        args: &[String],
        env: &[(String, String)],
        log: PathBuf,
    ) -> std::io::Result<Self> {
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new("taskset");
        cmd.arg("-c").arg(core.to_string()).arg(program).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        record_pid(child.id());
        Ok(Self {
            child,
            extra: Vec::new(),
            log,
        })
    }

    /// The main PID (`taskset` execs the program, so this is the server itself).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub(crate) fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Records the children of the main process (nginx workers) as part of this server.
    pub(crate) fn adopt_children(&mut self) {
        self.extra = children_of(self.pid());
        for pid in &self.extra {
            record_pid(*pid);
        }
    }

    /// All PIDs of the server.
    pub(crate) fn pids(&self) -> Vec<u32> {
        std::iter::once(self.pid())
            .chain(self.extra.iter().copied())
            .collect()
    }

    /// Sum of `VmHWM` over the server's processes, in KiB.
    pub(crate) fn vm_hwm_kib(&self) -> u64 {
        self.pids().iter().map(|p| status_kib(*p, "VmHWM:")).sum()
    }

    /// Sum of utime + stime over the server's processes, in seconds.
    pub(crate) fn cpu_seconds(&self) -> f64 {
        let ticks: u64 = self.pids().iter().map(|p| cpu_ticks(*p)).sum();
        ticks as f64 / clock_ticks()
    }

    /// The log text (lossy).
    pub(crate) fn log_text(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// SIGTERM, up to 3 s grace, then SIGKILL; reaps the main process.
    pub(crate) fn stop(&mut self) {
        let pids = self.pids();
        for pid in &pids {
            signal(*pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && self.alive() {
            std::thread::sleep(Duration::from_millis(20));
        }
        for pid in &pids {
            if pid_alive(*pid) {
                signal(*pid, libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in pids {
            forget_pid(pid);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !after_comm(&s).starts_with('Z'))
        .unwrap_or(false)
}

fn after_comm(stat: &str) -> &str {
    stat.rfind(')').map_or("", |i| stat[i + 1..].trim_start())
}

/// PIDs whose parent is `ppid`.
pub(crate) fn children_of(ppid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command: state (3), ppid (4), …
        if after_comm(&stat).split_whitespace().nth(1) == Some(&ppid.to_string()) {
            out.push(pid);
        }
    }
    out
}

/// A `/proc/PID/status` value in kB (0 when missing).
pub(crate) fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// utime + stime (fields 14 and 15) in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let fields: Vec<&str> = after_comm(&stat).split_whitespace().collect();
    // after_comm starts at field 3, so field N is index N - 3.
    let get = |n: usize| {
        fields
            .get(n - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(14) + get(15)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant; no memory is touched.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// The 1-minute load average (`/proc/loadavg`).
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
