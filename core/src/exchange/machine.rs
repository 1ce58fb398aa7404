//! The [`Exchange`] itself: admission, routing, classification and the dispatch to the ping,
//! `/v2/auth` and resource flows (`auth.rs`, `forward.rs`).
//!
//! ```text
//!            ┌── local endpoint ──────────────────────────────► Local ─► Done
//!  Start ────┼── unknown host / invalid / 301 / 405 ─────────────► Respond ─► Done
//!            ├── /v2/ ping ─────── SendUpstream ─► head ─────────► Respond ─► Done
//!            ├── /v2/auth ─ [ReadClientBody] ─ realm ─ token ─ body ─► Respond ─► Done
//!            └── /v2/<rest> ─ [CacheLookup] ─ SendUpstream ─► head ─┬─ 3xx: hop (≤ max) ─┐
//!                                                                  │◄────────────────────┘
//!                                                                  └─ [ReadUpstreamBody] ─► Respond ─► Done
//! ```

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};

use super::respond::{self, decorate, error_response, oci};
use super::{Action, CacheResult, LocalEndpoint, RequestHead, UpstreamError, UpstreamHead};
use crate::Timestamp;
use crate::config::{Config, Exposure, Flavour};
use crate::oci_error::ErrorCode;
use crate::request::{Classified, RegistryRequest, classify};
use crate::route::{RouteResult, Routed, route, unknown_host_body};

/// What input the exchange waits for.
#[derive(Debug)]
pub(super) enum Phase {
    /// Nothing decided yet.
    Start,
    /// Waiting for the head of the upstream request we sent.
    UpstreamHead(super::forward::Step),
    /// Waiting for the body we asked for.
    UpstreamBody(super::forward::BodyStep),
    /// Waiting for the client's body (`/v2/auth` POST).
    ClientBody,
    /// Waiting for a cache lookup.
    Cache,
    /// Waiting for a token cache lookup.
    Token,
    /// Waiting for a proxy-login password check.
    Password(super::login::Pending),
    /// Finished (after the last queued action).
    Finished,
}

/// One client request's state machine. See the module docs of [`crate::exchange`].
#[derive(Debug)]
pub struct Exchange {
    pub(super) config: Arc<Config>,
    pub(super) req: RequestHead,
    pub(super) path: String,
    pub(super) query: Option<String>,
    pub(super) routed: Option<Routed>,
    pub(super) request: Option<RegistryRequest>,
    pub(super) phase: Phase,
    pub(super) queue: VecDeque<Action>,
    pub(super) deadline: Option<Timestamp>,
    /// Redirect hops followed so far.
    pub(super) hops: u8,
    /// The URL of the last upstream request.
    pub(super) current_url: Option<url::Url>,
    /// The last upstream head (when a body read is pending).
    pub(super) last_head: Option<UpstreamHead>,
    /// The `/v2/auth` POST form, once read.
    pub(super) auth_form: Option<Bytes>,
    /// The proxy's own upstream auth (configured credentials).
    pub(super) proxy_auth: super::credentials::ProxyAuth,
    /// A cache hit waiting for its proof or revalidation.
    pub(super) hit: Option<super::cache::Hit>,
    /// The check HEAD in flight for `hit`.
    pub(super) check: Option<super::cache::Check>,
    /// The store leads a fill for this request ([`super::CacheResult::Lead`]): the whole blob
    /// is fetched even for a `Range` request, whose range is then served from the fill.
    pub(super) lead: bool,
    /// The request's Accept class, computed once (it is needed by the cache key, the lookup and
    /// the media-type check of a hit).
    pub(super) accept_class: std::sync::OnceLock<String>,
}

