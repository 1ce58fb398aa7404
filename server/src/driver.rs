//! The exchange loop: one client request in, one response out, with the core's
//! [`Exchange`] deciding every step (DESIGN.md §3, §4).
//!
//! ```text
//! request ──► RequestHead ──► Exchange::new
//!                               │ poll_action
//!        ┌──────────────────────┼─────────────────────────────┐
//!   SendUpstream        ReadUpstreamBody / CacheLookup / Wait    Respond / Local
//!   (client.send)       (read ≤ limit / store / sleep)          (build the hyper response)
//!        └──── handle_* ────────┘                               └──► poll until Done
//! ```
//!
//! The driver never decides anything about registries: it performs the actions, measures them
//! and hands the results back.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use dockerproxy_core::Exchange;
use dockerproxy_core::cache_policy::{CacheKey, XCache};
use dockerproxy_core::exchange::{
    Action, BodyPlan, Purpose, RequestHead, Response as CoreResponse, UpstreamError, UpstreamHead,
    UpstreamRequest,
};
use dockerproxy_core::oci_error::{ErrorCode, OciError};
use dockerproxy_core::token::TokenLookup;
use dockerproxy_core::verifier::Verifier;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version, header};
use hyper::body::Incoming;

use crate::body::{ResponseBody, UpstreamStream};
use crate::logging::{RequestLog, path_only};
use crate::metrics::Source;
use crate::state::{self, ServerState};
use crate::store::{FillClaim, FillRequest};
use crate::tokens::FetchGrant;
use crate::upstream;

/// More actions than this for one request means a bug in the state machine: answer 500.
const MAX_ACTIONS: usize = 256;

/// The current upstream response, kept between `SendUpstream` and the action that uses its body.
struct Current {
    body: Incoming,
    content_length: Option<u64>,
    /// The upstream fetch slot, held until the body is read, relayed or handed to a fill.
    permit: upstream::FetchPermit,
}

