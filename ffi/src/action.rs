//! `dp_action`: a read-only view of the exchange's current action, with one accessor per
//! action kind. The action is owned by its exchange: a `const dp_action *` from
//! `dp_exchange_poll` is valid until the next `dp_exchange_poll` or `dp_exchange_free` on that
//! exchange, and so is every string read from it.

use dockerproxy_core::cache_policy::XCache;
use dockerproxy_core::exchange::{Action, BodyPlan, LocalEndpoint, Purpose, UpstreamBody};
use http::{HeaderName, HeaderValue};

use crate::error::dp_result;
use crate::headers::{dp_str, lines, write};
use crate::panic::{check_null, guard, guard_value};
use crate::views::{NO_KEY, OwnedKey, dp_cache_key, dp_identity, dp_token_key, token_key_view};

/// The kind of an action. See the core's `Action` for the contract of each.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum dp_action_kind {
    /// Not an action (a NULL pointer was passed).
    DP_ACTION_NONE = 0,
    /// Render a local endpoint (`dp_action_local`), then poll.
    DP_ACTION_LOCAL = 1,
    /// Send an upstream request (`dp_action_upstream`, `dp_action_header`); answer with
    /// `dp_exchange_upstream_head` or `dp_exchange_upstream_error`.
    DP_ACTION_SEND_UPSTREAM = 2,
    /// Read the whole upstream body up to `dp_action_limit`; answer with
    /// `dp_exchange_upstream_body` or `dp_exchange_upstream_error`.
    DP_ACTION_READ_UPSTREAM_BODY = 3,
    /// Look up the cache (`dp_action_cache_query`); answer with `dp_exchange_cache_*`.
    DP_ACTION_CACHE_LOOKUP = 4,
    /// Remember an authorisation proof (`dp_action_access_record`). No answer.
    DP_ACTION_RECORD_ACCESS = 5,
    /// A cached tag mapping was confirmed (`dp_action_cache_key`). No answer.
    DP_ACTION_TAG_VALIDATED = 6,
    /// Forget a tag mapping (`dp_action_cache_key`). No answer.
    DP_ACTION_TAG_DROP = 7,
    /// Store a verified manifest (`dp_action_manifest_entry`). No answer.
    DP_ACTION_CACHE_STORE = 8,
    /// Look up the token cache (`dp_action_token_key`); answer with `dp_exchange_token_cache`
    /// or `dp_exchange_token_hit` / `dp_exchange_token_fetch`.
    DP_ACTION_TOKEN_LOOKUP = 9,
    /// Store a fetched token or release the key (`dp_action_token`); `dp_exchange_token_cache`
    /// applies it to the proxy's cache. No answer.
    DP_ACTION_TOKEN_STORE = 10,
    /// Drop a refused token (`dp_action_token_key`); `dp_exchange_token_cache` applies it.
    DP_ACTION_TOKEN_INVALIDATE = 11,
    /// Read the client's body up to `dp_action_limit`; answer with `dp_exchange_client_body`
    /// or `dp_exchange_client_body_failed`.
    DP_ACTION_READ_CLIENT_BODY = 12,
    /// Send this response (`dp_action_response`, `dp_action_header`), then poll.
    DP_ACTION_RESPOND = 13,
    /// Nothing to do until `dp_action_wait_deadline` (or an input); then
    /// `dp_exchange_timeout`.
    DP_ACTION_WAIT = 14,
    /// Finished: free the exchange.
    DP_ACTION_DONE = 15,
}

/// Why an upstream request is sent.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum dp_purpose {
    /// The client's `/v2/` ping.
    DP_PURPOSE_PING = 0,
    /// `GET /v2/` to learn the realm for `/v2/auth`.
    DP_PURPOSE_REALM_DISCOVERY = 1,
    /// A token request.
    DP_PURPOSE_TOKEN = 2,
    /// The client's resource.
    DP_PURPOSE_RESOURCE = 3,
    /// A followed redirect hop.
    DP_PURPOSE_REDIRECT_HOP = 4,
    /// A size probe.
    DP_PURPOSE_SIZE_PROBE = 5,
}

