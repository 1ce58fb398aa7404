//! `dp_exchange`: one client request's state machine and its inputs. Loop on
//! `dp_exchange_poll` exactly as the core's run loop describes; answer each action with the
//! matching input function, then poll again.

use core::ffi::c_char;
use std::sync::Arc;

use bytes::Bytes;
use dockerproxy_core::exchange::{Access, CacheResult, RequestHead, UpstreamError, UpstreamHead};
use dockerproxy_core::reference::Digest;
use dockerproxy_core::token::{Token, TokenLookup};
use dockerproxy_core::{Action, Exchange, Timestamp};
use http::{Method, StatusCode};

use crate::action::{dp_action, token_key};
use crate::error::dp_result;
use crate::headers::{bytes, dp_header, header_map, utf8, write};
use crate::panic::{check_null, guard, guard_value};
use crate::proxy::dp_proxy;

/// DNS, connect, TLS or protocol failure before a response head.
pub const DP_UPSTREAM_UNREACHABLE: u32 = 0;
/// Connect or response-header timeout.
pub const DP_UPSTREAM_TIMEOUT: u32 = 1;
/// The body exceeded the limit of `DP_ACTION_READ_UPSTREAM_BODY`.
pub const DP_UPSTREAM_TOO_LARGE: u32 = 2;
/// The body could not be read completely.
pub const DP_UPSTREAM_BODY_FAILED: u32 = 3;
/// The address policy refused the dialled address.
pub const DP_UPSTREAM_DENIED: u32 = 4;

/// One client request in progress. Opaque; from `dp_exchange_new`, released by
/// `dp_exchange_free`. Not thread-safe: use one exchange from one thread at a time.
#[allow(non_camel_case_types)]
pub struct dp_exchange {
    inner: Exchange,
    proxy: Arc<dp_proxy>,
    current: Option<dp_action>,
    poisoned: bool,
}

/// What the store knows about the request's right to a cached object (COMPAT.md §8.6).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[allow(non_camel_case_types)]
pub struct dp_access {
    /// The repository is public.
    pub is_public: bool,
    /// This identity succeeded upstream for the repository recently.
    pub granted: bool,
    /// The object is linked to the repository.
    pub linked: bool,
}

impl From<dp_access> for Access {
    fn from(a: dp_access) -> Self {
        Self {
            public: a.is_public,
            granted: a.granted,
            linked: a.linked,
            // The C caller's `is_public` also covers the stale window.
            public_within_max_stale: a.is_public,
        }
    }
}

/// Runs `f` on a live, unpoisoned exchange; a panic inside poisons it.
fn with(
    ex: *mut dp_exchange,
    f: impl FnOnce(&mut dp_exchange) -> Result<(), dp_result>,
) -> dp_result {
    guard(|| {
        check_null!(ex);
        // SAFETY: the caller passes a live exchange and uses it from one thread at a time.
        let e = unsafe { &mut *ex };
        if e.poisoned {
            return Err(dp_result::DP_POISONED);
        }
        e.poisoned = true;
        let r = f(e);
        e.poisoned = false;
        r
    })
}

