//! Oracle for the exchange fuzz target (SECURITY.md §2.1, §2.4, §2.6, §2.8, §2.10, §3.3–3.6):
//! one client request and a script of fake upstream replies, both decoded from the input, drive
//! an [`Exchange`] to the end (as `core/tests/support/mod.rs` does), and every action is checked.
//!
//! Input layout (see [`Reader`]): method, host, content kind and bytes (the blob or manifest the
//! target's digest names), target template, name, query, client headers, peer, cache behaviour,
//! client body, then one reply per upstream request until the input runs out (then the upstream
//! is unreachable).

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use dockerproxy_core::config::Config;
use dockerproxy_core::exchange::{
    Access, Action, BodyPlan, CacheQuery, CacheResult, Purpose, RequestHead, Response,
    UpstreamError, UpstreamHead, UpstreamRequest,
};
use dockerproxy_core::reference::Reference;
use dockerproxy_core::request::{Classified, RegistryRequest, classify};
use dockerproxy_core::route::{RouteResult, route};
use dockerproxy_core::token::TokenCache;
use dockerproxy_core::verifier::digest_of;
use dockerproxy_core::{Exchange, Timestamp};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use sha2::Digest as _;

use crate::input::Reader;
use crate::routing::{FUZZ_SECRET, fuzz_config};

/// The simulated clock.
pub const NOW: Timestamp = Timestamp::from_millis(1_790_000_000_000);

/// Actions an exchange may take before it must be done.
const MAX_ACTIONS: usize = 100;

/// Whether a blob or manifest by digest answered with a 2xx other than 200 and 206 (203, 204, ...)
/// must also be verified (SECURITY.md §2.4: right bytes (200/206), an error or an aborted body).
/// Found with a 203 by this target and fixed in the core (corpus/exchange/blob_203_*).
const OTHER_2XX_MUST_VERIFY: bool = true;

/// Whether a proxy token in a second `Authorization` line must be stripped too. The core strips
/// only the first value (`HeaderMap::get`), so `Authorization: Bearer x` followed by
/// `Authorization: Bearer dpx1.…` forwards the proxy token upstream (fuzz/crashes/exchange/):
/// off until fixed; a single `Authorization` line is always checked.
const ALL_AUTHORIZATION_LINES_CHECKED: bool = true;

/// Whether a proxy token is also kept off token requests. `/v2/auth` on a route without
/// credentials copies the client's `Authorization` to the realm even when it is a proxy token
/// (`Bearer dpx1.…`, e.g. one issued for ghcr.io sent to the Docker Hub route), so it reaches
/// auth.docker.io (fuzz/crashes/exchange/): off until fixed; other purposes are always checked.
const PROXY_TOKEN_KEPT_FROM_REALM: bool = true;

/// Tokens the fake realm hands out for the configured credentials start with this; they must
/// never reach the client.
const CONFIGURED_TOKEN: &str = "cfgtok-";

const METHODS: [Method; 8] = [
    Method::GET,
    Method::GET,
    Method::HEAD,
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::CONNECT,
];

const HOSTS: [&str; 10] = [
    "docker.example.com",
    "ghcr.example.com",
    "quay.example.com",
    "extra.example.com",
    "mirror.example.com",
    "MIRROR.Example.COM.:443",
    "unknown.example.org",
    "k8s.example.com",
    "[::1]:8080",
    "10.1.2.3",
];

const NAMES: [&str; 7] = [
    "library/busybox",
    "busybox",
    "pub/app",
    "private/app",
    "ghcr.io/pub/app",
    "extra-alias.test/a/b",
    "a/b/c",
];

const QUERIES: [&str; 5] = [
    "ns=ghcr.io",
    "ns=quay.io",
    "ns=evil.example.net",
    "ns=registry.internal.test:5000",
    "n=100&last=a",
];

const MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;

const MEDIA_TYPES: [&str; 4] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/json",
    "text/html",
];

