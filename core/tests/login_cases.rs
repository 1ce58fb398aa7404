//! Proxy login (SECURITY.md §2.16, §2.10, §2.2): unauthenticated or unauthorised requests are
//! answered before any cache lookup or upstream request; `/v2/auth` issues the proxy's own
//! login token; login credentials never travel upstream; `/metrics` behind login.

mod support;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use base64::Engine as _;
use bytes::Bytes;
use dockerproxy_core::Config;
use dockerproxy_core::exchange::{Action, LocalEndpoint, UpstreamError, UpstreamRequest};
use dockerproxy_core::login::{PasswordVerdict, Principal};
use dockerproxy_core::proxy_token;
use dockerproxy_core::{Exchange, Timestamp};
use http::Method;
use support::*;

const HOST: &str = "docker.example.com";
const MANIFEST: &str =
    r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;

/// alice:pw (everything), bob:pw2 (library/* only), ops:adminpw (admin, nothing to pull).
fn htpasswd() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let h = |p: &str| bcrypt::hash(p, 4).unwrap();
        format!(
            "# test users\nalice:{}\nbob:{}\nops:{}\n",
            h("pw"),
            h("pw2"),
            h("adminpw")
        )
    })
}

fn load(env: &[(&str, &str)], toml: &str) -> Result<Config, dockerproxy_core::config::ConfigError> {
    let mut map = BTreeMap::new();
    map.insert("CUSTOM_DOMAIN".to_owned(), "example.com".to_owned());
    for (k, v) in env {
        map.insert((*k).to_owned(), (*v).to_owned());
    }
    let read = |p: &str| match p {
        "/etc/htpasswd" => Ok(htpasswd().to_owned()),
        "/etc/md5" => Ok("carol:$apr1$abc$def\n".to_owned()),
        other => Err(format!("cannot read {other:?}")),
    };
    dockerproxy_core::config::load_with(&map, Some(toml), &read).map(|(mut c, _)| {
        set_origin(&mut c, "docker.io", "https://hub.test");
        c.secret_key = [5; 32];
        c
    })
}

const RULES: &str = r#"
metrics = "login"
[login]
htpasswd = "/etc/htpasswd"
admins = ["ops"]
[[login.allow]]
users = ["alice"]
[[login.allow]]
users = ["bob"]
routes = ["docker.example.com"]
repositories = ["library/*"]
[[login.allow]]
users = ["anonymous"]
repositories = ["public/*"]
"#;

fn cfg() -> Config {
    load(&[], RULES).unwrap()
}

fn basic(user: &str, pw: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
    )
}

fn with_auth(target: &str, auth: &str) -> dockerproxy_core::exchange::RequestHead {
    request(Method::GET, HOST, target, &[("authorization", auth)])
}

fn token_for(user: &str) -> String {
    proxy_token::issue_login(&[5; 32], &Principal::User(user.to_owned()), NOW)
}

