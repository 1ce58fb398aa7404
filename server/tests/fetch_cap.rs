//! The cap on concurrent upstream fetches (SECURITY.md §2.14, `limits.max_upstream_fetches`):
//! a real `docker-registry` behind a gated front that counts requests in flight, and the proxy
//! in front with a cap of 2 and a 2 s wait.
//!
//! The front holds every request until the test lets it through, so the outcomes do not depend
//! on timing: with both slots held, waiting requests get `503` + `Retry-After` after the wait,
//! while cache hits and requests joining a fill are served without a slot.

mod gated_front;

use std::time::Duration;

use bytes::Bytes;
use dockerproxy_tests::{Mode, ProxyHandle, SeedOptions, TestBed, docker_hub_route_toml};
use gated_front::{Gate, GatedFront};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Bytes,
}

async fn get(client: &Client<HttpConnector, Empty<Bytes>>, url: String) -> Answer {
    let resp = client
        .get(url.parse().unwrap())
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(http::header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap_or_else(|e| panic!("GET {url} body: {e}"))
        .to_bytes();
    Answer {
        status,
        retry_after,
        body,
    }
}

fn client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http()
}

/// Distinct seeded blobs as (repository, digest, bytes).
fn blobs(bed: &TestBed) -> Vec<(String, String, Bytes)> {
    let mut out: Vec<(String, String, Bytes)> = Vec::new();
    for image in bed.seeded.images() {
        if image.repo.starts_with("private/") {
            continue;
        }
        for b in image.blobs() {
            if !out.iter().any(|(_, d, _)| *d == b.digest) {
                out.push((image.repo.clone(), b.digest.clone(), b.data.clone()));
            }
        }
    }
    out
}

async fn metric(client: &Client<HttpConnector, Empty<Bytes>>, base: &str, line: &str) -> u64 {
    let text = get(client, format!("{base}/metrics")).await;
    assert_eq!(text.status, 200);
    let text = String::from_utf8(text.body.to_vec()).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
        .unwrap_or(0)
}

fn assert_refused(a: &Answer, what: &str) {
    assert_eq!(a.status, 503, "{what}");
    let after: u64 = a
        .retry_after
        .as_deref()
        .unwrap_or_else(|| panic!("{what}: 503 without Retry-After"))
        .parse()
        .unwrap();
    assert!(after >= 1, "{what}: Retry-After {after}");
    let json: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(json["errors"][0]["code"], "UNAVAILABLE", "{what}: {json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_cap_bounds_upstream_fetches_and_never_blocks_hits_or_joiners() {
    if !dockerproxy_tests::require_tool("docker-registry") {
        return;
    }
    let bed = TestBed::start_with(
        Mode::Plain,
        SeedOptions {
            big_layer_size: 512 * 1024,
        },
    )
    .await;
    let front = GatedFront::start(bed.registry.base_url(), true).await;
    let toml = docker_hub_route_toml(
        &front.base_url(),
        &[],
        "[limits]\nmax_upstream_fetches = 2\nupstream_fetch_wait = \"2s\"\n",
    );
    let proxy = ProxyHandle::start(&[], &toml).unwrap();
    let base = proxy.base_url();
    let c = client();
    let blobs = blobs(&bed);
    assert!(
        blobs.len() >= 11,
        "only {} distinct blobs seeded",
        blobs.len()
    );
    let url =
        |(repo, digest, _): &(String, String, Bytes)| format!("{base}/v2/{repo}/blobs/{digest}");
    let rejected = "dockerproxy_upstream_fetch_rejected_total{registry=\"docker.io\"}";

    // A warm blob for the cache hit.
    let warm = &blobs[0];
    front.release(1);
    let a = get(&c, url(warm)).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, warm.2);
    front
        .wait_until("the warm-up fetch to end", |f| f.in_flight() == 0)
        .await;
    let upstream_before = front.arrived();

    // Phase 1: six distinct cold blobs at once; the gate stays shut.
    let cold: Vec<_> = blobs[1..7].to_vec();
    let mut tasks = Vec::new();
    for b in &cold {
        let (c, u) = (c.clone(), url(b));
        tasks.push(tokio::spawn(async move { get(&c, u).await }));
    }
    front
        .wait_until("two fetches held at the front", |f| f.in_flight() == 2)
        .await;

    // Saturated: a cache hit is served at once, without a slot and without the upstream.
    let hit = get(&c, url(warm)).await;
    assert_eq!(hit.status, 200, "cache hit during saturation");
    assert_eq!(hit.body, warm.2);
    assert_eq!(
        front.finished(),
        1,
        "a held fetch ended before the hit was answered"
    );

    // With no slot freed, the four others give up after the wait: 503 + Retry-After.
    let mut answers = Vec::new();
    let mut pending = Vec::new();
    for (t, b) in tasks.into_iter().zip(&cold) {
        pending.push((t, b.clone()));
    }
    let mut refused = 0;
    for _ in 0..400 {
        if refused == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        refused = pending.iter().filter(|(t, _)| t.is_finished()).count();
        assert!(front.in_flight() <= 2);
    }
    assert_eq!(
        refused, 4,
        "the waiting requests were not refused after the wait"
    );
    assert_eq!(front.in_flight(), 2, "the held fetches are still in flight");
    front.release(2);
    for (t, b) in pending {
        answers.push((t.await.unwrap(), b));
    }
    let served: Vec<_> = answers.iter().filter(|(a, _)| a.status == 200).collect();
    assert_eq!(served.len(), 2, "two fetches had the slots");
    for (a, b) in &served {
        assert_eq!(a.body, b.2, "{}", b.1);
    }
    for (a, b) in answers.iter().filter(|(a, _)| a.status != 200) {
        assert_refused(a, &b.1);
    }
    assert_eq!(
        front.max_in_flight(),
        2,
        "more than two fetches reached the upstream"
    );
    assert_eq!(
        front.arrived() - upstream_before,
        2,
        "refused requests must not reach the upstream: {:?}",
        front.requests()
    );
    assert_eq!(metric(&c, &base, rejected).await, 4);

    // Phase 2: three cold blobs; one waits for a slot and is served once one frees.
    front
        .wait_until("phase 1 to end", |f| f.in_flight() == 0)
        .await;
    let arrived = front.arrived();
    let mut tasks = Vec::new();
    for b in &blobs[7..10] {
        let (c, u, b) = (c.clone(), url(b), b.clone());
        tasks.push(tokio::spawn(async move { (get(&c, u).await, b) }));
    }
    front
        .wait_until("two fetches held", |f| f.arrived() == arrived + 2)
        .await;
    front.release(1);
    front
        .wait_until("the waiting request to get the freed slot", |f| {
            f.arrived() == arrived + 3
        })
        .await;
    front.release(2);
    for t in tasks {
        let (a, b) = t.await.unwrap();
        assert_eq!(a.status, 200, "{} after waiting for a slot", b.1);
        assert_eq!(a.body, b.2);
    }
    assert_eq!(front.max_in_flight(), 2);
    assert_eq!(metric(&c, &base, rejected).await, 4);

    // Phase 3: a request joining a fill in flight needs no slot, even past the wait. Both
    // slots are held (one for the joined blob), the joiner waits 2.5 s, then everything ends.
    front
        .wait_until("phase 2 to end", |f| f.in_flight() == 0)
        .await;
    // `other` was refused in phase 1, so it is still cold.
    let other = answers
        .iter()
        .find(|(a, _)| a.status == 503)
        .map(|(_, b)| b.clone())
        .unwrap();
    let shared = blobs[10].clone();
    let arrived = front.arrived();
    let lead = tokio::spawn({
        let (c, u) = (c.clone(), url(&shared));
        async move { get(&c, u).await }
    });
    front
        .wait_until("the leader's fetch", |f| f.arrived() == arrived + 1)
        .await;
    let second = tokio::spawn({
        let (c, u) = (c.clone(), url(&other));
        async move { get(&c, u).await }
    });
    front
        .wait_until("both slots held", |f| f.arrived() == arrived + 2)
        .await;
    let joiner = tokio::spawn({
        let (c, u) = (c.clone(), url(&shared));
        async move { get(&c, u).await }
    });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        !joiner.is_finished(),
        "the joiner was refused instead of waiting for the fill"
    );
    front.release(2);
    let (l, s, j) = (
        lead.await.unwrap(),
        second.await.unwrap(),
        joiner.await.unwrap(),
    );
    assert_eq!((l.status, s.status, j.status), (200, 200, 200));
    assert_eq!(j.body, shared.2);
    assert_eq!(front.arrived(), arrived + 2, "the joiner went upstream");
    assert_eq!(metric(&c, &base, rejected).await, 4);
    drop(proxy);
}

