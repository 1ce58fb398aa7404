//! Header rules for forwarding (COMPAT.md §7.1, §7.2): hop-by-hop removal, the headers a
//! redirect hop keeps, and which upstream response headers reach the client.
//!
//! Every function copies value by value with [`HeaderMap::append`], so repeated lines (several
//! `Accept` lines, say) stay separate lines in their original order; nothing is merged. The
//! functions only filter: adding `Accept-Encoding: identity`, a default `User-Agent` or an
//! `Authorization` for the upstream is the caller's job, except in [`redirect_hop_headers`],
//! whose whole header set is fixed by COMPAT.md §6.

use std::collections::BTreeSet;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Hop-by-hop headers (RFC 9110 §7.6.1 plus the legacy ones), lower-case.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Headers that describe the hops in front of the proxy; never forwarded upstream.
const FORWARDING: &[&str] = &["forwarded", "x-real-ip", "true-client-ip"];

/// Headers kept from the last hop of a followed redirect.
const REDIRECT_TARGET: &[HeaderName] = &[
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::CONTENT_RANGE,
    header::ACCEPT_RANGES,
    header::ETAG,
    header::LAST_MODIFIED,
];

/// The lower-case header names listed in every `Connection` line (comma-separated). A value that
/// is not visible ASCII is ignored.
pub fn connection_named(headers: &HeaderMap) -> BTreeSet<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|token| token.trim().to_ascii_lowercase())
        .filter(|token| !token.is_empty())
        .collect()
}

/// True for a hop-by-hop header name (`name` is lower-case, as [`HeaderName::as_str`] gives).
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.contains(&name)
}

/// True for `Forwarded`, `X-Forwarded-*`, `X-Real-IP`, `True-Client-IP` and `CF-*` (lower-case
/// `name`).
pub fn is_forwarding_header(name: &str) -> bool {
    FORWARDING.contains(&name) || name.starts_with("x-forwarded-") || name.starts_with("cf-")
}

