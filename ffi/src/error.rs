//! Result codes (`dp_result`) and their messages.

use core::ffi::c_char;

/// The result of every fallible `dp_` function. `DP_OK` is 0; every other value is an error
/// whose text `dp_result_message` returns.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum dp_result {
    /// Success.
    DP_OK = 0,
    /// A required pointer argument was NULL.
    DP_NULL_PARAMETER = 1,
    /// The library panicked; the handle involved must be freed and not used otherwise.
    DP_PANIC = 2,
    /// An argument is out of range or malformed (not UTF-8, unknown enum value, ...).
    DP_INVALID_ARGUMENT = 3,
    /// The configuration was refused; the message names the key.
    DP_CONFIG_ERROR = 4,
    /// A header name or value is not valid HTTP.
    DP_INVALID_HEADER = 5,
    /// The method is not a valid HTTP token.
    DP_INVALID_METHOD = 6,
    /// An HTTP status is outside 100..=999.
    DP_INVALID_STATUS = 7,
    /// A digest string is not `algorithm:hex` of a supported algorithm.
    DP_INVALID_DIGEST = 8,
    /// The accessor does not apply to this action kind.
    DP_WRONG_ACTION = 9,
    /// An index is past the end.
    DP_OUT_OF_RANGE = 10,
    /// The exchange has no current action (poll first).
    DP_NO_ACTION = 11,
    /// The handle was poisoned by an earlier panic.
    DP_POISONED = 12,
    /// Streamed bytes hash to another digest.
    DP_DIGEST_MISMATCH = 13,
    /// More bytes than the expected length.
    DP_TOO_LONG = 14,
    /// Fewer bytes than the expected length.
    DP_TOO_SHORT = 15,
    /// The verifier was already finished.
    DP_FINISHED = 16,
    /// The token cache asks to wait: another request is fetching this token. Call again later.
    DP_TOKEN_WAIT = 17,
    /// The request path is not valid (the classification carries the client error).
    DP_INVALID_REQUEST = 18,
}

impl dp_result {
    /// Every code, for the message lookup.
    const ALL: [Self; 19] = [
        Self::DP_OK,
        Self::DP_NULL_PARAMETER,
        Self::DP_PANIC,
        Self::DP_INVALID_ARGUMENT,
        Self::DP_CONFIG_ERROR,
        Self::DP_INVALID_HEADER,
        Self::DP_INVALID_METHOD,
        Self::DP_INVALID_STATUS,
        Self::DP_INVALID_DIGEST,
        Self::DP_WRONG_ACTION,
        Self::DP_OUT_OF_RANGE,
        Self::DP_NO_ACTION,
        Self::DP_POISONED,
        Self::DP_DIGEST_MISMATCH,
        Self::DP_TOO_LONG,
        Self::DP_TOO_SHORT,
        Self::DP_FINISHED,
        Self::DP_TOKEN_WAIT,
        Self::DP_INVALID_REQUEST,
    ];

    /// The code for a raw value, if it is one.
    pub(crate) fn from_u32(code: u32) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| *c as u32 == code)
    }

    /// The NUL-terminated message.
    pub(crate) const fn message(self) -> &'static str {
        match self {
            Self::DP_OK => "success\0",
            Self::DP_NULL_PARAMETER => "a required pointer argument was NULL\0",
            Self::DP_PANIC => "internal error: the library panicked\0",
            Self::DP_INVALID_ARGUMENT => "invalid argument\0",
            Self::DP_CONFIG_ERROR => "the configuration was refused\0",
            Self::DP_INVALID_HEADER => "invalid HTTP header name or value\0",
            Self::DP_INVALID_METHOD => "invalid HTTP method\0",
            Self::DP_INVALID_STATUS => "invalid HTTP status\0",
            Self::DP_INVALID_DIGEST => "invalid or unsupported digest\0",
            Self::DP_WRONG_ACTION => "the accessor does not apply to this action kind\0",
            Self::DP_OUT_OF_RANGE => "index out of range\0",
            Self::DP_NO_ACTION => "no current action: call dp_exchange_poll first\0",
            Self::DP_POISONED => "the handle was poisoned by an earlier internal error\0",
            Self::DP_DIGEST_MISMATCH => "the bytes do not match the expected digest\0",
            Self::DP_TOO_LONG => "more bytes than the expected length\0",
            Self::DP_TOO_SHORT => "fewer bytes than the expected length\0",
            Self::DP_FINISHED => "the verifier was already finished\0",
            Self::DP_TOKEN_WAIT => "another request is fetching this token; call again later\0",
            Self::DP_INVALID_REQUEST => "the request path is invalid\0",
        }
    }
}

/// The message of a result code, as a static NUL-terminated string.
///
/// Ownership: the string is static; never free it. Unknown codes give "unknown result code".
#[unsafe(no_mangle)]
pub extern "C" fn dp_result_message(code: u32) -> *const c_char {
    match dp_result::from_u32(code) {
        Some(c) => c.message().as_ptr().cast(),
        None => c"unknown result code".as_ptr(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_nul_terminated_message_and_round_trips() {
        for c in dp_result::ALL {
            assert!(c.message().ends_with('\0'), "{c:?}");
            assert_eq!(dp_result::from_u32(c as u32), Some(c));
        }
        assert_eq!(dp_result::from_u32(999), None);
    }
}