/// Registry + token server; the proxy's anonymous upstream token is `anon`.
fn upstream(req: &UpstreamRequest) -> Result<Reply, UpstreamError> {
    let auth = sent_header(req, "authorization");
    if req.url.host_str() == Some("auth.hub.test") {
        assert!(
            auth.is_empty(),
            "the realm sees no client credential: {auth:?}"
        );
        return Ok(Reply::new(200).json(r#"{"token":"anon","expires_in":300}"#));
    }
    match auth.first().map(String::as_str) {
        Some("Bearer anon") => Ok(Reply::new(200)
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(MANIFEST)),
        Some(other) => panic!("a client credential reached the registry: {other}"),
        None => Ok(Reply::new(401).header(
            "www-authenticate",
            r#"Bearer realm="https://auth.hub.test/token",service="hub""#,
        )),
    }
}

fn assert_challenge(t: &Transcript) {
    assert_eq!(t.status(), 401);
    assert_eq!(
        t.header("www-authenticate").unwrap(),
        r#"Bearer realm="http://docker.example.com/v2/auth",service="dockerproxy""#
    );
    assert_eq!(t.header("cache-control").unwrap(), "no-store");
    assert!(t.sent.is_empty(), "no upstream request");
    assert_eq!(t.lookups, 0, "no cache lookup");
}

#[test]
fn no_credentials_get_the_proxy_challenge_and_touch_nothing() {
    let c = cfg();
    let cache = |_: &dockerproxy_core::exchange::CacheQuery| panic!("cache consulted");
    let t = drive_with(
        &c,
        get(HOST, "/v2/myorg/app/manifests/1"),
        None,
        cache,
        no_upstream,
    );
    assert_challenge(&t);
    assert_eq!(t.json()["errors"][0]["code"], "UNAUTHORIZED");
    assert_eq!(t.password_checks, 0);
    // The ping too: clients learn the realm from it.
    let t = drive(&c, get(HOST, "/v2/"), no_upstream);
    assert_challenge(&t);
    // HEAD: the same answer without a body.
    let t = drive(
        &c,
        request(Method::HEAD, HOST, "/v2/myorg/app/manifests/1", &[]),
        no_upstream,
    );
    assert_challenge(&t);
    assert!(t.body.is_empty());
}

#[test]
fn wrong_password_is_refused_and_right_password_gets_a_login_token() {
    let c = cfg();
    let t = drive(
        &c,
        with_auth(
            "/v2/auth?scope=repository:myorg/app:pull",
            &basic("alice", "nope"),
        ),
        no_upstream,
    );
    assert_challenge(&t);
    assert_eq!(t.password_checks, 1);
    let t = drive(
        &c,
        with_auth("/v2/auth", &basic("mallory", "pw")),
        no_upstream,
    );
    assert_eq!(t.status(), 401, "unknown user");
    assert_eq!(t.password_checks, 1, "unknown users cost a check too");

    let t = drive(
        &c,
        with_auth(
            "/v2/auth?scope=repository:myorg/app:pull&service=dockerproxy",
            &basic("alice", "pw"),
        ),
        no_upstream,
    );
    assert_eq!(t.status(), 200, "{}", t.body_str());
    let token = t.json()["token"].as_str().unwrap().to_owned();
    assert_eq!(t.json()["access_token"], token.as_str());
    assert_eq!(t.json()["expires_in"], 300);
    assert!(token.starts_with("dpl1."));
    assert!(
        !t.body_str().contains("alice"),
        "the token names no user in clear"
    );
    assert_eq!(t.header("cache-control").unwrap(), "no-store");
    assert_eq!(
        proxy_token::verify_login(&[5; 32], &token, NOW),
        Some(Principal::User("alice".to_owned()))
    );
}

#[test]
fn oauth_password_grant_form_gets_a_token() {
    let c = cfg();
    let head = request(
        Method::POST,
        HOST,
        "/v2/auth",
        &[("content-type", "application/x-www-form-urlencoded")],
    );
    let form = Bytes::from_static(
        b"grant_type=password&username=bob&password=pw2&service=x&scope=repository:library/a:pull",
    );
    let t = drive_with(
        &c,
        head.clone(),
        Some(form),
        |_| panic!("cache"),
        no_upstream,
    );
    assert_eq!(t.status(), 200, "{}", t.body_str());
    let token = t.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        proxy_token::verify_login(&[5; 32], &token, NOW),
        Some(Principal::User("bob".to_owned()))
    );
    let form = Bytes::from_static(b"grant_type=password&username=bob&password=bad");
    let t = drive_with(&c, head, Some(form), |_| panic!("cache"), no_upstream);
    assert_eq!(t.status(), 401);
}

#[test]
fn allowed_token_pulls_with_the_proxys_own_upstream_grant() {
    let c = cfg();
    let t = drive(
        &c,
        with_auth(
            "/v2/myorg/app/manifests/1",
            &format!("Bearer {}", token_for("alice")),
        ),
        upstream,
    );
    assert_eq!(t.status(), 200, "{}", t.body_str());
    assert_eq!(t.body_str(), MANIFEST);
    // Resource without Authorization, the anonymous token fetch, the resend with it.
    assert_eq!(t.sent.len(), 3);
    assert!(sent_header(&t.sent[0], "authorization").is_empty());
    assert_eq!(
        sent_header(&t.sent[2], "authorization"),
        vec!["Bearer anon"]
    );
    assert_eq!(t.password_checks, 0, "a token costs no bcrypt");
}

#[test]
fn basic_credentials_directly_on_v2_are_checked_and_never_forwarded() {
    let c = cfg();
    let t = drive(
        &c,
        with_auth("/v2/myorg/app/manifests/1", &basic("alice", "pw")),
        upstream,
    );
    assert_eq!(t.status(), 200, "{}", t.body_str());
    assert_eq!(t.password_checks, 1);
    for req in &t.sent {
        assert!(
            !sent_header(req, "authorization")
                .iter()
                .any(|a| a.starts_with("Basic")),
            "login credentials went upstream to {}",
            req.url
        );
    }
    let t = drive(
        &c,
        with_auth("/v2/myorg/app/manifests/1", &basic("alice", "px")),
        no_upstream,
    );
    assert_challenge(&t);
    // An authenticated ping is answered by the proxy.
    let t = drive(&c, with_auth("/v2/", &basic("alice", "pw")), no_upstream);
    assert_eq!(t.status(), 200);
}

#[test]
fn a_user_outside_the_rules_gets_403_without_cache_or_upstream() {
    let c = cfg();
    let bob = format!("Bearer {}", token_for("bob"));
    let t = drive_with(
        &c,
        with_auth("/v2/myorg/app/manifests/1", &bob),
        None,
        |_| panic!("cache"),
        no_upstream,
    );
    assert_eq!(t.status(), 403);
    assert_eq!(t.json()["errors"][0]["code"], "DENIED");
    assert!(t.sent.is_empty());
    assert_eq!(t.lookups, 0);
    // bob may read library/* on this route.
    let t = drive(
        &c,
        with_auth("/v2/library/busybox/manifests/1", &bob),
        upstream,
    );
    assert_eq!(t.status(), 200, "{}", t.body_str());
    // ... but not on another route (ghcr.example.com).
    let head = request(
        Method::GET,
        "ghcr.example.com",
        "/v2/library/busybox/manifests/1",
        &[("authorization", &bob)],
    );
    let t = drive(&c, head, no_upstream);
    assert_eq!(t.status(), 403);
    // The admin has no pull rule.
    let t = drive(
        &c,
        with_auth("/v2/library/busybox/manifests/1", &basic("ops", "adminpw")),
        no_upstream,
    );
    assert_eq!(t.status(), 403);
}

#[test]
fn expired_forged_foreign_and_doubled_credentials_are_refused() {
    let c = cfg();
    let old = proxy_token::issue_login(
        &[5; 32],
        &Principal::User("alice".to_owned()),
        Timestamp::from_millis(NOW.as_millis() - 301_000),
    );
    let forged = proxy_token::issue_login(&[6; 32], &Principal::User("alice".to_owned()), NOW);
    let registry_token = proxy_token::issue(&[5; 32], "docker.io", NOW);
    // A well-signed token of a user no longer in the htpasswd file (issued before the file
    // changed, or by another replica sharing the key).
    let removed = token_for("mallory");
    for bad in [
        format!("Bearer {old}"),
        format!("Bearer {forged}"),
        format!("Bearer {removed}"),
        format!("Bearer {registry_token}"),
        "Bearer some-upstream-token".to_owned(),
        "Digest x".to_owned(),
        "Basic !!!".to_owned(),
    ] {
        let t = drive(
            &c,
            with_auth("/v2/myorg/app/manifests/1", &bad),
            no_upstream,
        );
        assert_challenge(&t);
    }
    let head = request(
        Method::GET,
        HOST,
        "/v2/myorg/app/manifests/1",
        &[
            ("authorization", &format!("Bearer {}", token_for("alice"))),
            ("authorization", "Bearer x"),
        ],
    );
    assert_challenge(&drive(&c, head, no_upstream));
}

#[test]
fn anonymous_rule_allows_its_repositories_only() {
    let c = cfg();
    let t = drive(&c, get(HOST, "/v2/public/tool/manifests/1"), upstream);
    assert_eq!(t.status(), 200, "{}", t.body_str());
    let t = drive(&c, get(HOST, "/v2/myorg/app/manifests/1"), no_upstream);
    assert_challenge(&t);
    // Anonymous clients get an anonymous login token (some rule names them).
    let t = drive(
        &c,
        get(HOST, "/v2/auth?scope=repository:public/tool:pull"),
        no_upstream,
    );
    assert_eq!(t.status(), 200);
    let token = t.json()["token"].as_str().unwrap().to_owned();
    assert_eq!(
        proxy_token::verify_login(&[5; 32], &token, NOW),
        Some(Principal::Anonymous)
    );
    let t = drive(
        &c,
        with_auth("/v2/public/tool/manifests/1", &format!("Bearer {token}")),
        upstream,
    );
    assert_eq!(t.status(), 200);
    let t = drive(
        &c,
        with_auth("/v2/myorg/app/manifests/1", &format!("Bearer {token}")),
        no_upstream,
    );
    assert_eq!(t.status(), 401);
}

#[test]
fn metrics_behind_login_are_for_admins_only() {
    let c = cfg();
    let t = drive(&c, get(HOST, "/metrics"), no_upstream);
    assert_eq!(t.status(), 401);
    assert!(t.header("www-authenticate").unwrap().starts_with("Basic "));
    assert_eq!(t.local, None);
    let t = drive(
        &c,
        with_auth("/metrics", &basic("ops", "wrong")),
        no_upstream,
    );
    assert_eq!((t.status(), t.local), (401, None));
    let t = drive(
        &c,
        with_auth("/metrics", &basic("alice", "pw")),
        no_upstream,
    );
    assert_eq!((t.status(), t.local), (403, None));
    let t = drive(
        &c,
        with_auth("/metrics", &basic("ops", "adminpw")),
        no_upstream,
    );
    assert_eq!(t.local, Some(LocalEndpoint::Metrics));
    // /stats keeps its own exposure (main).
    let t = drive(&c, get(HOST, "/stats"), no_upstream);
    assert_eq!(t.local, Some(LocalEndpoint::Stats));
}

#[test]
fn throttled_verdict_is_429_with_retry_after() {
    let c = std::sync::Arc::new(cfg());
    let head = with_auth("/v2/myorg/app/manifests/1", &basic("alice", "pw"));
    let mut ex = Exchange::new(c, head, NOW);
    let Action::VerifyPassword(check) = ex.poll_action(NOW) else {
        panic!("expected a password check");
    };
    assert_eq!(check.user, "alice");
    assert!(
        !format!("{check:?}").contains("pw"),
        "Debug shows no secret"
    );
    ex.handle_password_result(
        PasswordVerdict::Throttled {
            retry_after_secs: 8,
        },
        NOW,
    );
    let Action::Respond(resp) = ex.poll_action(NOW) else {
        panic!("expected a response");
    };
    assert_eq!(resp.status.as_u16(), 429);
    assert_eq!(resp.headers["retry-after"], "8");
    assert!(matches!(ex.poll_action(NOW), Action::Done));
}

#[test]
fn login_from_the_environment_lets_every_user_pull_everything() {
    let c = load(&[("LOGIN_HTPASSWD", "/etc/htpasswd")], "").unwrap();
    let login = c.login.as_ref().unwrap();
    assert!(login.allows(&Principal::User("bob".into()), 0, Some("any/thing")));
    assert!(!login.allows(&Principal::Anonymous, 0, Some("any/thing")));
    let t = drive(
        &c,
        get(HOST, "/v2/library/busybox/manifests/1"),
        no_upstream,
    );
    assert_eq!(t.status(), 401);
    assert!(load(&[], "").unwrap().login.is_none(), "off by default");
}

#[test]
fn bad_login_configuration_is_refused_with_the_key() {
    let e = load(&[], "[login]\nhtpasswd = \"/etc/md5\"\n").unwrap_err();
    assert_eq!(e.key, "login.htpasswd");
    assert!(e.message.contains("bcrypt"), "{e}");
    assert!(
        !e.message.contains("$apr1$abc"),
        "no hash in the message: {e}"
    );
    let e = load(&[], "[login]\nhtpasswd = \"/etc/htpasswd\"\nbogus = 1\n").unwrap_err();
    assert_eq!(e.key, "login.bogus", "{e}");
    let e = load(
        &[],
        "[login]\nhtpasswd = \"/etc/htpasswd\"\n[[login.allow]]\nusers = [\"x\"]\nrepos = []\n",
    )
    .unwrap_err();
    assert_eq!(e.key, "login.allow.0", "{e}");
    let e = load(
        &[],
        "[login]\nhtpasswd = \"/etc/htpasswd\"\n[[login.allow]]\nusers = [\"carol\"]\n",
    )
    .unwrap_err();
    assert_eq!(e.key, "login.allow.0.users", "{e}");
    let e = load(&[], "[login]\nhtpasswd = \"/etc/htpasswd\"\n[[login.allow]]\nusers = [\"*\"]\nroutes = [\"nowhere.test\"]\n").unwrap_err();
    assert_eq!(e.key, "login.allow.0.routes", "{e}");
    let e = load(
        &[],
        "[login]\nhtpasswd = \"/etc/htpasswd\"\nadmins = [\"root\"]\n",
    )
    .unwrap_err();
    assert_eq!(e.key, "login.admins", "{e}");
    let e = load(&[], "metrics = \"login\"\n").unwrap_err();
    assert_eq!(e.key, "metrics", "{e}");
    let e = load(&[], "[login]\n").unwrap_err();
    assert_eq!(e.key, "login.htpasswd", "{e}");
    let e = load(&[("LOGIN_HTPASSWD", "/missing")], "").unwrap_err();
    assert_eq!(e.key, "LOGIN_HTPASSWD", "{e}");
}

/// The commented `[login]` block of deploy/config.example.toml, uncommented, stays valid.
#[test]
fn documented_login_example_loads() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/config.example.toml"
    ))
    .unwrap();
    let block: String = text
        .lines()
        .skip_while(|l| *l != "#[login]")
        .take_while(|l| l.starts_with('#'))
        .map(|l| format!("{}\n", &l[1..]))
        .collect();
    assert!(block.starts_with("[login]\n"), "{block}");
    let toml = format!("metrics = \"login\"\n{block}")
        .replace("/etc/dockerproxy/htpasswd", "/etc/htpasswd");
    let c = load(&[], &toml).unwrap();
    let login = c.login.as_ref().unwrap();
    assert_eq!(login.admins, vec!["ops".to_owned()]);
    assert_eq!(login.rules.len(), 2);
    let hub = c.registry_by_name("docker.io").unwrap();
    let ghcr = c.registry_by_name("ghcr.io").unwrap();
    assert!(login.allows(&Principal::Anonymous, hub, Some("library/alpine")));
    assert!(!login.allows(&Principal::Anonymous, ghcr, Some("library/alpine")));
    assert!(login.allows(&Principal::User("alice".into()), ghcr, Some("x/y")));
    assert!(!login.allows(&Principal::User("bob".into()), hub, Some("x/y")));
}