const STATUSES: [u16; 20] = [
    200, 200, 401, 307, 302, 404, 206, 500, 301, 303, 308, 403, 429, 400, 405, 416, 502, 503, 204,
    203,
];

const CHALLENGES: [&str; 9] = [
    r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io""#,
    r#"Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:pub/app:pull""#,
    r#"Bearer realm="https://evil.example.net/token",service="x""#,
    r#"Bearer realm="https://127.0.0.1/token""#,
    r#"Bearer realm="https://auth.internal.test/token",service="internal""#,
    r#"Bearer realm="http://ghcr.io/token",service="ghcr.io""#,
    r#"Basic realm="registry""#,
    r#"Bearer error="insufficient_scope",realm="https://ghcr.io/token",service="ghcr.io""#,
    r#"Bearer realm="https://quay.io/v2/auth",service="quay.io""#,
];

const LOCATIONS: [&str; 12] = [
    "https://cdn.example.net/blobs/x?X-Amz-Signature=abc",
    "http://cdn.example.net/plain",
    "/v2/library/busybox/blobs/other",
    "//evil.example.net/x",
    "https://user:pw@cdn.example.net/x",
    "https://127.0.0.1/x",
    "https://registry-1.docker.io/v2/same",
    "https://ghcr.io/v2/pub/app/blobs/x",
    "https://docker.com/x",
    "ftp://cdn.example.net/x",
    "https://registry.internal.test:5000/v2/x",
    "https://quay.io/v2/other",
];

/// `Basic base64(user:password)`, base64 written here (the fuzz crate has no base64 crate).
fn basic(user: &str, password: &str) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let raw = format!("{user}:{password}");
    let mut out = String::from("Basic ");
    for chunk in raw.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The `Authorization` the proxy sends with its configured credentials.
fn configured_basic() -> String {
    basic("fuzzuser", FUZZ_SECRET)
}

fn sha256_string(b: &[u8]) -> String {
    let hex: String = sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect();
    format!("sha256:{hex}")
}

fn sha512_string(b: &[u8]) -> String {
    let hex: String = sha2::Sha512::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect();
    format!("sha512:{hex}")
}

/// A template from `list`, or (past its end) a raw string from the input.
fn pick(r: &mut Reader<'_>, list: &[&str], raw_max: usize) -> String {
    let i = r.choose(list.len() + 1);
    match list.get(i) {
        Some(s) => (*s).to_owned(),
        None => r.string(raw_max),
    }
}