/// Starts an exchange for one client request.
///
/// `method` and `target` (the raw request-target, `/v2/...?...`) are required; `headers` holds
/// `header_count` lines (the `Host` line included; NULL when 0); `peer` is the client's IP
/// address as text (NULL when unknown); `tls` says the client connection is TLS; `now_ms` is
/// the caller's monotonic clock in milliseconds (use the same clock for every call). All inputs
/// are copied.
///
/// On success writes a new exchange to `*out`, owned by the caller and released with
/// `dp_exchange_free`; it holds its own reference to `proxy`.
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_exchange_new(
    proxy: *const dp_proxy,
    method: *const c_char,
    method_len: usize,
    target: *const c_char,
    target_len: usize,
    headers: *const dp_header,
    header_count: usize,
    peer: *const c_char,
    peer_len: usize,
    tls: bool,
    now_ms: u64,
    out: *mut *mut dp_exchange,
) -> dp_result {
    guard(|| {
        check_null!(proxy, method, target, out);
        // SAFETY: the caller passes readable strings of the given lengths.
        let (method, target) =
            unsafe { (bytes(method.cast(), method_len)?, utf8(target, target_len)?) };
        let method = Method::from_bytes(method).map_err(|_| dp_result::DP_INVALID_METHOD)?;
        // SAFETY: the caller passes `header_count` readable lines.
        let headers = unsafe { header_map(headers, header_count) }?;
        let peer = if peer.is_null() {
            None
        } else {
            // SAFETY: the caller passes `peer_len` readable bytes.
            let text = unsafe { utf8(peer, peer_len) }?;
            Some(text.parse().map_err(|_| dp_result::DP_INVALID_ARGUMENT)?)
        };
        // SAFETY: the caller passes a live proxy.
        let proxy = unsafe { dp_proxy::clone_arc(proxy) };
        let head = RequestHead {
            method,
            target: target.to_owned(),
            headers,
            peer,
            tls,
        };
        let inner = Exchange::new(
            Arc::clone(&proxy.config),
            head,
            Timestamp::from_millis(now_ms),
        );
        let ex = dp_exchange {
            inner,
            proxy,
            current: None,
            poisoned: false,
        };
        // SAFETY: `out` is non-NULL and writable.
        unsafe { write(out, Box::into_raw(Box::new(ex))) };
        Ok(())
    })
}

/// Releases an exchange (finished or not). NULL is ignored. The current action and every
/// string read from it become invalid. A token fetch the exchange was granted and never
/// finished is released after the core's fetch timeout (30 s).
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_exchange_free(ex: *mut dp_exchange) {
    guard_value((), || {
        if !ex.is_null() {
            // SAFETY: from `Box::into_raw` in `dp_exchange_new`; the caller gives it up.
            drop(unsafe { Box::from_raw(ex) });
        }
    });
}

/// The next action. Writes to `*out` a pointer owned by the exchange, valid until the next
/// `dp_exchange_poll` or `dp_exchange_free` on `ex` (input calls do not invalidate it). Poll
/// until `DP_ACTION_WAIT` or `DP_ACTION_DONE`, and again after every input.
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_exchange_poll(
    ex: *mut dp_exchange,
    now_ms: u64,
    out: *mut *const dp_action,
) -> dp_result {
    with(ex, |e| {
        check_null!(out);
        let now = Timestamp::from_millis(now_ms);
        let mut action = e.inner.poll_action(now);
        // Proxy-login password checks are answered here, synchronously (bcrypt takes tens to
        // hundreds of milliseconds): the C API has no action kind for them.
        while let Action::VerifyPassword(check) = &action {
            let verdict = if dockerproxy_core::login::verify_password(check) {
                dockerproxy_core::login::PasswordVerdict::Valid
            } else {
                dockerproxy_core::login::PasswordVerdict::Invalid
            };
            e.inner.handle_password_result(verdict, now);
            action = e.inner.poll_action(now);
        }
        let current = e.current.insert(dp_action::new(action));
        // SAFETY: `out` is non-NULL and writable.
        unsafe { write(out, current as *const dp_action) };
        Ok(())
    })
}

/// Answers `DP_ACTION_SEND_UPSTREAM` with the upstream response head. Headers are copied.
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_exchange_upstream_head(
    ex: *mut dp_exchange,
    status: u16,
    headers: *const dp_header,
    header_count: usize,
    now_ms: u64,
) -> dp_result {
    with(ex, |e| {
        let status = StatusCode::from_u16(status).map_err(|_| dp_result::DP_INVALID_STATUS)?;
        // SAFETY: the caller passes `header_count` readable lines.
        let headers = unsafe { header_map(headers, header_count) }?;
        e.inner.handle_upstream_head(
            UpstreamHead { status, headers },
            Timestamp::from_millis(now_ms),
        );
        Ok(())
    })
}

