//! COMPAT.md §9 auth cases at the level of the pure functions: challenge rewriting (9, 15, 22,
//! 75), the `/v2/auth` token request (16, 17, 18, 20, 23, 24, 25, 61, 66) and the token cache
//! (§4.3; SECURITY.md §2.10).

use core::time::Duration;

use dockerproxy_core::Timestamp;
use dockerproxy_core::challenge::{self, Challenge};
use dockerproxy_core::scope::{self, ScopeRules};
use dockerproxy_core::token::{
    Identity, Token, TokenCache, TokenKey, TokenLookup, parse_token_response,
};

const PROXY_REALM: &str = "https://docker.example.com/v2/auth";

const HUB: ScopeRules<'static> = ScopeRules {
    registry_names: &["docker.io", "registry-1.docker.io"],
    docker_hub: true,
    allow_push: false,
};
const GHCR: ScopeRules<'static> = ScopeRules {
    registry_names: &["ghcr.io"],
    docker_hub: false,
    allow_push: false,
};

/// Parses one upstream header line and rewrites every challenge as the proxy does toward clients.
fn rewritten(upstream: &str, realm: &str) -> Vec<String> {
    challenge::parse(&[upstream.as_bytes()])
        .unwrap()
        .iter()
        .map(|c| challenge::rewrite(c, realm).to_header_value())
        .collect()
}

/// The first Bearer challenge of an upstream header line.
fn bearer(upstream: &str) -> Challenge {
    challenge::parse(&[upstream.as_bytes()])
        .unwrap()
        .into_iter()
        .find(Challenge::is_bearer)
        .unwrap()
}

/// What the token server receives for a client `/v2/auth` query, given the upstream challenge.
fn token_url(upstream: &str, client_query: &str, rules: &ScopeRules<'_>) -> url::Url {
    let ch = bearer(upstream);
    let realm = url::Url::parse(ch.param("realm").unwrap()).unwrap();
    let scopes: Vec<String> = scope::query_scopes(client_query)
        .iter()
        .map(|s| scope::transform(s, rules))
        .collect();
    scope::token_query(
        &realm,
        ch.param("service"),
        &scopes,
        &scope::passthrough_params(client_query),
    )
}

