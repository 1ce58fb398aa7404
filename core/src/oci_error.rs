//! OCI error responses (`{"errors":[{"code","message","detail"}]}`), the body of every error the
//! proxy generates itself.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};

/// The distribution-spec error codes this proxy emits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorCode {
    /// `BLOB_UNKNOWN`
    BlobUnknown,
    /// `DIGEST_INVALID`
    DigestInvalid,
    /// `MANIFEST_UNKNOWN`
    ManifestUnknown,
    /// `MANIFEST_INVALID`
    ManifestInvalid,
    /// `NAME_INVALID`
    NameInvalid,
    /// `NAME_UNKNOWN`
    NameUnknown,
    /// `TAG_INVALID`
    TagInvalid,
    /// `UNAUTHORIZED`
    Unauthorized,
    /// `DENIED`
    Denied,
    /// `UNSUPPORTED`
    Unsupported,
    /// `TOOMANYREQUESTS`
    TooManyRequests,
    /// `UNAVAILABLE`
    Unavailable,
    /// `UNKNOWN`
    Unknown,
}

impl ErrorCode {
    /// The code as it appears in the JSON body.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BlobUnknown => "BLOB_UNKNOWN",
            Self::DigestInvalid => "DIGEST_INVALID",
            Self::ManifestUnknown => "MANIFEST_UNKNOWN",
            Self::ManifestInvalid => "MANIFEST_INVALID",
            Self::NameInvalid => "NAME_INVALID",
            Self::NameUnknown => "NAME_UNKNOWN",
            Self::TagInvalid => "TAG_INVALID",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::Denied => "DENIED",
            Self::Unsupported => "UNSUPPORTED",
            Self::TooManyRequests => "TOOMANYREQUESTS",
            Self::Unavailable => "UNAVAILABLE",
            Self::Unknown => "UNKNOWN",
        }
    }
}

/// An error the proxy answers itself: status, code and a human message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OciError {
    /// HTTP status.
    pub status: StatusCode,
    /// OCI error code.
    pub code: ErrorCode,
    /// Human-readable message; never holds secrets or internal host names.
    pub message: String,
}

impl OciError {
    /// Builds an error.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    /// The JSON body, one line plus `\n`.
    pub fn body(&self) -> Bytes {
        let v = serde_json::json!({
            "errors": [{"code": self.code.as_str(), "message": self.message, "detail": null}]
        });
        let mut s = v.to_string();
        s.push('\n');
        Bytes::from(s)
    }

    /// Headers every OCI error carries (`Content-Type`).
    pub fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h
    }
}
