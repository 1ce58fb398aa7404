//! Proxy login end to end (SECURITY.md §2.16): real skopeo against the proxy with `[login]` on,
//! in front of a real `docker-registry` with a token server. skopeo logs in through the proxy's
//! own `/v2/auth` (Bearer challenge → Basic → the proxy's login token); the upstream grant stays
//! server-side. Refused requests leave no line in the registry's access log.

use std::path::PathBuf;

use dockerproxy_tests::skopeo::{assert_pulled, pull};
use dockerproxy_tests::{
    Mode, ProxyHandle, SeedOptions, TestBed, docker_hub_route_toml, require_tools,
};

const SMALL: SeedOptions = SeedOptions {
    big_layer_size: 1 << 20,
};

/// alice (everything), bob (library/* only), ops (admin, no pull rule).
fn write_htpasswd(bed: &TestBed) -> PathBuf {
    let path = bed.tmp.path().join("login-htpasswd");
    let mut text = String::new();
    for (user, pw) in [("alice", "alice-pw"), ("bob", "bob-pw"), ("ops", "ops-pw")] {
        text.push_str(&format!("{user}:{}\n", bcrypt::hash(pw, 5).unwrap()));
    }
    std::fs::write(&path, text).unwrap();
    path
}

fn start(bed: &TestBed) -> ProxyHandle {
    let htpasswd = write_htpasswd(bed);
    let realms: Vec<String> = bed
        .token_server
        .as_ref()
        .map(|t| format!("http://{}", t.addr()))
        .into_iter()
        .collect();
    let toml = format!(
        r#"{}
[login]
htpasswd = "{}"
admins = ["ops"]
[[login.allow]]
users = ["alice"]
[[login.allow]]
users = ["bob"]
routes = ["docker.io"]
repositories = ["library/*"]
"#,
        docker_hub_route_toml(bed.registry.base_url(), &realms, "metrics = \"login\""),
        htpasswd.display()
    );
    ProxyHandle::start(&[], &toml).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_logs_in_through_the_proxy_and_refusals_cost_no_upstream_request() {
    if !require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let bed = TestBed::start_with(Mode::Token, SMALL).await;
    let proxy = start(&bed);
    let out_dir = |name: &str| bed.tmp.path().join(name);
    let busybox = format!("{}/library/busybox:latest", proxy.host_port());
    let app = format!("{}/myorg/team/app:1.0", proxy.host_port());

    // No credentials: refused, and the registry never hears of it.
    let before = bed.registry.upstream_requests().len();
    let tokens_before = bed.token_server().requests().len();
    let out = pull(&busybox, &out_dir("anon"), &[]).await;
    assert!(!out.status.success(), "a pull without login must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unauthorized") || err.contains("authentication required"),
        "{err}"
    );
    // Wrong password: refused the same way.
    let out = pull(&busybox, &out_dir("wrong"), &["--src-creds", "alice:nope"]).await;
    assert!(!out.status.success(), "a wrong password must fail");
    // bob is not allowed myorg/team/app: 403 without upstream contact.
    let out = pull(&app, &out_dir("bob-app"), &["--src-creds", "bob:bob-pw"]).await;
    assert!(!out.status.success(), "bob may not read myorg/team/app");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("denied"), "{err}");
    assert_eq!(
        bed.registry.upstream_requests().len(),
        before,
        "refused requests reached the registry: {:?}",
        &bed.registry.upstream_requests()[before..]
    );
    assert_eq!(bed.token_server().requests().len(), tokens_before);

    // alice pulls both images; skopeo verifies every blob, the test the manifest bytes.
    let dir = out_dir("alice-busybox");
    let out = pull(&busybox, &dir, &["--src-creds", "alice:alice-pw"]).await;
    assert_pulled(&out, &dir, &bed.seeded.busybox, "");
    let dir = out_dir("alice-app");
    let out = pull(&app, &dir, &["--src-creds", "alice:alice-pw"]).await;
    assert_pulled(&out, &dir, &bed.seeded.app, "");
    // bob may read library/*.
    let dir = out_dir("bob-busybox");
    let out = pull(&busybox, &dir, &["--src-creds", "bob:bob-pw"]).await;
    assert_pulled(&out, &dir, &bed.seeded.busybox, "");

    // The login never travelled upstream: the token server saw no Basic user at all (the
    // proxy fetched its own anonymous grant).
    let token_requests = bed.token_server().requests();
    assert!(
        token_requests.len() > tokens_before,
        "the proxy got an upstream grant"
    );
    // (Earlier requests are the fixture's own seeding pushes.)
    for r in &token_requests[tokens_before..] {
        assert_eq!(
            r.basic_user, None,
            "a login reached the token server: {r:?}"
        );
    }
    let log = bed.registry.log();
    for secret in ["alice-pw", "bob-pw", "YWxpY2U6YWxpY2UtcHc"] {
        assert!(!log.contains(secret), "{secret} in the registry log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_admin_credentials() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    let bed = TestBed::start_with(Mode::Plain, SMALL).await;
    let proxy = start(&bed);
    let url = format!("{}/metrics", proxy.base_url());
    let client = reqwest::Client::new();
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic ")
    );
    let r = client
        .get(&url)
        .basic_auth("ops", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = client
        .get(&url)
        .basic_auth("alice", Some("alice-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403, "alice is no admin");
    let r = client
        .get(&url)
        .basic_auth("ops", Some("ops-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body = r.text().await.unwrap();
    assert!(body.contains("# TYPE"), "{body}");
    // The ping without login is a challenge toward the proxy's own realm.
    let r = client
        .get(format!("{}/v2/", proxy.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert_eq!(
        challenge,
        format!(
            "Bearer realm=\"{}/v2/auth\",service=\"dockerproxy\"",
            proxy.base_url()
        )
    );
}
