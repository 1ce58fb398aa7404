//! Tests of the fault-injecting front against the real registry: CDN redirect with skopeo (plain
//! and token), Authorization refused by the CDN, Range, 429/503 rules, cut connections, repeated
//! headers and Host pass-through.

use std::time::Duration;

use dockerproxy_tests::content::{Blob, DOCKER_MANIFEST, OCI_MANIFEST, sha256_digest};
use dockerproxy_tests::{
    Action, FaultFront, Mode, PathMatch, PushAuth, Pusher, Rule, SeedOptions, TestBed,
    require_tool, require_tools,
};

const SMALL: SeedOptions = SeedOptions {
    big_layer_size: 1 << 20,
};

async fn skopeo_copy(args: &[&str]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new("skopeo");
    cmd.args(["--insecure-policy", "copy", "--src-tls-verify=false"])
        .args(args)
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(25), cmd.output())
        .await
        .expect("skopeo timed out")
        .expect("run skopeo")
}

async fn redirect_pull(mode: Mode, creds: Option<&str>) {
    let bed = TestBed::start_with(mode, SMALL).await;
    let cdn = FaultFront::cdn(&bed.storage).expect("cdn");
    let front =
        FaultFront::redirecting_blobs(bed.registry.base_url(), &cdn.base_url()).expect("front");
    let out_dir = bed.tmp.path().join("out");
    let src = format!("docker://{}/library/busybox:latest", front.host_port());
    let dest = format!("dir:{}", out_dir.display());
    let mut args = vec![];
    if let Some(creds) = creds {
        args.extend(["--src-creds", creds]);
    }
    args.extend([src.as_str(), dest.as_str()]);
    let out = skopeo_copy(&args).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest = std::fs::read(out_dir.join("manifest.json")).expect("manifest");
    assert_eq!(sha256_digest(&manifest), bed.seeded.busybox.manifest.digest);

    let image = &bed.seeded.busybox;
    for blob in image.blobs() {
        let path = format!("/v2/library/busybox/blobs/{}", blob.digest);
        assert_eq!(front.count("GET", &path), 1, "front GET {path}");
        assert_eq!(cdn.count("GET", &path), 1, "cdn GET {path}");
        // The registry itself never served the blob.
        assert_eq!(bed.registry.count("GET", &path), 0);
    }
    let redirected = front
        .requests()
        .into_iter()
        .filter(|r| r.status == 307)
        .count();
    assert_eq!(redirected, 3);
    for r in cdn.requests() {
        assert_eq!(r.status, 200, "{r:?}");
        assert!(
            r.header("authorization").is_none(),
            "auth leaked to the CDN: {r:?}"
        );
    }
    if mode == Mode::Token {
        assert!(front.requests().iter().any(|r| {
            r.header("authorization")
                .is_some_and(|a| a.starts_with("Bearer "))
        }));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_follows_blob_redirects_to_the_cdn() {
    if !require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    redirect_pull(Mode::Plain, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_with_token_drops_auth_on_cdn_redirect() {
    if !require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    redirect_pull(Mode::Token, Some("alice:secret")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdn_refuses_authorization_and_honours_range() {
    if !require_tool("docker-registry") {
        return;
    }
    let bed = TestBed::start_with(Mode::Plain, SMALL).await;
    let cdn = FaultFront::cdn(&bed.storage).expect("cdn");
    let big = &bed.seeded.big.layers[0];
    let url = format!("{}/v2/library/big/blobs/{}", cdn.base_url(), big.digest);
    let client = reqwest::Client::new();

    let resp = client.get(&url).bearer_auth("x").send().await.expect("GET");
    assert_eq!(resp.status(), 400);

    let resp = client.get(&url).send().await.expect("GET");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.content_length(), Some(big.size()));
    assert_eq!(resp.bytes().await.expect("body"), big.data);

    let resp = client
        .get(&url)
        .header("Range", "bytes=100-199")
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 206);
    assert_eq!(
        resp.headers()["content-range"],
        format!("bytes 100-199/{}", big.size()).as_str()
    );
    assert_eq!(resp.bytes().await.expect("body"), big.data.slice(100..200));

    let from = big.size() - 5;
    let resp = client
        .get(&url)
        .header("Range", format!("bytes={from}-{}", big.size() + 100))
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.bytes().await.expect("body").len(), 5);

    let resp = client
        .get(&url)
        .header("Range", format!("bytes={}-", big.size()))
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 416);
    assert_eq!(
        resp.headers()["content-range"],
        format!("bytes */{}", big.size()).as_str()
    );

    let resp = client.head(&url).send().await.expect("HEAD");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-length"],
        big.size().to_string().as_str()
    );

    let missing = format!(
        "{}/v2/library/big/blobs/sha256:{}",
        cdn.base_url(),
        "0".repeat(64)
    );
    assert_eq!(
        client.get(&missing).send().await.expect("GET").status(),
        404
    );
    assert_eq!(cdn.requests().len(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_inject_429_503_and_cut_connections() {
    if !require_tool("docker-registry") {
        return;
    }
    let bed = TestBed::start_with(Mode::Plain, SMALL).await;
    let front = FaultFront::forward(bed.registry.base_url()).expect("front");
    let client = reqwest::Client::new();
    let manifest_url = format!("{}/v2/library/busybox/manifests/latest", front.base_url());

    front.add_rule(
        Rule::new(PathMatch::Manifest, Action::too_many_requests("2"))
            .method("GET")
            .times(1),
    );
    front.add_rule(Rule::new(PathMatch::Exact("/v2/".into()), Action::status(503)).times(2));
    let resp = client
        .get(&manifest_url)
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "2");
    let resp = client
        .get(&manifest_url)
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.bytes().await.expect("body"),
        bed.seeded.busybox.manifest.data
    );
    let v2 = format!("{}/v2/", front.base_url());
    assert_eq!(client.get(&v2).send().await.expect("GET").status(), 503);
    assert_eq!(client.get(&v2).send().await.expect("GET").status(), 503);
    assert_eq!(client.get(&v2).send().await.expect("GET").status(), 200);
    let statuses: Vec<u16> = front.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![429, 200, 503, 503, 200]);
    assert_eq!(
        bed.registry
            .wait_for_count(
                "GET",
                "/v2/library/busybox/manifests/latest",
                1,
                Duration::from_secs(5)
            )
            .await,
        1
    );

    // Cut the big blob after 1000 bytes, once; the next GET is whole.
    front.clear_rules();
    front.add_rule(
        Rule::new(PathMatch::Blob, Action::CutAfter(1000))
            .method("GET")
            .times(1),
    );
    let big = &bed.seeded.big.layers[0];
    let blob_url = format!("{}/v2/library/big/blobs/{}", front.base_url(), big.digest);
    let mut resp = client.get(&blob_url).send().await.expect("GET");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.content_length(), Some(big.size()));
    let mut received = Vec::new();
    let outcome = loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => received.extend_from_slice(&chunk),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    assert!(outcome.is_err(), "the body must end in an error");
    assert_eq!(received.len(), 1000);
    assert_eq!(&received[..], &big.data[..1000]);
    let resp = client
        .get(&blob_url)
        .send()
        .await
        .expect("GET after the cut");
    assert_eq!(resp.bytes().await.expect("body"), big.data);

    // Delay.
    front.add_rule(
        Rule::new(
            PathMatch::Exact("/v2/".into()),
            Action::Delay(Duration::from_millis(300)),
        )
        .times(1),
    );
    let started = std::time::Instant::now();
    assert_eq!(client.get(&v2).send().await.expect("GET").status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_keeps_repeated_headers_and_host() {
    if !require_tool("docker-registry") {
        return;
    }
    let bed = TestBed::start_with(Mode::Plain, SMALL).await;
    let front = FaultFront::forward(bed.registry.base_url()).expect("front");
    let client = reqwest::Client::new();
    // Two Accept lines; the OCI type only in the second. Keeping one line would give 404.
    let url = format!("{}/v2/library/busybox/manifests/latest", front.base_url());
    let resp = client
        .get(&url)
        .header("Accept", DOCKER_MANIFEST)
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 200);
    let recorded = front.requests();
    assert_eq!(
        recorded[0].header_values("accept"),
        vec![DOCKER_MANIFEST, OCI_MANIFEST]
    );
    assert_eq!(recorded[0].header("host"), Some(front.host_port().as_str()));

    // A push through the front: the registry's upload Location points back at the front.
    let mut pusher = Pusher::new(&front.base_url(), PushAuth::None).expect("pusher");
    let blob = Blob::new("application/octet-stream", &b"pushed through the front"[..]);
    pusher
        .push_blob("library/pushed", &blob)
        .await
        .expect("push");
    let puts = front
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT")
        .count();
    assert_eq!(puts, 1);
    let url = format!(
        "{}/v2/library/pushed/blobs/{}",
        bed.registry.base_url(),
        blob.digest
    );
    assert_eq!(
        client
            .get(&url)
            .send()
            .await
            .expect("GET")
            .bytes()
            .await
            .expect("body"),
        blob.data
    );
}