/// The body of an upstream request.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum dp_upstream_body_kind {
    /// No body.
    DP_UPSTREAM_BODY_EMPTY = 0,
    /// The bytes in `body`.
    DP_UPSTREAM_BODY_BYTES = 1,
    /// Stream the client's request body.
    DP_UPSTREAM_BODY_CLIENT = 2,
}

/// A `DP_ACTION_SEND_UPSTREAM` request. Strings point into the action.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[allow(non_camel_case_types)]
pub struct dp_upstream_request {
    /// Method.
    pub method: dp_str,
    /// Absolute URL (add `Host` from it).
    pub url: dp_str,
    /// Registry name, for metrics.
    pub registry: dp_str,
    /// Why.
    pub purpose: dp_purpose,
    /// Body kind.
    pub body_kind: dp_upstream_body_kind,
    /// Body bytes for `DP_UPSTREAM_BODY_BYTES`.
    pub body: dp_str,
    /// Number of header lines (`dp_action_header`).
    pub header_count: usize,
    /// Follow redirects at transport level (always false: the core decides redirects).
    pub follow_redirects: bool,
}

/// What the client gets as a body.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum dp_body_kind {
    /// No body.
    DP_BODY_EMPTY = 0,
    /// The bytes in `body`.
    DP_BODY_BYTES = 1,
    /// Stream the current upstream body; through a verifier of `verify` when set (abort the
    /// client stream on mismatch); cache a verified complete body under `store_key`.
    DP_BODY_UPSTREAM = 2,
    /// Serve from the cache: `cache_key`, range when `has_range`.
    DP_BODY_CACHE = 3,
}

/// A `DP_ACTION_RESPOND` response. Strings point into the action.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[allow(non_camel_case_types)]
pub struct dp_response {
    /// HTTP status.
    pub status: u16,
    /// Number of header lines (`dp_action_header`).
    pub header_count: usize,
    /// Body plan.
    pub body_kind: dp_body_kind,
    /// `DP_BODY_BYTES`: the body.
    pub body: dp_str,
    /// `DP_BODY_UPSTREAM`: the digest to verify (`algorithm:hex`), `{NULL, 0}` when none.
    pub verify: dp_str,
    /// `DP_BODY_UPSTREAM`: where a verified body may be cached (`DP_KEY_NONE` when not).
    pub store_key: dp_cache_key,
    /// `DP_BODY_UPSTREAM`: repository the body is cached through.
    pub store_repository: dp_str,
    /// `DP_BODY_CACHE`: the key to serve.
    pub cache_key: dp_cache_key,
    /// `DP_BODY_CACHE`: a 206 range is requested.
    pub has_range: bool,
    /// Inclusive first byte.
    pub range_start: u64,
    /// Inclusive last byte.
    pub range_end: u64,
    /// `X-Cache` value (`HIT`, `MISS`, `BYPASS`), `{NULL, 0}` when none.
    pub x_cache: dp_str,
}

/// A `DP_ACTION_CACHE_LOOKUP` query. Strings point into the action.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[allow(non_camel_case_types)]
pub struct dp_cache_query {
    /// Key.
    pub key: dp_cache_key,
    /// Repository of the request.
    pub repository: dp_str,
    /// The request's identity toward the upstream.
    pub identity: dp_identity,
}

/// A `DP_ACTION_CACHE_STORE` manifest. Strings and bytes point into the action.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[allow(non_camel_case_types)]
pub struct dp_manifest_entry {
    /// Repository it was fetched through.
    pub repository: dp_str,
    /// Key by digest.
    pub key: dp_cache_key,
    /// Tag mapping key (`DP_KEY_NONE` when fetched by digest).
    pub tag_key: dp_cache_key,
    /// Computed digest.
    pub digest: dp_str,
    /// `Content-Type`.
    pub media_type: dp_str,
    /// Exact bytes.
    pub body: dp_str,
}

