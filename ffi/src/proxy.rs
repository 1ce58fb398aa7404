//! `dp_proxy`: a validated configuration plus the shared token cache. One per process (or per
//! Nginx worker); shared by every exchange it starts.

use core::ffi::c_char;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use dockerproxy_core::Config;
use dockerproxy_core::config::load;
use dockerproxy_core::token::{DEFAULT_TOKEN_CACHE_CAPACITY, TokenCache};

use crate::error::dp_result;
use crate::headers::{array, bytes, dp_kv, dp_str, utf8, write};
use crate::panic::{check_null, guard, guard_value};

/// The configuration text is TOML (the server's `config.toml`).
pub const DP_CONFIG_TOML: u32 = 0;
/// The configuration text is JSON with the same structure as the TOML file.
pub const DP_CONFIG_JSON: u32 = 1;

/// A configured proxy: the parsed configuration and the token cache shared by its exchanges.
/// Opaque; created by `dp_proxy_new`, released by `dp_proxy_free`. Thread-safe: exchanges of
/// one proxy may run on different threads.
#[allow(non_camel_case_types)]
pub struct dp_proxy {
    /// The validated configuration.
    pub(crate) config: Arc<Config>,
    /// The proxy's own upstream tokens (COMPAT.md §4.3).
    tokens: Mutex<TokenCache>,
    /// Start-up warnings, `key: message`.
    warnings: Vec<String>,
}

impl dp_proxy {
    /// Locks the token cache (a poisoned lock is still usable: the cache has no invariant a
    /// panic can break half-way that a later lookup relies on).
    pub(crate) fn tokens(&self) -> MutexGuard<'_, TokenCache> {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Borrows a handle passed in by C.
    ///
    /// # Safety
    /// `p` must be a live pointer returned by `dp_proxy_new`.
    pub(crate) unsafe fn borrow<'a>(p: *const Self) -> &'a Self {
        // SAFETY: the caller guarantees a live handle.
        unsafe { &*p }
    }

    /// A new strong reference from a C handle.
    ///
    /// # Safety
    /// As [`Self::borrow`].
    pub(crate) unsafe fn clone_arc(p: *const Self) -> Arc<Self> {
        // SAFETY: `p` came from `Arc::into_raw` and is live, so its count is ≥ 1.
        unsafe {
            Arc::increment_strong_count(p);
            Arc::from_raw(p)
        }
    }
}

/// Copies `msg` into `buf` (capacity `cap`), truncated and NUL-terminated.
///
/// # Safety
/// `buf` is NULL or valid for writes of `cap` bytes.
unsafe fn write_message(buf: *mut c_char, cap: usize, msg: &str) {
    if buf.is_null() || cap == 0 {
        return;
    }
    let mut n = msg.len().min(cap - 1);
    while !msg.is_char_boundary(n) {
        n -= 1;
    }
    // SAFETY: `buf` has `cap` bytes and `n + 1 <= cap`; the source is `msg` (no overlap).
    unsafe {
        core::ptr::copy_nonoverlapping(msg.as_ptr(), buf.cast::<u8>(), n);
        *buf.add(n) = 0;
    }
}

/// Turns JSON configuration text into the equivalent TOML text.
fn json_to_toml(text: &str) -> Result<String, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("configuration JSON: {e}"))?;
    let value = toml::Value::try_from(value).map_err(|e| format!("configuration JSON: {e}"))?;
    toml::to_string(&value).map_err(|e| format!("configuration JSON: {e}"))
}

