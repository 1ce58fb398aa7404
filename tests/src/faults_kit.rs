//! Helpers for the fault-injection suite and the soak (SECURITY.md §3): a scriptable raw TCP
//! server (a hostile upstream, a redirect target or a realm that must never be dialled; it
//! counts every connection), raw client exchanges for malformed requests, `/proc` readings of a
//! process (VmRSS, VmHWM, open descriptors) with a background peak sampler, and a legitimate
//! client loop that keeps checking that the proxy still serves correct bytes while a fault runs.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::content::sha256_digest;

/// One request head a [`RawServer`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRequest {
    /// Index of the connection (0-based, in accept order).
    pub conn: usize,
    /// Index of the request on its connection (0-based).
    pub index_on_conn: usize,
    /// The request head text (request line and header lines).
    pub head: String,
}

impl RawRequest {
    /// The method of the request line.
    pub fn method(&self) -> &str {
        self.head.split(' ').next().unwrap_or("")
    }

    /// The target (path and query) of the request line.
    pub fn target(&self) -> &str {
        self.head.split(' ').nth(1).unwrap_or("")
    }

    /// The path of the request line, without query.
    pub fn path(&self) -> &str {
        self.target().split('?').next().unwrap_or("")
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// What a [`RawServer`] does with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawAction {
    /// Write these bytes and keep the connection for the next request.
    Respond(Vec<u8>),
    /// Write these bytes, then close.
    RespondClose(Vec<u8>),
    /// Close without answering.
    Close,
    /// Never answer; hold the connection until the server stops.
    Hang,
    /// Write `head`, then `chunk` `times` times with `interval` between writes, then close.
    Stream {
        /// Status line and headers (ending with the blank line).
        head: Vec<u8>,
        /// One piece of body.
        chunk: Vec<u8>,
        /// How many pieces.
        times: usize,
        /// Pause before each piece.
        interval: Duration,
    },
    /// Wait, then do the inner action.
    Delay(Duration, Box<Self>),
}

/// Decides the action for each request.
pub type Script = Arc<dyn Fn(&RawRequest) -> RawAction + Send + Sync>;

/// A scriptable raw HTTP/1.1 server on `127.0.0.1:0`, on its own thread; dropping it stops it.
pub struct RawServer {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<RawRequest>>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RawServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawServer")
            .field("addr", &self.addr)
            .field("connections", &self.connections())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl RawServer {
    /// Starts a server answering every request with `script`.
    pub fn start(script: Script) -> std::io::Result<Self> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let conns = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (tx, mut rx) = oneshot::channel::<()>();
        let (c, r) = (conns.clone(), requests.clone());
        let thread = std::thread::Builder::new()
            .name("raw-server".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
                        return;
                    };
                    loop {
                        tokio::select! {
                            _ = &mut rx => break,
                            accepted = listener.accept() => {
                                let Ok((stream, _)) = accepted else { continue };
                                let n = c.fetch_add(1, Ordering::SeqCst);
                                tokio::spawn(raw_connection(stream, n, script.clone(), r.clone()));
                            }
                        }
                    }
                });
            })?;
        Ok(Self {
            addr,
            conns,
            requests,
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    /// A server that accepts, counts and closes every connection at once (a target that must
    /// never be dialled).
    pub fn counter() -> std::io::Result<Self> {
        Self::start(Arc::new(|_| RawAction::Close))
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:PORT`.
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }

    /// Request heads received so far.
    pub fn requests(&self) -> Vec<RawRequest> {
        lock(&self.requests).clone()
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn raw_connection(
    mut s: TcpStream,
    conn: usize,
    script: Script,
    log: Arc<Mutex<Vec<RawRequest>>>,
) {
    let _ = s.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::new();
    let mut index_on_conn = 0;
    loop {
        // Read one head (and skip a Content-Length body).
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            if buf.len() > 1 << 20 {
                return;
            }
            let mut chunk = [0u8; 8192];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end - 4]).into_owned();
        let req = RawRequest {
            conn,
            index_on_conn,
            head,
        };
        let body_len: usize = req
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < end + body_len {
            let mut chunk = [0u8; 8192];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..end + body_len);
        index_on_conn += 1;
        let mut action = script(&req);
        lock(&log).push(req);
        loop {
            match action {
                RawAction::Delay(d, inner) => {
                    tokio::time::sleep(d).await;
                    action = *inner;
                }
                RawAction::Respond(bytes) => {
                    if s.write_all(&bytes).await.is_err() {
                        return;
                    }
                    break;
                }
                RawAction::RespondClose(bytes) => {
                    let _ = s.write_all(&bytes).await;
                    let _ = s.shutdown().await;
                    return;
                }
                RawAction::Close => return,
                RawAction::Hang => {
                    // Keep reading (and discarding) so the peer's close is noticed.
                    let mut sink = [0u8; 4096];
                    while let Ok(n) = s.read(&mut sink).await {
                        if n == 0 {
                            return;
                        }
                    }
                    return;
                }
                RawAction::Stream {
                    head,
                    chunk,
                    times,
                    interval,
                } => {
                    if s.write_all(&head).await.is_err() {
                        return;
                    }
                    for _ in 0..times {
                        if !interval.is_zero() {
                            tokio::time::sleep(interval).await;
                        }
                        if s.write_all(&chunk).await.is_err() {
                            return;
                        }
                    }
                    let _ = s.shutdown().await;
                    return;
                }
            }
        }
    }
}

/// An HTTP/1.1 response with `Content-Length` (unless a header sets `transfer-encoding` or
/// `content-length` itself).
pub fn http_response(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} X\r\n").into_bytes();
    let mut has_len = false;
    for (k, v) in headers {
        has_len |=
            k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding");
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    if !has_len {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// What a raw client exchange saw.
#[derive(Debug, Clone, Default)]
pub struct RawReply {
    /// The status of the first response line, if one arrived.
    pub status: Option<u16>,
    /// The response head text.
    pub head: String,
    /// Body bytes received after the head.
    pub body: Vec<u8>,
    /// The server closed the connection (EOF or reset).
    pub closed: bool,
    /// The exchange was still open when the timeout ran out.
    pub timed_out: bool,
    /// How long it took.
    pub elapsed: Duration,
}

/// Sends `request` on a fresh connection to `addr` and reads until the server closes, a
/// complete `Content-Length` response arrived, or `timeout` ran out. Write errors are ignored
/// (a server may close before reading everything).
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> RawReply {
    let started = Instant::now();
    let mut reply = RawReply::default();
    let Ok(mut s) = TcpStream::connect(addr).await else {
        reply.closed = true;
        return reply;
    };
    let _ = s.write_all(request).await;
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let mut chunk = [0u8; 16384];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => {
                reply.timed_out = true;
                break;
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                reply.closed = true;
                break;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head.split("\r\n").find_map(|l| {
                l.strip_prefix("content-length:")
                    .and_then(|v| v.trim().parse::<usize>().ok())
            });
            if len.is_some_and(|len| buf.len() >= end + 4 + len) {
                break;
            }
        }
    }
    reply.elapsed = started.elapsed();
    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
        reply.head = String::from_utf8_lossy(&buf[..end]).into_owned();
        reply.body = buf[end + 4..].to_vec();
    } else {
        reply.head = String::from_utf8_lossy(&buf).into_owned();
    }
    reply.status = reply
        .head
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|s| s.parse().ok());
    reply
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`, …); `None` when the process is
/// gone.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// Resident set size in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS").unwrap_or(0)
}

/// Peak resident set size (high-water mark) in KiB.
pub fn hwm_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmHWM").unwrap_or(0)
}