/// Serves one request.
pub async fn handle(
    state: Arc<ServerState>,
    req: Request<Incoming>,
    peer: Option<IpAddr>,
    tls: bool,
) -> Response<ResponseBody> {
    let (parts, client_body) = req.into_parts();
    let head = request_head(&parts, peer, tls);
    let parts_headers = parts.headers;
    let host = head
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let mut log = RequestLog::new(
        state.clone(),
        head.method.clone(),
        &host,
        &head.target,
        peer,
    );
    log.kind = kind_of(&head.target);
    let method = head.method.clone();
    let mut client_body = Some(client_body);
    let mut current: Option<Current> = None;
    // A token fetch this exchange was granted; released if the request dies before storing it.
    let mut grant: Option<FetchGrant> = None;
    // A blob fill claim from the lookup (single flight): held until the response is built, so
    // concurrent lookups of the blob wait for this request's fill instead of going upstream.
    let mut claim: Option<FillClaim> = None;
    // The request that produced the current upstream body (a fill resumes with it).
    let mut last_request: Option<UpstreamRequest> = None;
    // Only a GET fills the cache on a miss (a Range GET fetches the whole blob and is answered
    // from the fill); HEAD never leads.
    let lead = method == Method::GET;
    let mut ex = Exchange::new(state.config.clone(), head, state::now());

    for _ in 0..MAX_ACTIONS {
        match ex.poll_action(state::now()) {
            Action::Local(endpoint) => {
                let r = crate::local::render(&state, endpoint);
                log.status = r.status.as_u16();
                return build(
                    r.status,
                    r.headers,
                    ResponseBody::full(r.body).with_log(log),
                );
            }
            Action::SendUpstream(req) => {
                current = None;
                if log.registry == "none" {
                    log.registry.clone_from(&req.registry);
                }
                if req.purpose == Purpose::RedirectHop {
                    state.metrics.redirect_followed(&req.registry);
                }
                let registry = req.registry.clone();
                // Fetch cap (SECURITY.md §2.14): the previous response's slot is already free.
                let Ok(permit) = state.client.acquire_fetch().await else {
                    state.metrics.fetch_cap_rejected(&registry);
                    return fetch_cap_full(log);
                };
                last_request = Some(req.clone());
                let started = Instant::now();
                let result = state.client.send(req, &mut client_body).await;
                let elapsed = started.elapsed();
                match result {
                    Ok(resp) => {
                        let (parts, body) = resp.into_parts();
                        let remaining = ratelimit_remaining(&parts.headers);
                        state.metrics.upstream(
                            &registry,
                            parts.status.as_str(),
                            elapsed,
                            remaining,
                        );
                        current = Some(Current {
                            body,
                            content_length: content_length(&parts.headers),
                            permit,
                        });
                        ex.handle_upstream_head(
                            UpstreamHead {
                                status: parts.status,
                                headers: parts.headers,
                            },
                            state::now(),
                        );
                    }
                    Err(e) => {
                        let code = if e == UpstreamError::Timeout {
                            "timeout"
                        } else {
                            "error"
                        };
                        state.metrics.upstream(&registry, code, elapsed, None);
                        tracing::debug!(registry = %registry, error = ?e, "upstream request failed");
                        ex.handle_upstream_error(e, state::now());
                    }
                }
            }
            Action::ReadUpstreamBody { limit } => match current.take() {
                Some(cur) => {
                    let idle = state.client.idle_timeout();
                    match upstream::read_to_limit(cur.body, limit, idle, cur.content_length).await {
                        Ok(bytes) => ex.handle_upstream_body(bytes, state::now()),
                        Err(e) => ex.handle_upstream_error(e, state::now()),
                    }
                }
                None => ex.handle_upstream_error(UpstreamError::BodyFailed, state::now()),
            },
            Action::CacheLookup(query) => {
                if log.registry == "none" {
                    log.registry = key_registry(&query.key).to_owned();
                }
                let (result, c) = state.store.lookup(&query, lead).await;
                if c.is_some() {
                    claim = c;
                }
                ex.handle_cache_result(result, state::now());
            }
            Action::CacheStore(entry) => state.store.store_manifest(entry),
            Action::RecordAccess(record) => state.store.record_access(record),
            Action::TagValidated(key) => state.store.tag_validated(&key),
            Action::TagDrop(key) => state.store.tag_drop(&key),
            Action::TokenLookup(key) => {
                let lookup = state.tokens.lookup(&key).await;
                if lookup == TokenLookup::Fetch {
                    grant = Some(FetchGrant::new(state.tokens.clone(), key));
                }
                ex.handle_token_lookup(lookup, state::now());
            }
            Action::TokenStore { key, token } => {
                if let Some(g) = grant.take_if(|g| g.is_for(&key)) {
                    g.settle();
                }
                state.tokens.store(key, token);
            }
            Action::TokenInvalidate(key) => state.tokens.invalidate(&key),
            Action::VerifyPassword(check) => {
                let verdict = state.login.verify(check).await;
                ex.handle_password_result(verdict, state::now());
            }
            Action::ReadClientBody { limit } => {
                let body = match client_body.take() {
                    Some(b) => {
                        let idle = state.config.limits.client_header_timeout;
                        upstream::read_to_limit(b, limit, idle, content_length(&parts_headers))
                            .await
                            .ok()
                    }
                    None => None,
                };
                ex.handle_client_body(body, state::now());
            }
            Action::Wait(deadline) => {
                tokio::time::sleep(deadline.saturating_since(state::now())).await;
                ex.handle_timeout(state::now());
            }
            Action::Respond(resp) => {
                if log.registry == "none"
                    && let Some(name) = ex.registry_name()
                {
                    name.clone_into(&mut log.registry);
                }
                let upstream = current.take().map(|cur| (cur, last_request.take()));
                let response = respond(&state, &method, resp, upstream, claim.take(), log).await;
                drain_after_respond(&state, &mut ex, &mut grant);
                return response;
            }
            Action::Done => break,
        }
    }
    tracing::error!("exchange ended without a response");
    let e = OciError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Unknown,
        "internal error",
    );
    log.status = e.status.as_u16();
    build(
        e.status,
        e.headers(),
        ResponseBody::full(e.body()).with_log(log),
    )
}

/// After `Respond` the exchange normally says `Done` (a `CacheStore` may come first); anything
/// else is logged and dropped.
fn drain_after_respond(state: &ServerState, ex: &mut Exchange, grant: &mut Option<FetchGrant>) {
    for _ in 0..8 {
        match ex.poll_action(state::now()) {
            Action::Done => return,
            Action::CacheStore(entry) => state.store.store_manifest(entry),
            Action::TokenStore { key, token } => {
                if let Some(g) = grant.take_if(|g| g.is_for(&key)) {
                    g.settle();
                }
                state.tokens.store(key, token);
            }
            Action::TokenInvalidate(key) => state.tokens.invalidate(&key),
            Action::RecordAccess(record) => state.store.record_access(record),
            Action::TagValidated(key) => state.store.tag_validated(&key),
            Action::TagDrop(key) => state.store.tag_drop(&key),
            other => {
                tracing::debug!(action = ?std::mem::discriminant(&other), "action after Respond ignored")
            }
        }
    }
}

