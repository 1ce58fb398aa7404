//! HTTP/2 abuse against the TLS listener (SECURITY.md §2.14, fault class 1): h2 is offered only
//! there, by ALPN. The proxy routes to a real `docker-registry` (dockerproxy-tests' `TestBed`)
//! through a counting front (`gated_front`), so what reaches the upstream is observable.
//!
//! - stream concurrency: the server advertises 100 concurrent streams; the `h2` client then
//!   queues the rest, and a raw client that ignores the limit gets `REFUSED_STREAM` for every
//!   stream past 100;
//! - rapid reset (CVE-2023-44487): 10,000 HEADERS each followed at once by RST_STREAM, then a
//!   normal request on a fresh connection is answered and the upstream saw a bounded number of
//!   requests;
//! - an oversized header block (431 / refused, connection kept) and a CONTINUATION flood
//!   (connection closed); the server keeps serving.
//!
//! The raw client writes frames itself (HPACK literals without Huffman coding), because the
//! `h2` crate keeps its client within the peer's limits.

mod common;
mod gated_front;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::{client_tls, config, fixture};
use dockerproxy_server::{Listener, run_listeners};
use dockerproxy_tests::{Mode, SeedOptions, TestBed, docker_hub_route_toml};
use gated_front::GatedFront;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;

async fn tls(addr: SocketAddr) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let s = client_tls(&[b"h2"])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()));
    s
}

/// A seeded registry, a counting front before it, and the proxy's TLS listener before that.
struct Setup {
    addr: SocketAddr,
    front: GatedFront,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _bed: TestBed,
}

impl Setup {
    async fn start(gated: bool) -> Option<Self> {
        if !dockerproxy_tests::require_tool("docker-registry") {
            return None;
        }
        let bed = TestBed::start_with(
            Mode::Plain,
            SeedOptions {
                big_layer_size: 64 * 1024,
            },
        )
        .await;
        let front = GatedFront::start(bed.registry.base_url(), gated).await;
        let toml = format!(
            "tls_cert = {:?}\ntls_key = {:?}\n{}",
            fixture("cert.pem"),
            fixture("key.pem"),
            docker_hub_route_toml(&front.base_url(), &[], "")
        );
        let state = dockerproxy_server::build_state(config(&[], Some(&toml))).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run_listeners(
            vec![Listener { tcp, tls: true }],
            state,
            async {
                let _ = stopped.await;
            },
        ));
        Some(Self {
            addr,
            front,
            stop: Some(stop),
            task,
            _bed: bed,
        })
    }

    /// `GET path` over a fresh h2 connection with the `h2` crate: (status, body).
    async fn get(&self, path: &str) -> (u16, Bytes) {
        let (client, conn) = h2::client::handshake(tls(self.addr).await).await.unwrap();
        tokio::spawn(conn);
        let mut client = client.ready().await.unwrap();
        let (resp, _) = client.send_request(request(path), true).unwrap();
        let resp = resp.await.unwrap();
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut out = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            out.extend_from_slice(&chunk);
        }
        (status, Bytes::from(out))
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("server drains")
            .unwrap()
            .unwrap();
    }
}

fn request(path: &str) -> http::Request<()> {
    http::Request::get(format!("https://127.0.0.1{path}"))
        .body(())
        .unwrap()
}

/// A distinct upstream-bound request per `i` (tag lists are never cached or coalesced).
fn tags_path(i: usize) -> String {
    format!("/v2/library/busybox/tags/list?n={}", i % 10_000 + 1)
}

// ---- a raw HTTP/2 client ------------------------------------------------------------------

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
const REFUSED_STREAM: u32 = 0x7;

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

struct Raw {
    rd: ReadHalf<TlsStream<TcpStream>>,
    wr: WriteHalf<TlsStream<TcpStream>>,
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    assert!(len < 1 << 24);
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with an `n`-bit prefix, the high bits of the first byte set to `flags`.
fn hpack_int(out: &mut Vec<u8>, flags: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(flags | u8::try_from(v).unwrap());
        return;
    }
    out.push(flags | u8::try_from(max).unwrap());
    v -= max;
    while v >= 128 {
        out.push(u8::try_from(v % 128).unwrap() | 0x80);
        v /= 128;
    }
    out.push(u8::try_from(v).unwrap());
}

/// A literal string without Huffman coding.
fn hpack_str(out: &mut Vec<u8>, s: &[u8]) {
    hpack_int(out, 0x00, 7, s.len());
    out.extend_from_slice(s);
}

/// A request header block: GET https://127.0.0.1`path`, plus `extra` literal headers.
fn header_block(path: &str, extra: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = vec![0x82, 0x87]; // :method GET, :scheme https (static table)
    hpack_int(&mut b, 0x00, 4, 4); // :path, literal without indexing
    hpack_str(&mut b, path.as_bytes());
    hpack_int(&mut b, 0x00, 4, 1); // :authority
    hpack_str(&mut b, b"127.0.0.1");
    for (name, value) in extra {
        b.push(0x00); // literal without indexing, new name
        hpack_str(&mut b, name.as_bytes());
        hpack_str(&mut b, value);
    }
    b
}