/// Open file descriptors of the process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// Samples the resident set of a process (which may be replaced, see [`RssSampler::set_pid`])
/// every `interval` on a background thread and keeps the maximum of VmRSS and VmHWM.
#[derive(Debug)]
pub struct RssSampler {
    pid: Arc<AtomicU32>,
    peak_kib: Arc<AtomicU64>,
    samples: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RssSampler {
    /// Starts sampling `pid`.
    pub fn start(pid: u32, interval: Duration) -> Self {
        let pid = Arc::new(AtomicU32::new(pid));
        let peak_kib = Arc::new(AtomicU64::new(0));
        let samples = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, k, n, s) = (pid.clone(), peak_kib.clone(), samples.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let pid = p.load(Ordering::Relaxed);
                let v = rss_kib(pid).max(hwm_kib(pid));
                k.fetch_max(v, Ordering::Relaxed);
                n.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(interval);
            }
        });
        Self {
            pid,
            peak_kib,
            samples,
            stop,
            thread: Some(thread),
        }
    }

    /// Samples another process from now on (after a restart).
    pub fn set_pid(&self, pid: u32) {
        self.pid.store(pid, Ordering::Relaxed);
    }

    /// The highest value seen so far, in KiB (also reads the current process once).
    pub fn peak_kib(&self) -> u64 {
        let pid = self.pid.load(Ordering::Relaxed);
        self.peak_kib
            .fetch_max(rss_kib(pid).max(hwm_kib(pid)), Ordering::Relaxed);
        self.peak_kib.load(Ordering::Relaxed)
    }

    /// Samples taken.
    pub fn samples(&self) -> u64 {
        self.samples.load(Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Results of a [`LegitLoop`].
#[derive(Debug, Clone, Default)]
pub struct LegitReport {
    /// Correct, complete answers.
    pub ok: usize,
    /// Everything else, described.
    pub failures: Vec<String>,
    /// The slowest correct answer.
    pub max_latency: Duration,
}

/// A legitimate client that GETs `url` again and again (a fresh connection each time) and checks
/// that the body hashes to `digest`, until stopped.
#[derive(Debug)]
pub struct LegitLoop {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<LegitReport>,
}

impl LegitLoop {
    /// Starts the loop on the current runtime, one request every `pause`.
    pub fn spawn(url: String, digest: String, pause: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let mut report = LegitReport::default();
            while !s.load(Ordering::Relaxed) {
                match legit_get(&url, &digest).await {
                    Ok(t) => {
                        report.ok += 1;
                        report.max_latency = report.max_latency.max(t);
                    }
                    Err(e) => report.failures.push(e),
                }
                tokio::time::sleep(pause).await;
            }
            report
        });
        Self { stop, task }
    }

    /// Stops the loop and returns what it saw.
    pub async fn finish(self) -> LegitReport {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

/// One legitimate GET on a fresh connection: Ok(latency) when the answer is a complete 200 whose
/// body hashes to `digest`.
pub async fn legit_get(url: &str, digest: &str) -> Result<Duration, String> {
    let started = Instant::now();
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| e.to_string())?;
    let resp = client
        .get(url)
        .header(
            "accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json",
        )
        .send()
        .await
        .map_err(|e| format!("{url}: {e:?}"))?;
    let status = resp.status().as_u16();
    let body = resp.bytes().await.map_err(|e| format!("{url}: {e:?}"))?;
    if status != 200 || sha256_digest(&body) != digest {
        return Err(format!(
            "{url}: status {status}, {} bytes, digest {}",
            body.len(),
            sha256_digest(&body)
        ));
    }
    Ok(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_status_of_self() {
        let pid = std::process::id();
        assert!(rss_kib(pid) > 0);
        assert!(hwm_kib(pid) >= rss_kib(pid) / 2);
        assert!(fd_count(pid) >= 3);
        assert_eq!(proc_status_kib(u32::MAX, "VmRSS"), None);
    }

    #[test]
    fn response_builder_adds_length() {
        let r = http_response(200, &[("A", "b")], b"xyz");
        assert_eq!(
            r,
            b"HTTP/1.1 200 X\r\nA: b\r\nContent-Length: 3\r\n\r\nxyz".to_vec()
        );
    }

    #[tokio::test]
    async fn raw_server_counts_and_answers() {
        let server = RawServer::start(Arc::new(|r| {
            if r.path() == "/close" {
                RawAction::Close
            } else {
                RawAction::RespondClose(http_response(201, &[], b"hi"))
            }
        }))
        .unwrap();
        let reply = raw_exchange(
            server.addr(),
            b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n",
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(reply.status, Some(201));
        assert_eq!(reply.body, b"hi");
        let reply = raw_exchange(
            server.addr(),
            b"GET /close HTTP/1.1\r\nHost: a\r\n\r\n",
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(reply.status, None);
        assert!(reply.closed);
        assert_eq!(server.connections(), 2);
        assert_eq!(server.requests()[1].path(), "/close");
        assert_eq!(server.requests()[0].header("HOST"), Some("a"));
    }
}