/// Answers `DP_ACTION_READ_UPSTREAM_BODY` with the whole body (copied; NULL when `len` is 0).
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_exchange_upstream_body(
    ex: *mut dp_exchange,
    body: *const u8,
    len: usize,
    now_ms: u64,
) -> dp_result {
    with(ex, |e| {
        // SAFETY: the caller passes `len` readable bytes.
        let b = Bytes::copy_from_slice(unsafe { bytes(body, len) }?);
        e.inner
            .handle_upstream_body(b, Timestamp::from_millis(now_ms));
        Ok(())
    })
}

/// Reports a transport failure of the last upstream request or body read. `error` is one of
/// the `DP_UPSTREAM_*` values; anything else is `DP_INVALID_ARGUMENT`.
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_exchange_upstream_error(
    ex: *mut dp_exchange,
    error: u32,
    now_ms: u64,
) -> dp_result {
    with(ex, |e| {
        let err = match error {
            DP_UPSTREAM_UNREACHABLE => UpstreamError::Unreachable,
            DP_UPSTREAM_TIMEOUT => UpstreamError::Timeout,
            DP_UPSTREAM_TOO_LARGE => UpstreamError::TooLarge,
            DP_UPSTREAM_BODY_FAILED => UpstreamError::BodyFailed,
            DP_UPSTREAM_DENIED => UpstreamError::Denied,
            _ => return Err(dp_result::DP_INVALID_ARGUMENT),
        };
        e.inner
            .handle_upstream_error(err, Timestamp::from_millis(now_ms));
        Ok(())
    })
}

/// Answers `DP_ACTION_CACHE_LOOKUP`: no entry (or no cache).
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_exchange_cache_miss(ex: *mut dp_exchange, now_ms: u64) -> dp_result {
    with(ex, |e| {
        e.inner
            .handle_cache_result(CacheResult::Miss, Timestamp::from_millis(now_ms));
        Ok(())
    })
}

/// Answers `DP_ACTION_CACHE_LOOKUP`: a stored blob of `size` bytes.
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_exchange_cache_blob(
    ex: *mut dp_exchange,
    size: u64,
    access: dp_access,
    now_ms: u64,
) -> dp_result {
    with(ex, |e| {
        let r = CacheResult::Blob {
            size,
            access: access.into(),
        };
        e.inner
            .handle_cache_result(r, Timestamp::from_millis(now_ms));
        Ok(())
    })
}

/// Answers `DP_ACTION_CACHE_LOOKUP`: a stored manifest (`digest` as `algorithm:hex`, its
/// `Content-Type`, its bytes; all copied). `validated_at_ms` is when a tag mapping was last
/// validated upstream, or negative for a lookup by digest.
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_exchange_cache_manifest(
    ex: *mut dp_exchange,
    digest: *const c_char,
    digest_len: usize,
    media_type: *const c_char,
    media_type_len: usize,
    body: *const u8,
    body_len: usize,
    access: dp_access,
    validated_at_ms: i64,
    now_ms: u64,
) -> dp_result {
    with(ex, |e| {
        check_null!(digest, media_type);
        // SAFETY: the caller passes readable inputs of the given lengths.
        let (d, m, b) = unsafe {
            (
                utf8(digest, digest_len)?,
                utf8(media_type, media_type_len)?,
                bytes(body, body_len)?,
            )
        };
        let digest = Digest::parse(d).map_err(|_| dp_result::DP_INVALID_DIGEST)?;
        let r = CacheResult::Manifest {
            digest,
            media_type: m.to_owned(),
            body: Bytes::copy_from_slice(b),
            access: access.into(),
            validated_at: u64::try_from(validated_at_ms)
                .ok()
                .map(Timestamp::from_millis),
        };
        e.inner
            .handle_cache_result(r, Timestamp::from_millis(now_ms));
        Ok(())
    })
}

