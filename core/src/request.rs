//! OCI request classification (DESIGN.md §3 `RegistryRequest`): the path grammar of the
//! distribution-spec, validated before any routing side effect or upstream contact.
//!
//! [`classify`] works in two steps. First the raw path is checked and percent-decoded exactly
//! once (SECURITY.md §2.2): invalid escapes, an encoded `/`, NUL and other control characters,
//! non-ASCII bytes (raw or encoded) and dot segments (`.` or `..`, raw or encoded) are refused
//! with 400 `NAME_INVALID` "invalid path". Then the decoded path is matched against the endpoint
//! table by its *trailing* segments, so a repository name may itself contain `manifests`,
//! `blobs`, `tags` or `referrers` as components: `/v2/a/manifests/b/manifests/latest` is the
//! manifest `latest` of `a/manifests/b`.

use http::Method;

use http::StatusCode;

use crate::oci_error::{ErrorCode, OciError};
use crate::reference::{Digest, DigestError, Name, Reference, ReferenceError};

/// What a `/v2/...` path (after any registry prefix was removed) asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryRequest {
    /// `/v2/` or `/v2`.
    Base,
    /// `/v2/auth`.
    Auth,
    /// `/v2/<name>/manifests/<reference>`.
    Manifest {
        /// Repository.
        name: Name,
        /// Tag or digest.
        reference: Reference,
    },
    /// `/v2/<name>/blobs/<digest>`.
    Blob {
        /// Repository.
        name: Name,
        /// Digest.
        digest: Digest,
    },
    /// `/v2/<name>/blobs/uploads/...` (push only).
    Upload {
        /// Repository.
        name: Name,
    },
    /// `/v2/<name>/tags/list`.
    Tags {
        /// Repository.
        name: Name,
    },
    /// `/v2/<name>/referrers/<digest>`.
    Referrers {
        /// Repository.
        name: Name,
        /// Subject digest.
        digest: Digest,
    },
    /// `/v2/_catalog`.
    Catalog,
}

impl RegistryRequest {
    /// The repository, if the request names one.
    pub fn name(&self) -> Option<&Name> {
        match self {
            Self::Manifest { name, .. }
            | Self::Blob { name, .. }
            | Self::Upload { name }
            | Self::Tags { name }
            | Self::Referrers { name, .. } => Some(name),
            Self::Base | Self::Auth | Self::Catalog => None,
        }
    }
}

/// The result of classifying a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Classified {
    /// `/` (the 301 to `/v2/`).
    Root,
    /// A registry API path.
    Registry(RegistryRequest),
    /// Any other path: 404 `UNSUPPORTED` on a route host.
    Other,
}

/// Classifies a raw path (percent-encoded, as received, prefix removed). Encoded `/`, dot
/// segments, NUL, control characters and non-ASCII → `Err` (400); bad names, tags and digests →
/// `Err` with the spec code.
pub fn classify(path: &str) -> Result<Classified, OciError> {
    let decoded = decode_path(path).ok_or_else(invalid_path)?;
    if decoded == "/" {
        return Ok(Classified::Root);
    }
    let rest = match decoded.strip_prefix("/v2") {
        Some("" | "/") => return Ok(Classified::Registry(RegistryRequest::Base)),
        Some(rest) => match rest.strip_prefix('/') {
            Some(rest) => rest,
            None => return Ok(Classified::Other),
        },
        None => return Ok(Classified::Other),
    };
    match rest {
        "auth" => Ok(Classified::Registry(RegistryRequest::Auth)),
        "_catalog" => Ok(Classified::Registry(RegistryRequest::Catalog)),
        _ => classify_repository_path(rest),
    }
}

