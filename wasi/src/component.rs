//! The exported `wasi:http/incoming-handler`: one [`Exchange`] per request, driven to its
//! response (the WASI counterpart of the server's `driver.rs`).
//!
//! Per-instance state lives in thread-locals (a component instance is single-threaded): the
//! configuration, loaded on the first request, and the [`TokenCache`]. A host that creates an
//! instance per request loses both between requests, and every answer stays correct; a host that
//! reuses instances saves token fetches.

use std::cell::{OnceCell, RefCell};
use std::sync::Arc;

use bytes::Bytes;
use dockerproxy_core::config::Limits;
use dockerproxy_core::exchange::{
    Action, BodyPlan, CacheResult, RequestHead, Response as CoreResponse, UpstreamError,
};
use dockerproxy_core::login::PasswordVerdict;
use dockerproxy_core::oci_error::{ErrorCode, OciError};
use dockerproxy_core::token::{TokenCache, TokenLookup};
use dockerproxy_core::verifier::Verifier;
use dockerproxy_core::{Config, Exchange};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{IncomingRequest, OutgoingResponse, ResponseOutparam, Scheme};

use crate::wasi_io::{self, BodyReader, BodyWriter, now};

/// More actions than this for one request means a bug in the state machine: answer 500.
const MAX_ACTIONS: usize = 256;

thread_local! {
    /// The configuration, or the message of the error that prevented loading it.
    static CONFIG: OnceCell<Result<Arc<Config>, String>> = const { OnceCell::new() };
    /// The proxy's own upstream tokens, for as long as the instance lives.
    static TOKENS: RefCell<TokenCache> = RefCell::new(TokenCache::default());
}

/// The exported handler.
struct Component;

wasip2::http::proxy::export!(Component);

impl Guest for Component {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        match config() {
            Ok(config) => serve(&config, &request, out),
            Err(message) => {
                eprintln!("dockerproxy: configuration error: {message}");
                let e = OciError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Unknown,
                    "proxy configuration error",
                );
                send_bytes(out, e.status, e.headers(), e.body(), false, None);
            }
        }
    }
}

/// The instance's configuration, loaded from `wasi:cli/environment` on first use.
fn config() -> Result<Arc<Config>, String> {
    CONFIG.with(|cell| {
        cell.get_or_init(|| {
            let env = wasip2::cli::environment::get_environment();
            let mut key = [0u8; 32];
            let random = wasip2::random::random::get_random_bytes(32);
            for (k, r) in key.iter_mut().zip(random) {
                *k = r;
            }
            match crate::settings::load_config(env, key) {
                Ok((config, warnings)) => {
                    for w in warnings {
                        eprintln!("dockerproxy: warning: {}: {}", w.key, w.message);
                    }
                    Ok(Arc::new(config))
                }
                Err(e) => Err(e.to_string()),
            }
        })
        .clone()
    })
}

/// The core's view of the request. `wasi:http` hands over the authority separately; it stands
/// in for a missing `Host`. The peer address is not available to a component.
fn request_head(request: &IncomingRequest) -> RequestHead {
    let mut headers = wasi_io::header_map(&request.headers());
    if !headers.contains_key(header::HOST)
        && let Some(v) = request
            .authority()
            .and_then(|a| HeaderValue::from_str(&a).ok())
    {
        headers.insert(header::HOST, v);
    }
    RequestHead {
        method: wasi_io::http_method(&request.method()),
        target: request.path_with_query().unwrap_or_else(|| "/".to_owned()),
        headers,
        peer: None,
        tls: matches!(request.scheme(), Some(Scheme::Https)),
    }
}