impl Raw {
    /// Connects, sends the preface and an empty SETTINGS, and acknowledges the server's
    /// SETTINGS (its limits apply from our ACK on). Returns the server's MAX_CONCURRENT_STREAMS.
    async fn connect(addr: SocketAddr) -> (Self, Option<u32>) {
        let (rd, wr) = tokio::io::split(tls(addr).await);
        let mut raw = Self { rd, wr };
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        raw.wr.write_all(&hello).await.unwrap();
        let mut max_streams = None;
        loop {
            let f = raw.read().await.expect("server SETTINGS");
            if f.kind == SETTINGS && f.flags & ACK == 0 {
                for s in f.payload.chunks(6) {
                    if s[..2] == [0, 3] {
                        max_streams = Some(u32::from_be_bytes([s[2], s[3], s[4], s[5]]));
                    }
                }
                raw.send(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();
                return (raw, max_streams);
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.wr.write_all(bytes).await?;
        self.wr.flush().await
    }

    /// The next frame; `None` when the connection closed (or 10 s passed without one).
    async fn read(&mut self) -> Option<Frame> {
        let mut head = [0u8; 9];
        let read = tokio::time::timeout(Duration::from_secs(10), self.rd.read_exact(&mut head));
        read.await.ok()?.ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0; len];
        self.rd.read_exact(&mut payload).await.ok()?;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        Some(Frame {
            kind: head[3],
            flags: head[4],
            stream,
            payload,
        })
    }
}

/// The `:status` of a response header block when it is one of the static-table entries.
fn static_status(block: &[u8]) -> Option<u16> {
    match block.first()? {
        0x88 => Some(200),
        0x89 => Some(204),
        0x8a => Some(206),
        0x8b => Some(304),
        0x8c => Some(400),
        0x8d => Some(404),
        0x8e => Some(500),
        _ => None,
    }
}

// ---- tests --------------------------------------------------------------------------------

/// The `h2` client learns the limit of 100 and queues the other streams: 200 concurrent
/// requests held at the upstream front never have more than 100 in flight, then all finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_200_streams_at_most_100_in_flight() {
    let Some(s) = Setup::start(true).await else {
        return;
    };
    let (client, conn) = h2::client::handshake(tls(s.addr).await).await.unwrap();
    tokio::spawn(conn);
    let client = client.ready().await.unwrap();
    // Until the server's SETTINGS arrive the client may assume unlimited streams (and a stream
    // past 100 would then be refused, correctly): wait for the advertised limit first.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while client.current_max_send_streams() != 100 {
        assert!(
            std::time::Instant::now() < deadline,
            "no SETTINGS with max_concurrent_streams = 100 from the server"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut tasks = Vec::new();
    for i in 0..200 {
        // One handle per request: a handle whose last stream waits for a slot is not ready,
        // but the connection queues streams from other handles.
        let mut c = client.clone();
        let (resp, _) = c.send_request(request(&tags_path(i)), true).unwrap();
        tasks.push(tokio::spawn(async move {
            resp.await.map(|r| r.status().as_u16())
        }));
    }
    s.front
        .wait_until("100 streams at the upstream", |f| f.in_flight() == 100)
        .await;
    assert_eq!(client.current_max_send_streams(), 100, "advertised limit");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        s.front.arrived(),
        100,
        "streams past the limit reached the upstream"
    );
    s.front.release(200);
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 200);
    }
    assert_eq!(s.front.arrived(), 200);
    assert_eq!(s.front.max_in_flight(), 100);
    s.stop().await;
}

/// A client that ignores the limit: 200 streams opened at once, the server refuses every one
/// past 100 with RST_STREAM(REFUSED_STREAM), and no more than 100 reach the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streams_past_100_are_refused() {
    let Some(s) = Setup::start(true).await else {
        return;
    };
    let (mut raw, max) = Raw::connect(s.addr).await;
    assert_eq!(max, Some(100), "SETTINGS_MAX_CONCURRENT_STREAMS");
    let mut burst = Vec::new();
    for i in 0..200u32 {
        let block = header_block(&tags_path(i as usize), &[]);
        burst.extend(frame(HEADERS, END_STREAM | END_HEADERS, 2 * i + 1, &block));
    }
    raw.send(&burst).await.unwrap();
    let mut refused = std::collections::BTreeSet::new();
    while refused.len() < 100 {
        let f = raw
            .read()
            .await
            .expect("the server answers the excess streams");
        match f.kind {
            RST_STREAM => {
                let code = u32::from_be_bytes(f.payload[..4].try_into().unwrap());
                assert_eq!(code, REFUSED_STREAM, "stream {}", f.stream);
                refused.insert(f.stream);
            }
            GOAWAY => panic!("GOAWAY instead of refusing streams"),
            HEADERS | DATA => panic!("stream {} answered while all are held", f.stream),
            _ => {}
        }
    }
    assert!(refused.iter().all(|id| *id > 199), "{refused:?}");
    s.front
        .wait_until("the accepted streams at the upstream", |f| {
            f.in_flight() == 100
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.front.arrived(), 100);
    // The accepted ones are answered once the upstream lets them through.
    s.front.release(1000);
    let mut ok = 0;
    while ok < 100 {
        let f = raw.read().await.expect("answers to the accepted streams");
        if f.kind == HEADERS {
            assert_eq!(static_status(&f.payload), Some(200), "stream {}", f.stream);
            assert!(!refused.contains(&f.stream));
            ok += 1;
        }
        assert_ne!(f.kind, GOAWAY);
    }
    s.stop().await;
}

