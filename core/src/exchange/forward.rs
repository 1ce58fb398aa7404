//! Forwarding `/v2/` pings and `/v2/<rest>` requests (COMPAT.md §6, §7, §8), and mapping the
//! upstream's answer to the client's.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use url::Url;

use super::machine::{Exchange, Phase};
use super::respond::{self, decorate, error_response, mark_private, oci};
use super::{
    Action, BodyPlan, ManifestEntry, Purpose, Response, StoreTarget, UpstreamBody, UpstreamError,
    UpstreamHead, UpstreamRequest,
};
use crate::Timestamp;
use crate::cache_policy::{CacheKey, XCache};
use crate::challenge;
use crate::oci_error::ErrorCode;
use crate::redirect::{self, RedirectDecision};
use crate::reference::{Digest, Reference};
use crate::request::RegistryRequest;

/// Which upstream request a head answers.
#[derive(Debug)]
pub(crate) enum Step {
    /// The client's `/v2/` ping.
    Ping,
    /// The client's resource request, or a redirect hop of it.
    Resource,
    /// A HEAD to a redirect target, for a client HEAD (no download).
    ProbeHead,
    /// A `Range: bytes=0-0` GET to a redirect target whose HEAD was refused.
    ProbeRange,
    /// `/v2/auth` step 1: realm discovery.
    Realm,
    /// `/v2/auth` step 2: the token request.
    Token,
    /// The proxy's own token request (configured credentials).
    ProxyToken,
    /// A HEAD proving access to, or revalidating, a cache hit.
    Check,
}

/// Which body we asked for.
#[derive(Debug)]
pub(crate) enum BodyStep {
    /// An upstream error body, to relay or normalise.
    Error,
    /// A manifest, to verify before sending.
    Manifest,
    /// A token response, relayed verbatim.
    Token,
    /// The proxy's own token response.
    ProxyToken,
}

impl Exchange {
    /// The client's ping: `GET {upstream}/v2/` with the client's headers, query dropped.
    pub(super) fn on_ping(&mut self, now: Timestamp) {
        if !(self.req.method == Method::GET || self.req.method == Method::HEAD) {
            self.respond_method_not_allowed("GET, HEAD");
            return;
        }
        let Some(url) = self.upstream_url("/v2/", None) else {
            return self.respond_error(
                StatusCode::BAD_GATEWAY,
                ErrorCode::Unknown,
                "bad upstream URL",
            );
        };
        let headers = self.forwarded_headers();
        let method = self.req.method.clone();
        self.send(
            method,
            url,
            headers,
            UpstreamBody::Empty,
            Purpose::Ping,
            Step::Ping,
            now,
        );
    }

    /// A manifest, blob, tags, referrers, catalog or upload request.
    pub(super) fn on_resource(&mut self, now: Timestamp) {
        let is_read = crate::request::is_read(self.method());
        let allow_push = self.registry().allow_push;
        if !is_read && !allow_push {
            self.respond_method_not_allowed("GET, HEAD");
            return;
        }
        self.decide_proxy_auth();
        if is_read && let Some(query) = self.cache_query() {
            self.queue.push_back(Action::CacheLookup(query));
            self.phase = Phase::Cache;
            return;
        }
        self.send_resource(now);
    }

    pub(super) fn send_resource(&mut self, now: Timestamp) {
        let path = self
            .routed
            .as_ref()
            .map(|r| r.path.clone())
            .unwrap_or_default();
        let query = self.query.clone();
        let Some(url) = self.upstream_url(&path, query.as_deref()) else {
            return self.respond_error(
                StatusCode::BAD_GATEWAY,
                ErrorCode::Unknown,
                "bad upstream URL",
            );
        };
        let mut headers = self.forwarded_headers();
        if matches!(
            self.request,
            Some(RegistryRequest::Manifest { .. } | RegistryRequest::Blob { .. })
        ) {
            headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
            // Malformed or multiple ranges are ignored (SECURITY.md §2.4): ask for the whole,
            // verifiable object rather than relay an unverifiable multipart answer.
            let range = headers.get(header::RANGE).map(HeaderValue::as_bytes);
            // A range served from the fill this request leads: ask for the whole blob.
            if range.is_some()
                && (self.range_from_fill()
                    || crate::range::decide(range, u64::MAX) == crate::range::RangeDecision::Full)
            {
                headers.remove(header::RANGE);
                headers.remove(header::IF_RANGE);
            }
        }
        let is_read = crate::request::is_read(self.method());
        let body = if is_read {
            UpstreamBody::Empty
        } else {
            UpstreamBody::Client
        };
        let method = self.req.method.clone();
        self.send(
            method,
            url,
            headers,
            body,
            Purpose::Resource,
            Step::Resource,
            now,
        );
    }