/// Turns the core's response into a hyper response.
///
/// A cacheable `200` blob (`BodyPlan::Upstream` with `verify` and `store`) is handed to the
/// store's detached fill, and the client reads the growing file; without a store (or when the
/// store cannot fill) the upstream body is relayed through the verifier directly.
async fn respond(
    state: &ServerState,
    method: &Method,
    resp: CoreResponse,
    upstream: Option<(Current, Option<UpstreamRequest>)>,
    claim: Option<FillClaim>,
    mut log: RequestLog,
) -> Response<ResponseBody> {
    log.status = resp.status.as_u16();
    if let Some(x) = resp.x_cache {
        log.x_cache = Some(x.as_str());
        let result = match x {
            XCache::Hit => "hit",
            XCache::Miss => "miss",
            XCache::Bypass => "bypass",
        };
        state.metrics.cache_request(&log.registry, log.kind, result);
        let stale = resp
            .headers
            .get(header::WARNING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("stale"));
        if x == XCache::Hit && stale {
            state.metrics.stale_served(&log.registry);
        }
    }
    let mut headers = resp.headers;
    let body = match resp.body {
        BodyPlan::Empty => ResponseBody::empty(),
        BodyPlan::Bytes(bytes) => {
            if method != Method::HEAD {
                // The bytes are the body: their length wins over any relayed Content-Length.
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            }
            ResponseBody::full(bytes)
        }
        BodyPlan::Upstream { verify, store } => match upstream {
            Some(_) if method == Method::HEAD => ResponseBody::empty(),
            Some((cur, request)) => {
                log.source = Source::Upstream;
                match (verify, store) {
                    (Some(digest), Some(target))
                        if resp.status == StatusCode::OK || target.range.is_some() =>
                    {
                        let fill = FillRequest {
                            target,
                            digest,
                            content_length: cur.content_length,
                            body: cur.body,
                            request,
                            claim,
                            // The fill owns the fetch slot until its upstream body ends.
                            client: state.client.holding(cur.permit),
                        };
                        match state.store.start_fill(fill) {
                            Ok(body) => ResponseBody::store(body),
                            Err(back) => {
                                let back = *back;
                                let slot = back.client.held_slot();
                                let verifier = Verifier::new(back.digest, back.content_length);
                                let body = ResponseBody::upstream(UpstreamStream::new(
                                    back.body,
                                    state.client.idle_timeout(),
                                    Some(verifier),
                                ));
                                return relay_holding_slot(resp.status, headers, body, slot, log);
                            }
                        }
                    }
                    (verify, _) => {
                        let verifier = verify.map(|d| Verifier::new(d, cur.content_length));
                        let body = ResponseBody::upstream(UpstreamStream::new(
                            cur.body,
                            state.client.idle_timeout(),
                            verifier,
                        ));
                        let slot = Some(Arc::new(cur.permit));
                        return relay_holding_slot(resp.status, headers, body, slot, log);
                    }
                }
            }
            None => return internal_error(log, "no upstream body to relay"),
        },
        BodyPlan::Cache { key, range } => match state.store.open(&key, range).await {
            Some(body) => {
                log.source = Source::Cache;
                ResponseBody::store(body)
            }
            None => return internal_error(log, "cache entry vanished"),
        },
    };
    build(resp.status, headers, body.with_log(log))
}

/// A relayed upstream body that keeps its fetch slot until the client has it all (or leaves).
/// The log rides on the inner body so integrity failures are still counted.
fn relay_holding_slot(
    status: StatusCode,
    headers: HeaderMap,
    body: ResponseBody,
    slot: Option<Arc<upstream::FetchPermit>>,
    log: RequestLog,
) -> Response<ResponseBody> {
    let body = body.with_log(log);
    match slot {
        Some(slot) => {
            use http_body_util::BodyExt as _;
            let held = upstream::PermitBody::new(body, slot)
                .map_err(|e| -> upstream::BoxError { Box::new(e) })
                .boxed();
            build(status, headers, ResponseBody::store(held))
        }
        None => build(status, headers, body),
    }
}

/// `503` with `Retry-After` when no upstream fetch slot freed in time (SECURITY.md §2.14).
fn fetch_cap_full(mut log: RequestLog) -> Response<ResponseBody> {
    tracing::warn!(registry = %log.registry, "upstream fetch cap reached: 503");
    let e = OciError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Unavailable,
        "too many upstream fetches in flight; retry later",
    );
    let mut headers = e.headers();
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    log.status = e.status.as_u16();
    build(
        e.status,
        headers,
        ResponseBody::full(e.body()).with_log(log),
    )
}

