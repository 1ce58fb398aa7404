//! The plain C structs that carry strings, bytes and header lines across the ABI, and the
//! helpers that turn C input into Rust values.

use core::ffi::c_char;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::error::dp_result;

/// A borrowed string handed out by the library: `len` bytes at `data`, NOT NUL-terminated.
/// Who owns it and how long it lives is written on the function that returns it.
/// An absent value is `{NULL, 0}`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[allow(non_camel_case_types)]
pub struct dp_str {
    /// First byte (NULL when absent).
    pub data: *const c_char,
    /// Length in bytes.
    pub len: usize,
}

impl dp_str {
    /// The absent string.
    pub(crate) const NONE: Self = Self {
        data: core::ptr::null(),
        len: 0,
    };

    /// Borrows `s` (the caller of the C function is told how long it lives).
    pub(crate) fn from_str(s: &str) -> Self {
        Self {
            data: s.as_ptr().cast(),
            len: s.len(),
        }
    }

    /// Borrows raw bytes (header values may be non-UTF-8 octets).
    pub(crate) fn from_bytes(b: &[u8]) -> Self {
        Self {
            data: b.as_ptr().cast(),
            len: b.len(),
        }
    }

    /// Borrows an optional string; `None` is `{NULL, 0}`.
    pub(crate) fn from_opt(s: Option<&str>) -> Self {
        s.map_or(Self::NONE, Self::from_str)
    }
}

/// A header line or key/value pair passed IN by the caller. The library copies what it keeps;
/// the caller's memory only has to live for the duration of the call.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[allow(non_camel_case_types)]
pub struct dp_header {
    /// Name bytes (not NUL-terminated).
    pub name: *const c_char,
    /// Name length.
    pub name_len: usize,
    /// Value bytes (not NUL-terminated).
    pub value: *const c_char,
    /// Value length.
    pub value_len: usize,
}

/// An environment-style setting passed IN by the caller (`CUSTOM_DOMAIN` = `example.com`).
/// Copied during the call.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[allow(non_camel_case_types)]
pub struct dp_kv {
    /// Key bytes (UTF-8, not NUL-terminated).
    pub key: *const c_char,
    /// Key length.
    pub key_len: usize,
    /// Value bytes (UTF-8, not NUL-terminated).
    pub value: *const c_char,
    /// Value length.
    pub value_len: usize,
}

/// Borrows `len` bytes at `ptr`; NULL is allowed only with `len == 0`.
///
/// # Safety
/// `ptr` must be valid for reads of `len` bytes for `'a`.
pub(crate) unsafe fn bytes<'a>(ptr: *const u8, len: usize) -> Result<&'a [u8], dp_result> {
    if ptr.is_null() {
        return if len == 0 {
            Ok(&[])
        } else {
            Err(dp_result::DP_NULL_PARAMETER)
        };
    }
    // SAFETY: non-NULL, and the caller guarantees `len` readable bytes for 'a.
    Ok(unsafe { core::slice::from_raw_parts(ptr, len) })
}

/// Borrows `len` bytes at `ptr` as UTF-8.
///
/// # Safety
/// As [`bytes`].
pub(crate) unsafe fn utf8<'a>(ptr: *const c_char, len: usize) -> Result<&'a str, dp_result> {
    // SAFETY: forwarded contract.
    let b = unsafe { bytes(ptr.cast(), len) }?;
    core::str::from_utf8(b).map_err(|_| dp_result::DP_INVALID_ARGUMENT)
}

/// Borrows `n` elements at `ptr`; NULL is allowed only with `n == 0`.
///
/// # Safety
/// `ptr` must be valid for reads of `n` elements for `'a`.
pub(crate) unsafe fn array<'a, T>(ptr: *const T, n: usize) -> Result<&'a [T], dp_result> {
    if ptr.is_null() {
        return if n == 0 {
            Ok(&[])
        } else {
            Err(dp_result::DP_NULL_PARAMETER)
        };
    }
    // SAFETY: non-NULL, and the caller guarantees `n` readable elements for 'a.
    Ok(unsafe { core::slice::from_raw_parts(ptr, n) })
}

/// Builds a header map from caller lines (repeated names appended, order kept).
///
/// # Safety
/// `headers` must be valid for `n` elements, each pointing at readable name/value bytes.
pub(crate) unsafe fn header_map(
    headers: *const dp_header,
    n: usize,
) -> Result<HeaderMap, dp_result> {
    // SAFETY: forwarded contract.
    let lines = unsafe { array(headers, n) }?;
    let mut map = HeaderMap::with_capacity(lines.len());
    for line in lines {
        // SAFETY: the caller guarantees each line's pointers.
        let name = unsafe { bytes(line.name.cast(), line.name_len) }?;
        // SAFETY: as above.
        let value = unsafe { bytes(line.value.cast(), line.value_len) }?;
        let name = HeaderName::from_bytes(name).map_err(|_| dp_result::DP_INVALID_HEADER)?;
        let value = HeaderValue::from_bytes(value).map_err(|_| dp_result::DP_INVALID_HEADER)?;
        map.append(name, value);
    }
    Ok(map)
}

/// Flattens a header map into lines, in iteration order (what the accessors index).
pub(crate) fn lines(map: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Writes `value` through `out` (the caller checked `out` for NULL).
///
/// # Safety
/// `out` must be valid for a write of `T`.
pub(crate) unsafe fn write<T>(out: *mut T, value: T) {
    // SAFETY: forwarded contract; `write` does not read or drop the old (possibly
    // uninitialised) value.
    unsafe { out.write(value) }
}
