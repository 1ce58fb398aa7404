//! Smoke tests of the fixtures against the REAL registry, without the proxy: seeding, token
//! server, Basic, TLS, access-log counting, and skopeo as the client.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use base64::Engine as _;
use dockerproxy_tests::content::{ALL_MANIFEST_TYPES, sha256_digest};
use dockerproxy_tests::{Mode, SeedOptions, TestBed, require_tool, require_tools};

const SMALL: SeedOptions = SeedOptions {
    big_layer_size: 1 << 20,
};

async fn skopeo(args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new("skopeo");
    cmd.arg("--insecure-policy").args(args).kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(25), cmd.output())
        .await
        .expect("skopeo timed out")
        .expect("run skopeo")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// sha256 of `dir:` output's manifest.json.
fn dir_manifest_digest(dir: &Path) -> String {
    sha256_digest(&std::fs::read(dir.join("manifest.json")).expect("manifest.json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_registry_skopeo_pull_and_access_log() {
    if !require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let started = Instant::now();
    let bed = TestBed::start(Mode::Plain).await;
    let seeded_in = started.elapsed();
    assert!(
        seeded_in < Duration::from_secs(10),
        "seeding took {seeded_in:?}"
    );
    eprintln!("test bed (100 MiB big layer) ready in {seeded_in:?}");

    let out_dir = bed.tmp.path().join("out");
    let src = format!("docker://{}/library/busybox:latest", bed.host_port());
    let dest = format!("dir:{}", out_dir.display());
    let out = skopeo(&["copy", "--src-tls-verify=false", &src, &dest]).await;
    assert!(out.status.success(), "skopeo copy failed: {}", stderr(&out));
    assert_eq!(
        dir_manifest_digest(&out_dir),
        bed.seeded.busybox.manifest.digest
    );
    for layer in &bed.seeded.busybox.layers {
        let data = std::fs::read(out_dir.join(layer.hex())).expect("layer file");
        assert_eq!(sha256_digest(&data), layer.digest);
    }

    // (iv) the access-log counter sees the manifest GET (and only access-log lines count).
    let path = "/v2/library/busybox/manifests/latest";
    let n = bed
        .registry
        .wait_for_count("GET", path, 1, Duration::from_secs(5))
        .await;
    assert_eq!(n, 1, "log:\n{}", bed.registry.log());
    let blob_path = format!(
        "/v2/library/busybox/blobs/{}",
        bed.seeded.busybox.layers[1].digest
    );
    assert_eq!(
        bed.registry
            .wait_for_count("GET", &blob_path, 1, Duration::from_secs(5))
            .await,
        1
    );
    assert_eq!(
        bed.registry
            .count("GET", "/v2/library/nothing/manifests/latest"),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_registry_serves_every_seeded_manifest_and_ranges() {
    if !require_tool("docker-registry") {
        return;
    }
    let bed = TestBed::start_with(Mode::Plain, SMALL).await;
    let client = reqwest::Client::new();
    let accept = ALL_MANIFEST_TYPES.join(", ");
    let s = &bed.seeded;
    let tagged = s
        .images()
        .into_iter()
        .map(|i| (i.repo.clone(), i.tag.clone(), i.manifest.clone()))
        .chain(
            s.indexes()
                .into_iter()
                .map(|i| (i.repo.clone(), i.tag.clone(), i.manifest.clone())),
        );
    for (repo, tag, manifest) in tagged {
        for reference in [tag.as_str(), manifest.digest.as_str()] {
            let url = format!(
                "{}/v2/{repo}/manifests/{reference}",
                bed.registry.base_url()
            );
            let resp = client
                .get(&url)
                .header("Accept", &accept)
                .send()
                .await
                .expect("GET");
            assert_eq!(resp.status(), 200, "{url}");
            let ct = resp.headers()["content-type"]
                .to_str()
                .expect("ct")
                .to_owned();
            assert_eq!(ct, manifest.media_type, "{url}");
            assert_eq!(resp.bytes().await.expect("body"), manifest.data, "{url}");
        }
    }
    // Index children by digest, and a Range on the big layer.
    let child = &s.multi.children[1];
    let url = format!(
        "{}/v2/library/multi/manifests/{}",
        bed.registry.base_url(),
        child.manifest.digest
    );
    let resp = client
        .get(&url)
        .header("Accept", &accept)
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.bytes().await.expect("body"), child.manifest.data);
    let big = &s.big.layers[0];
    let url = format!(
        "{}/v2/library/big/blobs/{}",
        bed.registry.base_url(),
        big.digest
    );
    let resp = client
        .get(&url)
        .header("Range", "bytes=1000-1999")
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 206);
    assert_eq!(
        resp.bytes().await.expect("body"),
        big.data.slice(1000..2000)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_registry_anonymous_private_and_alice() {
    if !require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let bed = TestBed::start_with(Mode::Token, SMALL).await;
    let ts = bed.token_server();
    let reg = bed.host_port();

    let out_dir = bed.tmp.path().join("anon");
    let out = skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{reg}/library/busybox:latest"),
        &format!("dir:{}", out_dir.display()),
    ])
    .await;
    assert!(out.status.success(), "anonymous pull: {}", stderr(&out));
    assert_eq!(
        dir_manifest_digest(&out_dir),
        bed.seeded.busybox.manifest.digest
    );
    let anon: Vec<_> = ts
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET")
        .collect();
    assert!(anon.iter().any(|r| !r.authorization
        && r.param("scope") == Some("repository:library/busybox:pull")
        && r.param("service") == Some("test-registry")));

    ts.clear_requests();
    let denied_dir = bed.tmp.path().join("denied");
    let out = skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{reg}/private/secret:1.0"),
        &format!("dir:{}", denied_dir.display()),
    ])
    .await;
    assert!(!out.status.success(), "anonymous private pull must fail");
    assert!(!ts.requests().is_empty(), "the token server was asked");

    ts.clear_requests();
    let alice_dir = bed.tmp.path().join("alice");
    let out = skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        "alice:secret",
        &format!("docker://{reg}/private/secret:1.0"),
        &format!("dir:{}", alice_dir.display()),
    ])
    .await;
    assert!(out.status.success(), "alice pull: {}", stderr(&out));
    assert_eq!(
        dir_manifest_digest(&alice_dir),
        bed.seeded.private_secret.manifest.digest
    );
    let requests = ts.requests();
    assert!(
        requests.iter().any(
            |r| r.basic_user.as_deref() == Some("alice") && r.param("account") == Some("alice")
        ),
        "{requests:?}"
    );

    // bob is authenticated but not allowed on private/.
    let bob_dir = bed.tmp.path().join("bob");
    let out = skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        "bob:hunter2",
        &format!("docker://{reg}/private/secret:1.0"),
        &format!("dir:{}", bob_dir.display()),
    ])
    .await;
    assert!(!out.status.success(), "bob must be denied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_registry_with_cert_dir() {
    if !require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let bed = TestBed::start_with(Mode::Tls, SMALL).await;
    let src = format!("docker://{}/myorg/team/app:1.0", bed.host_port());
    let out_dir = bed.tmp.path().join("out");
    let cert_dir = bed.cert_dir().display().to_string();
    let dest = format!("dir:{}", out_dir.display());
    let out = skopeo(&["copy", "--src-cert-dir", &cert_dir, &src, &dest]).await;
    assert!(out.status.success(), "skopeo with CA: {}", stderr(&out));
    assert_eq!(
        dir_manifest_digest(&out_dir),
        bed.seeded.app.manifest.digest
    );

    // Without the CA the certificate is rejected: TLS verification is real.
    let other = format!("dir:{}", bed.tmp.path().join("noca").display());
    let out = skopeo(&["copy", &src, &other]).await;
    assert!(!out.status.success(), "pull without the CA must fail");
    assert!(stderr(&out).contains("certificate"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_registry_needs_credentials() {
    if !require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let bed = TestBed::start_with(Mode::Basic, SMALL).await;
    let src = format!("docker://{}/library/dockerv2:latest", bed.host_port());
    let ok_dir = bed.tmp.path().join("ok");
    let out = skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        "bob:hunter2",
        &src,
        &format!("dir:{}", ok_dir.display()),
    ])
    .await;
    assert!(out.status.success(), "basic pull: {}", stderr(&out));
    assert_eq!(
        dir_manifest_digest(&ok_dir),
        bed.seeded.dockerv2.manifest.digest
    );
    let out = skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &src,
        &format!("dir:{}", bed.tmp.path().join("anon").display()),
    ])
    .await;
    assert!(
        !out.status.success(),
        "anonymous pull from a Basic registry must fail"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_storage_serves_a_second_registry() {
    if !require_tool("docker-registry") {
        return;
    }
    let bed = TestBed::start_with(Mode::Token, SMALL).await;
    let tls = bed
        .start_registry(Mode::TlsToken)
        .await
        .expect("second registry");
    let plain = bed
        .start_registry(Mode::Plain)
        .await
        .expect("third registry");
    let client = reqwest::Client::builder()
        .add_root_certificate(bed.pki.reqwest_ca().expect("ca"))
        .build()
        .expect("client");
    let digest = &bed.seeded.busybox.layers[1].digest;
    let url = format!("{}/v2/library/busybox/blobs/{digest}", plain.base_url());
    let resp = client.get(&url).send().await.expect("plain GET");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.bytes().await.expect("body"),
        bed.seeded.busybox.layers[1].data
    );
    // Token registry over TLS: 401 without a token, 200 with one.
    let url = format!("{}/v2/library/busybox/blobs/{digest}", tls.base_url());
    let resp = client.get(&url).send().await.expect("tls GET");
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .expect("header")
        .to_owned();
    assert!(
        challenge.contains("service=\"test-registry\""),
        "{challenge}"
    );
    assert!(
        challenge.contains("scope=\"repository:library/busybox:pull\""),
        "{challenge}"
    );
    let token = bed
        .token_server()
        .issue(None, &["repository:library/busybox:pull"])
        .expect("token");
    let resp = client
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .expect("tls GET");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        tls.count("GET", &format!("/v2/library/busybox/blobs/{digest}")),
        2
    );
}

