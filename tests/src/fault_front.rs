//! A fault-injecting HTTP front for what a real registry can't do on its own.
//!
//! A [`FaultFront`] either forwards every request to an upstream registry (Host header, repeated
//! headers and bodies passed through unchanged, so `Location` URLs point back at the front) or
//! serves blobs from a distribution storage directory (a "CDN", with Range support). Before
//! that, [`Rule`]s can answer instead: 429 with `Retry-After`, 503, a 307 redirect to another
//! base URL, a delay, or a response cut after N body bytes. A CDN front can also refuse any
//! request that carries `Authorization` (400), as S3/CloudFront do. Every request is recorded
//! with its headers (repeated headers as separate entries) and the status answered.
//!
//! Typical set-ups: [`FaultFront::cdn`] (a), [`FaultFront::redirecting_blobs`] (b),
//! [`FaultFront::forward`] plus [`FaultFront::add_rule`] (c).

use std::future::Future as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::error::FixtureResult;
use crate::serve::{BoxError, Handler, RespBody, ServerHandle, respond};
use crate::storage_blobs::serve_blob;

/// Where the front gets what it serves when no rule answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Forward to this plain-HTTP base URL (`http://127.0.0.1:PORT`).
    Forward(String),
    /// Serve blobs from this distribution storage root directory.
    Storage(PathBuf),
}

/// Which requests a [`Rule`] applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// Every request.
    Any,
    /// `…/blobs/sha256:<hex>` (not uploads).
    Blob,
    /// `…/manifests/<reference>`.
    Manifest,
    /// Path (without query) equal to this.
    Exact(String),
    /// Path starting with this.
    Prefix(String),
    /// Path containing this.
    Contains(String),
}

impl PathMatch {
    /// Whether `path` (without query) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Blob => path.contains("/blobs/sha256:"),
            Self::Manifest => path.contains("/manifests/"),
            Self::Exact(p) => path == p,
            Self::Prefix(p) => path.starts_with(p.as_str()),
            Self::Contains(p) => path.contains(p.as_str()),
        }
    }
}

/// What a matching [`Rule`] does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Answer this status with these headers and an empty JSON error body (e.g. 503).
    Status {
        /// Status code.
        status: u16,
        /// Extra headers (repeated names allowed).
        headers: Vec<(String, String)>,
    },
    /// Redirect with `status` (307, 302, …) to `base` + the request's path and query.
    Redirect {
        /// Absolute base URL without trailing slash, e.g. the CDN's.
        base: String,
        /// Redirect status.
        status: u16,
    },
    /// Wait, then serve normally.
    Delay(Duration),
    /// Serve normally but abort the connection after this many body bytes.
    CutAfter(u64),
}

impl Action {
    /// 429 with `Retry-After: <retry_after>`.
    pub fn too_many_requests(retry_after: &str) -> Self {
        Self::Status {
            status: 429,
            headers: vec![("Retry-After".into(), retry_after.into())],
        }
    }

    /// A bare status (503, 500, 404, …).
    pub fn status(status: u16) -> Self {
        Self::Status {
            status,
            headers: Vec::new(),
        }
    }

    /// 307 to `base` + path.
    pub fn redirect_307(base: &str) -> Self {
        Self::Redirect {
            base: base.trim_end_matches('/').to_owned(),
            status: 307,
        }
    }
}

/// A fault rule: the first rule whose method and path match (and that has uses left) acts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Method to match (`GET`, `HEAD`, …); `None` = any.
    pub method: Option<String>,
    /// Path to match.
    pub path: PathMatch,
    /// What to do.
    pub action: Action,
    /// How many more times the rule applies; `None` = always.
    pub times: Option<usize>,
}

impl Rule {
    /// A rule for any method, applying always.
    pub fn new(path: PathMatch, action: Action) -> Self {
        Self {
            method: None,
            path,
            action,
            times: None,
        }
    }

