//! Helpers of the cache tests: a controllable upstream on 127.0.0.1 (request log, Range,
//! chunked pacing, a cut mid-body, wrong bytes, manifests by tag) and a proxy configuration
//! with the cache on in a fresh temp directory.

#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use dockerproxy_core::Config;
use http_body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// One request the upstream saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
}

/// How the upstream serves blobs.
#[derive(Clone, Debug)]
pub struct Behaviour {
    /// The blob bytes served for every `/blobs/` path.
    pub blob: Bytes,
    /// Bytes per frame.
    pub chunk: usize,
    /// Pause between frames.
    pub delay: Duration,
    /// The first full GET stops after this many bytes and the connection is cut.
    pub cut_after: Option<usize>,
    /// Manifest served for `/manifests/` paths (with its media type).
    pub manifest: Option<(Bytes, &'static str)>,
    /// Pause before the response head.
    pub head_delay: Duration,
    /// Other blobs, served when the path names their digest.
    pub others: Vec<Bytes>,
}

impl Behaviour {
    pub fn blob(blob: Bytes) -> Self {
        Self {
            blob,
            chunk: 64 * 1024,
            delay: Duration::ZERO,
            cut_after: None,
            manifest: None,
            head_delay: Duration::ZERO,
            others: Vec::new(),
        }
    }
}

/// A running fake upstream.
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    /// Requests seen so far whose path contains `part` (and method `method`).
    pub fn count(&self, method: &str, part: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.method == method && s.path.contains(part))
            .count()
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A body fed by a channel (so the producer can pace frames or fail mid-way).
struct ChannelBody(mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.0.poll_recv(cx) {
            Poll::Ready(Some(Ok(b))) => Poll::Ready(Some(Ok(Frame::data(b)))),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Starts the upstream.
pub async fn upstream(b: Behaviour) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let cuts = Arc::new(AtomicUsize::new(0));
    let up = Upstream {
        addr,
        seen: seen.clone(),
    };
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let b = b.clone();
            let seen = seen.clone();
            let cuts = cuts.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let b = b.clone();
                    let seen = seen.clone();
                    let cuts = cuts.clone();
                    async move { Ok::<_, Infallible>(serve(req, &b, &seen, &cuts).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    up
}

async fn serve(
    req: hyper::Request<hyper::body::Incoming>,
    b: &Behaviour,
    seen: &Mutex<Vec<Seen>>,
    cuts: &AtomicUsize,
) -> hyper::Response<ChannelBody> {
    let path = req.uri().path().to_owned();
    let range = req
        .headers()
        .get("range")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    seen.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        path: path.clone(),
        range: range.clone(),
    });
    tokio::time::sleep(b.head_delay).await;
    let head = req.method() == hyper::Method::HEAD;
    let (tx, rx) = mpsc::channel(4);
    let builder =
        hyper::Response::builder().header("docker-distribution-api-version", "registry/2.0");
    if path.contains("/manifests/") {
        let Some((m, mt)) = b.manifest.clone() else {
            drop(tx);
            return builder.status(404).body(ChannelBody(rx)).unwrap();
        };
        let digest = dockerproxy_core::verifier::sha256_digest(&m).to_string();
        let len = m.len();
        if !head {
            tokio::spawn(async move {
                let _ = tx.send(Ok(m)).await;
            });
        }
        return builder
            .status(200)
            .header("content-type", mt)
            .header("docker-content-digest", digest)
            .header("content-length", len)
            .body(ChannelBody(rx))
            .unwrap();
    }
    if !path.contains("/blobs/") {
        let _ = tx.try_send(Ok(Bytes::from_static(b"{}")));
        return builder
            .status(200)
            .header("content-length", 2)
            .body(ChannelBody(rx))
            .unwrap();
    }
    let blob = b
        .others
        .iter()
        .find(|o| path.ends_with(&dockerproxy_core::verifier::sha256_digest(o).to_string()))
        .cloned()
        .unwrap_or_else(|| b.blob.clone());
    let total = blob.len();
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split('-').next())
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|s| *s < total);
    let (status, from) = match start {
        Some(s) => (206, s),
        None => (200, 0),
    };
    let mut builder = builder
        .status(status)
        .header("content-type", "application/octet-stream")
        .header("content-length", total - from);
    if status == 206 {
        builder = builder.header(
            "content-range",
            format!("bytes {from}-{}/{total}", total - 1),
        );
    }
    // The first full GET is cut after `cut_after` bytes.
    let cut = match b.cut_after {
        Some(n) if status == 200 && !head && cuts.fetch_add(1, Ordering::SeqCst) == 0 => Some(n),
        _ => None,
    };
    if !head {
        let data = blob.slice(from..);
        let chunk = b.chunk.max(1);
        let delay = b.delay;
        tokio::spawn(async move {
            let mut sent = 0;
            while sent < data.len() {
                if let Some(n) = cut
                    && sent >= n
                {
                    let _ = tx
                        .send(Err(std::io::Error::other("cut by the test upstream")))
                        .await;
                    return;
                }
                let mut end = (sent + chunk).min(data.len());
                if let Some(n) = cut {
                    end = end.min(n.max(sent + 1));
                }
                if tx.send(Ok(data.slice(sent..end))).await.is_err() {
                    return;
                }
                sent = end;
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
            }
        });
    }
    builder.body(ChannelBody(rx)).unwrap()
}