/// A scripted answer: status, headers (name, raw value), body.
type Answer = (u16, Vec<(&'static str, Vec<u8>)>, Bytes);

/// One scripted upstream answer.
struct Reply {
    result: Result<Answer, UpstreamError>,
}

/// Decodes one reply for request number `n`; `req` is the request it answers.
fn decode_reply(r: &mut Reader<'_>, n: usize, req: &UpstreamRequest, content: &[u8]) -> Reply {
    let kind = r.byte();
    if kind % 16 == 15 {
        let e = match r.choose(5) {
            0 => UpstreamError::Unreachable,
            1 => UpstreamError::Timeout,
            2 => UpstreamError::TooLarge,
            3 => UpstreamError::BodyFailed,
            _ => UpstreamError::Denied,
        };
        return Reply { result: Err(e) };
    }
    let si = r.choose(STATUSES.len() + 1);
    let status = STATUSES
        .get(si)
        .copied()
        .unwrap_or_else(|| 100 + r.u16() % 900);
    // A realm's answer to the configured credentials (a registry challenging with Basic gets
    // them directly, and its answer is the resource itself).
    let configured = req.purpose == Purpose::Token
        && req
            .headers
            .get_all(http::header::AUTHORIZATION)
            .iter()
            .any(|v| v.as_bytes() == configured_basic().as_bytes());
    let body: Bytes = match r.choose(7) {
        0 => Bytes::new(),
        1 => Bytes::copy_from_slice(content),
        2 => {
            let mut c = content.to_vec();
            match c.first_mut() {
                Some(b) => *b ^= 1,
                None => c.push(b'x'),
            }
            c.into()
        }
        3 => {
            let token = if configured {
                format!("{CONFIGURED_TOKEN}{n}")
            } else {
                format!("tok-{n}")
            };
            let field = if r.byte() & 1 == 0 {
                "token"
            } else {
                "access_token"
            };
            format!(r#"{{"{field}":"{token}","expires_in":300}}"#).into()
        }
        4 => Bytes::from_static(MANIFEST.as_bytes()),
        5 => Bytes::copy_from_slice(r.bytes(48)),
        _ => Bytes::from_static(br#"{"errors":[{"code":"UNAUTHORIZED","message":"x"}]}"#),
    };
    let mut headers: Vec<(&'static str, Vec<u8>)> = Vec::new();
    for _ in 0..r.choose(5) {
        let (name, value) = match r.choose(9) {
            0 => ("www-authenticate", pick(r, &CHALLENGES, 60)),
            1 => ("location", pick(r, &LOCATIONS, 60)),
            2 => (
                "docker-content-digest",
                match r.choose(4) {
                    0 => sha256_string(&body),
                    1 => sha256_string(content),
                    2 => sha256_string(b"x"),
                    _ => r.string(80),
                },
            ),
            3 => ("content-type", pick(r, &MEDIA_TYPES, 40)),
            4 => (
                "content-length",
                match r.choose(3) {
                    0 => body.len().to_string(),
                    1 => r.u16().to_string(),
                    _ => r.string(20),
                },
            ),
            5 => (
                "content-range",
                match r.choose(2) {
                    0 => format!("bytes 0-0/{}", body.len()),
                    _ => r.string(30),
                },
            ),
            6 => ("set-cookie", "session=upstream-cookie".to_owned()),
            7 => ("docker-distribution-api-version", "registry/2.0".to_owned()),
            _ => ("etag", r.string(30)),
        };
        headers.push((name, value.into_bytes()));
    }
    Reply {
        result: Ok((status, headers, body)),
    }
}

/// The decoded client side of one case.
struct Case {
    head: RequestHead,
    content: Vec<u8>,
    cache_mode: u8,
    client_body: Bytes,
}

fn decode_case<'a>(r: &mut Reader<'a>, config: &Config) -> Case {
    let method = METHODS[r.choose(METHODS.len())].clone();
    let host = pick(r, &HOSTS, 40);
    let content: Vec<u8> = match r.choose(3) {
        0 => MANIFEST.as_bytes().to_vec(),
        1 => r.bytes(64).to_vec(),
        _ => Vec::new(),
    };
    let digest = if r.byte() & 1 == 0 {
        sha256_string(&content)
    } else {
        sha512_string(&content)
    };
    let name = pick(r, &NAMES, 30);
    let mut target = match r.choose(10) {
        0 => "/v2/".to_owned(),
        1 => format!("/v2/auth?service=ghcr.io&scope=repository:{name}:pull"),
        2 => format!("/v2/{name}/manifests/latest"),
        3 => format!("/v2/{name}/manifests/{digest}"),
        4 | 5 => format!("/v2/{name}/blobs/{digest}"),
        6 => format!("/v2/{name}/tags/list"),
        7 => "/health".to_owned(),
        8 => format!("/v2/{name}/blobs/uploads/"),
        _ => r.string(60),
    };
    if r.byte() & 1 == 1 {
        let q = pick(r, &QUERIES, 30);
        target.push(if target.contains('?') { '&' } else { '?' });
        target.push_str(&q);
    }
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&host) {
        headers.insert(http::header::HOST, v);
    }
    let proxy_token = dockerproxy_core::proxy_token::issue(&config.secret_key, "ghcr.io", NOW);
    for _ in 0..r.choose(4) {
        let (name, value): (&str, String) = match r.choose(8) {
            0 => (
                "authorization",
                match r.choose(5) {
                    0 => "Bearer client-token".to_owned(),
                    1 => basic("alice", "client-pw"),
                    2 => format!("Bearer {proxy_token}"),
                    3 => "Bearer dpx1.forged".to_owned(),
                    _ => r.string(40),
                },
            ),
            1 => (
                "range",
                pick(r, &["bytes=0-0", "bytes=1-", "bytes=5-2"], 20),
            ),
            2 => ("accept", pick(r, &MEDIA_TYPES, 40)),
            3 => ("cookie", "sid=client-cookie".to_owned()),
            4 => (
                "x-forwarded-host",
                pick(r, &["ghcr.example.com", "evil.example.net"], 30),
            ),
            5 => ("x-forwarded-proto", "https".to_owned()),
            6 => ("proxy-authorization", "Basic cHJveHk6cHc=".to_owned()),
            _ => (
                "content-type",
                "application/x-www-form-urlencoded".to_owned(),
            ),
        };
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            headers.append(n, v);
        }
    }
    let peer: IpAddr = if r.byte() & 1 == 0 {
        IpAddr::from([127, 0, 0, 1])
    } else {
        IpAddr::from([203, 0, 113, 9])
    };
    let tls = r.byte() & 1 == 1;
    let cache_mode = r.byte();
    let client_body = Bytes::copy_from_slice(r.bytes(64));
    Case {
        head: RequestHead {
            method,
            target,
            headers,
            peer: Some(peer),
            tls,
        },
        content,
        cache_mode,
        client_body,
    }
}

/// What the exchange should have classified the request as (same host rule, routing and
/// classification as the exchange's start).
fn expected_request(config: &Config, head: &RequestHead) -> Option<RegistryRequest> {
    let h = &head.headers;
    let forwarded = config
        .is_trusted_peer(head.peer)
        .then(|| h.get("x-forwarded-host")?.to_str().ok())
        .flatten()
        .map(|v| v.split(',').next().unwrap_or("").trim())
        .filter(|v| !v.is_empty());
    let host = forwarded.or_else(|| h.get("host")?.to_str().ok());
    let (path, query) = match head.target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (head.target.as_str(), None),
    };
    let RouteResult::Routed(r) = route(config, host, path, query) else {
        return None;
    };
    match classify(&r.path) {
        Ok(Classified::Registry(req)) => Some(req),
        _ => None,
    }
}

/// The fake store: verified entries only, consistent with the request (never a wrong digest).
fn cache_answer(mode: u8, q: &CacheQuery, content: &[u8]) -> CacheResult {
    let access = Access {
        public: mode & 2 != 0,
        granted: mode & 4 != 0,
        public_within_max_stale: mode & 8 != 0,
        linked: mode & 16 != 0,
    };
    use dockerproxy_core::cache_policy::CacheKey;
    match (mode & 1 == 1, &q.key) {
        (true, CacheKey::Blob { digest, .. })
            if digest_of(digest.algorithm(), content) == *digest =>
        {
            CacheResult::Blob {
                size: content.len() as u64,
                access,
            }
        }
        (true, CacheKey::Manifest { digest, .. })
            if digest_of(digest.algorithm(), content) == *digest =>
        {
            CacheResult::Manifest {
                digest: digest.clone(),
                media_type: MEDIA_TYPES[0].to_owned(),
                body: Bytes::copy_from_slice(content),
                access,
                validated_at: None,
            }
        }
        (true, CacheKey::Tag { .. }) => CacheResult::Manifest {
            digest: digest_of(dockerproxy_core::reference::Algorithm::Sha256, content),
            media_type: MEDIA_TYPES[0].to_owned(),
            body: Bytes::copy_from_slice(content),
            access,
            validated_at: (mode & 32 != 0).then_some(Timestamp::from_millis(NOW.0 - 1_000)),
        },
        _ => CacheResult::Miss,
    }
}

/// Checks one upstream request against the credential and destination rules.
fn check_send(
    config: &Config,
    registry: usize,
    req: &UpstreamRequest,
    client_has_secret: bool,
    client_auth_lines: usize,
    repository: Option<&str>,
) {
    let reg = &config.registries[registry];
    let origin = dockerproxy_core::redirect::url_origin(&req.url);
    let same_origin = origin.as_ref() == Some(&reg.origin);
    let ctx = || format!("{:?} {} {:?}", req.purpose, req.url, req.headers);
    assert!(!req.follow_redirects, "transport redirects on: {}", ctx());
    match req.purpose {
        Purpose::Ping | Purpose::RealmDiscovery | Purpose::Resource => {
            assert!(same_origin, "not the registry origin: {}", ctx());
        }
        Purpose::Token => assert!(
            dockerproxy_core::redirect::realm_allowed(reg, &req.url),
            "token request to a realm that is not allowed: {}",
            ctx()
        ),
        Purpose::RedirectHop | Purpose::SizeProbe => {}
    }
    if !same_origin && req.purpose != Purpose::Token {
        for h in ["authorization", "proxy-authorization", "cookie"] {
            assert!(
                !req.headers.contains_key(h),
                "{h} sent off the registry origin: {}",
                ctx()
            );
        }
    }
    assert!(
        !req.headers.contains_key("proxy-authorization"),
        "Proxy-Authorization forwarded: {}",
        ctx()
    );
    let check_proxy_token = (ALL_AUTHORIZATION_LINES_CHECKED || client_auth_lines <= 1)
        && (PROXY_TOKEN_KEPT_FROM_REALM || req.purpose != Purpose::Token);
    for v in req.headers.get_all("authorization") {
        assert!(
            !check_proxy_token || !v.as_bytes().starts_with(b"Bearer dpx1."),
            "a proxy token left the proxy: {}",
            ctx()
        );
    }
    if client_has_secret {
        return;
    }
    let secret = FUZZ_SECRET.as_bytes();
    let encoded = configured_basic();
    let mut values = req.headers.values().map(HeaderValue::as_bytes);
    assert!(
        !values.any(|v| v.windows(secret.len()).any(|w| w == secret)),
        "configured secret in the clear: {}",
        ctx()
    );
    assert!(!req.url.as_str().contains(FUZZ_SECRET), "{}", ctx());
    let sends_configured = req
        .headers
        .get_all("authorization")
        .iter()
        .any(|v| v.as_bytes() == encoded.as_bytes());
    // Configured credentials: Basic on the token request to an allowed realm, or directly to
    // the registry origin when it challenges with Basic (COMPAT.md §4.3); never elsewhere, and
    // only for the allowlisted repositories (`pub/*`).
    if sends_configured {
        assert_eq!(
            reg.name,
            "ghcr.io",
            "configured credentials to another route: {}",
            ctx()
        );
        assert!(
            req.purpose == Purpose::Token || same_origin,
            "configured credentials off the realm and registry: {}",
            ctx()
        );
        assert!(
            repository.is_some_and(|n| n.starts_with("pub/")),
            "configured credentials for {repository:?}: {}",
            ctx()
        );
    }
}

/// Checks the client response against the integrity and confidentiality rules.
fn check_response(
    resp: &Response,
    expected: Option<&RegistryRequest>,
    method: &Method,
    leak: &[&[u8]],
) {
    let status = resp.status.as_u16();
    let ctx = || format!("{status} {:?} for {expected:?}", resp.body);
    for v in resp.headers.values() {
        for l in leak {
            assert!(
                !v.as_bytes().windows(l.len()).any(|w| w == *l),
                "secret in a response header: {}",
                ctx()
            );
        }
    }
    if let BodyPlan::Bytes(b) = &resp.body {
        for l in leak {
            assert!(
                !b.windows(l.len()).any(|w| w == *l),
                "secret in the response body: {}",
                ctx()
            );
        }
    }
    let success =
        status == 200 || (OTHER_2XX_MUST_VERIFY && resp.status.is_success() && status != 206);
    match expected {
        Some(RegistryRequest::Blob { digest, .. }) if *method == Method::GET && success => {
            match &resp.body {
                BodyPlan::Upstream { verify, .. } => assert_eq!(
                    verify.as_ref(),
                    Some(digest),
                    "unverified blob answered {status}"
                ),
                BodyPlan::Cache { .. } => {}
                BodyPlan::Bytes(b) => assert_eq!(&digest_of(digest.algorithm(), b), digest),
                BodyPlan::Empty => assert_ne!(status, 200, "empty 200 for a blob GET"),
            }
            if let Some(d) = resp.headers.get("docker-content-digest") {
                assert_eq!(d.as_bytes(), digest.to_string().as_bytes(), "{}", ctx());
            }
        }
        Some(RegistryRequest::Manifest {
            reference: Reference::Digest(digest),
            ..
        }) if *method == Method::GET && success => match &resp.body {
            BodyPlan::Bytes(b) => assert_eq!(
                &digest_of(digest.algorithm(), b),
                digest,
                "manifest by digest with other bytes"
            ),
            BodyPlan::Upstream { verify, .. } => assert_eq!(verify.as_ref(), Some(digest)),
            BodyPlan::Cache { .. } => {}
            BodyPlan::Empty => assert_ne!(status, 200, "empty 200 for a manifest GET"),
        },
        Some(RegistryRequest::Manifest {
            reference: Reference::Tag(_),
            ..
        }) if *method == Method::GET && status == 200 => {
            if let (BodyPlan::Bytes(b), Some(d)) =
                (&resp.body, resp.headers.get("docker-content-digest"))
            {
                assert_eq!(d.as_bytes(), sha256_string(b).as_bytes(), "{}", ctx());
            }
        }
        _ => {}
    }
}

/// Runs one case. Never panics on any input; finishes within 100 actions with no `Wait`; exactly
/// one `Respond` or `Local`; no upstream traffic for an unrouted request; registry requests only
/// to the registry origin, token requests only to allowed realms, no `Authorization`, `Cookie`
/// or `Proxy-Authorization` off the registry origin (except the token request), the configured
/// credentials only on token requests of their own route and never in the clear, no proxy token
/// upstream; a blob or manifest by digest answered 2xx (not 206) only with bytes verified against
/// the requested digest; a tag's `Docker-Content-Digest` is the hash of the bytes sent; every
/// stored manifest hashes to its key; the configured secret and the tokens obtained with it never
/// reach the client.
pub fn check_exchange(data: &[u8]) {
    let config = fuzz_config();
    let mut r = Reader::new(data);
    let case = decode_case(&mut r, config);
    // When the input itself spells a secret (the fuzzer learns them from comparisons), it may
    // legitimately come back from the fake upstream: only secrets the proxy alone knows count.
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    let client_has_secret = contains(data, FUZZ_SECRET.as_bytes())
        || contains(data, configured_basic().as_bytes())
        || contains(data, CONFIGURED_TOKEN.as_bytes());
    let client_auth_lines = case.head.headers.get_all("authorization").iter().count();
    let expected = expected_request(config, &case.head);
    let method = case.head.method.clone();

    let mut ex = Exchange::new(Arc::new(config.clone()), case.head.clone(), NOW);
    let mut tokens = TokenCache::new(16);
    let mut sent: Vec<UpstreamRequest> = Vec::new();
    let mut responses: Vec<Response> = Vec::new();
    let mut locals = 0;
    let mut current_body = Bytes::new();
    let mut done = false;
    for _ in 0..MAX_ACTIONS {
        match ex.poll_action(NOW) {
            Action::SendUpstream(req) => {
                let reply = if r.is_empty() {
                    Reply {
                        result: Err(UpstreamError::Unreachable),
                    }
                } else {
                    decode_reply(&mut r, sent.len(), &req, &case.content)
                };
                sent.push(req);
                match reply.result {
                    Ok((status, hs, body)) => {
                        let mut headers = HeaderMap::new();
                        for (k, v) in hs {
                            if let Ok(v) = HeaderValue::from_bytes(&v) {
                                headers.append(HeaderName::from_static(k), v);
                            }
                        }
                        current_body = body;
                        let status = StatusCode::from_u16(status)
                            .unwrap_or_else(|_| panic!("status {status} out of range"));
                        ex.handle_upstream_head(UpstreamHead { status, headers }, NOW);
                    }
                    Err(e) => ex.handle_upstream_error(e, NOW),
                }
            }
            Action::ReadUpstreamBody { limit } => {
                if current_body.len() > limit {
                    ex.handle_upstream_error(UpstreamError::TooLarge, NOW);
                } else {
                    ex.handle_upstream_body(current_body.clone(), NOW);
                }
            }
            Action::ReadClientBody { limit } => {
                let b = Some(case.client_body.clone()).filter(|b| b.len() <= limit);
                ex.handle_client_body(b, NOW);
            }
            Action::CacheLookup(q) => {
                let answer = cache_answer(case.cache_mode, &q, &case.content);
                ex.handle_cache_result(answer, NOW);
            }
            Action::CacheStore(entry) => {
                assert_eq!(
                    digest_of(entry.digest.algorithm(), &entry.body),
                    entry.digest,
                    "stored manifest does not hash to its digest"
                );
                if let Some(RegistryRequest::Manifest {
                    reference: Reference::Digest(d),
                    ..
                }) = &expected
                {
                    assert_eq!(&entry.digest, d, "stored under another digest");
                }
            }
            Action::TokenLookup(key) => {
                let answer = tokens.lookup(&key, NOW);
                ex.handle_token_lookup(answer, NOW);
            }
            Action::TokenStore { key, token } => match token {
                Some(t) => tokens.complete(key, t),
                None => tokens.fail(&key),
            },
            Action::TokenInvalidate(key) => tokens.invalidate(&key),
            Action::RecordAccess(_) | Action::TagValidated(_) | Action::TagDrop(_) => {}
            // The fuzzed configurations have no proxy login.
            Action::VerifyPassword(_) => panic!("a password check without proxy login"),
            Action::Respond(resp) => responses.push(resp),
            Action::Local(_) => locals += 1,
            Action::Wait(_) => panic!("the exchange waits with no input pending"),
            Action::Done => {
                done = true;
                break;
            }
        }
    }
    assert!(done, "no Done within {MAX_ACTIONS} actions");
    assert_eq!(
        responses.len() + locals,
        1,
        "{} responses, {locals} locals",
        responses.len()
    );

    let registry = ex
        .registry_name()
        .and_then(|n| config.registries.iter().position(|r| r.name == n));
    match registry {
        Some(id) => {
            for req in &sent {
                let repository = expected
                    .as_ref()
                    .and_then(RegistryRequest::name)
                    .map(|n| n.as_str());
                check_send(
                    config,
                    id,
                    req,
                    client_has_secret,
                    client_auth_lines,
                    repository,
                );
            }
        }
        None => assert!(
            sent.is_empty(),
            "upstream traffic without a route: {}",
            sent[0].url
        ),
    }
    let leak_tokens: Vec<String> = (0..sent.len())
        .map(|n| format!("{CONFIGURED_TOKEN}{n}"))
        .collect();
    let mut leak: Vec<&[u8]> = Vec::new();
    if !client_has_secret {
        leak.push(FUZZ_SECRET.as_bytes());
        leak.extend(leak_tokens.iter().map(|t| t.as_bytes()));
    }
    if let Some(resp) = responses.first() {
        check_response(resp, expected.as_ref(), &method, &leak);
    }
}
