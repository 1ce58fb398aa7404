//! Shared helpers: start the server in-process on 127.0.0.1:0 and speak raw HTTP/1.1 to it.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dockerproxy_core::Config;
use dockerproxy_server::ServerState;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A configuration from environment pairs and an optional TOML text. Without a `CACHE_DIR`,
/// each configuration gets its own fresh directory: tests run in parallel in one process and a
/// cache directory admits one store at a time.
pub fn config(env: &[(&str, &str)], file: Option<&str>) -> Config {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let mut env: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    if !env.contains_key("CACHE_DIR") {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("dp-server-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        env.insert("CACHE_DIR".to_owned(), dir.display().to_string());
    }
    dockerproxy_core::config::load(&env, file)
        .expect("test configuration loads")
        .0
}

/// A running in-process server.
pub struct Server {
    pub addr: SocketAddr,
    pub state: Arc<ServerState>,
    stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    pub async fn start(config: Config) -> Self {
        let state = dockerproxy_server::build_state(config).expect("state builds");
        Self::start_with_state(state).await
    }

    pub async fn start_with_state(state: Arc<ServerState>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(dockerproxy_server::run(
            vec![listener],
            state.clone(),
            async {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            state,
            stop: Some(stop),
            task,
        }
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(20), &mut self.task)
            .await
            .expect("run returns")
            .unwrap()
            .unwrap();
    }

    /// Signals shutdown without waiting.
    pub fn signal_stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A parsed response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Reply {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `method path` with `Host: host` and `Connection: close`, reads to EOF.
pub async fn request(addr: SocketAddr, method: &str, path: &str, host: &str) -> Reply {
    let raw = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let (reply, complete) = raw_request(addr, raw.as_bytes()).await;
    if method == "HEAD" {
        // No body follows a HEAD response, whatever Content-Length says; anything read after the
        // head would be a protocol error.
        return reply;
    }
    assert!(complete, "response incomplete: {reply:?}");
    reply
}

/// Sends raw bytes, reads to EOF; returns the reply and whether the body was complete per
/// `Content-Length` (or chunked framing).
pub async fn raw_request(addr: SocketAddr, raw: &[u8]) -> (Reply, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut buf = Vec::new();
    // A reset counts as the end of what was received.
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf))
        .await
        .expect("server answers");
    parse(&buf)
}

/// Parses what was received; no head at all gives status 0 and `complete == false`.
fn parse(buf: &[u8]) -> (Reply, bool) {
    let Some(split) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return (
            Reply {
                status: 0,
                head: String::from_utf8_lossy(buf).into_owned(),
                body: Vec::new(),
            },
            false,
        );
    };
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let rest = &buf[split + 4..];
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let mut reply = Reply {
        status,
        head,
        body: Vec::new(),
    };
    let complete = if let Some(len) = reply.header("content-length") {
        let len: usize = len.parse().unwrap();
        reply.body = rest.to_vec();
        rest.len() == len
    } else if reply
        .header("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        let (body, done) = dechunk(rest);
        reply.body = body;
        done
    } else {
        reply.body = rest.to_vec();
        true
    };
    (reply, complete)
}

fn dechunk(mut rest: &[u8]) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return (body, false);
        };
        let size_text = String::from_utf8_lossy(&rest[..eol]).into_owned();
        let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
        else {
            return (body, false);
        };
        rest = &rest[eol + 2..];
        if size == 0 {
            return (body, true);
        }
        if rest.len() < size {
            body.extend_from_slice(rest);
            return (body, false);
        }
        body.extend_from_slice(&rest[..size]);
        rest = rest.get(size + 2..).unwrap_or(&[]);
    }
}

/// A tiny upstream on 127.0.0.1: serves `body` (with `Content-Length`) for blob paths and
/// `{}` for everything else.
pub async fn upstream(body: Bytes) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let body = body.clone();
                    async move {
                        let b = if req.uri().path().contains("/blobs/") {
                            body
                        } else {
                            Bytes::from_static(b"{}")
                        };
                        let resp = hyper::Response::builder()
                            .status(200)
                            .header("content-type", "application/octet-stream")
                            .header("docker-content-digest", "sha256:0000")
                            .body(Full::new(b))
                            .unwrap();
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A configuration routing `local.example.com` to the registry `local.test` at `up`.
pub fn proxy_config(up: SocketAddr) -> Config {
    let toml = format!(
        "[routes.\"local.test\"]\nupstream = \"http://{up}\"\nhost = \"local.example.com\"\ndevelopment = true\naddress_exceptions = [\"{up}\"]\n"
    );
    config(&[("CACHE_ENABLED", "false")], Some(&toml))
}

/// A file of `server/tests/fixtures/` (test CA, server certificate and key).
pub fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A TLS client trusting the test CA, offering `alpn`.
pub fn client_tls(alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(fixture("ca.pem")).unwrap();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}