    /// Queues an upstream request and waits for its head.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn send(
        &mut self,
        method: Method,
        url: Url,
        headers: HeaderMap,
        body: UpstreamBody,
        purpose: Purpose,
        step: Step,
        now: Timestamp,
    ) {
        self.current_url = Some(url.clone());
        let registry = self.registry().name.clone();
        self.queue.push_back(Action::SendUpstream(UpstreamRequest {
            method,
            url,
            headers,
            body,
            purpose,
            registry,
            follow_redirects: false,
        }));
        self.deadline = Some(now + self.config.limits.header_timeout);
        self.phase = Phase::UpstreamHead(step);
    }

    /// `origin + path [+ ? + query]`.
    pub(super) fn upstream_url(&self, path: &str, query: Option<&str>) -> Option<Url> {
        let origin = self.registry().origin.to_url_string();
        let q = query.map(|q| format!("?{q}")).unwrap_or_default();
        Url::parse(&format!("{origin}{path}{q}")).ok()
    }

    pub(super) fn registry(&self) -> &crate::config::Registry {
        let id = self.routed.as_ref().map_or(0, |r| r.registry);
        &self.config.registries[id]
    }

    pub(super) fn namespace(&self) -> Option<String> {
        self.routed.as_ref().and_then(|r| r.namespace.clone())
    }

    pub(super) fn on_upstream_head(&mut self, step: Step, head: UpstreamHead, now: Timestamp) {
        self.deadline = None;
        match step {
            Step::Realm => return self.on_realm_head(head, now),
            Step::Token => {
                if redirect::is_redirect(head.status.as_u16()) {
                    // Token requests never follow redirects, and an upstream-chosen Location
                    // is never handed to the client either (SECURITY.md §2.6).
                    return self.respond_error(
                        StatusCode::BAD_GATEWAY,
                        ErrorCode::Unknown,
                        "token server redirected",
                    );
                }
                self.last_head = Some(head);
                self.ask_body(BodyStep::Token, self.config.limits.max_token_bytes);
                return;
            }
            Step::ProbeHead | Step::ProbeRange => return self.on_probe_head(step, head, now),
            Step::ProxyToken => return self.on_proxy_token_head(head),
            Step::Check => return self.on_check_head(head, now),
            Step::Ping | Step::Resource => {}
        }
        let status = head.status.as_u16();
        let is_read = crate::request::is_read(self.method());
        if matches!(step, Step::Resource)
            && self.hops == 0
            && is_read
            && (200..400).contains(&status)
        {
            // The registry itself answered this identity: an authorisation proof (§8.6).
            self.record_access();
        }
        if redirect::is_redirect(status)
            && is_read
            && matches!(step, Step::Resource)
            && let Some(loc) = respond::header_str(&head.headers, "location").map(str::to_owned)
        {
            return self.on_redirect(&head, &loc, now);
        }
        if status == 401 {
            if matches!(step, Step::Resource) && self.on_proxy_auth_challenge(&head, now) {
                return;
            }
            self.last_head = Some(head);
            self.ask_body(BodyStep::Error, self.config.limits.max_error_body_bytes);
            return;
        }
        if head.status.is_server_error() {
            return self.respond_upstream_error(head);
        }
        if head.status.is_client_error() {
            if self.is_head() {
                return self.relay(head, BodyPlan::Empty, self.x_cache_default());
            }
            self.last_head = Some(head);
            self.ask_body(BodyStep::Error, self.config.limits.max_error_body_bytes);
            return;
        }
        self.on_success_head(head);
    }

    /// A 2xx (or an unfollowed 3xx) from the registry or the last redirect hop.
    fn on_success_head(&mut self, head: UpstreamHead) {
        let ok = head.status == StatusCode::OK;
        let content = matches!(
            self.request,
            Some(RegistryRequest::Manifest { .. } | RegistryRequest::Blob { .. })
        );
        if content && self.req.method == Method::GET && !ok {
            // Only a 200 can be verified. A 206 answers the client's own Range (relayed, never
            // stored) and a 304 its own condition; any other success status would hand out
            // unverified bytes (found by the `exchange` fuzz target with a 203).
            let client_range = self.req.headers.contains_key(header::RANGE);
            // When the whole blob was asked for (a range served from the fill), a 206 answers
            // nothing we sent.
            let asked_range = client_range && !self.range_from_fill();
            let allowed = (head.status == StatusCode::PARTIAL_CONTENT && asked_range)
                || head.status == StatusCode::NOT_MODIFIED;
            if !allowed {
                return self.respond_error(
                    StatusCode::BAD_GATEWAY,
                    ErrorCode::Unknown,
                    "unexpected upstream status",
                );
            }
        }
        match self.request.clone() {
            Some(RegistryRequest::Manifest { .. }) if ok && self.req.method == Method::GET => {
                self.last_head = Some(head);
                self.ask_body(BodyStep::Manifest, self.config.limits.max_manifest_bytes);
            }
            Some(RegistryRequest::Blob { name, digest }) if self.req.method == Method::GET => {
                let full = ok;
                let registry = self.registry().name.clone();
                let store = (full && self.config.cache.enabled).then(|| StoreTarget {
                    key: CacheKey::Blob {
                        registry,
                        digest: digest.clone(),
                    },
                    repository: name,
                    range: None,
                });
                if let Some(target) = store.clone().filter(|_| self.range_from_fill()) {
                    return self.respond_range_from_fill(head, digest, target);
                }
                let x = if store.is_some() {
                    XCache::Miss
                } else {
                    XCache::Bypass
                };
                let verify = full.then_some(digest);
                self.relay(head, BodyPlan::Upstream { verify, store }, Some(x));
            }
            _ => {
                let body = if self.is_head() {
                    BodyPlan::Empty
                } else {
                    BodyPlan::Upstream {
                        verify: None,
                        store: None,
                    }
                };
                let x = self.x_cache_default();
                self.relay(head, body, x);
            }
        }
    }

    /// Relays an upstream head with the given body plan.
    pub(super) fn relay(&mut self, head: UpstreamHead, body: BodyPlan, x: Option<XCache>) {
        let followed = self.hops > 0;
        let mut headers = if followed {
            crate::headers::redirect_target_headers(&head.headers)
        } else {
            crate::headers::relay_response_headers(&head.headers)
        };
        if let Some(RegistryRequest::Blob { digest, .. }) = &self.request {
            super::cache::insert_digest(&mut headers, digest);
            headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        }
        if let Some(loc) = respond::header_str(&headers, "location").map(str::to_owned) {
            self.rewrite_location_header(&mut headers, &loc);
        }
        let mut resp = Response {
            status: head.status,
            headers,
            body,
            x_cache: None,
        };
        let ns = self.namespace();
        decorate(&mut resp, ns.as_deref(), x);
        self.respond(resp);
    }

    fn rewrite_location_header(&self, headers: &mut HeaderMap, loc: &str) {
        let (Some(routed), Some(upstream)) = (self.routed.as_ref(), self.current_url.as_ref())
        else {
            return;
        };
        let base = respond::public_base(&self.config, &self.req, routed);
        let new = respond::rewrite_location(loc, upstream, &base, routed.prefix.as_deref());
        if let Ok(v) = HeaderValue::from_str(&new) {
            headers.insert(header::LOCATION, v);
        }
    }

    /// Asks the wrapper for the whole current upstream body.
    pub(super) fn ask_body(&mut self, step: BodyStep, limit: usize) {
        self.queue.push_back(Action::ReadUpstreamBody { limit });
        self.phase = Phase::UpstreamBody(step);
    }

    fn on_redirect(&mut self, head: &UpstreamHead, location: &str, now: Timestamp) {
        let Some(current) = self.current_url.clone() else {
            return self.respond_error(StatusCode::BAD_GATEWAY, ErrorCode::Unknown, "bad redirect");
        };
        let decision =
            redirect::decide(&self.config, self.registry(), &current, location, self.hops);
        match decision {
            RedirectDecision::Refuse(why) => {
                self.respond_error(StatusCode::BAD_GATEWAY, ErrorCode::Unknown, why)
            }
            RedirectDecision::Pass { location } => {
                let mut headers = crate::headers::relay_response_headers(&head.headers);
                if let Ok(v) = HeaderValue::from_str(&location) {
                    headers.insert(header::LOCATION, v);
                }
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
                let mut resp = Response {
                    status: head.status,
                    headers,
                    body: BodyPlan::Empty,
                    x_cache: None,
                };
                let ns = self.namespace();
                let x = self.x_cache_default();
                decorate(&mut resp, ns.as_deref(), x);
                self.respond(resp);
            }
            RedirectDecision::Follow {
                target,
                same_origin,
            } => {
                self.hops = self.hops.saturating_add(1);
                let mut headers = if same_origin {
                    self.forwarded_headers()
                } else {
                    crate::headers::redirect_hop_headers(&self.req.headers)
                };
                if self.range_from_fill() {
                    headers.remove(header::RANGE);
                    headers.remove(header::IF_RANGE);
                }
                if !headers.contains_key(header::USER_AGENT)
                    && let Ok(v) = HeaderValue::from_str(&self.config.user_agent)
                {
                    headers.insert(header::USER_AGENT, v);
                }
                headers.insert(
                    header::ACCEPT_ENCODING,
                    HeaderValue::from_static("identity"),
                );
                let (method, step) = if self.is_head() {
                    (Method::HEAD, Step::ProbeHead)
                } else {
                    (Method::GET, Step::Resource)
                };
                self.send(
                    method,
                    target,
                    headers,
                    UpstreamBody::Empty,
                    Purpose::RedirectHop,
                    step,
                    now,
                );
            }
        }
    }

    /// HEAD without a download (COMPAT.md §6): learn the size from a HEAD, or from a
    /// `Range: bytes=0-0` GET when the signed URL refuses HEAD.
    fn on_probe_head(&mut self, step: Step, head: UpstreamHead, now: Timestamp) {
        let status = head.status.as_u16();
        if redirect::is_redirect(status)
            && let Some(loc) = respond::header_str(&head.headers, "location").map(str::to_owned)
        {
            return self.on_redirect(&head, &loc, now);
        }
        if matches!(step, Step::ProbeHead) && matches!(status, 400 | 403 | 405) {
            let Some(url) = self.current_url.clone() else {
                return self.respond_error(
                    StatusCode::BAD_GATEWAY,
                    ErrorCode::Unknown,
                    "bad redirect",
                );
            };
            let mut headers = crate::headers::redirect_hop_headers(&self.req.headers);
            headers.insert(header::RANGE, HeaderValue::from_static("bytes=0-0"));
            headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
            return self.send(
                Method::GET,
                url,
                headers,
                UpstreamBody::Empty,
                Purpose::SizeProbe,
                Step::ProbeRange,
                now,
            );
        }
        let size = match status {
            200 => respond::header_str(&head.headers, "content-length")
                .and_then(|v| v.parse::<u64>().ok()),
            206 => respond::header_str(&head.headers, "content-range")
                .and_then(|v| v.rsplit_once('/'))
                .and_then(|(_, total)| total.trim().parse::<u64>().ok()),
            _ => None,
        };
        let Some(size) = size else {
            if head.status.is_server_error() || status < 400 {
                return self.respond_error(
                    StatusCode::BAD_GATEWAY,
                    ErrorCode::Unavailable,
                    "upstream unavailable",
                );
            }
            return self.relay(head, BodyPlan::Empty, self.x_cache_default());
        };
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
        let ct = head
            .headers
            .get(header::CONTENT_TYPE)
            .cloned()
            .unwrap_or(HeaderValue::from_static("application/octet-stream"));
        headers.insert(header::CONTENT_TYPE, ct);
        match &self.request {
            Some(RegistryRequest::Blob { digest, .. }) => {
                super::cache::insert_digest(&mut headers, digest);
                headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            }
            Some(RegistryRequest::Manifest {
                reference: Reference::Digest(d),
                ..
            }) => super::cache::insert_digest(&mut headers, d),
            _ => {}
        }
        let mut resp = Response {
            status: StatusCode::OK,
            headers,
            body: BodyPlan::Empty,
            x_cache: None,
        };
        let ns = self.namespace();
        let x = self.x_cache_default();
        decorate(&mut resp, ns.as_deref(), x);
        self.respond(resp);
    }

    pub(super) fn on_upstream_body(&mut self, step: BodyStep, body: Bytes, now: Timestamp) {
        let Some(head) = self.last_head.take() else {
            return self.respond_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Unknown,
                "internal error",
            );
        };
        match step {
            BodyStep::Token => self.on_token_body(head, body, now),
            BodyStep::Manifest => self.on_manifest_body(head, body),
            BodyStep::Error => self.on_error_body(head, Some(body)),
            BodyStep::ProxyToken => self.on_proxy_token_body(&body, now),
        }
    }

    /// Verifies a manifest before a byte is sent (SECURITY.md §2.4).
    fn on_manifest_body(&mut self, head: UpstreamHead, body: Bytes) {
        let Some(RegistryRequest::Manifest { name, reference }) = self.request.clone() else {
            return self.respond_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Unknown,
                "internal error",
            );
        };
        let digest = match &reference {
            Reference::Digest(d) => {
                if crate::verifier::verify_all(d, &body).is_err() {
                    return self.respond_error(
                        StatusCode::BAD_GATEWAY,
                        ErrorCode::DigestInvalid,
                        "manifest digest mismatch",
                    );
                }
                d.clone()
            }
            Reference::Tag(_) => {
                let computed = crate::verifier::sha256_digest(&body);
                let claimed =
                    respond::header_str(&head.headers, "docker-content-digest").map(str::trim);
                if let Some(c) = claimed {
                    let matches = match Digest::parse(c) {
                        Ok(cd) if cd.algorithm() == computed.algorithm() => cd == computed,
                        Ok(cd) => crate::verifier::verify_all(&cd, &body).is_ok(),
                        Err(_) => false,
                    };
                    if !matches {
                        return self.respond_error(
                            StatusCode::BAD_GATEWAY,
                            ErrorCode::DigestInvalid,
                            "manifest digest mismatch",
                        );
                    }
                }
                computed
            }
        };
        let media_type = respond::header_str(&head.headers, "content-type")
            .unwrap_or("application/octet-stream")
            .to_owned();
        if !media_type_consistent(&media_type, &body) {
            return self.respond_error(
                StatusCode::BAD_GATEWAY,
                ErrorCode::ManifestInvalid,
                "manifest media type mismatch",
            );
        }
        let x = if self.config.cache.enabled {
            let registry = self.registry().name.clone();
            let tag = match &reference {
                Reference::Tag(t) => Some(CacheKey::Tag {
                    registry: registry.clone(),
                    name: name.clone(),
                    tag: t.clone(),
                    accept: self.accept_class().to_owned(),
                }),
                Reference::Digest(_) => None,
            };
            self.queue.push_back(Action::CacheStore(ManifestEntry {
                repository: name,
                key: CacheKey::Manifest {
                    registry,
                    digest: digest.clone(),
                },
                tag,
                digest: digest.clone(),
                media_type: media_type.clone(),
                body: body.clone(),
            }));
            XCache::Miss
        } else {
            XCache::Bypass
        };
        self.respond_manifest(&digest, &media_type, body, x);
    }

    /// Relays a 4xx (JSON bodies kept, others replaced by an OCI error) or a rewritten 401.
    /// Relays an upstream failure seen on a HEAD or without its body: 5xx → 502 (keeping
    /// `Retry-After`), 4xx → the status with a normalised OCI body (401 rewritten).
    pub(super) fn respond_upstream_error(&mut self, head: UpstreamHead) {
        if head.status.is_server_error() {
            let mut resp = error_response(
                &oci(
                    StatusCode::BAD_GATEWAY,
                    ErrorCode::Unavailable,
                    "upstream unavailable",
                ),
                self.is_head(),
            );
            if let Some(ra) = head.headers.get(header::RETRY_AFTER) {
                resp.headers.insert(header::RETRY_AFTER, ra.clone());
            }
            let ns = self.namespace();
            let x = self.x_cache_default();
            decorate(&mut resp, ns.as_deref(), x);
            return self.respond(resp);
        }
        self.on_error_body(head, None);
    }

    fn on_error_body(&mut self, head: UpstreamHead, body: Option<Bytes>) {
        let status = head.status;
        let mut headers = crate::headers::relay_response_headers(&head.headers);
        let is_json = body
            .as_ref()
            .is_some_and(|b| serde_json::from_slice::<serde_json::Value>(b).is_ok());
        let body = match body {
            Some(b) if is_json => b,
            _ => {
                let (code, msg) = match status.as_u16() {
                    401 => (ErrorCode::Unauthorized, "authentication required"),
                    429 => (ErrorCode::TooManyRequests, "too many requests"),
                    404 => match &self.request {
                        Some(RegistryRequest::Manifest { .. }) => {
                            (ErrorCode::ManifestUnknown, "manifest unknown")
                        }
                        Some(RegistryRequest::Blob { .. }) => {
                            (ErrorCode::BlobUnknown, "blob unknown")
                        }
                        _ => (
                            ErrorCode::NameUnknown,
                            "repository name not known to registry",
                        ),
                    },
                    _ => (
                        ErrorCode::Denied,
                        "requested access to the resource is denied",
                    ),
                };
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                oci(status, code, msg).body()
            }
        };
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        headers.remove(header::TRANSFER_ENCODING);
        let mut resp = Response {
            status,
            headers,
            body: if self.is_head() {
                BodyPlan::Empty
            } else {
                BodyPlan::Bytes(body)
            },
            x_cache: None,
        };
        if status == StatusCode::UNAUTHORIZED {
            self.rewrite_challenges(&head.headers, &mut resp.headers);
            mark_private(&mut resp);
        }
        let ns = self.namespace();
        let x = self.x_cache_default();
        decorate(&mut resp, ns.as_deref(), x);
        self.respond(resp);
    }

    /// Replaces every Bearer challenge's realm with ours (COMPAT.md §4.1).
    fn rewrite_challenges(&self, upstream: &HeaderMap, out: &mut HeaderMap) {
        let Some(routed) = self.routed.as_ref() else {
            return;
        };
        let values: Vec<&[u8]> = upstream
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        if values.is_empty() {
            return;
        }
        let Ok(challenges) = challenge::parse(&values) else {
            // Unusable as a whole: never half-parsed into a realm; relay a realm-less 401.
            out.remove(header::WWW_AUTHENTICATE);
            return;
        };
        let realm = respond::public_realm(&self.config, &self.req, routed);
        out.remove(header::WWW_AUTHENTICATE);
        for c in &challenges {
            let rewritten = challenge::rewrite(c, &realm);
            if let Ok(v) = HeaderValue::from_str(&rewritten.to_header_value()) {
                out.append(header::WWW_AUTHENTICATE, v);
            }
        }
    }

    pub(super) fn on_upstream_error(
        &mut self,
        head_step: Option<Step>,
        body_step: Option<BodyStep>,
        err: UpstreamError,
        now: Timestamp,
    ) {
        self.deadline = None;
        if matches!(head_step, Some(Step::ProxyToken))
            || matches!(body_step, Some(BodyStep::ProxyToken))
        {
            return self.proxy_token_failed();
        }
        if matches!(head_step, Some(Step::Check)) {
            return self.on_check_error(err, now);
        }
        if let Some(BodyStep::Error) = body_step {
            // The error body was too large or broken: answer with a normalised error.
            if let Some(head) = self.last_head.take() {
                return self.on_error_body(head, None);
            }
        }
        let token = matches!(head_step, Some(Step::Token | Step::Realm))
            || matches!(body_step, Some(BodyStep::Token));
        let (status, code, msg) = match (err, body_step) {
            (UpstreamError::TooLarge, Some(BodyStep::Manifest)) => (
                StatusCode::BAD_GATEWAY,
                ErrorCode::ManifestInvalid,
                "manifest too large",
            ),
            (UpstreamError::Timeout, _) => (
                StatusCode::GATEWAY_TIMEOUT,
                ErrorCode::Unavailable,
                "upstream timeout",
            ),
            (UpstreamError::Denied, _) => (
                StatusCode::BAD_GATEWAY,
                ErrorCode::Unknown,
                "upstream address refused",
            ),
            _ if token => (
                StatusCode::BAD_GATEWAY,
                ErrorCode::Unavailable,
                "token server unavailable",
            ),
            _ => (
                StatusCode::BAD_GATEWAY,
                ErrorCode::Unavailable,
                "upstream unavailable",
            ),
        };
        self.respond_error(status, code, msg);
    }
}

/// A manifest's own `mediaType`, when present, must agree with its `Content-Type`
/// (CVE-2021-41190, SECURITY.md §2.4). Non-JSON bodies are not checked here.
fn media_type_consistent(content_type: &str, body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    let ct = content_type.split(';').next().unwrap_or("").trim();
    match serde_json::from_slice::<Probe>(body) {
        Ok(Probe {
            media_type: Some(mt),
        }) => mt.eq_ignore_ascii_case(ct),
        _ => true,
    }
}
