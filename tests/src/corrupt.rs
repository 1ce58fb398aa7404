//! A forwarding front that mangles blob bodies, for faults the [`crate::FaultFront`] cannot
//! produce: wrong bytes with the right length, a slow trickle, a stall in the middle of a body,
//! or a canned answer with a non-JSON body (Docker Hub's bare-text 429).
//!
//! Every request is forwarded to the upstream (Host and headers unchanged, hop-by-hop headers
//! removed, as the fault front does). The current [`Mangle`] applies to `GET` requests on
//! `…/blobs/sha256:<hex>` paths only (and, for [`Mangle::Respond`], to any path containing its
//! `path_contains`); everything else passes untouched. Partial (`206`) answers are mangled like
//! whole ones, so a client resuming with `Range` meets the fault again. The `Content-Length` of a
//! mangled blob is the upstream's: a corrupted blob has the right size and the wrong digest.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

use crate::error::FixtureResult;
use crate::serve::{BoxError, Handler, RespBody, ServerHandle, respond};

/// What the front does to matching responses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mangle {
    /// Pass everything through.
    None,
    /// Flip every bit of the body byte at this offset (same length, wrong digest).
    FlipByte(u64),
    /// Send the body in pieces of `chunk` bytes, one every `interval`.
    Trickle {
        /// Piece size in bytes.
        chunk: usize,
        /// Pause before each piece.
        interval: Duration,
    },
    /// Send `after` bytes, pause for `pause`, then send the rest.
    StallAfter {
        /// Bytes sent before the pause.
        after: u64,
        /// Length of the pause.
        pause: Duration,
    },
    /// Answer requests whose path contains `path_contains` (any method) with this canned
    /// response instead of forwarding.
    Respond {
        /// Substring of the path that selects the request.
        path_contains: String,
        /// Status code.
        status: u16,
        /// `Content-Type`.
        content_type: String,
        /// Extra headers.
        headers: Vec<(String, String)>,
        /// The exact body.
        body: String,
    },
}

struct State {
    upstream: String,
    mangle: Mutex<Mangle>,
    requests: Mutex<Vec<(String, String)>>,
    client: Client<HttpConnector, Incoming>,
}

/// A running mangling front; dropping it stops it.
pub struct CorruptFront {
    state: Arc<State>,
    server: ServerHandle,
}

impl std::fmt::Debug for CorruptFront {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CorruptFront")
            .field("addr", &self.server.addr())
            .field("upstream", &self.state.upstream)
            .finish()
    }
}

impl CorruptFront {
    /// Starts a front on `127.0.0.1:0` forwarding to `upstream` (`http://127.0.0.1:PORT`).
    pub fn start(upstream: &str, mangle: Mangle) -> FixtureResult<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let state = Arc::new(State {
            upstream: upstream.trim_end_matches('/').to_owned(),
            mangle: Mutex::new(mangle),
            requests: Mutex::new(Vec::new()),
            client: Client::builder(TokioExecutor::new()).build(connector),
        });
        let handler_state = state.clone();
        let handler: Handler = Arc::new(move |req| {
            let state = handler_state.clone();
            Box::pin(async move { handle(&state, req).await })
        });
        let server = ServerHandle::spawn("corrupt-front", handler)?;
        Ok(Self { state, server })
    }

    /// Replaces the current mangling.
    pub fn set_mangle(&self, mangle: Mangle) {
        *lock(&self.state.mangle) = mangle;
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Every request so far as `(method, path-and-query)`.
    pub fn requests(&self) -> Vec<(String, String)> {
        lock(&self.state.requests).clone()
    }

    /// How many requests had this method and this path (query ignored).
    pub fn count(&self, method: &str, path: &str) -> usize {
        lock(&self.state.requests)
            .iter()
            .filter(|(m, p)| m == method && p.split('?').next() == Some(path))
            .count()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let pq = req
        .uri()
        .path_and_query()
        .map_or_else(|| path.clone(), |pq| pq.as_str().to_owned());
    lock(&state.requests).push((method.clone(), pq.clone()));
    let mangle = lock(&state.mangle).clone();
    if let Mangle::Respond {
        path_contains,
        status,
        content_type,
        headers,
        body,
    } = &mangle
        && path.contains(path_contains.as_str())
    {
        let mut resp = respond(*status, content_type, body.clone());
        for (k, v) in headers {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_str(v),
            ) {
                resp.headers_mut().append(n, v);
            }
        }
        return resp;
    }
    let (mut parts, body) = req.into_parts();
    let Ok(uri) = format!("{}{pq}", state.upstream).parse::<http::Uri>() else {
        return respond(502, "text/plain", "bad upstream URI\n");
    };
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
    // 206 too: a proxy resuming with `Range` meets the same fault again.
    let applies = method == "GET"
        && path.contains("/blobs/sha256:")
        && (parts.status == 200 || parts.status == 206);
    let body: RespBody = match mangle {
        Mangle::FlipByte(_) | Mangle::Trickle { .. } | Mangle::StallAfter { .. } if applies => {
            let size = body.size_hint().exact();
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(pump(body, mangle, tx));
            ChannelBody { rx, size }.boxed()
        }
        _ => body.map_err(|e| -> BoxError { Box::new(e) }).boxed(),
    };
    Response::from_parts(parts, body)
}

/// Reads the upstream body and sends it on, mangled.
async fn pump(mut body: Incoming, mangle: Mangle, tx: mpsc::Sender<Result<Bytes, BoxError>>) {
    let mut offset: u64 = 0;
    let mut pending = BytesMut::new();
    let mut stalled = false;
    loop {
        let frame = match body.frame().await {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                let _ = tx.send(Err(Box::new(e))).await;
                return;
            }
            None => break,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        match &mangle {
            Mangle::FlipByte(at) => {
                let mut data = BytesMut::from(&data[..]);
                let end = offset + data.len() as u64;
                if (offset..end).contains(at) {
                    let i = usize::try_from(at - offset).unwrap_or(0);
                    data[i] ^= 0xff;
                }
                offset = end;
                if tx.send(Ok(data.freeze())).await.is_err() {
                    return;
                }
            }
            Mangle::Trickle { chunk, interval } => {
                pending.extend_from_slice(&data);
                while pending.len() >= *chunk {
                    tokio::time::sleep(*interval).await;
                    let piece = pending.split_to(*chunk).freeze();
                    if tx.send(Ok(piece)).await.is_err() {
                        return;
                    }
                }
            }
            Mangle::StallAfter { after, pause } => {
                let mut data = data;
                let end = offset + data.len() as u64;
                if !stalled && end > *after {
                    let keep = usize::try_from(after.saturating_sub(offset)).unwrap_or(0);
                    let head = data.split_to(keep.min(data.len()));
                    offset += head.len() as u64;
                    if !head.is_empty() && tx.send(Ok(head)).await.is_err() {
                        return;
                    }
                    stalled = true;
                    tokio::time::sleep(*pause).await;
                }
                offset += data.len() as u64;
                if !data.is_empty() && tx.send(Ok(data)).await.is_err() {
                    return;
                }
            }
            Mangle::None | Mangle::Respond { .. } => {
                if tx.send(Ok(data)).await.is_err() {
                    return;
                }
            }
        }
    }
    if let Mangle::Trickle { interval, .. } = &mangle
        && !pending.is_empty()
    {
        tokio::time::sleep(*interval).await;
        let _ = tx.send(Ok(pending.freeze())).await;
    }
}

/// A response body fed by [`pump`].
struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, BoxError>>,
    size: Option<u64>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(data))) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.size
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}