/// A `DP_ACTION_RECORD_ACCESS` proof. Strings point into the action.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[allow(non_camel_case_types)]
pub struct dp_access_record {
    /// Registry name.
    pub registry: dp_str,
    /// Repository.
    pub repository: dp_str,
    /// Identity that succeeded.
    pub identity: dp_identity,
    /// No credential was used: the repository is public.
    pub anonymous: bool,
}

/// The token of a `DP_ACTION_TOKEN_STORE`. `value` points into the action.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[allow(non_camel_case_types)]
pub struct dp_token {
    /// False when the fetch failed (release the key).
    pub present: bool,
    /// The token (a secret: never log it).
    pub value: dp_str,
    /// When the cached copy stops being used (ms, the caller's clock).
    pub expires_at_ms: u64,
}

/// Which local endpoint to render.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum dp_local_endpoint {
    /// `/health`.
    DP_LOCAL_HEALTH = 0,
    /// `/readyz`.
    DP_LOCAL_READY = 1,
    /// `/stats`.
    DP_LOCAL_STATS = 2,
    /// `/stats/cache`.
    DP_LOCAL_STATS_CACHE = 3,
    /// `/metrics`.
    DP_LOCAL_METRICS = 4,
}

/// The exchange's current action and the owned strings its views point into. Opaque.
#[allow(non_camel_case_types)]
pub struct dp_action {
    /// The core action.
    pub(crate) action: Action,
    /// Header lines of `SendUpstream` / `Respond`, in order.
    lines: Vec<(HeaderName, HeaderValue)>,
    /// The main cache key of the action, formatted.
    key: Option<OwnedKey>,
    /// The tag key of a `CacheStore`.
    tag_key: Option<OwnedKey>,
    /// A digest of the action, formatted (`CacheStore` digest, `Respond` verify).
    digest: Option<String>,
}

impl dp_action {
    /// Wraps a core action, formatting what the views need.
    pub(crate) fn new(action: Action) -> Self {
        let mut a = Self {
            action,
            lines: Vec::new(),
            key: None,
            tag_key: None,
            digest: None,
        };
        match &a.action {
            Action::SendUpstream(r) => a.lines = lines(&r.headers),
            Action::CacheLookup(q) => a.key = Some(OwnedKey::new(&q.key)),
            Action::TagValidated(k) | Action::TagDrop(k) => a.key = Some(OwnedKey::new(k)),
            Action::CacheStore(e) => {
                a.key = Some(OwnedKey::new(&e.key));
                a.tag_key = e.tag.as_ref().map(OwnedKey::new);
                a.digest = Some(e.digest.to_string());
            }
            Action::Respond(r) => {
                a.lines = lines(&r.headers);
                match &r.body {
                    BodyPlan::Upstream { verify, store } => {
                        a.digest = verify.as_ref().map(ToString::to_string);
                        a.key = store.as_ref().map(|s| OwnedKey::new(&s.key));
                    }
                    BodyPlan::Cache { key, .. } => a.key = Some(OwnedKey::new(key)),
                    BodyPlan::Empty | BodyPlan::Bytes(_) => {}
                }
            }
            _ => {}
        }
        a
    }

    /// The C kind.
    pub(crate) fn kind(&self) -> dp_action_kind {
        use dp_action_kind::*;
        match &self.action {
            Action::Local(_) => DP_ACTION_LOCAL,
            Action::SendUpstream(_) => DP_ACTION_SEND_UPSTREAM,
            Action::ReadUpstreamBody { .. } => DP_ACTION_READ_UPSTREAM_BODY,
            Action::CacheLookup(_) => DP_ACTION_CACHE_LOOKUP,
            Action::RecordAccess(_) => DP_ACTION_RECORD_ACCESS,
            Action::TagValidated(_) => DP_ACTION_TAG_VALIDATED,
            Action::TagDrop(_) => DP_ACTION_TAG_DROP,
            Action::CacheStore(_) => DP_ACTION_CACHE_STORE,
            Action::TokenLookup(_) => DP_ACTION_TOKEN_LOOKUP,
            Action::TokenStore { .. } => DP_ACTION_TOKEN_STORE,
            Action::TokenInvalidate(_) => DP_ACTION_TOKEN_INVALIDATE,
            Action::ReadClientBody { .. } => DP_ACTION_READ_CLIENT_BODY,
            Action::Respond(_) => DP_ACTION_RESPOND,
            Action::Wait(_) => DP_ACTION_WAIT,
            // Answered inside `dp_exchange_poll`; never handed to C.
            Action::VerifyPassword(_) => DP_ACTION_DONE,
            Action::Done => DP_ACTION_DONE,
        }
    }

