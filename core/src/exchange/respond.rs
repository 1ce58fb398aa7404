//! Building client responses: OCI errors, the decorations every `/v2` answer carries, the public
//! base URL (COMPAT.md §4.1) and `Location` rewriting (COMPAT.md §7.2).

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};

use super::{BodyPlan, RequestHead, Response};
use crate::cache_policy::XCache;
use crate::config::{Config, Scheme};
use crate::oci_error::{ErrorCode, OciError};
use crate::route::Routed;

/// `Docker-Distribution-Api-Version`.
pub(super) const API_VERSION: HeaderName =
    HeaderName::from_static("docker-distribution-api-version");
/// `OCI-Namespace`.
pub(super) const OCI_NAMESPACE: HeaderName = HeaderName::from_static("oci-namespace");
/// `Docker-Content-Digest`.
pub(super) const CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
/// `X-Cache`.
pub(super) const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// A response whose body is `error`'s JSON (none for HEAD).
pub(super) fn error_response(error: &OciError, head_only: bool) -> Response {
    let body = error.body();
    let mut headers = error.headers();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    Response {
        status: error.status,
        headers,
        body: if head_only {
            BodyPlan::Empty
        } else {
            BodyPlan::Bytes(body)
        },
        x_cache: None,
    }
}

/// A response with a fixed body and content type.
pub(super) fn bytes_response(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
    head_only: bool,
) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    Response {
        status,
        headers,
        body: if head_only {
            BodyPlan::Empty
        } else {
            BodyPlan::Bytes(body)
        },
        x_cache: None,
    }
}

/// A redirect with a relative or absolute `Location` and an empty body.
pub(super) fn redirect_response(status: StatusCode, location: &str) -> Option<Response> {
    let mut headers = HeaderMap::new();
    headers.insert(header::LOCATION, HeaderValue::from_str(location).ok()?);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    Some(Response {
        status,
        headers,
        body: BodyPlan::Empty,
        x_cache: None,
    })
}

/// Shorthand for an [`OciError`].
pub(super) fn oci(status: StatusCode, code: ErrorCode, message: &str) -> OciError {
    OciError::new(status, code, message)
}

/// Adds the headers every answer on a `/v2` path carries: the API version (replacing an upstream
/// copy), `OCI-Namespace` when `ns` was accepted, and `X-Cache` for manifests and blobs.
pub(super) fn decorate(resp: &mut Response, namespace: Option<&str>, x_cache: Option<XCache>) {
    resp.headers
        .insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    if let Some(ns) = namespace.and_then(|n| HeaderValue::from_str(n).ok()) {
        resp.headers.insert(OCI_NAMESPACE, ns);
    }
    if let Some(x) = x_cache {
        resp.headers
            .insert(X_CACHE, HeaderValue::from_static(x.as_str()));
        resp.x_cache = Some(x);
    }
}

/// Marks a credential-dependent answer (401s, tokens): never stored by shared caches.
pub(super) fn mark_private(resp: &mut Response) {
    resp.headers
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp.headers
        .append(header::VARY, HeaderValue::from_static("Authorization"));
}

/// The first value of a header as text.
pub(super) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The first element of a possibly comma-separated forwarding header, trimmed.
fn first_element(v: &str) -> &str {
    v.split(',').next().unwrap_or("").trim()
}

/// A parameter of the first `Forwarded` element (`proto=https`, `host=x`).
pub(super) fn forwarded_param<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let v = header_str(headers, "forwarded")?;
    first_element(v).split(';').find_map(|kv| {
        let (k, val) = kv.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| val.trim().trim_matches('"'))
    })
}

/// The public base `scheme://host[:port]` (COMPAT.md §4.1). The host always comes from the
/// route table (or the normalised host in debug fallback), never from forwarding headers.
pub(super) fn public_base(config: &Config, req: &RequestHead, routed: &Routed) -> String {
    let trusted = config.is_trusted_peer(req.peer);
    let scheme = config
        .public_scheme
        .or_else(|| {
            if !trusted {
                return None;
            }
            let proto = header_str(&req.headers, "x-forwarded-proto")
                .map(first_element)
                .or_else(|| forwarded_param(&req.headers, "proto"))?;
            match proto.to_ascii_lowercase().as_str() {
                "https" => Some(Scheme::Https),
                "http" => Some(Scheme::Http),
                _ => None,
            }
        })
        .unwrap_or(if req.tls { Scheme::Https } else { Scheme::Http });
    let port = config
        .public_port
        .or_else(|| {
            if !trusted {
                return None;
            }
            header_str(&req.headers, "x-forwarded-port")
                .and_then(|p| first_element(p).parse::<u16>().ok())
        })
        .or(routed.port)
        .filter(|p| *p != 0);
    match port {
        Some(p) if p != scheme.default_port() => {
            format!("{}://{}:{p}", scheme.as_str(), routed.public_host)
        }
        _ => format!("{}://{}", scheme.as_str(), routed.public_host),
    }
}

/// The realm clients are sent to: `<public base>/v2/auth[?ns=<registry>]`.
pub(super) fn public_realm(config: &Config, req: &RequestHead, routed: &Routed) -> String {
    let base = public_base(config, req, routed);
    if routed.realm_ns {
        let name = &config.registries[routed.registry].name;
        format!("{base}/v2/auth?ns={name}")
    } else {
        format!("{base}/v2/auth")
    }
}

/// Rewrites a `Location` on the upstream origin to the public base, putting a path prefix back
/// after `/v2` (COMPAT.md §7.2). Other hosts are left alone.
pub(super) fn rewrite_location(
    location: &str,
    upstream: &url::Url,
    public_base: &str,
    prefix: Option<&str>,
) -> String {
    let Ok(abs) = upstream.join(location) else {
        return location.to_owned();
    };
    let same_origin = abs.scheme() == upstream.scheme()
        && abs.host_str() == upstream.host_str()
        && abs.port_or_known_default() == upstream.port_or_known_default();
    let is_relative = !location.contains("://");
    if !same_origin {
        return abs.to_string();
    }
    let mut path = abs.path().to_owned();
    if let Some(p) = prefix
        && let Some(rest) = path.strip_prefix("/v2/")
    {
        path = format!("/v2/{p}/{rest}");
    }
    let query = abs.query().map(|q| format!("?{q}")).unwrap_or_default();
    if is_relative && prefix.is_none() {
        // Relative upstream Locations stay relative (they already point at us).
        return format!("{path}{query}");
    }
    format!("{public_base}{path}{query}")
}