/// Answers `DP_ACTION_READ_CLIENT_BODY` with the client's body (copied; NULL when `len` is 0).
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_exchange_client_body(
    ex: *mut dp_exchange,
    body: *const u8,
    len: usize,
    now_ms: u64,
) -> dp_result {
    with(ex, |e| {
        // SAFETY: the caller passes `len` readable bytes.
        let b = Bytes::copy_from_slice(unsafe { bytes(body, len) }?);
        e.inner
            .handle_client_body(Some(b), Timestamp::from_millis(now_ms));
        Ok(())
    })
}

/// Answers `DP_ACTION_READ_CLIENT_BODY`: the body was larger than the limit or unreadable.
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_exchange_client_body_failed(
    ex: *mut dp_exchange,
    now_ms: u64,
) -> dp_result {
    with(ex, |e| {
        e.inner
            .handle_client_body(None, Timestamp::from_millis(now_ms));
        Ok(())
    })
}

/// Answers `DP_ACTION_TOKEN_LOOKUP` from the caller's own token cache: a valid token (copied)
/// expiring at `expires_at_ms`.
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_exchange_token_hit(
    ex: *mut dp_exchange,
    token: *const c_char,
    token_len: usize,
    expires_at_ms: u64,
    now_ms: u64,
) -> dp_result {
    with(ex, |e| {
        check_null!(token);
        // SAFETY: the caller passes `token_len` readable bytes.
        let value = unsafe { utf8(token, token_len) }?.to_owned();
        let t = Token {
            value,
            expires_at: Timestamp::from_millis(expires_at_ms),
        };
        e.inner
            .handle_token_lookup(TokenLookup::Hit(t), Timestamp::from_millis(now_ms));
        Ok(())
    })
}

/// Answers `DP_ACTION_TOKEN_LOOKUP` from the caller's own token cache: this exchange is the
/// one fetcher (it will end with `DP_ACTION_TOKEN_STORE`).
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_exchange_token_fetch(ex: *mut dp_exchange, now_ms: u64) -> dp_result {
    with(ex, |e| {
        e.inner
            .handle_token_lookup(TokenLookup::Fetch, Timestamp::from_millis(now_ms));
        Ok(())
    })
}

/// Performs the current token action against the proxy's shared token cache:
/// `DP_ACTION_TOKEN_LOOKUP` looks up and answers the exchange (`DP_TOKEN_WAIT` when another
/// exchange is fetching the same token: nothing was answered, call again later, for example
/// after a few milliseconds); `DP_ACTION_TOKEN_STORE` stores or releases;
/// `DP_ACTION_TOKEN_INVALIDATE` drops. Other kinds: `DP_WRONG_ACTION`; before the first poll:
/// `DP_NO_ACTION`. The current action stays valid.
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_exchange_token_cache(ex: *mut dp_exchange, now_ms: u64) -> dp_result {
    with(ex, |e| {
        let now = Timestamp::from_millis(now_ms);
        let current = e.current.as_ref().ok_or(dp_result::DP_NO_ACTION)?;
        let key = token_key(current).ok_or(dp_result::DP_WRONG_ACTION)?;
        let mut tokens = e.proxy.tokens();
        match &current.action {
            Action::TokenLookup(_) => {
                let r = tokens.lookup(key, now);
                drop(tokens);
                if r == TokenLookup::Wait {
                    return Err(dp_result::DP_TOKEN_WAIT);
                }
                e.inner.handle_token_lookup(r, now);
            }
            Action::TokenStore { token: Some(t), .. } => tokens.complete(key.clone(), t.clone()),
            Action::TokenStore { token: None, .. } => tokens.fail(key),
            _ => tokens.invalidate(key),
        }
        Ok(())
    })
}

/// Time passed (a `DP_ACTION_WAIT` deadline, or a periodic tick): lets the exchange notice its
/// own timeouts.
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_exchange_timeout(ex: *mut dp_exchange, now_ms: u64) -> dp_result {
    with(ex, |e| {
        e.inner.handle_timeout(Timestamp::from_millis(now_ms));
        Ok(())
    })
}