/// Runs one exchange and answers through `out`.
fn serve(config: &Arc<Config>, request: &IncomingRequest, out: ResponseOutparam) {
    let head = request_head(request);
    let method = head.method.clone();
    let client_length = head
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let mut client = request
        .consume()
        .ok()
        .and_then(|b| BodyReader::client(b, client_length));
    let limits = &config.limits;
    let mut current: Option<BodyReader> = None;
    let mut ex = Exchange::new(config.clone(), head, now());

    for _ in 0..MAX_ACTIONS {
        match ex.poll_action(now()) {
            Action::Local(endpoint) => {
                let r = crate::local::render(endpoint, now().as_millis());
                let head_only = method == Method::HEAD;
                return send_bytes(out, r.status, r.headers, r.body, head_only, None);
            }
            Action::SendUpstream(req) => {
                current = None;
                let sent = crate::outbound::check_url(config, &req.url)
                    .and_then(|()| wasi_io::send(&req, limits, &mut client));
                match sent {
                    Ok((head, body)) => {
                        current = Some(body);
                        ex.handle_upstream_head(head, now());
                    }
                    Err(e) => ex.handle_upstream_error(e, now()),
                }
            }
            Action::ReadUpstreamBody { limit } => match current.take() {
                Some(body) => match body.read_all(limit, limits.idle_timeout) {
                    Ok(bytes) => ex.handle_upstream_body(bytes, now()),
                    Err(e) => ex.handle_upstream_error(e, now()),
                },
                None => ex.handle_upstream_error(UpstreamError::BodyFailed, now()),
            },
            // No cache store in the component: every lookup misses, nothing is stored.
            Action::CacheLookup(_) => ex.handle_cache_result(CacheResult::Miss, now()),
            Action::CacheStore(_)
            | Action::RecordAccess(_)
            | Action::TagValidated(_)
            | Action::TagDrop(_) => {}
            Action::TokenLookup(key) => {
                let lookup = TOKENS.with(|t| {
                    let mut t = t.borrow_mut();
                    match t.lookup(&key, now()) {
                        // Requests of one instance run one at a time: a pending fetch belongs to
                        // a request that died before storing its token. Release it and fetch.
                        TokenLookup::Wait => {
                            t.fail(&key);
                            t.lookup(&key, now())
                        }
                        other => other,
                    }
                });
                ex.handle_token_lookup(lookup, now());
            }
            Action::TokenStore { key, token } => store_token(key, token),
            Action::TokenInvalidate(key) => TOKENS.with(|t| t.borrow_mut().invalidate(&key)),
            // One request at a time per instance: bcrypt runs inline.
            Action::VerifyPassword(check) => {
                let verdict = if dockerproxy_core::login::verify_password(&check) {
                    PasswordVerdict::Valid
                } else {
                    PasswordVerdict::Invalid
                };
                ex.handle_password_result(verdict, now());
            }
            Action::ReadClientBody { limit } => {
                let body = client
                    .take()
                    .and_then(|c| c.read_all(limit, limits.client_header_timeout).ok());
                ex.handle_client_body(body, now());
            }
            Action::Wait(deadline) => {
                wasi_io::sleep(deadline.saturating_since(now()));
                ex.handle_timeout(now());
            }
            Action::Respond(resp) => {
                drain_after_respond(&mut ex);
                return respond(out, &method, resp, current.take(), limits);
            }
            Action::Done => break,
        }
    }
    eprintln!("dockerproxy: exchange ended without a response");
    let e = OciError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Unknown,
        "internal error",
    );
    send_bytes(out, e.status, e.headers(), e.body(), false, None);
}

fn store_token(
    key: dockerproxy_core::token::TokenKey,
    token: Option<dockerproxy_core::token::Token>,
) {
    TOKENS.with(|t| {
        let mut t = t.borrow_mut();
        match token {
            Some(token) => t.complete(key, token),
            None => t.fail(&key),
        }
    });
}

/// After `Respond` the exchange normally says `Done`; token bookkeeping is kept, cache actions
/// are ignored.
fn drain_after_respond(ex: &mut Exchange) {
    for _ in 0..8 {
        match ex.poll_action(now()) {
            Action::Done => return,
            Action::TokenStore { key, token } => store_token(key, token),
            Action::TokenInvalidate(key) => TOKENS.with(|t| t.borrow_mut().invalidate(&key)),
            _ => {}
        }
    }
}