fn internal_error(mut log: RequestLog, why: &str) -> Response<ResponseBody> {
    tracing::error!(reason = why, "internal error");
    let e = OciError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Unknown,
        "internal error",
    );
    log.status = e.status.as_u16();
    build(
        e.status,
        e.headers(),
        ResponseBody::full(e.body()).with_log(log),
    )
}

fn build(status: StatusCode, headers: HeaderMap, body: ResponseBody) -> Response<ResponseBody> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r
}

/// Builds the core's view of the request. HTTP/1 absolute-form and authority-form targets are
/// passed whole (the core refuses them); HTTP/2 requests always carry scheme and authority, so
/// their target is the path and query, and `:authority` stands in for a missing `Host`.
pub fn request_head(parts: &http::request::Parts, peer: Option<IpAddr>, tls: bool) -> RequestHead {
    let mut headers = parts.headers.clone();
    let target = if parts.version == Version::HTTP_2 {
        if !headers.contains_key(header::HOST)
            && let Some(v) = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            headers.insert(header::HOST, v);
        }
        parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned())
    } else if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        parts.uri.to_string()
    } else {
        parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned())
    };
    RequestHead {
        method: parts.method.clone(),
        target,
        headers,
        peer: peer.map(|ip| ip.to_canonical()),
        tls,
    }
}

/// The metrics `kind` of a request path (ping, auth, manifest, blob, other).
pub fn kind_of(target: &str) -> &'static str {
    let path = path_only(target);
    match path {
        "/v2" | "/v2/" => "ping",
        "/v2/auth" => "auth",
        _ if !path.starts_with("/v2/") => "other",
        _ if path.contains("/blobs/uploads") => "other",
        _ if path.contains("/manifests/") => "manifest",
        _ if path.contains("/blobs/") => "blob",
        _ => "other",
    }
}

fn key_registry(key: &CacheKey) -> &str {
    match key {
        CacheKey::Blob { registry, .. }
        | CacheKey::Manifest { registry, .. }
        | CacheKey::Tag { registry, .. } => registry,
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `RateLimit-Remaining` (`97;w=21600` on Docker Hub) as a number.
fn ratelimit_remaining(headers: &HeaderMap) -> Option<f64> {
    let v = headers.get("ratelimit-remaining")?.to_str().ok()?;
    v.split(';').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(kind_of("/v2/"), "ping");
        assert_eq!(kind_of("/v2"), "ping");
        assert_eq!(kind_of("/v2/auth?scope=x"), "auth");
        assert_eq!(kind_of("/v2/library/alpine/manifests/3"), "manifest");
        assert_eq!(kind_of("/v2/library/alpine/blobs/sha256:abc"), "blob");
        assert_eq!(kind_of("/v2/library/alpine/blobs/uploads/"), "other");
        assert_eq!(kind_of("/health"), "other");
    }

    #[test]
    fn ratelimit_header_parses_docker_hub_form() {
        let mut h = HeaderMap::new();
        h.insert(
            "RateLimit-Remaining",
            HeaderValue::from_static("97;w=21600"),
        );
        assert_eq!(ratelimit_remaining(&h), Some(97.0));
        h.insert("RateLimit-Remaining", HeaderValue::from_static("x"));
        assert_eq!(ratelimit_remaining(&h), None);
    }

    #[test]
    fn absolute_form_target_is_passed_whole() {
        let req = Request::builder()
            .uri("http://evil.example/v2/")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        assert_eq!(
            request_head(&parts, None, false).target,
            "http://evil.example/v2/"
        );
        let req = Request::builder()
            .uri("/v2/x/manifests/1?n=1")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        assert_eq!(
            request_head(&parts, None, false).target,
            "/v2/x/manifests/1?n=1"
        );
    }

    #[test]
    fn h2_target_is_origin_form_and_authority_becomes_host() {
        let req = Request::builder()
            .version(Version::HTTP_2)
            .uri("https://docker.example.com/v2/?x=1")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let head = request_head(&parts, Some("::ffff:127.0.0.1".parse().unwrap()), true);
        assert_eq!(head.target, "/v2/?x=1");
        assert_eq!(head.headers[header::HOST], "docker.example.com");
        assert_eq!(head.peer, Some("127.0.0.1".parse().unwrap()));
    }
}