/// Copies every value of `map` whose name passes `keep`, in order, line by line.
fn copy_filtered(map: &HeaderMap, mut keep: impl FnMut(&HeaderName) -> bool) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(map.len());
    for (name, value) in map {
        if keep(name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Copies client headers for the upstream: end-to-end headers in order (repeated lines kept),
/// without hop-by-hop headers, headers named in `Connection`, `Host`, forwarding headers
/// (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`, `True-Client-IP`, `CF-*`).
pub fn forward_request_headers(client: &HeaderMap) -> HeaderMap {
    let named = connection_named(client);
    copy_filtered(client, |name| {
        let n = name.as_str();
        !is_hop_by_hop(n) && !named.contains(n) && *name != header::HOST && !is_forwarding_header(n)
    })
}

/// Headers for a redirect hop to another origin: every `Accept`, `Range`, `If-Range`,
/// `User-Agent`, and `Accept-Encoding: identity`. Nothing else.
pub fn redirect_hop_headers(client: &HeaderMap) -> HeaderMap {
    let mut out = copy_filtered(client, |name| {
        *name == header::ACCEPT
            || *name == header::RANGE
            || *name == header::IF_RANGE
            || *name == header::USER_AGENT
    });
    out.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    out
}

/// Upstream response headers relayed to the client: end-to-end only (hop-by-hop and headers
/// named in `Connection` removed), `Set-Cookie` removed.
pub fn relay_response_headers(upstream: &HeaderMap) -> HeaderMap {
    let named = connection_named(upstream);
    copy_filtered(upstream, |name| {
        let n = name.as_str();
        !is_hop_by_hop(n) && !named.contains(n) && *name != header::SET_COOKIE && n != "set-cookie2"
    })
}

/// Headers kept from the last hop of a followed redirect (COMPAT.md §6): `Content-Type`,
/// `Content-Length`, `Content-Range`, `Accept-Ranges`, `ETag`, `Last-Modified`.
pub fn redirect_target_headers(upstream: &HeaderMap) -> HeaderMap {
    copy_filtered(upstream, |name| REDIRECT_TARGET.contains(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(lines: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in lines {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    fn lines(m: &HeaderMap) -> Vec<(String, String)> {
        m.iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
            .collect()
    }

    #[test]
    fn connection_tokens_are_collected_from_every_line() {
        let m = map(&[
            ("Connection", "close, X-One ,x-two"),
            ("connection", "X-Three,,"),
        ]);
        let named: Vec<_> = connection_named(&m).into_iter().collect();
        assert_eq!(named, ["close", "x-one", "x-three", "x-two"]);
    }

    #[test]
    fn forwarding_headers_are_dropped_upstream() {
        let m = map(&[
            ("Host", "docker.example.com"),
            ("Forwarded", "for=1.2.3.4"),
            ("X-Forwarded-For", "1.2.3.4"),
            ("X-Forwarded-Proto", "https"),
            ("X-Real-IP", "1.2.3.4"),
            ("True-Client-IP", "1.2.3.4"),
            ("CF-Connecting-IP", "1.2.3.4"),
            ("CF-Ray", "abc"),
            ("Proxy-Authorization", "Basic eA=="),
            ("Authorization", "Bearer good"),
            ("X-Custom", "kept"),
        ]);
        let out = forward_request_headers(&m);
        assert_eq!(
            lines(&out),
            [
                ("authorization".to_owned(), "Bearer good".to_owned()),
                ("x-custom".to_owned(), "kept".to_owned())
            ]
        );
    }

    #[test]
    fn response_drops_set_cookie_and_hop_by_hop() {
        let m = map(&[
            ("Content-Type", "application/json"),
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
            ("Transfer-Encoding", "chunked"),
            ("Connection", "keep-alive, X-Upstream-Hop"),
            ("X-Upstream-Hop", "1"),
            ("Retry-After", "5"),
            ("RateLimit-Remaining", "0"),
            ("Link", "<a>"),
            ("Link", "<b>"),
        ]);
        let out = relay_response_headers(&m);
        assert_eq!(
            lines(&out),
            [
                ("content-type".to_owned(), "application/json".to_owned()),
                ("retry-after".to_owned(), "5".to_owned()),
                ("ratelimit-remaining".to_owned(), "0".to_owned()),
                ("link".to_owned(), "<a>".to_owned()),
                ("link".to_owned(), "<b>".to_owned()),
            ]
        );
    }

    #[test]
    fn redirect_target_keeps_only_content_headers() {
        let m = map(&[
            ("Content-Type", "application/octet-stream"),
            ("Content-Length", "100"),
            ("Content-Range", "bytes 0-99/1000"),
            ("Accept-Ranges", "bytes"),
            ("ETag", "\"x\""),
            ("Last-Modified", "Tue, 01 Jan 2030 00:00:00 GMT"),
            ("x-amz-request-id", "1"),
            ("Set-Cookie", "s=1"),
            ("Server", "AmazonS3"),
            ("Cache-Control", "public"),
        ]);
        let out = redirect_target_headers(&m);
        assert_eq!(out.len(), 6);
        assert!(out.get("x-amz-request-id").is_none());
        assert!(out.get(header::SET_COOKIE).is_none());
        assert_eq!(out[header::CONTENT_RANGE], "bytes 0-99/1000");
        assert_eq!(out[header::ETAG], "\"x\"");
    }

    #[test]
    fn redirect_hop_replaces_accept_encoding() {
        let m = map(&[
            ("Accept-Encoding", "gzip"),
            ("User-Agent", "docker/27"),
            ("Cookie", "c=1"),
        ]);
        let out = redirect_hop_headers(&m);
        assert_eq!(
            lines(&out),
            [
                ("user-agent".to_owned(), "docker/27".to_owned()),
                ("accept-encoding".to_owned(), "identity".to_owned()),
            ]
        );
    }
}