    /// Restricts the rule to one method.
    pub fn method(mut self, method: &str) -> Self {
        self.method = Some(method.to_ascii_uppercase());
        self
    }

    /// Applies the rule only `n` times.
    pub fn times(mut self, n: usize) -> Self {
        self.times = Some(n);
        self
    }
}

/// One request the front received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Every header line in arrival order per name; repeated headers are separate entries.
    pub headers: Vec<(String, String)>,
    /// Status answered (the upstream's when forwarded).
    pub status: u16,
}

impl RecordedRequest {
    /// Every value of header `name` (case-insensitive).
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_values(name).into_iter().next()
    }
}

struct State {
    source: Source,
    reject_authorization: bool,
    rules: Mutex<Vec<Rule>>,
    requests: Mutex<Vec<RecordedRequest>>,
    client: Client<HttpConnector, Incoming>,
}

/// A running fault front; dropping it stops it.
pub struct FaultFront {
    state: Arc<State>,
    server: ServerHandle,
}

impl std::fmt::Debug for FaultFront {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultFront")
            .field("addr", &self.server.addr())
            .field("source", &self.state.source)
            .finish()
    }
}

impl FaultFront {
    /// Starts a front on `127.0.0.1:0`.
    pub fn start(source: Source, reject_authorization: bool) -> FixtureResult<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let state = Arc::new(State {
            source,
            reject_authorization,
            rules: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
            client,
        });
        let handler_state = state.clone();
        let handler: Handler = Arc::new(move |req| {
            let state = handler_state.clone();
            Box::pin(async move { handle(&state, req).await })
        });
        let server = ServerHandle::spawn("fault-front", handler)?;
        Ok(Self { state, server })
    }

    /// A transparent forwarding front for `upstream` (`http://127.0.0.1:PORT`); add rules to it.
    pub fn forward(upstream: &str) -> FixtureResult<Self> {
        Self::start(
            Source::Forward(upstream.trim_end_matches('/').to_owned()),
            false,
        )
    }

    /// A "CDN" serving blobs from a storage root; any request with `Authorization` gets 400.
    pub fn cdn(storage: &Path) -> FixtureResult<Self> {
        Self::start(Source::Storage(storage.to_path_buf()), true)
    }

    /// A forwarding front that answers every blob GET with a 307 to `cdn_base` + path.
    pub fn redirecting_blobs(upstream: &str, cdn_base: &str) -> FixtureResult<Self> {
        let front = Self::forward(upstream)?;
        front.add_rule(Rule::new(PathMatch::Blob, Action::redirect_307(cdn_base)).method("GET"));
        Ok(front)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `127.0.0.1:PORT`.
    pub fn host_port(&self) -> String {
        self.addr().to_string()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Appends a rule (rules are tried in insertion order).
    pub fn add_rule(&self, rule: Rule) {
        lock(&self.state.rules).push(rule);
    }

    /// Removes every rule.
    pub fn clear_rules(&self) {
        lock(&self.state.rules).clear();
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state.requests).clone()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        lock(&self.state.requests).clear();
    }

    /// How many requests had this method and exactly this path (and query, if given).
    pub fn count(&self, method: &str, path: &str) -> usize {
        lock(&self.state.requests)
            .iter()
            .filter(|r| {
                r.method == method && (r.path == path || r.path.split('?').next() == Some(path))
            })
            .count()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Hop-by-hop headers a proxy must not pass on.
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
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |pq| pq.as_str().to_owned());
    let path = req.uri().path().to_owned();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();

    let action =
        if state.reject_authorization && req.headers().contains_key(http::header::AUTHORIZATION) {
            Some(Action::Status {
                status: 400,
                headers: Vec::new(),
            })
        } else {
            take_rule(state, &method, &path)
        };
    let mut cut = None;
    let resp = match action {
        Some(Action::Status { status, headers }) => {
            let body = if status == 400 && state.reject_authorization {
                "<Error><Code>InvalidArgument</Code><Message>Only one auth mechanism allowed</Message></Error>"
            } else {
                r#"{"errors":[{"code":"UNAVAILABLE","message":"injected fault"}]}"#
            };
            let mut resp = respond(status, "application/json", body);
            for (name, value) in headers {
                if let (Ok(n), Ok(v)) = (
                    http::HeaderName::from_bytes(name.as_bytes()),
                    http::HeaderValue::from_str(&value),
                ) {
                    resp.headers_mut().append(n, v);
                }
            }
            resp
        }
        Some(Action::Redirect { base, status }) => {
            let mut resp = respond(status, "text/plain", "");
            if let Ok(v) = http::HeaderValue::from_str(&format!("{base}{path_and_query}")) {
                resp.headers_mut().insert(http::header::LOCATION, v);
            }
            resp
        }
        Some(Action::Delay(delay)) => {
            tokio::time::sleep(delay).await;
            serve(state, req).await
        }
        Some(Action::CutAfter(n)) => {
            cut = Some(n);
            serve(state, req).await
        }
        None => serve(state, req).await,
    };
    lock(&state.requests).push(RecordedRequest {
        method,
        path: path_and_query,
        headers,
        status: resp.status().as_u16(),
    });
    match cut {
        Some(limit) => resp.map(|body| {
            CutBody {
                inner: body,
                remaining: limit,
                done: false,
                grace: None,
            }
            .boxed()
        }),
        None => resp,
    }
}