fn pairs(u: &url::Url) -> Vec<(String, String)> {
    u.query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn p(k: &str, v: &str) -> (String, String) {
    (k.to_owned(), v.to_owned())
}

const HUB_PING: &str = r#"Bearer realm="http://127.0.0.1:5001/token",service="registry.docker.io""#;

#[test]
fn compat_09_ping_challenge_rewritten_service_kept() {
    assert_eq!(
        rewritten(HUB_PING, PROXY_REALM),
        [r#"Bearer realm="https://docker.example.com/v2/auth",service="registry.docker.io""#]
    );
}

#[test]
fn compat_15_scope_and_error_kept_in_order() {
    let upstream = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull",error="insufficient_scope""#;
    assert_eq!(
        rewritten(upstream, PROXY_REALM),
        [
            r#"Bearer realm="https://docker.example.com/v2/auth",service="registry.docker.io",scope="repository:library/busybox:pull",error="insufficient_scope""#
        ]
    );
}

#[test]
fn compat_16_hub_token_request() {
    let u = token_url(HUB_PING, "scope=repository:busybox:pull&service=x", &HUB);
    assert_eq!(
        u.as_str(),
        "http://127.0.0.1:5001/token?service=registry.docker.io&scope=repository%3Alibrary%2Fbusybox%3Apull"
    );
}

#[test]
fn compat_17_actions_pull_unless_allow_push() {
    assert_eq!(
        scope::transform("repository:foo/bar:pull,push", &HUB),
        "repository:foo/bar:pull"
    );
    let push = ScopeRules {
        allow_push: true,
        ..HUB
    };
    assert_eq!(
        scope::transform("repository:foo/bar:pull,push", &push),
        "repository:foo/bar:pull,push"
    );
}

#[test]
fn compat_18_no_library_outside_hub() {
    assert_eq!(
        scope::transform("repository:busybox:pull", &GHCR),
        "repository:busybox:pull"
    );
}

#[test]
fn compat_20_client_service_ignored() {
    let u = token_url(
        HUB_PING,
        "service=evil.example&scope=repository:library/alpine:pull",
        &HUB,
    );
    assert_eq!(
        pairs(&u),
        [
            p("service", "registry.docker.io"),
            p("scope", "repository:library/alpine:pull")
        ]
    );
    // Without a service in the challenge, none is sent at all.
    let u = token_url(
        r#"Bearer realm="https://t/token""#,
        "service=evil.example",
        &HUB,
    );
    assert_eq!(u.as_str(), "https://t/token");
}

#[test]
fn compat_22_parameters_by_name_not_position() {
    let u = token_url(r#"Bearer service="svc",realm="https://t/token""#, "", &GHCR);
    assert_eq!(u.as_str(), "https://t/token?service=svc");
    assert_eq!(
        rewritten(
            r#"Bearer service="svc",realm="https://t/token""#,
            PROXY_REALM
        ),
        [r#"Bearer realm="https://docker.example.com/v2/auth",service="svc""#]
    );
}

#[test]
fn compat_23_repeated_and_space_separated_scopes() {
    let want = [
        p("service", "registry.docker.io"),
        p("scope", "repository:library/a:pull"),
        p("scope", "repository:b/c:pull"),
    ];
    for query in [
        "scope=repository:a:pull&scope=repository:b/c:push",
        "scope=repository:a:pull%20repository:b/c:push",
    ] {
        assert_eq!(pairs(&token_url(HUB_PING, query, &HUB)), want, "{query}");
    }
}

#[test]
fn compat_24_catalog_scope_unchanged() {
    let u = token_url(HUB_PING, "scope=registry:catalog:*", &HUB);
    assert_eq!(
        u.as_str(),
        "http://127.0.0.1:5001/token?service=registry.docker.io&scope=registry%3Acatalog%3A*"
    );
}

#[test]
fn compat_25_post_form_transformed() {
    let form = b"grant_type=refresh_token&refresh_token=r%2Bt&service=x&client_id=containerd-client\
                 &scope=repository%3Abusybox%3Apull%20repository%3Afoo%2Fbar%3Apush&access_type=offline";
    let out = scope::transform_form(form, Some("registry.docker.io"), &HUB).unwrap();
    let fields: Vec<(String, String)> = form_urlencoded::parse(&out).into_owned().collect();
    assert_eq!(
        fields,
        [
            p("grant_type", "refresh_token"),
            p("refresh_token", "r+t"),
            p("service", "registry.docker.io"),
            p("client_id", "containerd-client"),
            p(
                "scope",
                "repository:library/busybox:pull repository:foo/bar:pull"
            ),
            p("access_type", "offline"),
        ]
    );
}

#[test]
fn compat_61_ns_not_in_token_request() {
    let ghcr = r#"Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:user/image:pull""#;
    let u = token_url(
        ghcr,
        "ns=ghcr.io&scope=repository:foo/bar:pull&account=alice",
        &GHCR,
    );
    assert_eq!(
        pairs(&u),
        [
            p("service", "ghcr.io"),
            p("scope", "repository:foo/bar:pull"),
            p("account", "alice")
        ]
    );
}

#[test]
fn compat_66_mirror_scope_prefix_routes_and_is_removed() {
    let scopes = scope::query_scopes("scope=repository:ghcr.io/foo/bar:pull");
    let refs: Vec<&str> = scopes.iter().map(String::as_str).collect();
    let registry =
        scope::registry_prefix(&refs, |r| ["docker.io", "ghcr.io", "quay.io"].contains(&r))
            .unwrap();
    assert_eq!(registry, "ghcr.io");
    let ghcr = r#"Bearer realm="https://ghcr.io/token",service="ghcr.io""#;
    let u = token_url(ghcr, "scope=repository:ghcr.io/foo/bar:pull", &GHCR);
    assert_eq!(
        u.as_str(),
        "https://ghcr.io/token?service=ghcr.io&scope=repository%3Afoo%2Fbar%3Apull"
    );
}

#[test]
fn compat_75_basic_relayed_unchanged() {
    assert_eq!(
        rewritten(r#"Basic realm="x""#, PROXY_REALM),
        [r#"Basic realm="x""#]
    );
    // A Bearer challenge without a realm is not usable either: relayed as it is.
    assert_eq!(
        rewritten(r#"Bearer service="s""#, PROXY_REALM),
        [r#"Bearer service="s""#]
    );
}

#[test]
fn malformed_challenge_never_yields_a_realm() {
    for bad in [
        "Bearer realm=\"https://t/token\",service=\"s",
        "Bearer realm=\"https://a/\",realm=\"https://b/\"",
        "Bearer realm=https://t/token",
    ] {
        assert!(challenge::parse(&[bad.as_bytes()]).is_err(), "{bad}");
    }
}

// Token cache (COMPAT.md §4.3).

const NOW: Timestamp = Timestamp::from_millis(1_795_953_600_000); // 2026-11-29T12:00:00Z

fn key(scope: &str, identity: Identity) -> TokenKey {
    TokenKey::new(
        "docker.io",
        "https://auth.docker.io/token",
        Some("registry.docker.io".to_owned()),
        vec![scope.to_owned()],
        identity,
    )
}

#[test]
fn token_expiry_honours_issued_at() {
    let body =
        br#"{"token":"T","access_token":"T","expires_in":300,"issued_at":"2026-11-29T11:59:00Z"}"#;
    let token = parse_token_response(body, NOW).unwrap();
    // Issued a minute ago, 300 s, 10 s margin: usable for 230 s more.
    assert_eq!(token.expires_at, NOW + Duration::from_secs(230));
    let mut cache = TokenCache::new(8);
    let k = key("repository:library/busybox:pull", Identity::Anonymous);
    assert_eq!(cache.lookup(&k, NOW), TokenLookup::Fetch);
    cache.complete(k.clone(), token.clone());
    assert_eq!(
        cache.lookup(&k, NOW + Duration::from_secs(229)),
        TokenLookup::Hit(token)
    );
    assert_eq!(
        cache.lookup(&k, NOW + Duration::from_secs(230)),
        TokenLookup::Fetch
    );
}

#[test]
fn token_single_flight() {
    let mut cache = TokenCache::new(8);
    let k = key("repository:library/busybox:pull", Identity::Configured);
    assert_eq!(cache.lookup(&k, NOW), TokenLookup::Fetch);
    assert_eq!(
        cache.lookup(&k, NOW + Duration::from_secs(1)),
        TokenLookup::Wait
    );
    // Another identity is another key: never shares the token or the fetch.
    assert_eq!(
        cache.lookup(
            &key("repository:library/busybox:pull", Identity::Client(7)),
            NOW
        ),
        TokenLookup::Fetch
    );
    let t = Token {
        value: "T".to_owned(),
        expires_at: NOW + Duration::from_secs(50),
    };
    cache.complete(k.clone(), t.clone());
    assert_eq!(
        cache.lookup(&k, NOW + Duration::from_secs(2)),
        TokenLookup::Hit(t)
    );
}

#[test]
fn token_fail_lets_next_fetch() {
    let mut cache = TokenCache::new(8);
    let k = key("repository:library/busybox:pull", Identity::Anonymous);
    assert_eq!(cache.lookup(&k, NOW), TokenLookup::Fetch);
    assert_eq!(cache.lookup(&k, NOW), TokenLookup::Wait);
    cache.fail(&k);
    assert_eq!(cache.lookup(&k, NOW), TokenLookup::Fetch);
}

#[test]
fn token_invalidate_after_401() {
    let mut cache = TokenCache::new(8);
    let k = key("repository:library/busybox:pull", Identity::Anonymous);
    cache.complete(
        k.clone(),
        Token {
            value: "T".to_owned(),
            expires_at: NOW + Duration::from_secs(50),
        },
    );
    cache.invalidate(&k);
    assert_eq!(cache.lookup(&k, NOW), TokenLookup::Fetch);
}

#[test]
fn token_cache_capacity_bound() {
    let mut cache = TokenCache::new(16);
    for n in 0..100 {
        let k = key(&format!("repository:r{n}:pull"), Identity::Anonymous);
        assert_eq!(cache.lookup(&k, NOW), TokenLookup::Fetch);
        cache.complete(
            k,
            Token {
                value: format!("T{n}"),
                expires_at: NOW + Duration::from_secs(60 + n),
            },
        );
        assert!(cache.len() <= 16);
    }
    assert_eq!(cache.len(), 16);
    // The tokens closest to expiry went first: the last 16 remain.
    let last = key("repository:r99:pull", Identity::Anonymous);
    assert!(matches!(cache.lookup(&last, NOW), TokenLookup::Hit(t) if t.value == "T99"));
    let first = key("repository:r0:pull", Identity::Anonymous);
    assert_eq!(cache.lookup(&first, NOW), TokenLookup::Fetch);
}
