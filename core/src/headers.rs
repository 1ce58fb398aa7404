//! Header rules for forwarding (COMPAT.md §7.1, §7.2): hop-by-hop removal, the headers a
//! redirect hop keeps, and which upstream response headers reach the client.

use http::HeaderMap;

/// Copies client headers for the upstream: end-to-end headers in order (repeated lines kept),
/// without hop-by-hop headers, headers named in `Connection`, `Host`, forwarding headers
/// (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`, `True-Client-IP`, `CF-*`).
pub fn forward_request_headers(client: &HeaderMap) -> HeaderMap {
    let _ = client;
    todo!()
}

/// Headers for a redirect hop to another origin: every `Accept`, `Range`, `If-Range`,
/// `User-Agent`, and `Accept-Encoding: identity`. Nothing else.
pub fn redirect_hop_headers(client: &HeaderMap) -> HeaderMap {
    let _ = client;
    todo!()
}

/// Upstream response headers relayed to the client: end-to-end only (hop-by-hop and headers
/// named in `Connection` removed), `Set-Cookie` removed.
pub fn relay_response_headers(upstream: &HeaderMap) -> HeaderMap {
    let _ = upstream;
    todo!()
}

/// Headers kept from the last hop of a followed redirect (COMPAT.md §6): `Content-Type`,
/// `Content-Length`, `Content-Range`, `Accept-Ranges`, `ETag`, `Last-Modified`.
pub fn redirect_target_headers(upstream: &HeaderMap) -> HeaderMap {
    let _ = upstream;
    todo!()
}