fn take_rule(state: &State, method: &str, path: &str) -> Option<Action> {
    let mut rules = lock(&state.rules);
    let rule = rules.iter_mut().find(|r| {
        r.method.as_deref().is_none_or(|m| m == method)
            && r.path.matches(path)
            && r.times != Some(0)
    })?;
    if let Some(times) = rule.times.as_mut() {
        *times -= 1;
    }
    Some(rule.action.clone())
}

async fn serve(state: &State, req: Request<Incoming>) -> Response<RespBody> {
    match &state.source {
        Source::Storage(root) => {
            let head = req.method() == http::Method::HEAD;
            let range = req
                .headers()
                .get(http::header::RANGE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            serve_blob(root, req.uri().path(), head, range.as_deref()).await
        }
        Source::Forward(base) => forward(state, base, req).await,
    }
}

async fn forward(state: &State, base: &str, req: Request<Incoming>) -> Response<RespBody> {
    let (mut parts, body) = req.into_parts();
    let pq = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let Ok(uri) = format!("{base}{pq}").parse::<http::Uri>() else {
        return respond(502, "text/plain", "bad upstream URI\n");
    };
    parts.uri = uri;
    for name in HOP_BY_HOP {
        parts.headers.remove(*name);
    }
    match state.client.request(Request::from_parts(parts, body)).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            for name in HOP_BY_HOP {
                parts.headers.remove(*name);
            }
            Response::from_parts(parts, body.map_err(|e| -> BoxError { Box::new(e) }).boxed())
        }
        Err(e) => respond(502, "text/plain", format!("upstream error: {e}\n")),
    }
}

/// Passes `remaining` body bytes through, then fails, which makes hyper abort the connection.
/// The failure waits a moment first: hyper drops unflushed bytes when a body fails, and the
/// client must receive exactly the bytes before the cut.
struct CutBody {
    inner: RespBody,
    remaining: u64,
    done: bool,
    grace: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Body for CutBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.remaining == 0 {
            let grace = self
                .grace
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(100))));
            if grace.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.done = true;
            return Poll::Ready(Some(Err("connection cut by the fault front".into())));
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(mut data) => {
                    let len = data.len() as u64;
                    if len > self.remaining {
                        let keep = usize::try_from(self.remaining).unwrap_or(data.len());
                        data.truncate(keep);
                    }
                    self.remaining -= data.len() as u64;
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            other => other,
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