/// Rapid reset: 10,000 requests, each cancelled right after its HEADERS. The server keeps
/// serving, and the upstream sees only a bounded share of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_rapid_reset_is_bounded() {
    let Some(s) = Setup::start(false).await else {
        return;
    };
    const TOTAL: usize = 10_000;
    let mut sent = 0;
    let mut connections = 0;
    while sent < TOTAL {
        connections += 1;
        assert!(connections <= TOTAL, "no progress");
        let (client, conn) = h2::client::handshake(tls(s.addr).await).await.unwrap();
        let conn = tokio::spawn(conn);
        let mut client = Some(client);
        while sent < TOTAL {
            let Some(c) = client.take() else { break };
            let Ok(mut c) = c.ready().await else { break };
            let Ok((_resp, mut stream)) = c.send_request(request(&tags_path(sent)), false) else {
                break;
            };
            stream.send_reset(h2::Reason::CANCEL);
            sent += 1;
            client = Some(c);
        }
        drop(client);
        conn.abort();
    }
    // A fresh connection is served promptly (bounded by a generous deadline, not measured).
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), s.get("/health"))
        .await
        .expect("the proxy answers after the reset flood");
    assert_eq!(status, 200, "{body:?}");
    let (status, _) = tokio::time::timeout(Duration::from_secs(10), s.get(&tags_path(0)))
        .await
        .expect("a registry request after the reset flood");
    assert_eq!(status, 200);
    // Let cancelled requests that did leave finish arriving before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let upstream = s.front.arrived();
    println!(
        "FIGURES: rapid reset: {TOTAL} reset streams over {connections} connections; \
         {upstream} requests reached the upstream"
    );
    assert!(
        upstream <= TOTAL / 10,
        "{upstream} of {TOTAL} reset requests reached the upstream"
    );
    s.stop().await;
}

/// A 100 KiB header block (over the 64 KiB list limit), split over CONTINUATION frames, is
/// refused (431 or RST_STREAM, never 200) and the connection still serves the next stream; a
/// CONTINUATION flood that never ends its block gets the connection closed; the server serves
/// a fresh connection afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_oversized_header_block_is_refused_and_server_survives() {
    let Some(s) = Setup::start(false).await else {
        return;
    };
    let (mut raw, _) = Raw::connect(s.addr).await;
    let big = vec![b'a'; 100 * 1024];
    let block = header_block("/health", &[("x-big", &big)]);
    let mut bytes = Vec::new();
    let chunks: Vec<&[u8]> = block.chunks(16 * 1024).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = if i + 1 == chunks.len() {
            END_HEADERS
        } else {
            0
        };
        if i == 0 {
            bytes.extend(frame(HEADERS, END_STREAM | last, 1, chunk));
        } else {
            bytes.extend(frame(CONTINUATION, last, 1, chunk));
        }
    }
    // Then a normal request on the same connection.
    bytes.extend(frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        3,
        &header_block("/health", &[]),
    ));
    raw.send(&bytes).await.unwrap();
    let (mut big_outcome, mut next_status) = (None, None);
    while big_outcome.is_none() || next_status.is_none() {
        let f = raw.read().await.expect("answers on the same connection");
        match (f.kind, f.stream) {
            (HEADERS, 1) => big_outcome = Some(format!("status {:?}", static_status(&f.payload))),
            (RST_STREAM, 1) => big_outcome = Some("reset".to_owned()),
            (HEADERS, 3) => next_status = static_status(&f.payload),
            (GOAWAY, _) => panic!("the connection was closed for one oversized header block"),
            _ => {}
        }
    }
    assert_ne!(big_outcome.as_deref(), Some("status Some(200)"));
    assert_eq!(next_status, Some(200), "the next stream on the connection");

    // A CONTINUATION flood: 64 MiB of header block that never ends.
    let (mut raw, _) = Raw::connect(s.addr).await;
    let chunk = vec![0u8; 16 * 1024];
    let mut closed = raw
        .send(&frame(
            HEADERS,
            END_STREAM,
            1,
            &header_block("/health", &[]),
        ))
        .await
        .is_err();
    let mut frames = 0;
    while !closed && frames < 4096 {
        closed = raw.send(&frame(CONTINUATION, 0, 1, &chunk)).await.is_err();
        frames += 1;
    }
    println!("FIGURES: CONTINUATION flood: connection ended after {frames} frames sent");
    assert!(frames < 4096, "the server accepted a 64 MiB header block");

    let (status, _) = tokio::time::timeout(Duration::from_secs(10), s.get("/health"))
        .await
        .expect("a fresh connection is served");
    assert_eq!(status, 200);
    s.stop().await;
}