/// Matches `<name>/<endpoint>` (the part after `/v2/`) by its last segments.
fn classify_repository_path(rest: &str) -> Result<Classified, OciError> {
    // `rest` = name + "/" + a, or name + "/" + a + "/" + b, ... Peel off up to three trailing
    // segments; what is left before them is the name.
    let Some((head1, last)) = rest.rsplit_once('/') else {
        return Ok(Classified::Other);
    };
    let (head2, second) = head1.rsplit_once('/').unwrap_or(("", head1));
    let has_name2 = head1.contains('/');
    let request = match second {
        "manifests" if has_name2 => {
            let name = name(head2)?;
            let reference = Reference::parse(last).map_err(reference_error)?;
            RegistryRequest::Manifest { name, reference }
        }
        "blobs" if has_name2 && last == "uploads" => RegistryRequest::Upload { name: name(head2)? },
        "blobs" if has_name2 => {
            let name = name(head2)?;
            RegistryRequest::Blob {
                name,
                digest: digest(last)?,
            }
        }
        "tags" if has_name2 && last == "list" => RegistryRequest::Tags { name: name(head2)? },
        "referrers" if has_name2 => {
            let name = name(head2)?;
            RegistryRequest::Referrers {
                name,
                digest: digest(last)?,
            }
        }
        // `<name>/blobs/uploads/<session>`, the session possibly empty (`.../uploads/`).
        "uploads" => match head2.rsplit_once('/') {
            Some((head3, "blobs")) => RegistryRequest::Upload { name: name(head3)? },
            _ => return Ok(upload_with_long_session(rest)),
        },
        _ => return Ok(upload_with_long_session(rest)),
    };
    Ok(Classified::Registry(request))
}

/// `<name>/blobs/uploads/<a/b/...>`: an upload session location with `/` in it. The name is
/// the shortest valid one before a `/blobs/uploads/`; anything else is `Other`.
fn upload_with_long_session(rest: &str) -> Classified {
    const MARKER: &str = "/blobs/uploads/";
    for (at, _) in rest.match_indices(MARKER) {
        if at > crate::reference::MAX_NAME_LEN {
            break;
        }
        if let Some(name) = rest.get(..at).and_then(Name::parse) {
            return Classified::Registry(RegistryRequest::Upload { name });
        }
    }
    Classified::Other
}

/// Validates a repository name (400 `NAME_INVALID`).
fn name(s: &str) -> Result<Name, OciError> {
    Name::parse(s).ok_or_else(|| {
        OciError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::NameInvalid,
            "invalid repository name",
        )
    })
}

/// Validates a digest in a blob or referrers path (400 `DIGEST_INVALID`).
fn digest(s: &str) -> Result<Digest, OciError> {
    Digest::parse(s).map_err(|e| match e {
        DigestError::Invalid => digest_invalid(),
        DigestError::Unsupported => digest_unsupported(),
    })
}

/// Maps a `<reference>` error to its 400.
fn reference_error(e: ReferenceError) -> OciError {
    match e {
        ReferenceError::InvalidTag => OciError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::TagInvalid,
            "invalid tag",
        ),
        ReferenceError::InvalidDigest => digest_invalid(),
        ReferenceError::UnsupportedDigest => digest_unsupported(),
    }
}

/// 400 `DIGEST_INVALID` for a malformed digest.
fn digest_invalid() -> OciError {
    OciError::new(
        StatusCode::BAD_REQUEST,
        ErrorCode::DigestInvalid,
        "invalid digest",
    )
}

/// 400 `DIGEST_INVALID` for a grammar-valid digest of an unsupported algorithm.
fn digest_unsupported() -> OciError {
    OciError::new(
        StatusCode::BAD_REQUEST,
        ErrorCode::DigestInvalid,
        "unsupported digest algorithm",
    )
}

/// 400 `NAME_INVALID` "invalid path" for a path that fails the shape checks.
fn invalid_path() -> OciError {
    OciError::new(
        StatusCode::BAD_REQUEST,
        ErrorCode::NameInvalid,
        "invalid path",
    )
}

/// Percent-decodes `path` once and applies the shape checks of SECURITY.md §2.2. `None` for an
/// invalid escape, an encoded `/`, a control character or non-ASCII byte (raw or decoded), or a
/// `.`/`..` segment. The result is ASCII and never longer than the input.
pub fn decode_path(path: &str) -> Option<String> {
    let raw = path.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        let byte = if b == b'%' {
            let hi = raw.get(i + 1).copied().and_then(hex_value)?;
            let lo = raw.get(i + 2).copied().and_then(hex_value)?;
            i += 3;
            let decoded = (hi << 4) | lo;
            if decoded == b'/' {
                return None;
            }
            decoded
        } else {
            i += 1;
            b
        };
        if !byte.is_ascii() || byte.is_ascii_control() {
            return None;
        }
        out.push(char::from(byte));
    }
    if out
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return None;
    }
    Some(out)
}