/// The slot is held until the upstream body ends, not just until its head: with a cap of 1
/// and the first response's body held at the front (its head already at the client), a
/// second cold fetch is refused; once the body ends, the next one is served. Both for a blob
/// filled into the cache and for a relayed one (cache off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_cap_slot_is_held_until_the_upstream_body_ends() {
    if !dockerproxy_tests::require_tool("docker-registry") {
        return;
    }
    let bed = TestBed::start_with(
        Mode::Plain,
        SeedOptions {
            big_layer_size: 64 * 1024,
        },
    )
    .await;
    let blobs = blobs(&bed);
    for cache in ["true", "false"] {
        let front = GatedFront::start_with(bed.registry.base_url(), Gate::Body).await;
        let toml = docker_hub_route_toml(
            &front.base_url(),
            &[],
            "[limits]\nmax_upstream_fetches = 1\nupstream_fetch_wait = \"300ms\"\n",
        );
        let proxy = ProxyHandle::start(&[("CACHE_ENABLED", cache)], &toml).unwrap();
        let base = proxy.base_url();
        let c = client();
        let url = |(repo, digest, _): &(String, String, Bytes)| {
            format!("{base}/v2/{repo}/blobs/{digest}")
        };
        let (a, b) = (blobs[0].clone(), blobs[1].clone());
        // The first response's head reaches the client; its body stays held at the front.
        let head = c.get(url(&a).parse().unwrap()).await.unwrap();
        assert_eq!(head.status(), 200, "cache {cache}");
        let second = tokio::time::timeout(Duration::from_secs(20), get(&c, url(&b)))
            .await
            .expect("the second fetch was let through to the upstream instead of refused");
        assert_refused(
            &second,
            &format!("cache {cache}: second fetch while a body is held"),
        );
        assert_eq!(front.arrived(), 1, "cache {cache}: {:?}", front.requests());
        front.release(1);
        let body = head.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, a.2, "cache {cache}");
        front
            .wait_until("the first fetch to end", |f| f.in_flight() == 0)
            .await;
        front.release(1);
        let again = get(&c, url(&b)).await;
        assert_eq!(again.status, 200, "cache {cache}: after the slot freed");
        assert_eq!(again.body, b.2);
        drop(proxy);
    }
}
