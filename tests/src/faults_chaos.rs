//! A chaos front for the soak (SECURITY.md §3): forwards every request to a plain-HTTP upstream
//! and, drawing from a seeded generator, injects one fault per response — a 5xx instead of the
//! answer, a connection cut after some body bytes, one flipped body byte (same length, wrong
//! digest), a delay before the head, or a trickled body — and counts what it injected by kind.
//! Bodies are mangled only on `200` answers to blob and manifest GETs: those the proxy can
//! verify. (A `206` answer to a forwarded Range cannot be verified by anyone; see the ignored
//! BUG test `class_03_range_on_a_cold_blob_never_relays_unverified_bytes` in `faults.rs`.)

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

use crate::content::Prng;
use crate::error::FixtureResult;
use crate::serve::{BoxError, Handler, RespBody, ServerHandle, respond};

/// Per-mille probabilities of each fault, drawn once per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChaosRates {
    /// 503 with an OCI JSON body instead of forwarding.
    pub status_5xx: u32,
    /// Cut the connection after a random number of body bytes.
    pub cut: u32,
    /// Flip one body byte.
    pub flip: u32,
    /// Wait 50–400 ms before answering.
    pub delay: u32,
    /// Send the body in 8 KiB pieces, 5 ms apart.
    pub trickle: u32,
}

/// Counters of injected faults.
#[derive(Debug, Default)]
pub struct ChaosCounts {
    /// Requests seen.
    pub requests: AtomicU64,
    /// 5xx answered.
    pub status_5xx: AtomicU64,
    /// Bodies cut.
    pub cut: AtomicU64,
    /// Bodies with a flipped byte.
    pub flip: AtomicU64,
    /// Delayed answers.
    pub delay: AtomicU64,
    /// Trickled bodies.
    pub trickle: AtomicU64,
}

impl ChaosCounts {
    /// `(kind, count)` pairs for printing.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("requests", self.requests.load(Ordering::Relaxed)),
            ("5xx", self.status_5xx.load(Ordering::Relaxed)),
            ("cut", self.cut.load(Ordering::Relaxed)),
            ("wrong_bytes", self.flip.load(Ordering::Relaxed)),
            ("delay", self.delay.load(Ordering::Relaxed)),
            ("trickle", self.trickle.load(Ordering::Relaxed)),
        ]
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    None,
    Status,
    Cut(u64),
    Flip(u64),
    Delay(Duration),
    Trickle,
}

struct State {
    upstream: String,
    rates: ChaosRates,
    enabled: std::sync::atomic::AtomicBool,
    prng: Mutex<Prng>,
    counts: Arc<ChaosCounts>,
    client: Client<HttpConnector, Incoming>,
}

/// A running chaos front; dropping it stops it.
pub struct ChaosFront {
    state: Arc<State>,
    server: ServerHandle,
}

impl std::fmt::Debug for ChaosFront {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChaosFront")
            .field("addr", &self.server.addr())
            .finish()
    }
}

impl ChaosFront {
    /// Starts a front on `127.0.0.1:0` forwarding to `upstream` (`http://127.0.0.1:PORT`).
    pub fn start(upstream: &str, seed: u64, rates: ChaosRates) -> FixtureResult<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let state = Arc::new(State {
            upstream: upstream.trim_end_matches('/').to_owned(),
            rates,
            enabled: std::sync::atomic::AtomicBool::new(true),
            prng: Mutex::new(Prng::new(seed)),
            counts: Arc::new(ChaosCounts::default()),
            client: Client::builder(TokioExecutor::new()).build(connector),
        });
        let handler_state = state.clone();
        let handler: Handler = Arc::new(move |req| {
            let state = handler_state.clone();
            Box::pin(async move { handle(&state, req).await })
        });
        let server = ServerHandle::spawn("chaos-front", handler)?;
        Ok(Self { state, server })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The fault counters.
    pub fn counts(&self) -> Arc<ChaosCounts> {
        self.state.counts.clone()
    }

    /// Turns fault injection on or off (off: a transparent forwarder).
    pub fn set_enabled(&self, on: bool) {
        self.state.enabled.store(on, Ordering::Relaxed);
    }
}

