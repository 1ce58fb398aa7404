//! COMPAT.md §9 cases that need a running server: real HTTP over loopback against the in-process
//! proxy, with the real `docker-registry` and our token server upstream wherever possible, and
//! the fault front (or the mangling front of `corrupt.rs`) only for faults a real registry cannot
//! produce. The pure core-level variants live in `core/tests/compat_exchange.rs`; these check the
//! same contract end to end (headers on the wire, what the upstream and the token server really
//! received, streaming aborts, timeouts, metrics and logs).
//!
//! The cache cases (44–58, 72, 73) are not here.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dockerproxy_tests::content::{ALL_MANIFEST_TYPES, OCI_INDEX, OCI_MANIFEST, sha256_digest};
use dockerproxy_tests::corrupt::{CorruptFront, Mangle};
use dockerproxy_tests::{
    Action, FaultFront, Mode, PathMatch, ProxyHandle, Rule, SeedOptions, TestBed,
    docker_hub_route_toml, require_tools,
};
use reqwest::header::HeaderMap;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const SMALL: SeedOptions = SeedOptions {
    big_layer_size: 1 << 20,
};
const BASIC_ALICE: &str = "Basic YWxpY2U6c2VjcmV0";

// ----------------------------------------------------------------------------------------------
// Helpers
// ----------------------------------------------------------------------------------------------

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(25))
        .build()
        .expect("reqwest client")
}

fn accept_all() -> String {
    ALL_MANIFEST_TYPES.join(", ")
}

fn realm_origins(bed: &TestBed) -> Vec<String> {
    bed.token_server
        .as_ref()
        .map(|t| format!("http://{}", t.addr()))
        .into_iter()
        .collect()
}

/// A proxy with its own empty cache directory (the default `./cache` would be shared by every
/// test of the process); the directory is removed after the proxy stopped.
struct Proxy {
    handle: ProxyHandle,
    _cache: tempfile::TempDir,
}

impl std::ops::Deref for Proxy {
    type Target = ProxyHandle;

    fn deref(&self) -> &ProxyHandle {
        &self.handle
    }
}

fn proxy_toml(toml: &str) -> Proxy {
    proxy_env_toml(&[], toml)
}

fn proxy_env_toml(env: &[(&str, &str)], toml: &str) -> Proxy {
    let cache = tempfile::Builder::new()
        .prefix("dockerproxy-compat-cache-")
        .tempdir()
        .expect("cache dir");
    let dir = cache.path().display().to_string();
    let mut env = env.to_vec();
    env.push(("CACHE_DIR", &dir));
    let handle = ProxyHandle::start(&env, toml).expect("proxy");
    Proxy {
        handle,
        _cache: cache,
    }
}

fn start_proxy(upstream: &str, realms: &[String], extra: &str) -> Proxy {
    proxy_toml(&docker_hub_route_toml(upstream, realms, extra))
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

fn to_json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn oci_code(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    v["errors"][0]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no OCI error code: {body}"))
        .to_owned()
}

/// Reads a body chunk by chunk; returns the bytes received and the error that ended it, if any.
async fn read_body(mut resp: reqwest::Response) -> (Vec<u8>, Option<String>) {
    let mut buf = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => buf.extend_from_slice(&c),
            Ok(None) => return (buf, None),
            Err(e) => return (buf, Some(format!("{e:?}"))),
        }
    }
}

/// A raw HTTP/1.1 exchange (the request text must ask for `Connection: close`): status, header
/// lines and the bytes after the head.
async fn raw(addr: SocketAddr, request: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("raw response timed out")
        .expect("read");
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no end of head");
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, buf[end + 4..].to_vec())
}

/// The number of upstream requests the registry logged so far (its access log is written just
/// after each response, hence the short wait before reading it).
async fn settled_request_count(bed: &TestBed) -> usize {
    tokio::time::sleep(Duration::from_millis(150)).await;
    bed.registry.upstream_requests().len()
}

/// A metric sample's value (`name{labels} value` with exactly these labels), 0 when absent.
fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map_or(0, |v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("bad sample value in {series} {v}"))
        })
}

