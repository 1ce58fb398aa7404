//! A counting, gated HTTP front for a real upstream registry (the `docker-registry` fixture of
//! `dockerproxy-tests`): every request is recorded, counted while in flight (from its arrival
//! until the last body byte is handed on), and held at a gate the test opens one request at a
//! time — before the request is forwarded, or after the response head, before its body — so
//! concurrency at the upstream is observable without timing assumptions.

#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Default)]
struct Counters {
    now: AtomicUsize,
    max: AtomicUsize,
    arrived: AtomicUsize,
    finished: AtomicUsize,
    paths: Mutex<Vec<(String, String)>>,
}

/// Decrements the in-flight count once, when the response ends or is dropped.
struct InFlight(Arc<Counters>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
        self.0.finished.fetch_add(1, Ordering::SeqCst);
    }
}

type Hold = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

/// Where the gate holds a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Nowhere.
    Open,
    /// Before the request is forwarded.
    Request,
    /// After the response head, before the first body byte.
    Body,
}

/// The upstream body, releasing its [`InFlight`] as the last frame is handed on.
struct Tracked {
    inner: Incoming,
    guard: Option<InFlight>,
    hold: Option<Hold>,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(hold) = this.hold.as_mut() {
            if hold.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.hold = None;
        }
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None)) || this.inner.is_end_stream() {
            this.guard.take();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A running front; dropping it stops accepting.
pub struct GatedFront {
    addr: SocketAddr,
    counters: Arc<Counters>,
    gate: Arc<Semaphore>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GatedFront {
    fn drop(&mut self) {
        self.task.abort();
        self.gate.close();
    }
}

impl GatedFront {
    /// Starts a front forwarding to `upstream` (`http://127.0.0.1:PORT`). With `gated`, every
    /// request waits at the gate before it is forwarded (see [`Self::release`]); otherwise it
    /// passes at once.
    pub async fn start(upstream: &str, gated: bool) -> Self {
        Self::start_with(upstream, if gated { Gate::Request } else { Gate::Open }).await
    }

    /// Starts a front whose gate is at `gate`.
    pub async fn start_with(upstream: &str, gate_at: Gate) -> Self {
        let gated = gate_at != Gate::Open;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counters = Arc::new(Counters::default());
        let gate = Arc::new(Semaphore::new(if gated {
            0
        } else {
            Semaphore::MAX_PERMITS
        }));
        let client: Client<HttpConnector, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let upstream = upstream.trim_end_matches('/').to_owned();
        let (c, g) = (counters.clone(), gate.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (c, g, client, upstream) =
                    (c.clone(), g.clone(), client.clone(), upstream.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let at = gate_at;
                        forward(
                            req,
                            c.clone(),
                            (at, g.clone()),
                            client.clone(),
                            upstream.clone(),
                        )
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            counters,
            gate,
            task,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Lets `n` more held requests through.
    pub fn release(&self, n: usize) {
        self.gate.add_permits(n);
    }

    /// Requests in flight now (arrived, response not finished).
    pub fn in_flight(&self) -> usize {
        self.counters.now.load(Ordering::SeqCst)
    }

    /// The most requests ever in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.counters.max.load(Ordering::SeqCst)
    }

    /// Requests that arrived.
    pub fn arrived(&self) -> usize {
        self.counters.arrived.load(Ordering::SeqCst)
    }

    /// Responses that finished (or were dropped).
    pub fn finished(&self) -> usize {
        self.counters.finished.load(Ordering::SeqCst)
    }

    /// Every (method, path) seen, in arrival order.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.counters.paths.lock().unwrap().clone()
    }

    /// Waits (up to 20 s) until `cond` holds for the counters; panics with `what` otherwise.
    pub async fn wait_until(&self, what: &str, cond: impl Fn(&Self) -> bool) {
        for _ in 0..2000 {
            if cond(self) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "timed out waiting for {what}: in flight {}, arrived {}, finished {}",
            self.in_flight(),
            self.arrived(),
            self.finished()
        );
    }
}

async fn forward(
    req: hyper::Request<Incoming>,
    c: Arc<Counters>,
    (gate_at, gate): (Gate, Arc<Semaphore>),
    client: Client<HttpConnector, Empty<Bytes>>,
    upstream: String,
) -> Result<hyper::Response<BoxBody<Bytes, BoxError>>, Infallible> {
    let now = c.now.fetch_add(1, Ordering::SeqCst) + 1;
    c.max.fetch_max(now, Ordering::SeqCst);
    c.arrived.fetch_add(1, Ordering::SeqCst);
    let guard = InFlight(c.clone());
    let path = req
        .uri()
        .path_and_query()
        .map_or("/".to_owned(), |p| p.as_str().to_owned());
    c.paths
        .lock()
        .unwrap()
        .push((req.method().to_string(), path.clone()));
    let wait = async move {
        if let Ok(p) = gate.acquire().await {
            p.forget();
        }
    };
    let mut hold: Option<Hold> = None;
    match gate_at {
        Gate::Open => {}
        Gate::Request => wait.await,
        Gate::Body => hold = Some(Box::pin(wait)),
    }
    let mut out = hyper::Request::new(Empty::<Bytes>::new());
    *out.method_mut() = req.method().clone();
    *out.uri_mut() = format!("{upstream}{path}").parse().unwrap();
    for (k, v) in req.headers() {
        if k != http::header::HOST {
            out.headers_mut().append(k, v.clone());
        }
    }
    match client.request(out).await {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            let body = Tracked {
                inner: body,
                guard: Some(guard),
                hold,
            }
            .map_err(|e| -> BoxError { Box::new(e) })
            .boxed();
            Ok(hyper::Response::from_parts(parts, body))
        }
        Err(e) => {
            drop(guard);
            let mut r = hyper::Response::new(
                http_body_util::Full::new(Bytes::from(e.to_string()))
                    .map_err(|never| match never {})
                    .boxed(),
            );
            *r.status_mut() = http::StatusCode::BAD_GATEWAY;
            Ok(r)
        }
    }
}
