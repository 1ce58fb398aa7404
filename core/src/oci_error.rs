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
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// The JSON body, one line plus `\n`.
    pub fn body(&self) -> Bytes {
        // Built by hand to keep the spec's key order (`code`, `message`, `detail`); `json!`
        // would sort the keys. The message is escaped by serde_json.
        let message = serde_json::Value::String(self.message.clone()).to_string();
        Bytes::from(format!(
            "{{\"errors\":[{{\"code\":\"{}\",\"message\":{message},\"detail\":null}}]}}\n",
            self.code.as_str()
        ))
    }

    /// Headers every OCI error carries (`Content-Type`).
    pub fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_keeps_spec_key_order_and_escapes() {
        let e = OciError::new(StatusCode::NOT_FOUND, ErrorCode::NameUnknown, "a \"b\"\n");
        assert_eq!(
            e.body(),
            Bytes::from_static(b"{\"errors\":[{\"code\":\"NAME_UNKNOWN\",\"message\":\"a \\\"b\\\"\\n\",\"detail\":null}]}\n")
        );
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["errors"][0]["message"], "a \"b\"\n");
    }
}