/// Sends the core's response: the head, then the body as its plan says.
fn respond(
    out: ResponseOutparam,
    method: &Method,
    resp: CoreResponse,
    upstream: Option<BodyReader>,
    limits: &Limits,
) {
    let head_only = method == Method::HEAD;
    match resp.body {
        BodyPlan::Empty => send_bytes(out, resp.status, resp.headers, Bytes::new(), true, None),
        BodyPlan::Bytes(bytes) => send_bytes(
            out,
            resp.status,
            resp.headers,
            bytes,
            head_only,
            Some(limits),
        ),
        BodyPlan::Upstream { verify, .. } => match upstream {
            Some(_) if head_only => {
                send_bytes(out, resp.status, resp.headers, Bytes::new(), true, None)
            }
            Some(body) => {
                let verifier = verify.map(|d| Verifier::new(d, body.content_length()));
                stream(out, resp.status, &resp.headers, body, verifier, limits);
            }
            None => internal_error(out, "no upstream body to relay"),
        },
        // Never planned: the configuration has no cache and every lookup misses.
        BodyPlan::Cache { .. } => internal_error(out, "no cache store in the component"),
    }
}

fn internal_error(out: ResponseOutparam, why: &str) {
    eprintln!("dockerproxy: internal error: {why}");
    let e = OciError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Unknown,
        "internal error",
    );
    send_bytes(out, e.status, e.headers(), e.body(), false, None);
}

/// Builds the outgoing response head.
fn outgoing(status: StatusCode, headers: &HeaderMap) -> OutgoingResponse {
    let resp = OutgoingResponse::new(wasi_io::fields(headers));
    // Every `StatusCode` is in 100..=999, which the host accepts.
    let _ = resp.set_status_code(status.as_u16());
    resp
}

/// Sends a response with a body held in memory (`head_only`: none at all; the head is sent
/// as is, `Content-Length` included). `limits` bounds the wait for a stalled client.
fn send_bytes(
    out: ResponseOutparam,
    status: StatusCode,
    mut headers: HeaderMap,
    body: Bytes,
    head_only: bool,
    limits: Option<&Limits>,
) {
    if head_only {
        // No body resource is taken: the host sends an empty body.
        ResponseOutparam::set(out, Ok(outgoing(status, &headers)));
        return;
    }
    // The bytes are the body: their length wins over any relayed Content-Length.
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    let resp = outgoing(status, &headers);
    let Ok(outgoing_body) = resp.body() else {
        return ResponseOutparam::set(out, Ok(resp));
    };
    ResponseOutparam::set(out, Ok(resp));
    let stall = limits.map_or(std::time::Duration::from_secs(30), |l| l.idle_timeout);
    let Some(mut writer) = BodyWriter::new(outgoing_body, stall) else {
        return;
    };
    match writer.write_all(&body) {
        Ok(()) => {
            let _ = writer.finish();
        }
        Err(()) => writer.abort(),
    }
}

/// Streams the upstream body to the client, through `verifier` when set. Any failure (upstream
/// stall or error, digest or length mismatch, client gone) aborts the client's body: it is
/// dropped unfinished and the held-back tail is never sent.
fn stream(
    out: ResponseOutparam,
    status: StatusCode,
    headers: &HeaderMap,
    mut body: BodyReader,
    mut verifier: Option<Verifier>,
    limits: &Limits,
) {
    let resp = outgoing(status, headers);
    let Ok(outgoing_body) = resp.body() else {
        return ResponseOutparam::set(out, Ok(resp));
    };
    ResponseOutparam::set(out, Ok(resp));
    let Some(mut writer) = BodyWriter::new(outgoing_body, limits.idle_timeout) else {
        return;
    };
    loop {
        let chunk = match body.next_chunk(limits.idle_timeout) {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => {
                eprintln!("dockerproxy: upstream body failed: {e:?}");
                return writer.abort();
            }
        };
        let released = match verifier.as_mut() {
            None => Bytes::from(chunk),
            Some(v) => match v.push(&chunk) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("dockerproxy: upstream body refused: {e}");
                    return writer.abort();
                }
            },
        };
        if writer.write_all(&released).is_err() {
            return writer.abort();
        }
    }
    if let Some(v) = verifier {
        match v.finish() {
            Ok(tail) => {
                if writer.write_all(&tail).is_err() {
                    return writer.abort();
                }
            }
            Err(e) => {
                eprintln!("dockerproxy: upstream body refused: {e}");
                return writer.abort();
            }
        }
    }
    drop(body);
    let _ = writer.finish();
}