    fn key_view(&self) -> dp_cache_key {
        self.key.as_ref().map_or(NO_KEY, OwnedKey::view)
    }
}

/// Runs an accessor: NULL checks, borrow, panic guard, write on success.
fn access<T>(
    action: *const dp_action,
    out: *mut T,
    f: impl FnOnce(&dp_action) -> Result<T, dp_result>,
) -> dp_result {
    guard(|| {
        check_null!(action, out);
        // SAFETY: the caller passes a live action from `dp_exchange_poll`.
        let a = unsafe { &*action };
        let v = f(a)?;
        // SAFETY: `out` is non-NULL and writable.
        unsafe { write(out, v) };
        Ok(())
    })
}

/// The kind of `action`; `DP_ACTION_NONE` for NULL.
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_action_get_kind(action: *const dp_action) -> dp_action_kind {
    guard_value(dp_action_kind::DP_ACTION_NONE, || {
        if action.is_null() {
            return dp_action_kind::DP_ACTION_NONE;
        }
        // SAFETY: the caller passes a live action.
        unsafe { &*action }.kind()
    })
}

/// `DP_ACTION_SEND_UPSTREAM`: the request. Strings live as long as the action.
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_action_upstream(
    action: *const dp_action,
    out: *mut dp_upstream_request,
) -> dp_result {
    access(action, out, |a| {
        let Action::SendUpstream(r) = &a.action else {
            return Err(dp_result::DP_WRONG_ACTION);
        };
        let (body_kind, body) = match &r.body {
            UpstreamBody::Empty => (dp_upstream_body_kind::DP_UPSTREAM_BODY_EMPTY, dp_str::NONE),
            UpstreamBody::Bytes(b) => (
                dp_upstream_body_kind::DP_UPSTREAM_BODY_BYTES,
                dp_str::from_bytes(b),
            ),
            UpstreamBody::Client => (dp_upstream_body_kind::DP_UPSTREAM_BODY_CLIENT, dp_str::NONE),
        };
        Ok(dp_upstream_request {
            method: dp_str::from_str(r.method.as_str()),
            url: dp_str::from_str(r.url.as_str()),
            registry: dp_str::from_str(&r.registry),
            purpose: match r.purpose {
                Purpose::Ping => dp_purpose::DP_PURPOSE_PING,
                Purpose::RealmDiscovery => dp_purpose::DP_PURPOSE_REALM_DISCOVERY,
                Purpose::Token => dp_purpose::DP_PURPOSE_TOKEN,
                Purpose::Resource => dp_purpose::DP_PURPOSE_RESOURCE,
                Purpose::RedirectHop => dp_purpose::DP_PURPOSE_REDIRECT_HOP,
                Purpose::SizeProbe => dp_purpose::DP_PURPOSE_SIZE_PROBE,
            },
            body_kind,
            body,
            header_count: a.lines.len(),
            follow_redirects: r.follow_redirects,
        })
    })
}

/// `DP_ACTION_SEND_UPSTREAM` and `DP_ACTION_RESPOND`: header line `index` (0-based, in order;
/// repeated names are separate lines). Name and value live as long as the action.
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_action_header(
    action: *const dp_action,
    index: usize,
    name: *mut dp_str,
    value: *mut dp_str,
) -> dp_result {
    guard(|| {
        check_null!(action, name, value);
        // SAFETY: the caller passes a live action.
        let a = unsafe { &*action };
        if !matches!(a.action, Action::SendUpstream(_) | Action::Respond(_)) {
            return Err(dp_result::DP_WRONG_ACTION);
        }
        let (n, v) = a.lines.get(index).ok_or(dp_result::DP_OUT_OF_RANGE)?;
        // SAFETY: both are non-NULL and writable.
        unsafe {
            write(name, dp_str::from_str(n.as_str()));
            write(value, dp_str::from_bytes(v.as_bytes()));
        }
        Ok(())
    })
}