impl Exchange {
    /// Starts an exchange for one client request.
    pub fn new(config: Arc<Config>, head: RequestHead, now: Timestamp) -> Self {
        let _ = now;
        let (path, query) = match head.target.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (head.target.clone(), None),
        };
        Self {
            config,
            req: head,
            path,
            query,
            routed: None,
            request: None,
            phase: Phase::Start,
            queue: VecDeque::new(),
            deadline: None,
            hops: 0,
            current_url: None,
            last_head: None,
            auth_form: None,
            proxy_auth: super::credentials::ProxyAuth::default(),
            hit: None,
            check: None,
            lead: false,
            accept_class: std::sync::OnceLock::new(),
        }
    }

    /// The next action. Call until it returns [`Action::Wait`] or [`Action::Done`], and again
    /// after every `handle_*` call.
    pub fn poll_action(&mut self, now: Timestamp) -> Action {
        if let Phase::Start = self.phase {
            self.phase = Phase::Finished;
            self.start(now);
        }
        if let Some(a) = self.queue.pop_front() {
            return a;
        }
        match self.phase {
            Phase::Finished => Action::Done,
            _ => Action::Wait(
                self.deadline
                    .unwrap_or(now + self.config.limits.header_timeout),
            ),
        }
    }

    /// The head of the upstream response to the last [`Action::SendUpstream`].
    pub fn handle_upstream_head(&mut self, head: UpstreamHead, now: Timestamp) {
        match core::mem::replace(&mut self.phase, Phase::Finished) {
            Phase::UpstreamHead(step) => self.on_upstream_head(step, head, now),
            other => self.phase = other,
        }
    }

    /// The whole body asked for by [`Action::ReadUpstreamBody`].
    pub fn handle_upstream_body(&mut self, body: Bytes, now: Timestamp) {
        match core::mem::replace(&mut self.phase, Phase::Finished) {
            Phase::UpstreamBody(step) => self.on_upstream_body(step, body, now),
            other => self.phase = other,
        }
    }

    /// A transport failure of the last upstream request or body read.
    pub fn handle_upstream_error(&mut self, err: UpstreamError, now: Timestamp) {
        match core::mem::replace(&mut self.phase, Phase::Finished) {
            Phase::UpstreamHead(step) => self.on_upstream_error(Some(step), None, err, now),
            Phase::UpstreamBody(step) => self.on_upstream_error(None, Some(step), err, now),
            other => self.phase = other,
        }
    }

    /// The answer to [`Action::CacheLookup`].
    pub fn handle_cache_result(&mut self, result: CacheResult, now: Timestamp) {
        if let Phase::Cache = self.phase {
            self.phase = Phase::Finished;
            self.on_cache_result(result, now);
        }
    }

    /// The client's body asked for by [`Action::ReadClientBody`]; `None` when too large or
    /// unreadable.
    pub fn handle_client_body(&mut self, body: Option<Bytes>, now: Timestamp) {
        if let Phase::ClientBody = self.phase {
            self.phase = Phase::Finished;
            self.on_client_body(body, now);
        }
    }

    /// Time passed; if a deadline of ours expired while waiting for the upstream, this is a
    /// timeout.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        if self.deadline.is_some_and(|d| now >= d) {
            self.handle_upstream_error(UpstreamError::Timeout, now);
        }
    }

    /// The canonical name of the registry the request was routed to, once routed (for logs
    /// and metrics labels).
    pub fn registry_name(&self) -> Option<&str> {
        self.routed
            .as_ref()
            .map(|r| self.config.registries[r.registry].name.as_str())
    }

    /// The client's method.
    pub(super) fn method(&self) -> &Method {
        &self.req.method
    }

    /// True for a client HEAD.
    pub(super) fn is_head(&self) -> bool {
        self.req.method == Method::HEAD
    }

    /// Queues a response; the exchange then finishes.
    pub(super) fn respond(&mut self, resp: super::Response) {
        self.queue.push_back(Action::Respond(resp));
        self.phase = Phase::Finished;
    }

    /// Queues an OCI error decorated as a `/v2` answer.
    pub(super) fn respond_error(&mut self, status: StatusCode, code: ErrorCode, message: &str) {
        let mut resp = error_response(&oci(status, code, message), self.is_head());
        let ns = self.routed.as_ref().and_then(|r| r.namespace.clone());
        let x = self.x_cache_default();
        decorate(&mut resp, ns.as_deref(), x);
        self.respond(resp);
    }

    /// `X-Cache: BYPASS` for manifest and blob paths when nothing else applies.
    pub(super) fn x_cache_default(&self) -> Option<crate::cache_policy::XCache> {
        matches!(
            self.request,
            Some(RegistryRequest::Manifest { .. } | RegistryRequest::Blob { .. })
        )
        .then_some(crate::cache_policy::XCache::Bypass)
    }

    fn start(&mut self, now: Timestamp) {
        // 1. Target form: origin-form only (never a forward proxy).
        if self.req.method == Method::CONNECT || !self.path.starts_with('/') {
            let e = oci(
                StatusCode::BAD_REQUEST,
                ErrorCode::Unsupported,
                "absolute-form and CONNECT are not supported",
            );
            self.respond(error_response(&e, false));
            return;
        }
        // 2. Host-independent endpoints.
        if let Some(done) = self.local_endpoint(now) {
            if !done {
                self.respond_plain_404();
            }
            return;
        }
        // 3. Routing.
        let host = self.effective_host();
        let routed = match route(
            &self.config,
            host.as_deref(),
            &self.path,
            self.query.as_deref(),
        ) {
            RouteResult::Routed(r) => r,
            RouteResult::UnknownHost => {
                let body = unknown_host_body(&self.config);
                let resp = respond::bytes_response(
                    StatusCode::NOT_FOUND,
                    "application/json",
                    body,
                    self.is_head(),
                );
                self.respond(resp);
                return;
            }
            RouteResult::Error(e, ns) => {
                let mut resp = error_response(&e, self.is_head());
                decorate(&mut resp, ns.as_deref(), None);
                self.respond(resp);
                return;
            }
        };
        let path = routed.path.clone();
        self.routed = Some(routed);
        // 4. Classification (validation before any upstream contact).
        let classified = match classify(&path) {
            Ok(c) => c,
            Err(e) => {
                let mut resp = error_response(&e, self.is_head());
                let ns = self.routed.as_ref().and_then(|r| r.namespace.clone());
                decorate(&mut resp, ns.as_deref(), None);
                self.respond(resp);
                return;
            }
        };
        match classified {
            Classified::Root => self.on_root(),
            Classified::Other => {
                if (path == "/v2" || path.starts_with("/v2/"))
                    && let Some(resp) = self.library_redirect(&path)
                {
                    self.respond(resp);
                    return;
                }
                self.respond_error(
                    StatusCode::NOT_FOUND,
                    ErrorCode::Unsupported,
                    "unsupported path",
                );
            }
            Classified::Registry(r) => {
                if let Some(resp) = self.library_redirect(&path) {
                    self.respond(resp);
                    return;
                }
                if matches!(r, RegistryRequest::Tags { .. } | RegistryRequest::Catalog)
                    && !pagination_ok(self.query.as_deref())
                {
                    return self.respond_error(
                        StatusCode::BAD_REQUEST,
                        ErrorCode::Unsupported,
                        "invalid pagination: n must be a number from 0 to 10000",
                    );
                }
                self.request = Some(r.clone());
                // Proxy login (SECURITY.md §2.2): after validation and routing, before any
                // cache lookup or upstream request.
                if self.config.login.is_some() {
                    return self.on_login(&r, now);
                }
                match r {
                    RegistryRequest::Base => self.on_ping(now),
                    RegistryRequest::Auth => self.on_auth(now),
                    _ => self.on_resource(now),
                }
            }
        }
    }

    /// Handles `/health`, `/readyz`, `/stats`, `/metrics`. `Some(true)` when handled,
    /// `Some(false)` when hidden (404), `None` when not a local endpoint.
    fn local_endpoint(&mut self, now: Timestamp) -> Option<bool> {
        let (endpoint, methods): (LocalEndpoint, &[Method]) = match self.path.as_str() {
            "/health" | "/healthz" => (LocalEndpoint::Health, &[Method::GET, Method::HEAD]),
            "/readyz" => (LocalEndpoint::Ready, &[Method::GET, Method::HEAD]),
            "/stats" => (LocalEndpoint::Stats, &[Method::GET, Method::HEAD]),
            "/stats/cache" => (LocalEndpoint::StatsCache, &[Method::GET, Method::HEAD]),
            "/metrics" => (LocalEndpoint::Metrics, &[Method::GET, Method::HEAD]),
            _ => return None,
        };
        let exposure = match endpoint {
            LocalEndpoint::Stats | LocalEndpoint::StatsCache => self.config.stats,
            LocalEndpoint::Metrics => self.config.metrics,
            LocalEndpoint::Health | LocalEndpoint::Ready => Exposure::Main,
        };
        let visible = match exposure {
            Exposure::Main | Exposure::Login => true,
            // A dual-stack listener reports IPv4 peers as `::ffff:a.b.c.d`.
            Exposure::Loopback => self
                .req
                .peer
                .is_some_and(|p| p.to_canonical().is_loopback()),
            Exposure::Off => false,
        };
        if !visible {
            return Some(false);
        }
        if !methods.contains(&self.req.method) {
            let mut resp = error_response(
                &oci(
                    StatusCode::METHOD_NOT_ALLOWED,
                    ErrorCode::Unsupported,
                    "method not allowed",
                ),
                false,
            );
            resp.headers
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            self.respond(resp);
            return Some(true);
        }
        if exposure == Exposure::Login {
            self.on_admin_login(endpoint, now);
            return Some(true);
        }
        self.queue.push_back(Action::Local(endpoint));
        self.phase = Phase::Finished;
        Some(true)
    }

    fn respond_plain_404(&mut self) {
        let e = oci(StatusCode::NOT_FOUND, ErrorCode::Unsupported, "not found");
        self.respond(error_response(&e, self.is_head()));
    }

    /// `Host`, or from a trusted peer the first `X-Forwarded-Host` / `Forwarded: host=`.
    fn effective_host(&self) -> Option<String> {
        let h = &self.req.headers;
        if self.config.is_trusted_peer(self.req.peer) {
            if let Some(v) = respond::header_str(h, "x-forwarded-host") {
                let first = v.split(',').next().unwrap_or("").trim();
                if !first.is_empty() {
                    return Some(first.to_owned());
                }
            }
            if let Some(v) = respond::forwarded_param(h, "host") {
                return Some(v.to_owned());
            }
        }
        respond::header_str(h, "host").map(str::to_owned)
    }

    /// `/` on a route or mirror host: 301 to `/v2/` for GET and HEAD, else 405.
    fn on_root(&mut self) {
        if self.req.method == Method::GET || self.req.method == Method::HEAD {
            if let Some(mut resp) =
                respond::redirect_response(StatusCode::MOVED_PERMANENTLY, "/v2/")
            {
                resp.headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                self.respond(resp);
            }
        } else {
            self.respond_method_not_allowed("GET, HEAD");
        }
    }

    /// 405 `UNSUPPORTED` with `Allow`.
    pub(super) fn respond_method_not_allowed(&mut self, allow: &'static str) {
        let mut resp = error_response(
            &oci(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::Unsupported,
                "method not allowed",
            ),
            self.is_head(),
        );
        resp.headers
            .insert(header::ALLOW, HeaderValue::from_static(allow));
        let ns = self.routed.as_ref().and_then(|r| r.namespace.clone());
        decorate(&mut resp, ns.as_deref(), None);
        self.respond(resp);
    }

    /// Docker Hub's `library/` rule (COMPAT.md §5): on a Docker Hub route, a `/v2/` path that
    /// splits into exactly five elements is redirected with `library/` inserted.
    fn library_redirect(&self, path: &str) -> Option<super::Response> {
        let routed = self.routed.as_ref()?;
        if self.config.registries[routed.registry].flavour != Flavour::DockerHub {
            return None;
        }
        let parts: Vec<&str> = path.split('/').collect();
        if parts.len() != 5
            || !parts[0].is_empty()
            || parts[1] != "v2"
            || parts[2] == "auth"
            || parts[2] == "_catalog"
        {
            return None;
        }
        let prefix = routed
            .prefix
            .as_deref()
            .map(|p| format!("{p}/"))
            .unwrap_or_default();
        let query = self
            .query
            .as_deref()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        let location = format!(
            "/v2/{prefix}library/{}/{}/{}{query}",
            parts[2], parts[3], parts[4]
        );
        let status = if self.req.method == Method::GET || self.req.method == Method::HEAD {
            StatusCode::MOVED_PERMANENTLY
        } else {
            StatusCode::PERMANENT_REDIRECT
        };
        let mut resp = respond::redirect_response(status, &location)?;
        decorate(&mut resp, routed.namespace.as_deref(), None);
        Some(resp)
    }

    /// Client headers to forward upstream (hop-by-hop and forwarding headers removed).
    pub(super) fn forwarded_headers(&self) -> HeaderMap {
        let mut h = crate::headers::forward_request_headers(&self.req.headers);
        self.apply_proxy_auth(&mut h);
        if !h.contains_key(header::USER_AGENT)
            && let Ok(v) = HeaderValue::from_str(&self.config.user_agent)
        {
            h.insert(header::USER_AGENT, v);
        }
        h
    }
}

/// Largest page (`n`) a client may ask for on `tags/list` and `_catalog`.
const MAX_PAGE: u64 = 10_000;

/// `n`, when present, appears once and is a plain number no larger than [`MAX_PAGE`] (SECURITY.md §2.2: it never
/// sizes an allocation, here or upstream).
fn pagination_ok(query: Option<&str>) -> bool {
    let values: Vec<_> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(|(k, _)| k == "n")
        .map(|(_, v)| v)
        .collect();
    values.len() <= 1
        && values
            .iter()
            .all(|v| v.len() <= 6 && v.parse::<u64>().is_ok_and(|n| n <= MAX_PAGE))
}
