//! COMPAT.md case 67 and SECURITY.md §2.10–2.11: configured upstream credentials serve anonymous
//! clients through the proxy's own tokens, only for allowlisted repositories, and never reach a
//! client.

mod support;

use base64::Engine as _;
use dockerproxy_core::config::Credentials;
use dockerproxy_core::exchange::{Purpose, UpstreamError, UpstreamRequest};
use dockerproxy_core::token::TokenCache;
use http::Method;
use support::*;

const SECRET: &str = "s3cret-password";

fn cfg() -> dockerproxy_core::Config {
    let mut c = config();
    set_origin(&mut c, "docker.io", "https://hub.test");
    c.secret_key = [9; 32];
    let id = c.registry_by_name("docker.io").unwrap();
    c.registries[id].credentials = Some(Credentials {
        username: "mirror".to_owned(),
        secret: SECRET.to_owned(),
        anonymous_repositories: vec!["library/*".to_owned()],
    });
    c
}

fn basic() -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("mirror:{SECRET}"))
    )
}

/// Registry + token server: the configured account's token is `acct`, an anonymous one `anon`.
fn upstream(req: &UpstreamRequest) -> Result<Reply, UpstreamError> {
    let auth = sent_header(req, "authorization");
    if req.url.host_str() == Some("auth.docker.io") {
        let token = if auth == vec![basic()] {
            "acct"
        } else {
            "anon"
        };
        assert!(
            auth.is_empty() || auth == vec![basic()],
            "only the configured Basic reaches the realm: {auth:?}"
        );
        return Ok(Reply::new(200).json(&format!(r#"{{"token":"{token}","expires_in":300}}"#)));
    }
    let scope = req
        .url
        .path()
        .split("/manifests/")
        .next()
        .unwrap()
        .trim_start_matches("/v2/")
        .to_owned();
    match auth.first().map(String::as_str) {
        Some("Bearer acct") | Some("Bearer anon") => Ok(Reply::new(200)
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#)),
        Some(other) => panic!("unexpected upstream Authorization {other}"),
        None => Ok(Reply::new(401).header(
            "www-authenticate",
            format!(r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:{scope}:pull""#),
        )),
    }
}

#[test]
fn compat_67_anonymous_auth_gets_a_proxy_token_without_upstream_call() {
    let t = drive(
        &cfg(),
        get(
            "docker.example.com",
            "/v2/auth?scope=repository:library/busybox:pull&service=registry.docker.io",
        ),
        no_upstream,
    );
    assert_eq!(t.status(), 200);
    let token = t.json()["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("dpx1."));
    assert_eq!(t.json()["access_token"], token.as_str());
    assert_eq!(t.header("cache-control").unwrap(), "no-store");
    assert!(!t.body_str().contains(SECRET));
}

#[test]
fn compat_67_allowlisted_repo_uses_configured_credentials_then_reuses_the_token() {
    let c = cfg();
    let proxy_token = {
        let t = drive(
            &c,
            get(
                "docker.example.com",
                "/v2/auth?scope=repository:library/busybox:pull",
            ),
            no_upstream,
        );
        t.json()["token"].as_str().unwrap().to_owned()
    };
    let mut tokens = TokenCache::new(16);
    let bearer = format!("Bearer {proxy_token}");
    let req = request(
        Method::GET,
        "docker.example.com",
        "/v2/library/busybox/manifests/latest",
        &[("authorization", &bearer)],
    );
    let t = drive_tokens(&c, req.clone(), &mut tokens, upstream);
    assert_eq!(t.status(), 200);
    // Anonymous probe (the proxy token never leaves), token with Basic, retry with Bearer.
    assert_eq!(t.sent.len(), 3);
    assert!(sent_header(&t.sent[0], "authorization").is_empty());
    assert_eq!(t.sent[1].purpose, Purpose::Token);
    assert_eq!(sent_header(&t.sent[1], "authorization"), vec![basic()]);
    assert_eq!(
        sent_header(&t.sent[2], "authorization"),
        vec!["Bearer acct".to_owned()]
    );
    let resp = format!("{:?}", t.response);
    assert!(
        !resp.contains("acct") && !resp.contains(SECRET),
        "the client never sees the proxy's upstream token"
    );

    // Second request: the cached token is reused, no token request.
    let t = drive_tokens(&c, req, &mut tokens, upstream);
    assert_eq!(t.status(), 200);
    assert!(t.sent.iter().all(|r| r.purpose != Purpose::Token));
}

#[test]
fn compat_67_private_repo_gets_an_anonymous_upstream_token() {
    let mut tokens = TokenCache::new(16);
    let t = drive_tokens(
        &cfg(),
        get("docker.example.com", "/v2/someone/private/manifests/1"),
        &mut tokens,
        upstream,
    );
    assert_eq!(t.status(), 200);
    let token_req = t.sent.iter().find(|r| r.purpose == Purpose::Token).unwrap();
    assert!(
        sent_header(token_req, "authorization").is_empty(),
        "configured credentials must not serve a non-allowlisted repo"
    );
    assert_eq!(
        sent_header(t.sent.last().unwrap(), "authorization"),
        vec!["Bearer anon".to_owned()]
    );
}

#[test]
fn client_with_own_credentials_is_forwarded_as_is() {
    let mut tokens = TokenCache::new(16);
    let t = drive_tokens(
        &cfg(),
        request(
            Method::GET,
            "docker.example.com",
            "/v2/library/busybox/manifests/latest",
            &[("authorization", "Bearer acct")],
        ),
        &mut tokens,
        upstream,
    );
    assert_eq!(t.status(), 200);
    assert_eq!(t.sent.len(), 1);
    assert_eq!(
        sent_header(&t.sent[0], "authorization"),
        vec!["Bearer acct".to_owned()]
    );
}

#[test]
fn refused_proxy_token_is_invalidated_and_401_relayed() {
    let mut tokens = TokenCache::new(16);
    let t = drive_tokens(
        &cfg(),
        get("docker.example.com", "/v2/library/busybox/manifests/latest"),
        &mut tokens,
        |req| {
            if req.url.host_str() == Some("auth.docker.io") {
                return Ok(Reply::new(200).json(r#"{"token":"revoked","expires_in":300}"#));
            }
            Ok(Reply::new(401).header("www-authenticate", r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#))
        },
    );
    assert_eq!(t.status(), 401);
    assert!(
        t.header("www-authenticate")
            .unwrap()
            .contains("realm=\"http://docker.example.com/v2/auth\"")
    );
    assert!(tokens.is_empty(), "the refused token was dropped");
}