async fn metrics(c: &reqwest::Client, proxy: &Proxy) -> String {
    c.get(format!("{}/metrics", proxy.base_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// COMPAT §7.2: credential-dependent answers carry `Cache-Control: private` or `no-store` and
/// `Vary: Authorization`.
fn assert_credential_dependent(what: &str, h: &HeaderMap) {
    let cc = h
        .get_all("cache-control")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(",");
    assert!(
        cc.contains("private") || cc.contains("no-store"),
        "{what}: Cache-Control {cc:?}"
    );
    let vary = h
        .get_all("vary")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(",");
    assert!(vary.contains("authorization"), "{what}: Vary {vary:?}");
}

fn is_go_duration(s: &str) -> bool {
    let mut rest = s;
    let mut parts = 0;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if n == 0 || rest[..n].parse::<f64>().is_err() {
            return false;
        }
        rest = &rest[n..];
        let Some(unit) = ["ns", "us", "µs", "ms", "h", "m", "s"]
            .into_iter()
            .find(|u| rest.starts_with(u))
        else {
            return false;
        };
        rest = &rest[unit.len()..];
        parts += 1;
    }
    parts > 0
}

fn is_rfc3339_utc_seconds(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

// ----------------------------------------------------------------------------------------------
// 1, 3, 8: local answers
// ----------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_01_03_unknown_host_listing_and_root_redirect() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    let bed = TestBed::start_with(Mode::Plain, SMALL).await;
    let proxy = start_proxy(bed.registry.base_url(), &[], "");
    let c = client();
    let before = settled_request_count(&bed).await;

    // 1: unknown host → the route listing.
    let resp = c
        .get(format!("{}/v2/", proxy.base_url()))
        .header("host", "unknown.example.org")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(
        header(resp.headers(), "content-type").as_deref(),
        Some("application/json")
    );
    let text = resp.text().await.unwrap();
    assert!(
        text.ends_with('\n') && text.matches('\n').count() == 1,
        "one line: {text:?}"
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["message"], "Available registry routes");
    let routes = v["routes"].as_object().unwrap();
    let expected = [
        ("cloudsmith.example.test", "https://docker.cloudsmith.io"),
        ("docker-staging.example.test", bed.registry.base_url()),
        ("docker.example.test", bed.registry.base_url()),
        ("ecr.example.test", "https://public.ecr.aws"),
        ("gcr.example.test", "https://gcr.io"),
        ("ghcr.example.test", "https://ghcr.io"),
        ("k8s-gcr.example.test", "https://k8s.gcr.io"),
        ("k8s.example.test", "https://registry.k8s.io"),
        ("quay.example.test", "https://quay.io"),
    ];
    for (host, origin) in expected {
        assert_eq!(
            routes.get(host).and_then(|o| o.as_str()),
            Some(origin),
            "{host} in {text}"
        );
    }
    // The only extra key allowed is the configured mirror host.
    for key in routes.keys() {
        assert!(
            expected.iter().any(|(h, _)| h == key) || key == "127.0.0.1",
            "unexpected route {key}"
        );
    }
    // Keys are sorted in the raw text.
    let positions: Vec<usize> = expected
        .iter()
        .map(|(h, _)| text.find(&format!("\"{h}\"")).unwrap())
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "keys not sorted: {text}"
    );

    // 1 with HEAD: the same head, no body on the wire.
    let (status, headers, body) = raw(
        proxy.addr(),
        "HEAD /v2/ HTTP/1.1\r\nHost: unknown.example.org\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 404, "{headers:?}");
    assert!(body.is_empty(), "{:?}", String::from_utf8_lossy(&body));

    // 3: GET and HEAD / on a route host → 301 /v2/ (query dropped).
    for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
        let resp = c
            .request(method.clone(), format!("{}/?x=1", proxy.base_url()))
            .header("host", "docker.example.test")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 301, "{method}");
        assert_eq!(
            header(resp.headers(), "location").as_deref(),
            Some("/v2/"),
            "{method}"
        );
    }
    assert_eq!(
        settled_request_count(&bed).await,
        before,
        "no upstream request for 1 and 3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_08_health_json_on_any_host_and_head_without_body() {
    // Liveness never depends on the upstream: a closed port will do.
    let dead = format!("http://{}", dockerproxy_tests::free_addr());
    let proxy = start_proxy(&dead, &[], "");
    let c = client();
    for (host, path) in [
        ("unknown.example.org", "/health"),
        ("docker.example.test", "/healthz"),
        ("127.0.0.1", "/health"),
    ] {
        let resp = c
            .get(format!("{}{path}", proxy.base_url()))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{host}{path}");
        assert_eq!(
            header(resp.headers(), "content-type").as_deref(),
            Some("application/json")
        );
        let text = resp.text().await.unwrap();
        assert!(
            text.ends_with('\n') && text.matches('\n').count() == 1,
            "{text:?}"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["status"], "healthy");
        let ts = v["timestamp"].as_str().unwrap();
        assert!(is_rfc3339_utc_seconds(ts), "timestamp {ts:?}");
        let up = v["uptime"].as_str().unwrap();
        assert!(is_go_duration(up), "uptime {up:?}");
        let version = v["version"].as_str().unwrap();
        assert_eq!(version.split('.').count(), 3, "version {version:?}");
        assert!(
            version
                .split('.')
                .all(|p| p.chars().next().is_some_and(|c| c.is_ascii_digit())),
            "{version:?}"
        );
        assert_eq!(v.as_object().unwrap().len(), 4, "{text}");
    }
    // HEAD: 200 and not one body byte on the wire.
    let (status, headers, body) = raw(
        proxy.addr(),
        "HEAD /health HTTP/1.1\r\nHost: unknown.example.org\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{headers:?}");
    assert!(
        body.is_empty(),
        "HEAD carried a body: {:?}",
        String::from_utf8_lossy(&body)
    );
}

#[test]
fn helpers_validate_formats() {
    assert!(is_go_duration("26h3m4.512s") && is_go_duration("1.5ms") && is_go_duration("0s"));
    assert!(!is_go_duration("") && !is_go_duration("12") && !is_go_duration("3x"));
    assert!(is_rfc3339_utc_seconds("2024-02-29T12:00:59Z"));
    assert!(
        !is_rfc3339_utc_seconds("2024-02-29T12:00:59.1Z")
            && !is_rfc3339_utc_seconds("2024-02-29 12:00:59Z")
    );
    assert_eq!(metric("a{x=\"1\"} 5\na{x=\"12\"} 7\n", "a{x=\"1\"}"), 5);
    assert_eq!(metric("a 5\n", "b"), 0);
}

// ----------------------------------------------------------------------------------------------
// 9, 12, 15, 75: challenges
// ----------------------------------------------------------------------------------------------

/// The registry's own answer to `path` with an optional Authorization.
async fn direct(bed: &TestBed, path: &str, auth: Option<&str>) -> (u16, HeaderMap, String) {
    let mut req = client()
        .get(format!("{}{path}", bed.registry.base_url()))
        .header("accept", accept_all());
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = req.send().await.unwrap();
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    (status, headers, resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_09_12_15_token_registry_challenges_rewritten() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    let bed = TestBed::start_with(Mode::Token, SMALL).await;
    let proxy = start_proxy(bed.registry.base_url(), &realm_origins(&bed), "");
    let c = client();
    let realm = bed.token_server().realm();
    let ours = format!("{}/v2/auth", proxy.base_url());
    let rewrite = |challenge: &str| {
        challenge.replacen(
            &format!("realm=\"{realm}\""),
            &format!("realm=\"{ours}\""),
            1,
        )
    };

    // 9: the ping's challenge, realm rewritten, service kept, body relayed.
    let (_, direct_headers, direct_body) = direct(&bed, "/v2/", None).await;
    let upstream_challenge = header(&direct_headers, "www-authenticate").unwrap();
    let resp = c
        .get(format!("{}/v2/", proxy.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let h = resp.headers().clone();
    assert_eq!(
        header(&h, "www-authenticate").unwrap(),
        format!("Bearer realm=\"{ours}\",service=\"test-registry\""),
        "upstream said {upstream_challenge}"
    );
    assert_eq!(
        h.get_all("docker-distribution-api-version").iter().count(),
        1
    );
    assert_eq!(
        header(&h, "docker-distribution-api-version").as_deref(),
        Some("registry/2.0")
    );
    assert_credential_dependent("the ping's 401", &h);
    let body: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(
        body,
        serde_json::from_str::<serde_json::Value>(&direct_body).unwrap(),
        "upstream body relayed"
    );

    // 12: a valid Bearer reaches the registry (it would answer 401 otherwise); 200 {} relayed.
    let token = bed.token_server().issue(None, &[]).unwrap();
    let resp = c
        .get(format!("{}/v2/", proxy.base_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap().trim(), "{}");

    // 15: a manifest without a token: scope kept after service.
    let path = "/v2/library/busybox/manifests/latest";
    let (status, dh, _) = direct(&bed, path, None).await;
    assert_eq!(status, 401);
    let upstream = header(&dh, "www-authenticate").unwrap();
    assert!(
        upstream.contains("scope=\"repository:library/busybox:pull\""),
        "{upstream}"
    );
    let resp = c
        .get(format!("{}{path}", proxy.base_url()))
        .header("accept", accept_all())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        header(resp.headers(), "www-authenticate").unwrap(),
        rewrite(&upstream)
    );

    // 15 with `error`: an anonymous token lacks the scope of a private repository.
    let weak = format!(
        "Bearer {}",
        bed.token_server()
            .issue(None, &["repository:private/secret:pull"])
            .unwrap()
    );
    let path = "/v2/private/secret/manifests/1.0";
    let (status, dh, _) = direct(&bed, path, Some(&weak)).await;
    assert_eq!(status, 401);
    let upstream = header(&dh, "www-authenticate").unwrap();
    assert!(
        upstream.contains("error=\"insufficient_scope\""),
        "{upstream}"
    );
    let resp = c
        .get(format!("{}{path}", proxy.base_url()))
        .header("accept", accept_all())
        .header("authorization", &weak)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let got = header(resp.headers(), "www-authenticate").unwrap();
    assert_eq!(got, rewrite(&upstream));
    assert_eq!(
        got,
        format!(
            "Bearer realm=\"{ours}\",service=\"test-registry\",scope=\"repository:private/secret:pull\",error=\"insufficient_scope\""
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_75_basic_challenge_relayed_unchanged() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    let bed = TestBed::start_with(Mode::Basic, SMALL).await;
    let proxy = start_proxy(bed.registry.base_url(), &[], "");
    let c = client();
    for path in ["/v2/", "/v2/library/busybox/manifests/latest"] {
        let (status, dh, _) = direct(&bed, path, None).await;
        assert_eq!(status, 401);
        let upstream = header(&dh, "www-authenticate").unwrap();
        assert_eq!(upstream, "Basic realm=\"test-basic-realm\"");
        let resp = c
            .get(format!("{}{path}", proxy.base_url()))
            .header("accept", accept_all())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{path}");
        assert_eq!(
            header(resp.headers(), "www-authenticate").unwrap(),
            upstream,
            "{path}"
        );
    }
    // With alice's Basic credentials the same manifest comes through.
    let resp = c
        .get(format!(
            "{}/v2/library/busybox/manifests/latest",
            proxy.base_url()
        ))
        .header("accept", accept_all())
        .header("authorization", BASIC_ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.bytes().await.unwrap(),
        bed.seeded.busybox.manifest.data
    );
}

// ----------------------------------------------------------------------------------------------
// 16, 19, 21, 25: /v2/auth against the real token server
// ----------------------------------------------------------------------------------------------

fn query_keys(r: &dockerproxy_tests::TokenRequest) -> Vec<&str> {
    r.query.iter().map(|(k, _)| k.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_16_19_21_token_requests_through_the_real_token_server() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    let bed = TestBed::start_with(Mode::Token, SMALL).await;
    let front = FaultFront::forward(bed.registry.base_url()).unwrap();
    let proxy = start_proxy(&front.base_url(), &realm_origins(&bed), "");
    let ts = bed.token_server();
    let c = client();
    ts.clear_requests();

    // 16: learned realm, upstream service, library/ added, ns never sent, answer relayed.
    let resp = c
        .get(format!(
            "{}/v2/auth?scope=repository:busybox:pull&service=x&ns=docker.io",
            proxy.base_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert!(
        header(&h, "cache-control").is_some_and(|v| v.contains("no-store")),
        "{h:?}"
    );
    assert!(h.get("set-cookie").is_none());
    let v: serde_json::Value = resp.text().await.map(|t| to_json(&t)).unwrap();
    assert!(
        v["token"].as_str().is_some_and(|t| t.starts_with("eyJ")),
        "{v}"
    );
    let reqs = ts.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let r = &reqs[0];
    assert_eq!(r.method, "GET");
    assert_eq!(r.param("service"), Some("test-registry"));
    assert_eq!(r.param("scope"), Some("repository:library/busybox:pull"));
    assert!(
        !query_keys(r).contains(&"ns"),
        "ns reached the token server: {r:?}"
    );
    assert!(!r.authorization);
    // The token works at the registry through the proxy.
    let tok = v["token"].as_str().unwrap();
    let resp = c
        .get(format!(
            "{}/v2/library/busybox/manifests/latest",
            proxy.base_url()
        ))
        .header("accept", accept_all())
        .bearer_auth(tok)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // 19: Basic goes to the token request only; none without it.
    ts.clear_requests();
    let resp = c
        .get(format!(
            "{}/v2/auth?scope=repository:private/secret:pull&service=test-registry",
            proxy.base_url()
        ))
        .header("authorization", BASIC_ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = c
        .get(format!(
            "{}/v2/auth?scope=repository:private/secret:pull",
            proxy.base_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let reqs = ts.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0].basic_user.as_deref(), Some("alice"));
    assert!(
        !reqs[1].authorization,
        "credentials reused for an anonymous request"
    );
    // Realm discovery (upstream /v2/) never carried credentials; the registry never saw Basic.
    let front_reqs = front.requests();
    assert!(
        front_reqs.iter().any(|r| r.path == "/v2/"),
        "realm discovered through the upstream ping"
    );
    for r in &front_reqs {
        let auth = r.header("authorization");
        assert!(
            auth.is_none_or(|a| !a.starts_with("Basic")),
            "Basic reached the registry: {r:?}"
        );
        if r.path == "/v2/" {
            assert!(auth.is_none(), "discovery carried Authorization: {r:?}");
        }
    }

    // 21: the token server's 401 and body are relayed.
    let wrong = "Basic YWxpY2U6d3Jvbmc="; // alice:wrong
    let direct = client()
        .get(format!(
            "{}?service=test-registry&scope=repository:library/busybox:pull",
            ts.realm()
        ))
        .header("authorization", wrong)
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 401);
    let direct_body: serde_json::Value = direct.text().await.map(|t| to_json(&t)).unwrap();
    let resp = c
        .get(format!(
            "{}/v2/auth?scope=repository:busybox:pull",
            proxy.base_url()
        ))
        .header("authorization", wrong)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let body: serde_json::Value = resp.text().await.map(|t| to_json(&t)).unwrap();
    assert_eq!(body, direct_body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_25_oauth_post_form_to_the_real_token_server() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    let bed = TestBed::start_with(Mode::Token, SMALL).await;
    let proxy = start_proxy(bed.registry.base_url(), &realm_origins(&bed), "");
    let ts = bed.token_server();
    let c = client();
    // Realm discovery first happens on this POST too.
    ts.clear_requests();
    let form = "grant_type=password&username=alice&password=secret&service=x&scope=repository%3Abusybox%3Apull&client_id=dockerproxy-test&access_type=offline";
    let resp = c
        .post(format!("{}/v2/auth", proxy.base_url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.text().await.map(|t| to_json(&t)).unwrap();
    assert!(
        v["access_token"]
            .as_str()
            .is_some_and(|t| t.starts_with("eyJ")),
        "{v}"
    );
    assert!(v["refresh_token"].as_str().is_some(), "{v}");
    let reqs = ts.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    let field = |k: &str| r.form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(field("grant_type"), Some("password"));
    assert_eq!(field("username"), Some("alice"));
    assert_eq!(field("password"), Some("secret"));
    assert_eq!(field("service"), Some("test-registry"));
    assert_eq!(field("scope"), Some("repository:library/busybox:pull"));
    assert_eq!(field("client_id"), Some("dockerproxy-test"));
    assert_eq!(field("access_type"), Some("offline"));
    // The refresh token works through the proxy too.
    let refresh = v["refresh_token"].as_str().unwrap();
    let form = format!(
        "grant_type=refresh_token&refresh_token={refresh}&service=x&scope=repository%3Abusybox%3Apull&client_id=t"
    );
    let resp = c
        .post(format!("{}/v2/auth", proxy.base_url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // A bad password: the token server's 401 and body relayed.
    let resp = c
        .post(format!("{}/v2/auth", proxy.base_url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=password&username=alice&password=nope&service=x&client_id=t")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let v: serde_json::Value = resp.text().await.map(|t| to_json(&t)).unwrap();
    assert_eq!(v["error"], "invalid_grant", "{v}");
}

// ----------------------------------------------------------------------------------------------
// 26–28: library redirects
// ----------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_26_27_28_library_redirects_on_a_docker_hub_route() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    let bed = TestBed::start_with(Mode::Plain, SMALL).await;
    let proxy = start_proxy(bed.registry.base_url(), &[], "");
    let c = client();
    let before = settled_request_count(&bed).await;
    let d = &bed.seeded.busybox.layers[0].digest;
    let cases = [
        (
            reqwest::Method::GET,
            "/v2/busybox/manifests/latest?ns=docker.io",
            "/v2/library/busybox/manifests/latest?ns=docker.io",
            true,
        ),
        (
            reqwest::Method::HEAD,
            "/v2/busybox/manifests/latest?ns=docker.io",
            "/v2/library/busybox/manifests/latest?ns=docker.io",
            true,
        ),
        (
            reqwest::Method::GET,
            &format!("/v2/busybox/blobs/{d}"),
            &format!("/v2/library/busybox/blobs/{d}"),
            false,
        ),
        (
            reqwest::Method::GET,
            "/v2/busybox/tags/list",
            "/v2/library/busybox/tags/list",
            false,
        ),
    ];
    for (method, path, location, ns) in cases {
        let resp = c
            .request(method.clone(), format!("{}{path}", proxy.base_url()))
            .header("host", "docker.example.test")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 301, "{method} {path}");
        assert_eq!(
            header(resp.headers(), "location").as_deref(),
            Some(location),
            "{method} {path}"
        );
        assert_eq!(
            header(resp.headers(), "oci-namespace").as_deref(),
            ns.then_some("docker.io"),
            "{method} {path}"
        );
        assert!(resp.bytes().await.unwrap().is_empty());
    }
    assert_eq!(
        settled_request_count(&bed).await,
        before,
        "no upstream request for a library redirect"
    );
}

// ----------------------------------------------------------------------------------------------
// 32, 33, 35, 76: forwarding
// ----------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_32_76_accept_lines_and_authorization_forwarded_answer_relayed() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    let bed = TestBed::start_with(Mode::Token, SMALL).await;
    let front = FaultFront::forward(bed.registry.base_url()).unwrap();
    let proxy = start_proxy(&front.base_url(), &realm_origins(&bed), "");
    let token = bed
        .token_server()
        .issue(None, &["repository:library/busybox:pull"])
        .unwrap();
    let path = "/v2/library/busybox/manifests/latest";
    let resp = client()
        .get(format!("{}{path}", proxy.base_url()))
        .header("accept", OCI_INDEX)
        .header("accept", OCI_MANIFEST)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let m = &bed.seeded.busybox.manifest;
    let h = resp.headers().clone();
    assert_eq!(header(&h, "content-type").as_deref(), Some(OCI_MANIFEST));
    assert_eq!(
        header(&h, "docker-content-digest").as_ref(),
        Some(&m.digest)
    );
    assert_eq!(header(&h, "content-length"), Some(m.data.len().to_string()));
    assert_eq!(resp.bytes().await.unwrap(), m.data);

    let seen: Vec<_> = front
        .requests()
        .into_iter()
        .filter(|r| r.path == path)
        .collect();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0].header_values("accept"),
        vec![OCI_INDEX, OCI_MANIFEST],
        "two Accept lines, same order"
    );
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {token}").as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_33_query_forwarded_to_the_registry() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    let bed = TestBed::start_with(Mode::Plain, SMALL).await;
    let proxy = start_proxy(bed.registry.base_url(), &[], "");
    let c = client();
    // distribution 2.8 ignores `n`/`last` on tags/list (pagination came in 3.0), so the answer
    // is compared with the registry's own, and the access log shows the query that arrived.
    for query in ["n=1", "n=10&last=1.36"] {
        let path = format!("/v2/library/busybox/tags/list?{query}");
        let resp = c
            .get(format!("{}{path}", proxy.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let via_proxy = to_json(&resp.text().await.unwrap());
        let (status, _, direct_body) = direct(&bed, &path, None).await;
        assert_eq!(status, 200);
        assert_eq!(via_proxy, to_json(&direct_body));
        assert_eq!(via_proxy["name"], "library/busybox");
        settled_request_count(&bed).await;
        assert_eq!(
            bed.registry.count("GET", &path),
            2,
            "once through the proxy, once direct: {path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_35_hop_by_hop_headers_not_forwarded() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    let bed = TestBed::start_with(Mode::Plain, SMALL).await;
    let front = FaultFront::forward(bed.registry.base_url()).unwrap();
    let proxy = start_proxy(&front.base_url(), &[], "");
    let path = "/v2/library/busybox/manifests/latest";
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: {}\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nUpgrade: websocket\r\n\
         Proxy-Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: Basic eDp5\r\n\
         X-Forwarded-For: 203.0.113.9\r\nX-Real-IP: 203.0.113.9\r\nForwarded: for=203.0.113.9\r\nCF-Connecting-IP: 203.0.113.9\r\n\
         X-Custom: kept\r\n\r\n",
        proxy.host_port(),
        accept_all()
    );
    let (status, _, body) = raw(proxy.addr(), &request).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let seen: Vec<_> = front
        .requests()
        .into_iter()
        .filter(|r| r.path == path)
        .collect();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    for name in [
        "x-hop",
        "upgrade",
        "proxy-connection",
        "keep-alive",
        "te",
        "proxy-authorization",
        "x-forwarded-for",
        "x-real-ip",
        "forwarded",
        "cf-connecting-ip",
    ] {
        assert!(
            r.header(name).is_none(),
            "{name} forwarded: {:?}",
            r.headers
        );
    }
    for v in r.header_values("connection") {
        assert!(
            !v.to_ascii_lowercase().contains("x-hop"),
            "Connection forwarded: {v}"
        );
    }
    assert_eq!(
        r.header("host"),
        Some(front.host_port().as_str()),
        "Host is the upstream's"
    );
    assert_eq!(
        r.header("x-custom"),
        Some("kept"),
        "end-to-end headers pass"
    );
}

// ----------------------------------------------------------------------------------------------
// 34: upstream errors
// ----------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_34_upstream_errors_relayed_or_mapped() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    let bed = TestBed::start_with(Mode::Plain, SMALL).await;
    let front = FaultFront::forward(bed.registry.base_url()).unwrap();
    let mangler = CorruptFront::start(&front.base_url(), Mangle::None).unwrap();
    let proxy = start_proxy(&mangler.base_url(), &[], "");
    let c = client();
    let get = |path: &str| {
        c.get(format!("{}{path}", proxy.base_url()))
            .header("accept", accept_all())
            .send()
    };

    // The real registry's 404 MANIFEST_UNKNOWN is relayed, and not cached. (Each case below
    // uses its own manifest: a 200 may be cached.)
    let nope = "/v2/library/busybox/manifests/nope";
    for _ in 0..2 {
        let resp = get(nope).await.unwrap();
        assert_eq!(resp.status(), 404);
        assert_eq!(oci_code(&resp.text().await.unwrap()), "MANIFEST_UNKNOWN");
    }
    assert_eq!(front.count("GET", nope), 2);

    // 429 with rate-limit headers and a JSON body: relayed; the next request goes upstream.
    let path = "/v2/library/busybox/manifests/latest";
    let limits = [
        ("Retry-After", "30"),
        ("RateLimit-Limit", "100;w=21600"),
        ("RateLimit-Remaining", "0;w=21600"),
        ("RateLimit-Reset", "21600"),
        ("Docker-RateLimit-Source", "203.0.113.9"),
    ];
    front.add_rule(
        Rule::new(
            PathMatch::Exact(path.into()),
            Action::Status {
                status: 429,
                headers: limits
                    .iter()
                    .map(|(k, v)| ((*k).into(), (*v).into()))
                    .collect(),
            },
        )
        .times(1),
    );
    let resp = get(path).await.unwrap();
    assert_eq!(resp.status(), 429);
    for (k, v) in limits {
        assert_eq!(header(resp.headers(), k).as_deref(), Some(v), "{k}");
    }
    let text = resp.text().await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v["errors"][0]["message"], "injected fault",
        "JSON body relayed verbatim: {text}"
    );
    let resp = get(path).await.unwrap();
    assert_eq!(
        resp.status(),
        200,
        "not cached: the next request reached the upstream"
    );
    assert_eq!(front.count("GET", path), 2);

    // Docker Hub's bare-text 429: replaced by an OCI TOOMANYREQUESTS, headers kept.
    mangler.set_mangle(Mangle::Respond {
        path_contains: "/manifests/".into(),
        status: 429,
        content_type: "text/plain".into(),
        headers: vec![("Retry-After".into(), "60".into())],
        body: "Too Many Requests (HAP429).\n".into(),
    });
    let resp = get("/v2/library/busybox/manifests/1.36").await.unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(header(resp.headers(), "retry-after").as_deref(), Some("60"));
    assert!(
        header(resp.headers(), "content-type").is_some_and(|t| t.starts_with("application/json"))
    );
    assert_eq!(oci_code(&resp.text().await.unwrap()), "TOOMANYREQUESTS");
    mangler.set_mangle(Mangle::None);

    // 503 → 502 UNAVAILABLE, Retry-After kept.
    let path = "/v2/library/dockerv2/manifests/latest";
    front.add_rule(
        Rule::new(
            PathMatch::Exact(path.into()),
            Action::Status {
                status: 503,
                headers: vec![("Retry-After".into(), "7".into())],
            },
        )
        .times(1),
    );
    let resp = get(path).await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(header(resp.headers(), "retry-after").as_deref(), Some("7"));
    assert_eq!(oci_code(&resp.text().await.unwrap()), "UNAVAILABLE");
}

// ----------------------------------------------------------------------------------------------
// 36: pushes
// ----------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_36_push_forwarded_only_with_allow_push() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    let bed = TestBed::start_with(Mode::Plain, SMALL).await;
    let front = FaultFront::forward(bed.registry.base_url()).unwrap();
    let c = client();
    let data: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let digest = sha256_digest(&data);
    let uploads = "/v2/test/pushed/blobs/uploads/";

    // Without allow_push: 405, nothing upstream.
    {
        let proxy = start_proxy(&front.base_url(), &[], "");
        let resp = c
            .post(format!("{}{uploads}", proxy.base_url()))
            .body(data.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 405);
        assert_eq!(
            header(resp.headers(), "allow").as_deref(),
            Some("GET, HEAD")
        );
        assert_eq!(oci_code(&resp.text().await.unwrap()), "UNSUPPORTED");
        assert!(front.requests().is_empty(), "{:?}", front.requests());
        settled_request_count(&bed).await;
        assert!(
            !bed.registry
                .upstream_requests()
                .iter()
                .any(|(_, p)| p.starts_with("/v2/test/"))
        );
    }

    let proxy = start_proxy(&front.base_url(), &[], "allow_push = true");
    let base = proxy.base_url();
    let on_proxy = |location: &str| {
        assert!(
            location.starts_with(&format!("{base}/v2/test/pushed/")),
            "Location not on the proxy: {location}"
        );
    };
    let with_digest = |location: &str, digest: &str| {
        let sep = if location.contains('?') { '&' } else { '?' };
        format!("{location}{sep}digest={digest}")
    };

    // Monolithic: POST, then PUT with the whole body.
    let resp = c.post(format!("{base}{uploads}")).send().await.unwrap();
    assert_eq!(resp.status(), 202);
    let location = header(resp.headers(), "location").unwrap();
    on_proxy(&location);
    assert!(
        location.starts_with(&format!("{base}{uploads}")),
        "{location}"
    );
    let resp = c
        .put(with_digest(&location, &digest))
        .header("content-type", "application/octet-stream")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    on_proxy(&header(resp.headers(), "location").unwrap());

    // Chunked upload: POST, PATCH with a body, PUT closing it.
    let second: Vec<u8> = data.iter().rev().copied().collect();
    let second_digest = sha256_digest(&second);
    let resp = c.post(format!("{base}{uploads}")).send().await.unwrap();
    assert_eq!(resp.status(), 202);
    let location = header(resp.headers(), "location").unwrap();
    on_proxy(&location);
    let resp = c
        .patch(&location)
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("0-{}", second.len() - 1))
        .body(second.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let location = header(resp.headers(), "location").unwrap();
    on_proxy(&location);
    let resp = c
        .put(with_digest(&location, &second_digest))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);

    let writes: Vec<_> = front
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT" || r.method == "PATCH")
        .collect();
    assert_eq!(writes.len(), 3, "{writes:?}");
    for (r, len) in writes.iter().zip([data.len(), second.len(), 0]) {
        if len > 0 {
            assert_eq!(
                r.header("content-length"),
                Some(len.to_string().as_str()),
                "{} {:?}",
                r.method,
                r.headers
            );
        }
        assert!(
            r.header("transfer-encoding").is_none(),
            "re-chunked: {:?}",
            r.headers
        );
    }
    // The blobs really landed in the registry.
    for (d, bytes) in [(&digest, &data), (&second_digest, &second)] {
        let direct = c
            .get(format!(
                "{}/v2/test/pushed/blobs/{d}",
                bed.registry.base_url()
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(direct.status(), 200);
        assert_eq!(direct.bytes().await.unwrap().as_ref(), &bytes[..]);
    }
}

// ----------------------------------------------------------------------------------------------
// 37, 74, §2.4: streaming bodies
// ----------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_37_slow_blob_completes_while_bytes_flow_and_a_stall_aborts() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    let bed = TestBed::start_with(
        Mode::Plain,
        SeedOptions {
            big_layer_size: 8 << 20,
        },
    )
    .await;
    let blob = &bed.seeded.big.layers[0];
    assert!(blob.data.len() >= 8 << 20);
    let front = CorruptFront::start(
        bed.registry.base_url(),
        Mangle::Trickle {
            chunk: 64 << 10,
            interval: Duration::from_millis(38),
        },
    )
    .unwrap();
    let proxy = start_proxy(&front.base_url(), &[], "[limits]\nidle_timeout = \"2s\"");
    let url = format!("{}/v2/library/big/blobs/{}", proxy.base_url(), blob.digest);
    let c = client();

    // ~5 s of trickle with a 2 s idle timeout: completes.
    let start = Instant::now();
    let resp = c.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let (body, err) = read_body(resp).await;
    let took = start.elapsed();
    assert!(
        err.is_none(),
        "trickled blob aborted after {} bytes: {err:?}",
        body.len()
    );
    assert_eq!(body.len(), blob.data.len());
    assert_eq!(sha256_digest(&body), blob.digest);
    assert!(
        took > Duration::from_secs(4),
        "the front did not trickle ({took:?})"
    );

    // A stall longer than the idle timeout aborts the client stream instead of ending it
    // cleanly: first without the cache (no retry once bytes have arrived)...
    front.set_mangle(Mangle::StallAfter {
        after: 1 << 20,
        pause: Duration::from_secs(6),
    });
    let toml = docker_hub_route_toml(&front.base_url(), &[], "[limits]\nidle_timeout = \"2s\"");
    let uncached = proxy_env_toml(&[("CACHE_ENABLED", "false")], &toml);
    let url = format!(
        "{}/v2/library/big/blobs/{}",
        uncached.base_url(),
        blob.digest
    );
    let start = Instant::now();
    let resp = c.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let (body, err) = read_body(resp).await;
    let took = start.elapsed();
    assert!(
        err.is_some(),
        "a stalled upstream ended cleanly with {} bytes after {took:?}",
        body.len()
    );
    assert!(body.len() < blob.data.len());
    assert!(
        took < Duration::from_millis(5500),
        "aborted only after {took:?}: the idle timeout did not fire"
    );

    // ...then through a cache fill (fresh cache), which may resume with Range: the front stalls
    // every answer, so without an idle timeout the fill would wait out each 6 s pause and end
    // cleanly.
    let cached = proxy_env_toml(&[], &toml);
    let url = format!("{}/v2/library/big/blobs/{}", cached.base_url(), blob.digest);
    let start = Instant::now();
    let resp = c.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let (body, err) = read_body(resp).await;
    let took = start.elapsed();
    assert!(
        err.is_some(),
        "a stalled upstream ended cleanly through the cache with {} bytes after {took:?}",
        body.len()
    );
    assert!(body.len() < blob.data.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_74_upstream_cut_mid_blob_aborts_the_client_stream() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    let bed = TestBed::start_with(Mode::Plain, SMALL).await;
    let front = FaultFront::forward(bed.registry.base_url()).unwrap();
    let blob = &bed.seeded.big.layers[0];
    let path = format!("/v2/library/big/blobs/{}", blob.digest);
    let cut = || Rule::new(PathMatch::Blob, Action::CutAfter(100_000)).method("GET");
    let upstream_seen = || {
        front
            .requests()
            .iter()
            .map(|r| {
                format!(
                    "{} {} range={:?} {}",
                    r.method,
                    r.path,
                    r.header("range"),
                    r.status
                )
            })
            .collect::<Vec<_>>()
    };
    let c = client();

    // Without the cache: one cut aborts the client stream, and nothing is retried once
    // response bytes have arrived (COMPAT §7.4).
    let toml = docker_hub_route_toml(&front.base_url(), &[], "");
    let uncached = proxy_env_toml(&[("CACHE_ENABLED", "false")], &toml);
    front.add_rule(cut().times(1));
    let resp = c
        .get(format!("{}{path}", uncached.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (body, err) = read_body(resp).await;
    assert!(
        err.is_some(),
        "a cut upstream ended cleanly with {} bytes; upstream saw {:?}",
        body.len(),
        upstream_seen()
    );
    assert!(body.len() <= 100_000, "{} bytes", body.len());
    assert_eq!(front.count("GET", &path), 1, "{:?}", upstream_seen());

    // With the cache a fill may resume with Range (SECURITY §3.4), but an upstream that cuts
    // every answer still ends in a visible abort.
    let cached = start_proxy(&front.base_url(), &[], "");
    front.clear_rules();
    front.add_rule(cut());
    let resp = c
        .get(format!("{}{path}", cached.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (body, err) = read_body(resp).await;
    assert!(
        err.is_some(),
        "an upstream cutting every answer ended cleanly with {} bytes; upstream saw {:?}",
        body.len(),
        upstream_seen()
    );
    assert!(body.len() < blob.data.len());

    // Nothing was kept: with the upstream healthy, the next GET fetches again and completes.
    front.clear_rules();
    let before = front.count("GET", &path);
    for proxy in [&uncached, &cached] {
        let resp = c
            .get(format!("{}{path}", proxy.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let (body, err) = read_body(resp).await;
        assert!(err.is_none(), "{err:?}");
        assert_eq!(sha256_digest(&body), blob.digest);
    }
    assert_eq!(
        front.count("GET", &path),
        before + 2,
        "{:?}",
        upstream_seen()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_2_4_wrong_blob_bytes_abort_and_count() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    let bed = TestBed::start_with(Mode::Plain, SMALL).await;
    let blob = &bed.seeded.big.layers[0];
    let size = blob.data.len() as u64;
    // The very last byte is wrong: only a held-back tail can stop it.
    let front = CorruptFront::start(bed.registry.base_url(), Mangle::FlipByte(size - 1)).unwrap();
    let proxy = start_proxy(&front.base_url(), &[], "");
    let c = client();
    let series = "dockerproxy_integrity_failures_total{registry=\"docker.io\",kind=\"blob\"}";
    let before = metric(&metrics(&c, &proxy).await, series);
    let url = format!("{}/v2/library/big/blobs/{}", proxy.base_url(), blob.digest);
    let resp = c.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(resp.headers(), "content-length"),
        Some(size.to_string())
    );
    let (body, err) = read_body(resp).await;
    assert!(
        err.is_some(),
        "wrong bytes ended cleanly ({} of {size} bytes)",
        body.len()
    );
    assert!((body.len() as u64) < size, "the last byte was delivered");
    assert_eq!(
        body[..],
        blob.data[..body.len()],
        "bytes before the corrupted one are the upstream's"
    );
    // The counter is updated when the response is dropped: poll briefly.
    let mut after = 0;
    for _ in 0..20 {
        after = metric(&metrics(&c, &proxy).await, series);
        if after > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(after, before + 1, "integrity failure not counted");

    // With correct bytes the same URL works (nothing poisoned).
    front.set_mangle(Mangle::None);
    let (body, err) = read_body(c.get(&url).send().await.unwrap()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(sha256_digest(&body), blob.digest);
}

// ----------------------------------------------------------------------------------------------
// 38–40, 42: redirects
// ----------------------------------------------------------------------------------------------

struct CdnSetup {
    bed: TestBed,
    cdn: FaultFront,
    front: FaultFront,
    proxy: Proxy,
    token: String,
}

async fn cdn_setup() -> CdnSetup {
    let bed = TestBed::start_with(Mode::Token, SMALL).await;
    let cdn = FaultFront::cdn(&bed.storage).unwrap();
    let front = FaultFront::redirecting_blobs(bed.registry.base_url(), &cdn.base_url()).unwrap();
    let mut realms = realm_origins(&bed);
    realms.push(cdn.base_url());
    let proxy = start_proxy(&front.base_url(), &realms, "");
    let token = bed
        .token_server()
        .issue(None, &["repository:library/busybox:pull"])
        .unwrap();
    CdnSetup {
        bed,
        cdn,
        front,
        proxy,
        token,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_38_39_cdn_redirect_followed_without_authorization_and_with_range() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    let s = cdn_setup().await;
    let blob = &s.bed.seeded.busybox.layers[0];
    let path = format!("/v2/library/busybox/blobs/{}", blob.digest);
    let c = client();

    // 38: full GET; only Accept, Range, User-Agent and Accept-Encoding go to the CDN.
    let resp = c
        .get(format!("{}{path}", s.proxy.base_url()))
        .bearer_auth(&s.token)
        .header("cookie", "session=abc")
        .header("x-custom", "1")
        .header("user-agent", "compat-test/1.0")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(
        header(&h, "docker-content-digest").as_ref(),
        Some(&blob.digest)
    );
    assert_eq!(
        header(&h, "content-length"),
        Some(blob.data.len().to_string())
    );
    assert_eq!(resp.bytes().await.unwrap(), blob.data);
    let first = &s.cdn.requests()[0];
    for (name, _) in &first.headers {
        assert!(
            matches!(
                name.as_str(),
                "accept" | "range" | "if-range" | "user-agent" | "accept-encoding" | "host"
            ),
            "{name} reached the CDN: {:?}",
            first.headers
        );
    }
    assert_eq!(first.header("user-agent"), Some("compat-test/1.0"));
    assert_eq!(
        s.front
            .requests()
            .iter()
            .filter(|r| r.path == path && r.status == 307)
            .count(),
        1
    );
    assert!(
        s.front
            .requests()
            .iter()
            .any(|r| r.path == path && r.header("authorization").is_some()),
        "the registry request carried the client's token"
    );

    // 39: Range reaches the CDN; 206 with Content-Range. (Another blob: the first may now be
    // cached, and a cached blob answers Range itself.)
    let blob = &s.bed.seeded.busybox.layers[1];
    let path = format!("/v2/library/busybox/blobs/{}", blob.digest);
    let resp = c
        .get(format!("{}{path}", s.proxy.base_url()))
        .bearer_auth(&s.token)
        .header("range", "bytes=0-99")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(
        header(resp.headers(), "content-range"),
        Some(format!("bytes 0-99/{}", blob.data.len()))
    );
    assert_eq!(resp.bytes().await.unwrap(), blob.data.slice(0..100));

    let cdn = s.cdn.requests();
    assert_eq!(cdn.len(), 2, "{cdn:?}");
    for r in &cdn {
        assert_eq!(r.method, "GET");
        assert!(
            r.header("authorization").is_none(),
            "Authorization reached the CDN: {r:?}"
        );
        assert!(r.status == 200 || r.status == 206, "{r:?}");
    }
    assert_eq!(cdn[0].header("range"), None);
    // COMPAT case 39 lets the Range reach the CDN; with the cache on we do better (SECURITY
    // §2.4, 206 only on verified content): the second, uncached blob is fetched whole once,
    // verified, and the client's range is cut from the fill. (With CACHE_ENABLED=false the
    // Range is still forwarded.)
    assert_eq!(cdn[1].header("range"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_40_head_on_a_redirected_blob_downloads_nothing() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    let s = cdn_setup().await;
    s.front.add_rule(
        Rule::new(PathMatch::Blob, Action::redirect_307(&s.cdn.base_url())).method("HEAD"),
    );
    let c = client();
    for (blob, cdn_refuses_head) in [
        (&s.bed.seeded.busybox.layers[0], false),
        (&s.bed.seeded.busybox.layers[1], true),
    ] {
        s.cdn.clear_requests();
        s.cdn.clear_rules();
        if cdn_refuses_head {
            // URLs signed for GET: HEAD gets 403, so the proxy must probe with a 1-byte Range.
            s.cdn
                .add_rule(Rule::new(PathMatch::Blob, Action::status(403)).method("HEAD"));
        }
        let path = format!("/v2/library/busybox/blobs/{}", blob.digest);
        let resp = c
            .head(format!("{}{path}", s.proxy.base_url()))
            .bearer_auth(&s.token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "refuses HEAD: {cdn_refuses_head}");
        let h = resp.headers().clone();
        assert_eq!(
            header(&h, "content-length"),
            Some(blob.data.len().to_string()),
            "{h:?}"
        );
        assert_eq!(
            header(&h, "docker-content-digest").as_ref(),
            Some(&blob.digest)
        );
        assert_eq!(
            header(&h, "accept-ranges").as_deref(),
            Some("bytes"),
            "{h:?}"
        );
        assert!(h.get("content-type").is_some(), "{h:?}");
        let cdn = s.cdn.requests();
        assert!(!cdn.is_empty(), "the redirect was not followed");
        for r in &cdn {
            assert!(r.header("authorization").is_none());
            if r.method == "GET" {
                assert_eq!(
                    r.header("range"),
                    Some("bytes=0-0"),
                    "a full GET reached the CDN: {r:?}"
                );
            }
        }
        if cdn_refuses_head {
            assert!(
                cdn.iter().any(|r| r.method == "GET"),
                "no Range probe after the 403: {cdn:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_42_redirect_loop_is_502() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    let bed = TestBed::start_with(Mode::Plain, SMALL).await;
    let front = FaultFront::forward(bed.registry.base_url()).unwrap();
    front.add_rule(
        Rule::new(PathMatch::Blob, Action::redirect_307(&front.base_url())).method("GET"),
    );
    let proxy = start_proxy(&front.base_url(), &[], "");
    let blob = &bed.seeded.busybox.layers[0];
    let path = format!("/v2/library/busybox/blobs/{}", blob.digest);
    let resp = client()
        .get(format!("{}{path}", proxy.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(oci_code(&resp.text().await.unwrap()), "UNKNOWN");
    // The first request plus at most max_redirects (5) followed hops.
    assert_eq!(front.count("GET", &path), 6, "{:?}", front.requests());
}

// ----------------------------------------------------------------------------------------------
// 59, 61, 65, 66: a mirror host choosing the registry by ns and prefix
// ----------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_59_61_65_66_mirror_host_routes_by_ns_and_prefix() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    let bed = TestBed::start_with(Mode::Token, SMALL).await;
    let ts = bed.token_server();
    let toml = format!(
        "mirror_hosts = [\"mirror.example.test\"]\n\
         [routes.\"ghcr.io\"]\nupstream = \"{reg}\"\ndevelopment = true\n\
         realm_allowlist = [\"http://{ts}\"]\naddress_exceptions = [\"{reg_hp}\", \"{ts}\"]\n",
        reg = bed.registry.base_url(),
        reg_hp = bed.host_port(),
        ts = ts.addr(),
    );
    let proxy = proxy_toml(&toml);
    let c = client();
    let mirror = "mirror.example.test";
    let get = |path: &str, auth: Option<&str>| {
        let mut r = c
            .get(format!("{}{path}", proxy.base_url()))
            .header("host", mirror)
            .header("accept", accept_all());
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    let app = &bed.seeded.app.manifest;

    // 61, first half: the challenge's realm is on the mirror host and carries ns.
    let path = "/v2/myorg/team/app/manifests/1.0?ns=ghcr.io";
    let resp = get(path, None).await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        header(resp.headers(), "oci-namespace").as_deref(),
        Some("ghcr.io")
    );
    assert_eq!(
        header(resp.headers(), "www-authenticate").unwrap(),
        "Bearer realm=\"http://mirror.example.test/v2/auth?ns=ghcr.io\",service=\"test-registry\",scope=\"repository:myorg/team/app:pull\""
    );
    // 61, second half: the token comes from ghcr's realm, without ns.
    ts.clear_requests();
    let resp = get(
        "/v2/auth?ns=ghcr.io&scope=repository:myorg/team/app:pull",
        None,
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let token = resp.text().await.map(|t| to_json(&t)).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let reqs = ts.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].param("service"), Some("test-registry"));
    assert_eq!(
        reqs[0].param("scope"),
        Some("repository:myorg/team/app:pull")
    );
    assert!(!query_keys(&reqs[0]).contains(&"ns"), "{:?}", reqs[0]);
    let bearer = format!("Bearer {token}");

    // 59: ns picks ghcr; the query (ns included) reaches the registry; OCI-Namespace echoed.
    let resp = get(path, Some(&bearer)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(resp.headers(), "oci-namespace").as_deref(),
        Some("ghcr.io")
    );
    assert_eq!(resp.bytes().await.unwrap(), app.data);
    settled_request_count(&bed).await;
    assert!(
        bed.registry
            .count("GET", "/v2/myorg/team/app/manifests/1.0?ns=ghcr.io")
            >= 2
    );

    // 65: the path prefix picks ghcr and is removed; docker.io/ under a prefix gets library/.
    // (A blob never fetched before: the manifest may be cached by now.)
    let config = &bed.seeded.app.config;
    let prefixed = format!("/v2/ghcr.io/myorg/team/app/blobs/{}", config.digest);
    let resp = get(&prefixed, Some(&bearer)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap(), config.data);
    settled_request_count(&bed).await;
    let upstream_path = format!("/v2/myorg/team/app/blobs/{}", config.digest);
    assert_eq!(bed.registry.count("GET", &upstream_path), 1);
    let resp = get("/v2/docker.io/nginx/manifests/1", None).await.unwrap();
    assert_eq!(resp.status(), 301);
    assert_eq!(
        header(resp.headers(), "location").as_deref(),
        Some("/v2/docker.io/library/nginx/manifests/1")
    );

    // 66: a scope prefix routes /v2/auth on the mirror host, and is removed from the scope.
    ts.clear_requests();
    let resp = get(
        "/v2/auth?scope=repository:ghcr.io/myorg/team/app:pull",
        None,
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let reqs = ts.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(
        reqs[0].param("scope"),
        Some("repository:myorg/team/app:pull")
    );
    assert_eq!(reqs[0].param("service"), Some("test-registry"));
}

// ----------------------------------------------------------------------------------------------
// 67, 68: configured credentials never leak
// ----------------------------------------------------------------------------------------------

/// Set by `compat_68_captured_logs_hold_no_secret` for its child process: install the server's
/// tracing subscriber (to stdout, which the parent captures) and write the proxy token here.
const LOG_CAPTURE_ENV: &str = "DOCKERPROXY_COMPAT_LOG_CAPTURE";

/// No secret of test 67 in `text`: alice's password (the repository name `private/secret`
/// aside), her Basic value, any JWT (the upstream tokens all start `eyJ`), the proxy token.
fn assert_no_secret(what: &str, text: &str, proxy_token: &str) {
    let scrubbed = text.replace("private/secret", "private/<repo>");
    assert!(
        !scrubbed.contains("secret"),
        "{what} holds the password:\n{text}"
    );
    assert!(
        !text.contains("YWxpY2U6c2VjcmV0"),
        "{what} holds alice's Basic value:\n{text}"
    );
    assert!(!text.contains("eyJ"), "{what} holds a JWT:\n{text}");
    assert!(
        !text.contains(proxy_token),
        "{what} holds the proxy token:\n{text}"
    );
    assert!(
        !text.contains("Bearer "),
        "{what} holds a Bearer value:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_67_68_configured_credentials_serve_anonymous_clients_without_leaking() {
    let capture = std::env::var(LOG_CAPTURE_ENV).ok();
    if capture.is_some() {
        dockerproxy_server::logging::init(true, false);
    }
    if !require_tools(&["docker-registry"]) {
        return;
    }
    let bed = TestBed::start_with(Mode::Token, SMALL).await;
    let ts = bed.token_server();
    let toml = format!(
        "{}\n[routes.\"docker.io\".credentials]\nusername = \"alice\"\npassword = \"secret\"\n\
         anonymous_repositories = [\"private/secret\"]\n",
        docker_hub_route_toml(bed.registry.base_url(), &realm_origins(&bed), "")
    );
    let proxy = proxy_toml(&toml);
    let c = client();
    ts.clear_requests();

    // Anonymous /v2/auth: a proxy token, no upstream call.
    let resp = c
        .get(format!(
            "{}/v2/auth?scope=repository:private/secret:pull&service=test-registry",
            proxy.base_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let cc = header(resp.headers(), "cache-control").unwrap_or_default();
    assert!(cc.contains("no-store"), "proxy token cacheable: {cc:?}");
    let text = resp.text().await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let token = v["token"].as_str().unwrap().to_owned();
    assert!(v.get("issued_at").is_some(), "{text}");
    assert_eq!(v["access_token"].as_str(), Some(token.as_str()));
    assert_eq!(v["expires_in"], 300);
    assert!(
        !text.contains("eyJ"),
        "an upstream token reached the client: {text}"
    );
    assert!(
        ts.requests().is_empty(),
        "/v2/auth called the token server: {:?}",
        ts.requests()
    );
    if let Some(path) = &capture {
        std::fs::write(path, &token).unwrap();
    }

    // The allowlisted private repository is served with that token.
    let resp = c
        .get(format!(
            "{}/v2/private/secret/manifests/1.0",
            proxy.base_url()
        ))
        .header("accept", accept_all())
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for (k, v) in resp.headers() {
        assert!(
            !String::from_utf8_lossy(v.as_bytes()).contains("eyJ"),
            "upstream token in {k}"
        );
    }
    assert_eq!(
        resp.bytes().await.unwrap(),
        bed.seeded.private_secret.manifest.data
    );
    let reqs = ts.requests();
    assert!(
        reqs.iter().any(|r| r.basic_user.as_deref() == Some("alice")
            && r.query
                .iter()
                .any(|(k, v)| k == "scope" && v.contains("private/secret"))),
        "the token server never saw alice's Basic: {reqs:?}"
    );

    // A private repository outside the allowlist: refused, and never with alice's credentials.
    ts.clear_requests();
    let resp = c
        .get(format!(
            "{}/v2/private/other/manifests/1.0",
            proxy.base_url()
        ))
        .header("accept", accept_all())
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(
        matches!(resp.status().as_u16(), 401 | 403 | 404),
        "{}",
        resp.status()
    );
    for r in ts.requests() {
        assert!(
            r.basic_user.is_none(),
            "configured credentials used for private/other: {r:?}"
        );
    }

    // 68: the statistics and metrics hold nothing secret.
    for path in ["/stats", "/stats/cache", "/metrics"] {
        let resp = c
            .get(format!("{}{path}", proxy.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_no_secret(path, &resp.text().await.unwrap(), &token);
    }
    let stats: serde_json::Value = c
        .get(format!("{}/stats", proxy.base_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|t| to_json(&t))
        .unwrap();
    for field in [
        "blob",
        "manifest",
        "totalSize",
        "totalSizeHuman",
        "deduplication",
        "lastCleanup",
        "inflight",
    ] {
        assert!(
            stats["cache"].get(field).is_some(),
            "/stats lacks cache.{field}: {stats}"
        );
    }
    assert!(
        stats.get("enabled").is_some() && stats.get("uptime").is_some(),
        "{stats}"
    );
}

#[test]
fn compat_68_captured_logs_hold_no_secret() {
    if std::env::var_os(LOG_CAPTURE_ENV).is_some() || !require_tools(&["docker-registry"]) {
        return;
    }
    // The server logs through the global tracing subscriber to stdout; run test 67 in a child
    // process that installs it, and read everything it wrote.
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("proxy-token");
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "compat_67_68_configured_credentials_serve_anonymous_clients_without_leaking",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(LOG_CAPTURE_ENV, &token_file)
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child run of test 67 failed:\n{stdout}\n{stderr}"
    );
    let token = std::fs::read_to_string(&token_file).expect("the child wrote the proxy token");
    assert!(!token.is_empty());
    // The capture really holds the proxy's request lines.
    assert!(
        stdout.contains("/v2/auth") && stdout.contains("/v2/private/secret/manifests/1.0"),
        "no logs captured:\n{stdout}"
    );
    let logs = format!("{stdout}\n{stderr}");
    assert_no_secret("the logs", &logs, &token);
    assert!(
        !logs.to_ascii_lowercase().contains("authorization: "),
        "an Authorization header was logged"
    );
}

// ----------------------------------------------------------------------------------------------
// 69, 70: metrics and readiness
// ----------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_69_70_metrics_text_and_readiness() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    let bed = TestBed::start_with(Mode::Plain, SMALL).await;
    let proxy = start_proxy(bed.registry.base_url(), &[], "");
    let c = client();

    let resp = c
        .get(format!("{}/metrics", proxy.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ct = header(resp.headers(), "content-type").unwrap();
    assert!(
        ct.starts_with("text/plain") && ct.contains("version=0.0.4"),
        "{ct}"
    );
    let text = resp.text().await.unwrap();
    for (fam, kind) in [
        ("requests_total", "counter"),
        ("cache_requests_total", "counter"),
        ("bytes_sent_total", "counter"),
        ("cache_size_bytes", "gauge"),
        ("cache_objects", "gauge"),
        ("cache_evictions_total", "counter"),
        ("upstream_requests_total", "counter"),
        ("upstream_response_seconds", "histogram"),
        ("upstream_ratelimit_remaining", "gauge"),
        ("coalesced_requests_total", "counter"),
        ("redirects_followed_total", "counter"),
        ("stale_served_total", "counter"),
        ("integrity_failures_total", "counter"),
    ] {
        assert!(
            text.contains(&format!("# TYPE dockerproxy_{fam} {kind}\n")),
            "missing {fam} {kind}:\n{text}"
        );
    }
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        assert!(line.starts_with("dockerproxy_"), "foreign sample {line}");
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "bad value in {line}");
    }

    let series = "dockerproxy_requests_total{registry=\"docker.io\",kind=\"manifest\",method=\"GET\",code=\"200\"}";
    let before = metric(&text, series);
    let resp = c
        .get(format!(
            "{}/v2/library/busybox/manifests/latest",
            proxy.base_url()
        ))
        .header("accept", accept_all())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
    let mut after = before;
    for _ in 0..20 {
        let text = metrics(&c, &proxy).await;
        after = metric(&text, series);
        if after > before {
            assert!(
                metric(
                    &text,
                    "dockerproxy_upstream_requests_total{registry=\"docker.io\",code=\"200\"}"
                ) >= 1,
                "{text}"
            );
            assert!(
                !text.contains("library/busybox"),
                "a repository name in a label:\n{text}"
            );
            assert!(
                !text.contains("127.0.0.1"),
                "a client or upstream address in a label:\n{text}"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(after, before + 1, "the manifest GET was not counted");

    // 70: ready while the upstream is fine...
    let resp = c
        .get(format!("{}/readyz", proxy.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.text().await.map(|t| to_json(&t)).unwrap()["status"],
        "ready"
    );
    let resp = c
        .head(format!("{}/readyz", proxy.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // ...and while it is down (the upstream really fails: 502 for a manifest).
    let dead = format!("http://{}", dockerproxy_tests::free_addr());
    let down = start_proxy(&dead, &[], "");
    let resp = c
        .get(format!(
            "{}/v2/library/busybox/manifests/latest",
            down.base_url()
        ))
        .header("accept", accept_all())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(oci_code(&resp.text().await.unwrap()), "UNAVAILABLE");
    let resp = c
        .get(format!("{}/readyz", down.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.text().await.map(|t| to_json(&t)).unwrap()["status"],
        "ready"
    );
}
