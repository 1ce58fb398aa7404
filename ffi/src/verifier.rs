//! `dp_verifier`: streaming digest verification with a held-back tail. Push upstream chunks
//! and forward only the bytes each call releases; `dp_verifier_finish` releases the tail only
//! when digest and length match, so a client never gets a complete body with wrong bytes.

use core::ffi::c_char;

use bytes::Bytes;
use dockerproxy_core::reference::Digest;
use dockerproxy_core::verifier::{Verifier, VerifyError};

use crate::error::dp_result;
use crate::headers::{bytes, dp_str, utf8, write};
use crate::panic::{check_null, guard, guard_value};

/// A digest check in progress. Opaque; from `dp_verifier_new`, released by
/// `dp_verifier_free`. Not thread-safe.
#[allow(non_camel_case_types)]
pub struct dp_verifier {
    /// `None` once finished or failed.
    inner: Option<Verifier>,
    /// The bytes released by the last call (what the returned pointer points at).
    released: Bytes,
    /// On a digest mismatch: what the bytes hash to.
    actual: Option<String>,
}

fn code(e: &VerifyError) -> dp_result {
    match e {
        VerifyError::DigestMismatch { .. } => dp_result::DP_DIGEST_MISMATCH,
        VerifyError::TooLong => dp_result::DP_TOO_LONG,
        _ => dp_result::DP_TOO_SHORT,
    }
}

/// Starts a check of `digest` (`algorithm:hex`, copied). `expected_len` is the expected size in
/// bytes, or negative when unknown. On success writes a new verifier to `*out`, owned by the
/// caller and released with `dp_verifier_free`. `DP_INVALID_DIGEST` for an invalid or
/// unsupported digest.
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_verifier_new(
    digest: *const c_char,
    digest_len: usize,
    expected_len: i64,
    out: *mut *mut dp_verifier,
) -> dp_result {
    guard(|| {
        check_null!(digest, out);
        // SAFETY: the caller passes `digest_len` readable bytes.
        let d = unsafe { utf8(digest, digest_len) }?;
        let d = Digest::parse(d).map_err(|_| dp_result::DP_INVALID_DIGEST)?;
        let v = Verifier::new(d, u64::try_from(expected_len).ok());
        let v = dp_verifier {
            inner: Some(v),
            released: Bytes::new(),
            actual: None,
        };
        // SAFETY: `out` is non-NULL and writable.
        unsafe { write(out, Box::into_raw(Box::new(v))) };
        Ok(())
    })
}

/// Runs a verifier step, keeping the released bytes and publishing them.
fn step(
    v: *mut dp_verifier,
    out: *mut *const u8,
    out_len: *mut usize,
    f: impl FnOnce(&mut dp_verifier) -> Result<Bytes, VerifyError>,
) -> dp_result {
    guard(|| {
        check_null!(v, out, out_len);
        // SAFETY: the caller passes a live verifier, used from one thread at a time.
        let v = unsafe { &mut *v };
        if v.inner.is_none() {
            return Err(dp_result::DP_FINISHED);
        }
        match f(v) {
            Ok(b) => v.released = b,
            Err(e) => {
                v.inner = None;
                v.released = Bytes::new();
                if let VerifyError::DigestMismatch { actual } = &e {
                    v.actual = Some(actual.clone());
                }
                return Err(code(&e));
            }
        }
        // SAFETY: both are non-NULL and writable.
        unsafe {
            write(out, v.released.as_ptr());
            write(out_len, v.released.len());
        }
        Ok(())
    })
}

/// Hashes `len` bytes at `chunk` (NULL when 0) and writes to `*out`/`*out_len` the bytes that
/// may now be forwarded (possibly none). Those bytes are owned by the verifier and valid until
/// the next call on it or `dp_verifier_free`. `DP_TOO_LONG` past the expected length (the
/// verifier is then finished); `DP_FINISHED` after finish or a failure.
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_verifier_push(
    verifier: *mut dp_verifier,
    chunk: *const u8,
    len: usize,
    out: *mut *const u8,
    out_len: *mut usize,
) -> dp_result {
    if chunk.is_null() && len != 0 {
        return dp_result::DP_NULL_PARAMETER;
    }
    step(verifier, out, out_len, |v| {
        // SAFETY: the caller passes `len` readable bytes (checked non-NULL above when `len` is
        // not 0); they are hashed and copied before returning.
        let chunk = unsafe { bytes(chunk, len) }.unwrap_or_default();
        match v.inner.as_mut() {
            Some(inner) => inner.push(chunk),
            None => Ok(Bytes::new()),
        }
    })
}

/// Ends the stream: on `DP_OK` writes the held-back tail to `*out`/`*out_len` (owned by the
/// verifier, valid until `dp_verifier_free`). On `DP_DIGEST_MISMATCH`, `DP_TOO_SHORT` or
/// `DP_TOO_LONG` the tail is dropped: abort the client stream. The verifier is finished either
/// way.
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_verifier_finish(
    verifier: *mut dp_verifier,
    out: *mut *const u8,
    out_len: *mut usize,
) -> dp_result {
    step(verifier, out, out_len, |v| match v.inner.take() {
        Some(inner) => inner.finish(),
        None => Ok(Bytes::new()),
    })
}

/// After `DP_DIGEST_MISMATCH`: the digest the bytes actually hash to, owned by the verifier and
/// valid until `dp_verifier_free`. `DP_WRONG_ACTION` when there was no mismatch.
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_verifier_actual_digest(
    verifier: *const dp_verifier,
    out: *mut dp_str,
) -> dp_result {
    guard(|| {
        check_null!(verifier, out);
        // SAFETY: the caller passes a live verifier.
        let v = unsafe { &*verifier };
        let a = v.actual.as_deref().ok_or(dp_result::DP_WRONG_ACTION)?;
        // SAFETY: `out` is non-NULL and writable.
        unsafe { write(out, dp_str::from_str(a)) };
        Ok(())
    })
}

/// Releases a verifier. NULL is ignored. Bytes it released become invalid.
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_verifier_free(verifier: *mut dp_verifier) {
    guard_value((), || {
        if !verifier.is_null() {
            // SAFETY: from `Box::into_raw` in `dp_verifier_new`; the caller gives it up.
            drop(unsafe { Box::from_raw(verifier) });
        }
    });
}