/// `DP_ACTION_READ_UPSTREAM_BODY` and `DP_ACTION_READ_CLIENT_BODY`: the byte limit.
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_action_limit(action: *const dp_action, out: *mut usize) -> dp_result {
    access(action, out, |a| match a.action {
        Action::ReadUpstreamBody { limit } | Action::ReadClientBody { limit } => Ok(limit),
        _ => Err(dp_result::DP_WRONG_ACTION),
    })
}

/// `DP_ACTION_CACHE_LOOKUP`: the query. Strings live as long as the action.
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_action_cache_query(
    action: *const dp_action,
    out: *mut dp_cache_query,
) -> dp_result {
    access(action, out, |a| {
        let Action::CacheLookup(q) = &a.action else {
            return Err(dp_result::DP_WRONG_ACTION);
        };
        Ok(dp_cache_query {
            key: a.key_view(),
            repository: dp_str::from_str(q.repository.as_str()),
            identity: dp_identity::new(&q.identity),
        })
    })
}

/// `DP_ACTION_TAG_VALIDATED` and `DP_ACTION_TAG_DROP`: the tag key. Strings live as long as
/// the action.
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_action_cache_key(
    action: *const dp_action,
    out: *mut dp_cache_key,
) -> dp_result {
    access(action, out, |a| match a.action {
        Action::TagValidated(_) | Action::TagDrop(_) => Ok(a.key_view()),
        _ => Err(dp_result::DP_WRONG_ACTION),
    })
}

/// `DP_ACTION_CACHE_STORE`: the manifest to store. Strings and bytes live as long as the
/// action; copy what you keep.
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_action_manifest_entry(
    action: *const dp_action,
    out: *mut dp_manifest_entry,
) -> dp_result {
    access(action, out, |a| {
        let Action::CacheStore(e) = &a.action else {
            return Err(dp_result::DP_WRONG_ACTION);
        };
        Ok(dp_manifest_entry {
            repository: dp_str::from_str(e.repository.as_str()),
            key: a.key_view(),
            tag_key: a.tag_key.as_ref().map_or(NO_KEY, OwnedKey::view),
            digest: dp_str::from_opt(a.digest.as_deref()),
            media_type: dp_str::from_str(&e.media_type),
            body: dp_str::from_bytes(&e.body),
        })
    })
}

/// `DP_ACTION_RECORD_ACCESS`: the proof. Strings live as long as the action.
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_action_access_record(
    action: *const dp_action,
    out: *mut dp_access_record,
) -> dp_result {
    access(action, out, |a| {
        let Action::RecordAccess(r) = &a.action else {
            return Err(dp_result::DP_WRONG_ACTION);
        };
        Ok(dp_access_record {
            registry: dp_str::from_str(&r.registry),
            repository: dp_str::from_str(r.repository.as_str()),
            identity: dp_identity::new(&r.identity),
            anonymous: r.anonymous,
        })
    })
}

/// The token key of the action's token operation, if it has one.
pub(crate) fn token_key(a: &dp_action) -> Option<&dockerproxy_core::token::TokenKey> {
    match &a.action {
        Action::TokenLookup(k) | Action::TokenInvalidate(k) | Action::TokenStore { key: k, .. } => {
            Some(k)
        }
        _ => None,
    }
}

/// `DP_ACTION_TOKEN_LOOKUP`, `DP_ACTION_TOKEN_STORE`, `DP_ACTION_TOKEN_INVALIDATE`: the token
/// key. Strings live as long as the action.
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_action_token_key(
    action: *const dp_action,
    out: *mut dp_token_key,
) -> dp_result {
    access(action, out, |a| {
        token_key(a)
            .map(token_key_view)
            .ok_or(dp_result::DP_WRONG_ACTION)
    })
}