fn draw(state: &State) -> Fault {
    if !state.enabled.load(Ordering::Relaxed) {
        return Fault::None;
    }
    let mut prng = state
        .prng
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let r = u32::try_from(prng.next_u64() % 1000).unwrap_or(0);
    let extra = prng.next_u64();
    let rates = state.rates;
    let mut edge = rates.status_5xx;
    if r < edge {
        return Fault::Status;
    }
    edge += rates.cut;
    if r < edge {
        return Fault::Cut(extra % 300_000);
    }
    edge += rates.flip;
    if r < edge {
        return Fault::Flip(extra % 300_000);
    }
    edge += rates.delay;
    if r < edge {
        return Fault::Delay(Duration::from_millis(50 + extra % 350));
    }
    edge += rates.trickle;
    if r < edge {
        return Fault::Trickle;
    }
    Fault::None
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

async fn handle(state: &State, req: Request<Incoming>) -> Response<RespBody> {
    let counts = &state.counts;
    counts.requests.fetch_add(1, Ordering::Relaxed);
    let mut fault = draw(state);
    match fault {
        Fault::Status => {
            counts.status_5xx.fetch_add(1, Ordering::Relaxed);
            return respond(
                503,
                "application/json",
                r#"{"errors":[{"code":"UNAVAILABLE","message":"chaos"}]}"#,
            );
        }
        Fault::Delay(d) => {
            counts.delay.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(d).await;
        }
        _ => {}
    }
    let (mut parts, body) = req.into_parts();
    let pq = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let Ok(uri) = format!("{}{pq}", state.upstream).parse::<http::Uri>() else {
        return respond(502, "text/plain", "bad upstream URI\n");
    };
    let is_get = parts.method == http::Method::GET;
    // Only content-addressed bodies can be checked by the proxy: tags lists and pings are
    // trusted upstream answers (SECURITY §1), so they are never mangled.
    let path = parts.uri.path().to_owned();
    let checkable = path.contains("/blobs/") || path.contains("/manifests/");
    parts.uri = uri;
    for name in HOP_BY_HOP {
        parts.headers.remove(*name);
    }
    let resp = match state.client.request(Request::from_parts(parts, body)).await {
        Ok(resp) => resp,
        Err(e) => return respond(502, "text/plain", format!("upstream error: {e}\n")),
    };
    let (mut parts, body) = resp.into_parts();
    for name in HOP_BY_HOP {
        parts.headers.remove(*name);
    }
    let has_body = is_get && checkable && parts.status == 200;
    if !has_body && !matches!(fault, Fault::Delay(_)) {
        fault = Fault::None;
    }
    match fault {
        Fault::Cut(_) => counts.cut.fetch_add(1, Ordering::Relaxed),
        Fault::Flip(_) => counts.flip.fetch_add(1, Ordering::Relaxed),
        Fault::Trickle => counts.trickle.fetch_add(1, Ordering::Relaxed),
        _ => 0,
    };
    let body: RespBody = match fault {
        Fault::Cut(_) | Fault::Flip(_) | Fault::Trickle => {
            let size = body.size_hint().exact();
            // Keep the cut and the flip inside the body.
            let fault = match (fault, size) {
                (Fault::Cut(n), Some(s)) if s > 0 => Fault::Cut(n % s),
                (Fault::Flip(n), Some(s)) if s > 0 => Fault::Flip(n % s),
                (f, _) => f,
            };
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(pump(body, fault, tx));
            ChannelBody { rx, size }.boxed()
        }
        _ => body.map_err(|e| -> BoxError { Box::new(e) }).boxed(),
    };
    Response::from_parts(parts, body)
}

async fn pump(mut body: Incoming, fault: Fault, tx: mpsc::Sender<Result<Bytes, BoxError>>) {
    let mut offset: u64 = 0;
    loop {
        let frame = match body.frame().await {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                let _ = tx.send(Err(Box::new(e))).await;
                return;
            }
            None => return,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let end = offset + data.len() as u64;
        match fault {
            Fault::Cut(at) if end > at => {
                let keep = usize::try_from(at - offset).unwrap_or(0).min(data.len());
                if keep > 0 && tx.send(Ok(data.slice(..keep))).await.is_err() {
                    return;
                }
                // Let the bytes before the cut reach the client, then fail the body.
                tokio::time::sleep(Duration::from_millis(30)).await;
                let _ = tx.send(Err("chaos: cut".into())).await;
                return;
            }
            Fault::Flip(at) if (offset..end).contains(&at) => {
                let mut d = BytesMut::from(&data[..]);
                let i = usize::try_from(at - offset).unwrap_or(0);
                d[i] ^= 0xff;
                if tx.send(Ok(d.freeze())).await.is_err() {
                    return;
                }
            }
            Fault::Trickle => {
                for piece in data.chunks(8 << 10) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    if tx.send(Ok(Bytes::copy_from_slice(piece))).await.is_err() {
                        return;
                    }
                }
            }
            _ => {
                if tx.send(Ok(data)).await.is_err() {
                    return;
                }
            }
        }
        offset = end;
    }
}

struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, BoxError>>,
    size: Option<u64>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.rx.poll_recv(cx) {
            std::task::Poll::Ready(Some(Ok(data))) => {
                std::task::Poll::Ready(Some(Ok(Frame::data(data))))
            }
            std::task::Poll::Ready(Some(Err(e))) => std::task::Poll::Ready(Some(Err(e))),
            std::task::Poll::Ready(None) => std::task::Poll::Ready(None),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.size
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}