/// A fresh, empty temp directory for a cache.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dp-cache-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// The proxy configuration: registry `local.test` at `up`, served on `local.example.com`, cache
/// on in `dir`, plus extra top-level TOML lines.
pub fn cache_config(up: SocketAddr, dir: &std::path::Path, extra: &str) -> Config {
    let toml = format!(
        "{extra}\n[routes.\"local.test\"]\nupstream = \"http://{up}\"\nhost = \"local.example.com\"\ndevelopment = true\naddress_exceptions = [\"{up}\"]\n"
    );
    let env = [("CACHE_DIR", dir.to_str().unwrap())];
    let env: std::collections::BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    dockerproxy_core::config::load(&env, Some(&toml))
        .expect("test configuration loads")
        .0
}

/// Deterministic pseudo-random bytes.
pub fn bytes(len: usize, seed: u8) -> Bytes {
    let mut x: u32 = 0x9e37_79b9 ^ u32::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

/// Committed content files under `dir/blobs`.
pub fn committed(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.join("blobs")];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Files in `dir/tmp`.
pub fn temp_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("tmp")).map_or(0, |rd| rd.count())
}

/// Polls `f` until it holds (or 10 s pass).
pub async fn eventually(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..200 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

/// A client pull with timings.
#[derive(Debug)]
pub struct Pull {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
    /// The body matched `Content-Length` and the connection ended cleanly.
    pub complete: bool,
    /// Time from the request to the first body byte.
    pub first_byte: Option<Duration>,
    /// Time from the request to the end.
    pub elapsed: Duration,
}

impl Pull {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

/// `GET path` on `local.example.com` with extra header lines (each ending in CRLF); reads to
/// EOF, noting when the first body byte arrived.
pub async fn pull(addr: SocketAddr, path: &str, extra: &str) -> Pull {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t0 = std::time::Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let raw = format!(
        "GET {path} HTTP/1.1\r\nHost: local.example.com\r\nConnection: close\r\n{extra}\r\n"
    );
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut first_byte = None;
    let mut head_end = None;
    let mut chunk = vec![0u8; 64 * 1024];
    let mut clean = true;
    loop {
        let n = match tokio::time::timeout(Duration::from_secs(30), s.read(&mut chunk)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => n,
            Ok(Err(_)) => {
                clean = false;
                break;
            }
            Err(_) => panic!("pull timed out"),
        };
        buf.extend_from_slice(&chunk[..n]);
        if head_end.is_none() {
            head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
        }
        if let Some(h) = head_end
            && first_byte.is_none()
            && buf.len() > h
        {
            first_byte = Some(t0.elapsed());
        }
    }
    let h = head_end.unwrap_or(buf.len());
    let head = String::from_utf8_lossy(&buf[..h]).trim_end().to_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = buf[h..].to_vec();
    let mut p = Pull {
        status,
        head,
        body,
        complete: false,
        first_byte,
        elapsed: t0.elapsed(),
    };
    p.complete = clean
        && head_end.is_some()
        && p.header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .is_some_and(|n| n == p.body.len());
    p
}

/// The blob path of `body` in `team/app`.
pub fn blob_path(body: &[u8]) -> String {
    format!(
        "/v2/team/app/blobs/{}",
        dockerproxy_core::verifier::sha256_digest(body)
    )
}