/// Token actions: scope `index` of the key (sorted). Lives as long as the action.
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_action_token_scope(
    action: *const dp_action,
    index: usize,
    out: *mut dp_str,
) -> dp_result {
    access(action, out, |a| {
        let k = token_key(a).ok_or(dp_result::DP_WRONG_ACTION)?;
        let s = k.scopes.get(index).ok_or(dp_result::DP_OUT_OF_RANGE)?;
        Ok(dp_str::from_str(s))
    })
}

/// `DP_ACTION_TOKEN_STORE`: the token (or its absence). The value lives as long as the action.
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_action_token(
    action: *const dp_action,
    out: *mut dp_token,
) -> dp_result {
    access(action, out, |a| {
        let Action::TokenStore { token, .. } = &a.action else {
            return Err(dp_result::DP_WRONG_ACTION);
        };
        Ok(match token {
            Some(t) => dp_token {
                present: true,
                value: dp_str::from_str(&t.value),
                expires_at_ms: t.expires_at.as_millis(),
            },
            None => dp_token {
                present: false,
                value: dp_str::NONE,
                expires_at_ms: 0,
            },
        })
    })
}

/// `DP_ACTION_RESPOND`: the response. Strings and bytes live as long as the action.
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_action_response(
    action: *const dp_action,
    out: *mut dp_response,
) -> dp_result {
    access(action, out, |a| {
        let Action::Respond(r) = &a.action else {
            return Err(dp_result::DP_WRONG_ACTION);
        };
        let mut v = dp_response {
            status: r.status.as_u16(),
            header_count: a.lines.len(),
            body_kind: dp_body_kind::DP_BODY_EMPTY,
            body: dp_str::NONE,
            verify: dp_str::NONE,
            store_key: NO_KEY,
            store_repository: dp_str::NONE,
            cache_key: NO_KEY,
            has_range: false,
            range_start: 0,
            range_end: 0,
            x_cache: dp_str::from_opt(r.x_cache.map(XCache::as_str)),
        };
        match &r.body {
            BodyPlan::Empty => {}
            BodyPlan::Bytes(b) => {
                v.body_kind = dp_body_kind::DP_BODY_BYTES;
                v.body = dp_str::from_bytes(b);
            }
            BodyPlan::Upstream { store, .. } => {
                v.body_kind = dp_body_kind::DP_BODY_UPSTREAM;
                v.verify = dp_str::from_opt(a.digest.as_deref());
                v.store_key = a.key_view();
                v.store_repository =
                    dp_str::from_opt(store.as_ref().map(|s| s.repository.as_str()));
            }
            BodyPlan::Cache { range, .. } => {
                v.body_kind = dp_body_kind::DP_BODY_CACHE;
                v.cache_key = a.key_view();
                if let Some((s, e)) = range {
                    v.has_range = true;
                    v.range_start = *s;
                    v.range_end = *e;
                }
            }
        }
        Ok(v)
    })
}

/// `DP_ACTION_LOCAL`: which endpoint to render.
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_action_local(
    action: *const dp_action,
    out: *mut dp_local_endpoint,
) -> dp_result {
    access(action, out, |a| match a.action {
        Action::Local(e) => Ok(match e {
            LocalEndpoint::Health => dp_local_endpoint::DP_LOCAL_HEALTH,
            LocalEndpoint::Ready => dp_local_endpoint::DP_LOCAL_READY,
            LocalEndpoint::Stats => dp_local_endpoint::DP_LOCAL_STATS,
            LocalEndpoint::StatsCache => dp_local_endpoint::DP_LOCAL_STATS_CACHE,
            LocalEndpoint::Metrics => dp_local_endpoint::DP_LOCAL_METRICS,
        }),
        _ => Err(dp_result::DP_WRONG_ACTION),
    })
}

/// `DP_ACTION_WAIT`: the deadline (ms, the caller's clock).
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_action_wait_deadline(
    action: *const dp_action,
    out: *mut u64,
) -> dp_result {
    access(action, out, |a| match a.action {
        Action::Wait(t) => Ok(t.as_millis()),
        _ => Err(dp_result::DP_WRONG_ACTION),
    })
}
