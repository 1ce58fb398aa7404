//! Tag revalidation (COMPAT.md §8.5): within the TTL a tag is served with no upstream request;
//! after it, concurrent requests for the tag share ONE upstream HEAD and are all HITs.

mod cache_common;
mod common;

use std::time::Duration;

use cache_common::{Behaviour, bytes, cache_config, pull, temp_dir, upstream};
use common::Server;

const DOCKER_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
const TAG: &str = "/v2/team/app/manifests/latest";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_revalidations_of_one_tag_share_one_head() {
    let manifest: bytes::Bytes =
        format!(r#"{{"schemaVersion":2,"mediaType":"{DOCKER_V2}","layers":[]}}"#).into();
    let mut b = Behaviour::blob(bytes(16, 1));
    b.manifest = Some((manifest.clone(), DOCKER_V2));
    // Each upstream answer takes a while, so the concurrent requests overlap the HEAD.
    b.head_delay = Duration::from_millis(300);
    let up = upstream(b).await;
    let dir = temp_dir("revalidate");
    let mut config = cache_config(up.addr, &dir, "");
    config.cache.manifest_ttl = Duration::from_millis(800);
    let server = Server::start(config).await;
    let accept = format!("Accept: {DOCKER_V2}\r\n");

    let first = pull(server.addr, TAG, &accept).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-cache").as_deref(), Some("MISS"));
    assert_eq!(first.body, manifest.to_vec());

    // Within the TTL: a hit, no upstream request at all.
    let before = up.requests().len();
    let again = pull(server.addr, TAG, &accept).await;
    assert_eq!(again.header("x-cache").as_deref(), Some("HIT"));
    assert_eq!(
        up.requests().len(),
        before,
        "no upstream request within the TTL"
    );

    // After the TTL: ten concurrent requests, one HEAD, no GET.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let gets_before = up.count("GET", "/manifests/");
    let pulls: Vec<_> = (0..10)
        .map(|_| {
            let accept = accept.clone();
            let addr = server.addr;
            tokio::spawn(async move { pull(addr, TAG, &accept).await })
        })
        .collect();
    for p in pulls {
        let p = p.await.unwrap();
        assert_eq!(p.status, 200);
        assert_eq!(p.header("x-cache").as_deref(), Some("HIT"));
        assert_eq!(p.body, manifest.to_vec());
    }
    assert_eq!(
        up.count("HEAD", "/manifests/"),
        1,
        "one shared revalidation HEAD: {:?}",
        up.requests()
    );
    assert_eq!(
        up.count("GET", "/manifests/"),
        gets_before,
        "no GET when the digest is unchanged"
    );
    server.stop().await;
}