/// The value of one hex digit.
fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// True for methods that only read (GET, HEAD).
pub fn is_read(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX64: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn code(path: &str) -> Option<ErrorCode> {
        classify(path).err().map(|e| {
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{path}");
            e.code
        })
    }

    fn reg(path: &str) -> RegistryRequest {
        match classify(path) {
            Ok(Classified::Registry(r)) => r,
            other => panic!("{path}: {other:?}"),
        }
    }

    fn n(s: &str) -> Name {
        Name::parse(s).expect("valid name")
    }

    #[test]
    fn fixed_endpoints() {
        assert_eq!(classify("/"), Ok(Classified::Root));
        assert_eq!(reg("/v2"), RegistryRequest::Base);
        assert_eq!(reg("/v2/"), RegistryRequest::Base);
        assert_eq!(reg("/v2/auth"), RegistryRequest::Auth);
        assert_eq!(reg("/v2/_catalog"), RegistryRequest::Catalog);
        for other in [
            "",
            "/health",
            "/v3/",
            "/v2x",
            "/V2/",
            "/a/b/c/d",
            "/v2/auth/",
            "/v2/foo",
            "/v2/a/b/",
        ] {
            assert_eq!(classify(other), Ok(Classified::Other), "{other}");
        }
    }

    #[test]
    fn manifests() {
        assert_eq!(
            reg("/v2/library/busybox/manifests/latest"),
            RegistryRequest::Manifest {
                name: n("library/busybox"),
                reference: Reference::parse("latest").expect("tag"),
            }
        );
        let by_digest = reg(&format!("/v2/a/manifests/sha256:{HEX64}"));
        assert_eq!(by_digest.name(), Some(&n("a")));
        assert!(matches!(
            by_digest,
            RegistryRequest::Manifest {
                reference: Reference::Digest(_),
                ..
            }
        ));
        // `:` percent-encoded is decoded once.
        let encoded = reg(&format!("/v2/a/manifests/sha256%3A{HEX64}"));
        assert_eq!(encoded, by_digest);
    }

    #[test]
    fn names_containing_endpoint_words() {
        let r = reg("/v2/a/manifests/b/manifests/latest");
        assert_eq!(r.name(), Some(&n("a/manifests/b")));
        let r = reg(&format!("/v2/blobs/blobs/sha256:{HEX64}"));
        assert!(matches!(r, RegistryRequest::Blob { .. }));
        assert_eq!(r.name(), Some(&n("blobs")));
        assert_eq!(
            reg("/v2/tags/list/tags/list"),
            RegistryRequest::Tags {
                name: n("tags/list")
            }
        );
    }

    #[test]
    fn blobs_tags_referrers_uploads() {
        let d = Digest::parse(&format!("sha256:{HEX64}")).expect("digest");
        assert_eq!(
            reg(&format!("/v2/x/y/blobs/sha256:{HEX64}")),
            RegistryRequest::Blob {
                name: n("x/y"),
                digest: d.clone()
            }
        );
        assert_eq!(
            reg(&format!("/v2/x/referrers/sha256:{HEX64}")),
            RegistryRequest::Referrers {
                name: n("x"),
                digest: d
            }
        );
        assert_eq!(
            reg("/v2/x/tags/list"),
            RegistryRequest::Tags { name: n("x") }
        );
        for up in [
            "/v2/x/blobs/uploads/",
            "/v2/x/blobs/uploads",
            "/v2/x/blobs/uploads/3f1c-uuid_=.",
            "/v2/x/blobs/uploads/a/b",
        ] {
            assert_eq!(reg(up), RegistryRequest::Upload { name: n("x") }, "{up}");
        }
        assert_eq!(classify("/v2/blobs/uploads/"), Ok(Classified::Other));
        assert_eq!(classify("/v2/manifests/latest"), Ok(Classified::Other));
        assert_eq!(classify("/v2/x/tags/list/"), Ok(Classified::Other));
    }

    #[test]
    fn bad_names_tags_digests() {
        assert_eq!(
            code("/v2/Foo/manifests/latest"),
            Some(ErrorCode::NameInvalid)
        );
        assert_eq!(code("/v2//manifests/latest"), Some(ErrorCode::NameInvalid));
        assert_eq!(code("/v2/a__-b/tags/list"), Some(ErrorCode::NameInvalid));
        let long = format!("/v2/{}/tags/list", "a".repeat(256));
        assert_eq!(code(&long), Some(ErrorCode::NameInvalid));
        let ok = format!("/v2/{}/tags/list", "a".repeat(255));
        assert!(matches!(
            classify(&ok),
            Ok(Classified::Registry(RegistryRequest::Tags { .. }))
        ));
        assert_eq!(code("/v2/a/manifests/.bad"), Some(ErrorCode::TagInvalid));
        assert_eq!(code("/v2/a/manifests/"), Some(ErrorCode::TagInvalid));
        assert_eq!(
            code(&format!("/v2/a/manifests/{}", "t".repeat(129))),
            Some(ErrorCode::TagInvalid)
        );
        assert!(classify(&format!("/v2/a/manifests/{}", "t".repeat(128))).is_ok());
        assert_eq!(
            code("/v2/a/manifests/sha256:abc"),
            Some(ErrorCode::DigestInvalid)
        );
        assert_eq!(code("/v2/a/blobs/latest"), Some(ErrorCode::DigestInvalid));
        let upper = format!("/v2/a/blobs/sha256:{}", HEX64.to_uppercase());
        assert_eq!(code(&upper), Some(ErrorCode::DigestInvalid));
        let short = format!("/v2/a/blobs/sha256:{}", &HEX64[..63]);
        assert_eq!(code(&short), Some(ErrorCode::DigestInvalid));
        let sha384 = format!("/v2/a/blobs/sha384:{HEX64}{}", &HEX64[..32]);
        assert_eq!(code(&sha384), Some(ErrorCode::DigestInvalid));
        assert_eq!(
            code("/v2/a/referrers/md5:x"),
            Some(ErrorCode::DigestInvalid)
        );
        // Name is checked before the reference (SECURITY.md §2.2 order).
        assert_eq!(code("/v2/A/manifests/.bad"), Some(ErrorCode::NameInvalid));
    }

    #[test]
    fn path_shape_rejected() {
        for p in [
            "/v2/../x",
            "/v2/..",
            "/v2/./x/tags/list",
            "/v2/%2e%2e/x",
            "/v2/.%2E/x",
            "/%2e",
            "/v2/a%2Fb/tags/list",
            "/v2/a%2fb/tags/list",
            "/v2/a/manifests/%00",
            "/v2/a\0/tags/list",
            "/v2/a\n/tags/list",
            "/v2/a%0d%0a/tags/list",
            "/v2/a%7f/tags/list",
            "/v2/\u{e9}/tags/list",
            "/v2/%C3%A9/tags/list",
            "/v2/a%zz/tags/list",
            "/v2/a%2",
            "/v2/a%",
            "/x/../v2/",
        ] {
            let e = classify(p).expect_err(p);
            assert_eq!(
                (e.status, e.code, e.message.as_str()),
                (
                    StatusCode::BAD_REQUEST,
                    ErrorCode::NameInvalid,
                    "invalid path"
                ),
                "{p:?}"
            );
        }
    }

    #[test]
    fn decoded_exactly_once() {
        // `%252F` decodes to the literal text `%2F`, which is not a name character.
        let e = classify("/v2/a%252Fb/tags/list").expect_err("double-encoded slash");
        assert_eq!(
            (e.code, e.message.as_str()),
            (ErrorCode::NameInvalid, "invalid repository name")
        );
        assert_eq!(decode_path("/v2/a%252Fb"), Some("/v2/a%2Fb".to_owned()));
        assert_eq!(
            code("/v2/a/manifests/%252e%252e"),
            Some(ErrorCode::TagInvalid)
        );
        assert_eq!(
            reg("/v2/%61/tags/list"),
            RegistryRequest::Tags { name: n("a") }
        );
        // Dots inside a segment are not dot segments.
        assert_eq!(
            reg("/v2/a.b/tags/list"),
            RegistryRequest::Tags { name: n("a.b") }
        );
        assert_eq!(code("/v2/.../tags/list"), Some(ErrorCode::NameInvalid));
    }

    #[test]
    fn long_input_does_not_blow_up() {
        let p = format!("/v2/{}manifests/x", "blobs/uploads/".repeat(10_000));
        assert!(classify(&p).is_err());
        let p = format!("/v2/{}x", "blobs/uploads/".repeat(10_000));
        assert_eq!(code(&p), Some(ErrorCode::NameInvalid));
        let p = format!("/v2/{}x/y", "blobs/uploads/".repeat(10_000));
        assert_eq!(
            reg(&p),
            RegistryRequest::Upload {
                name: n("blobs/uploads")
            }
        );
        let p = format!("/v2/{}blobs/uploads/x/y", "A/".repeat(10_000));
        assert_eq!(classify(&p), Ok(Classified::Other));
    }

    #[test]
    fn read_methods() {
        assert!(is_read(&Method::GET));
        assert!(is_read(&Method::HEAD));
        assert!(!is_read(&Method::POST));
        assert!(!is_read(&Method::PUT));
    }
}