fn jwt_claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).expect("payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("b64");
    serde_json::from_slice(&bytes).expect("claims")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_server_flows() {
    if !require_tool("docker-registry") {
        return;
    }
    let bed = TestBed::start_with(Mode::Token, SMALL).await;
    let ts = bed.token_server();
    let realm = ts.realm();
    let client = reqwest::Client::new();
    let json = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        let v: serde_json::Value =
            serde_json::from_slice(&r.bytes().await.expect("body")).expect("json");
        (status, v)
    };

    // Anonymous on private: 200 with empty actions; public: pull only; two scopes in one param.
    let r = client
        .get(&realm)
        .query(&[
            ("service", "test-registry"),
            (
                "scope",
                "repository:private/secret:pull repository:library/busybox:pull,push",
            ),
        ])
        .send()
        .await
        .expect("GET");
    let (status, body) = json(r).await;
    assert_eq!(status, 200);
    assert_eq!(body["expires_in"], 300);
    assert_eq!(body["token"], body["access_token"]);
    let claims = jwt_claims(body["token"].as_str().expect("token"));
    assert_eq!(claims["aud"], "test-registry");
    assert_eq!(claims["iss"], "test-issuer");
    assert_eq!(claims["access"][0]["actions"], serde_json::json!([]));
    assert_eq!(claims["access"][1]["actions"], serde_json::json!(["pull"]));

    // No scope at all (docker login), with credentials and offline_token → refresh token.
    let r = client
        .get(&realm)
        .query(&[
            ("service", "test-registry"),
            ("account", "alice"),
            ("offline_token", "true"),
            ("client_id", "docker"),
        ])
        .basic_auth("alice", Some("secret"))
        .send()
        .await
        .expect("GET");
    let (status, body) = json(r).await;
    assert_eq!(status, 200);
    let refresh = body["refresh_token"]
        .as_str()
        .expect("refresh token")
        .to_owned();

    // Bad password → 401.
    let r = client
        .get(&realm)
        .basic_auth("alice", Some("wrong"))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), 401);

    // POST refresh_token grant.
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh.as_str()),
        ("service", "test-registry"),
        ("client_id", "docker"),
        ("scope", "repository:private/secret:pull"),
    ];
    let (status, body) = json(client.post(&realm).form(&form).send().await.expect("POST")).await;
    assert_eq!(status, 200);
    assert_eq!(body["scope"], "repository:private/secret:pull");
    let claims = jwt_claims(body["access_token"].as_str().expect("token"));
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["access"][0]["actions"], serde_json::json!(["pull"]));

    // POST password grant, offline; bad password; unknown grant.
    let form = [
        ("grant_type", "password"),
        ("username", "bob"),
        ("password", "hunter2"),
        ("service", "test-registry"),
        ("client_id", "containerd-client"),
        ("access_type", "offline"),
        ("scope", "repository:library/busybox:pull"),
    ];
    let (status, body) = json(client.post(&realm).form(&form).send().await.expect("POST")).await;
    assert_eq!(status, 200);
    assert!(body["refresh_token"].is_string());
    let bad = [
        ("grant_type", "password"),
        ("username", "bob"),
        ("password", "x"),
    ];
    let (status, body) = json(client.post(&realm).form(&bad).send().await.expect("POST")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_grant"))
    );
    let odd = [("grant_type", "client_credentials")];
    let (status, body) = json(client.post(&realm).form(&odd).send().await.expect("POST")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );

    // POST can be switched off (clients fall back to GET).
    ts.set_post_enabled(false);
    assert_eq!(
        client
            .post(&realm)
            .form(&form)
            .send()
            .await
            .expect("POST")
            .status(),
        404
    );

    // The token works against the registry (ES256 + kid accepted by distribution 2.8).
    let token = ts
        .issue(Some("alice"), &["repository:private/secret:pull"])
        .expect("token");
    let url = format!(
        "{}/v2/private/secret/manifests/1.0",
        bed.registry.base_url()
    );
    let resp = client
        .get(&url)
        .bearer_auth(&token)
        .header("Accept", ALL_MANIFEST_TYPES.join(","))
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 200);
    let recorded = ts.requests();
    assert!(recorded.iter().any(|r| {
        r.method == "POST"
            && r.form
                .iter()
                .any(|(k, v)| k == "grant_type" && v == "password")
    }));
    assert!(
        recorded.iter().any(|r| r.method == "GET"
            && r.authorization
            && r.basic_user.as_deref() == Some("alice"))
    );
}

#[test]
fn libtrust_kid_matches_openssl() {
    if !require_tool("openssl") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = dockerproxy_tests::Pki::generate(tmp.path()).expect("pki");
    let script = format!(
        "openssl x509 -in '{}' -noout -pubkey | openssl pkey -pubin -outform DER | openssl dgst -sha256 -binary \
         | head -c 30 | base32 -w0 | tr -d '=' | sed 's/..../&:/g; s/:$//'",
        pki.signer_cert.display()
    );
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .expect("sh");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), pki.signer_kid);
}