/// Parses and validates a configuration.
///
/// `format` is `DP_CONFIG_TOML` or `DP_CONFIG_JSON`; `text`/`text_len` is the file content
/// (NULL with length 0 means no file: environment settings and defaults only). `env`/`env_len`
/// are environment-style settings (`CUSTOM_DOMAIN`, `DEBUG`, ...; see the README), NULL when
/// `env_len` is 0. The library copies everything it keeps; the inputs need only live for the
/// call. `password_file` credentials are refused (no file access): pass `password` instead.
///
/// On success writes a new handle to `*out`; the caller owns it and releases it with
/// `dp_proxy_free` (exchanges hold their own reference, so the proxy may be freed before them).
/// On `DP_CONFIG_ERROR` (or `DP_INVALID_ARGUMENT` for non-UTF-8 text), writes a NUL-terminated
/// message naming the key into `err_buf` (capacity `err_cap`, truncated to fit) when `err_buf`
/// is not NULL, and leaves `*out` untouched.
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_proxy_new(
    format: u32,
    text: *const u8,
    text_len: usize,
    env: *const dp_kv,
    env_len: usize,
    out: *mut *const dp_proxy,
    err_buf: *mut c_char,
    err_cap: usize,
) -> dp_result {
    guard(|| {
        check_null!(out);
        let fail = |code: dp_result, msg: &str| {
            // SAFETY: the caller guarantees `err_buf` is NULL or has `err_cap` bytes.
            unsafe { write_message(err_buf, err_cap, msg) };
            Err(code)
        };
        // SAFETY: the caller guarantees `text_len` readable bytes at `text`.
        let raw = unsafe { bytes(text, text_len) }?;
        let Ok(raw) = core::str::from_utf8(raw) else {
            return fail(
                dp_result::DP_INVALID_ARGUMENT,
                "configuration text is not UTF-8",
            );
        };
        let file = match format {
            DP_CONFIG_TOML => raw.to_owned(),
            DP_CONFIG_JSON if raw.is_empty() => String::new(),
            DP_CONFIG_JSON => match json_to_toml(raw) {
                Ok(t) => t,
                Err(m) => return fail(dp_result::DP_CONFIG_ERROR, &m),
            },
            _ => {
                return fail(
                    dp_result::DP_INVALID_ARGUMENT,
                    "unknown configuration format",
                );
            }
        };
        let mut map = BTreeMap::new();
        // SAFETY: the caller guarantees `env_len` readable elements at `env`.
        for kv in unsafe { array(env, env_len) }? {
            // SAFETY: the caller guarantees each pair's pointers.
            let (k, v) = unsafe { (utf8(kv.key, kv.key_len), utf8(kv.value, kv.value_len)) };
            let (Ok(k), Ok(v)) = (k, v) else {
                return fail(
                    dp_result::DP_INVALID_ARGUMENT,
                    "environment pair is not UTF-8",
                );
            };
            map.insert(k.to_owned(), v.to_owned());
        }
        let file = (!raw.is_empty()).then_some(file.as_str());
        let (config, warnings) = match load(&map, file) {
            Ok(r) => r,
            Err(e) => return fail(dp_result::DP_CONFIG_ERROR, &e.to_string()),
        };
        let proxy = dp_proxy {
            config: Arc::new(config),
            tokens: Mutex::new(TokenCache::new(DEFAULT_TOKEN_CACHE_CAPACITY)),
            warnings: warnings
                .into_iter()
                .map(|w| format!("{}: {}", w.key, w.message))
                .collect(),
        };
        // SAFETY: `out` is non-NULL and the caller guarantees it is writable.
        unsafe { write(out, Arc::into_raw(Arc::new(proxy))) };
        Ok(())
    })
}

/// Releases the caller's reference to a proxy. NULL is ignored. Exchanges started from it keep
/// working (they hold their own reference). Strings borrowed from the proxy (warnings, route
/// results' registry names stay valid: they are copied) become invalid.
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_proxy_free(proxy: *const dp_proxy) {
    guard_value((), || {
        if !proxy.is_null() {
            // SAFETY: `proxy` came from `dp_proxy_new` and the caller gives up its reference.
            drop(unsafe { Arc::from_raw(proxy) });
        }
    });
}

/// The number of start-up warnings of the configuration (0 when `proxy` is NULL).
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_proxy_warning_count(proxy: *const dp_proxy) -> usize {
    guard_value(0, || {
        if proxy.is_null() {
            return 0;
        }
        // SAFETY: the caller passes a live handle.
        unsafe { dp_proxy::borrow(proxy) }.warnings.len()
    })
}

/// Writes warning `index` (`key: message`) to `*out`. The string is owned by the proxy and
/// valid until `dp_proxy_free`.
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_proxy_warning(
    proxy: *const dp_proxy,
    index: usize,
    out: *mut dp_str,
) -> dp_result {
    guard(|| {
        check_null!(proxy, out);
        // SAFETY: the caller passes a live handle.
        let p = unsafe { dp_proxy::borrow(proxy) };
        let w = p.warnings.get(index).ok_or(dp_result::DP_OUT_OF_RANGE)?;
        // SAFETY: `out` is non-NULL and writable.
        unsafe { write(out, dp_str::from_str(w)) };
        Ok(())
    })
}

/// The number of cached (or in-flight) upstream tokens of the proxy (0 when `proxy` is NULL).
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_proxy_token_count(proxy: *const dp_proxy) -> usize {
    guard_value(0, || {
        if proxy.is_null() {
            return 0;
        }
        // SAFETY: the caller passes a live handle.
        unsafe { dp_proxy::borrow(proxy) }.tokens().len()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_config_becomes_equivalent_toml() {
        let t = json_to_toml(r#"{"routes":{"docker.io":{"upstream":"http://127.0.0.1:5000"}}}"#)
            .unwrap();
        let v: toml::Value = toml::from_str(&t).unwrap();
        assert_eq!(
            v["routes"]["docker.io"]["upstream"].as_str(),
            Some("http://127.0.0.1:5000")
        );
        assert!(
            json_to_toml("{")
                .unwrap_err()
                .starts_with("configuration JSON")
        );
    }

    #[test]
    fn message_is_truncated_on_a_char_boundary() {
        let mut buf = [0x55 as c_char; 5];
        // SAFETY: buf has 5 bytes.
        unsafe { write_message(buf.as_mut_ptr(), 5, "abé€x") };
        let s: Vec<u8> = buf.iter().map(|c| *c as u8).collect();
        assert_eq!(&s[..4], b"ab\xc3\xa9");
        assert_eq!(s[4], 0);
    }
}
