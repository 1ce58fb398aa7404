//! The locally rendered endpoints (COMPAT.md §2) through a real in-process server.

mod common;

use common::{Server, config, request};

fn is_rfc3339_seconds(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'Z'
        && s.chars()
            .enumerate()
            .all(|(i, c)| [4, 7, 10, 13, 16, 19].contains(&i) || c.is_ascii_digit())
}

#[tokio::test]
async fn compat_health_json_fields() {
    let server = Server::start(config(&[], None)).await;
    for path in ["/health", "/healthz"] {
        // Any host, unknown included.
        let r = request(server.addr, "GET", path, "unknown.invalid").await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/json")
        );
        let text = r.text();
        assert!(
            text.ends_with("}\n") && text.lines().count() == 1,
            "{text:?}"
        );
        assert!(
            text.starts_with("{\"status\":\"healthy\",\"timestamp\":"),
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["status"], "healthy");
        assert!(
            is_rfc3339_seconds(v["timestamp"].as_str().unwrap()),
            "{}",
            v["timestamp"]
        );
        let uptime = v["uptime"].as_str().unwrap();
        assert!(
            uptime.ends_with('s') && uptime.chars().next().unwrap().is_ascii_digit(),
            "{uptime}"
        );
        assert_eq!(v["version"], dockerproxy_core::VERSION);
        assert_eq!(v.as_object().unwrap().len(), 4);
    }
    server.stop().await;
}

#[tokio::test]
async fn compat_head_health_has_no_body() {
    let server = Server::start(config(&[], None)).await;
    let r = request(server.addr, "HEAD", "/health", "docker.example.com").await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty(), "{:?}", r.text());
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    // The GET length is announced.
    let get = request(server.addr, "GET", "/health", "docker.example.com").await;
    let announced: usize = r.header("content-length").unwrap().parse().unwrap();
    assert!(
        announced.abs_diff(get.body.len()) <= 3,
        "{announced} vs {}",
        get.body.len()
    );
    server.stop().await;
}

#[tokio::test]
async fn readyz_is_200_then_503_while_draining() {
    let server = Server::start(config(&[], None)).await;
    let r = request(server.addr, "GET", "/readyz", "x").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "{\"status\":\"ready\"}\n");
    server.state.begin_drain();
    let r = request(server.addr, "GET", "/readyz", "x").await;
    assert_eq!(r.status, 503);
    let v: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
    assert_eq!(v["status"], "not ready");
    assert!(v["reason"].is_string());
    server.stop().await;
}

#[tokio::test]
async fn metrics_text_has_the_required_families() {
    let server = Server::start(config(&[], None)).await;
    // One request first so requests_total has a sample.
    let _ = request(server.addr, "GET", "/health", "x").await;
    let r = request(server.addr, "GET", "/metrics", "x").await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = r.text();
    for fam in [
        "requests_total",
        "cache_requests_total",
        "bytes_sent_total",
        "cache_size_bytes",
        "cache_objects",
        "cache_evictions_total",
        "upstream_requests_total",
        "upstream_response_seconds",
        "upstream_ratelimit_remaining",
        "coalesced_requests_total",
        "redirects_followed_total",
        "stale_served_total",
        "integrity_failures_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE dockerproxy_{fam} ")),
            "missing {fam}\n{text}"
        );
    }
    assert!(text.contains("dockerproxy_requests_total{registry=\"none\",kind=\"other\",method=\"GET\",code=\"200\"}"), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn stats_json_has_go_docker_proxy_fields() {
    let server = Server::start(config(&[("CACHE_DIR", "/tmp/dp-stats-test")], None)).await;
    let r = request(server.addr, "GET", "/stats", "x").await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
    assert_eq!(v["enabled"], true);
    assert_eq!(v["cache"]["blob"]["hitRate"], "N/A");
    assert_eq!(v["cache"]["manifest"]["count"], 0);
    assert_eq!(v["cache"]["totalSizeHuman"], "0 B");
    assert_eq!(v["cache"]["inflight"]["activeKeys"], serde_json::json!([]));
    assert!(v["uptime"].as_str().unwrap().ends_with('s'));

    let r = request(server.addr, "GET", "/stats/cache", "x").await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
    assert_eq!(v["config"]["directory"], "/tmp/dp-stats-test");
    assert_eq!(v["config"]["manifestTTL"], "10m0s");
    assert_eq!(v["config"]["blobTTL"], "8760h0m0s");
    assert_eq!(v["config"]["enabled"], true);
    assert_eq!(v["stats"]["deduplication"], 0);
    server.stop().await;
}

#[tokio::test]
async fn stats_off_and_loopback_exposure() {
    let server = Server::start(config(
        &[],
        Some("stats = \"off\"\nmetrics = \"loopback\"\n"),
    ))
    .await;
    let r = request(server.addr, "GET", "/stats", "x").await;
    assert_eq!(r.status, 404);
    // The test client is on loopback.
    let r = request(server.addr, "GET", "/metrics", "x").await;
    assert_eq!(r.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn compat_unknown_host_gets_the_route_listing() {
    let server = Server::start(config(&[("CUSTOM_DOMAIN", "mirror.test")], None)).await;
    let r = request(server.addr, "GET", "/v2/", "nowhere.invalid").await;
    assert_eq!(r.status, 404);
    let text = r.text();
    assert!(text.contains("docker.mirror.test"), "{text}");
    assert!(text.contains("ghcr.mirror.test"), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn route_host_root_redirects_to_v2() {
    let server = Server::start(config(&[("CUSTOM_DOMAIN", "mirror.test")], None)).await;
    let r = request(server.addr, "GET", "/?x=1", "docker.mirror.test").await;
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location").as_deref(), Some("/v2/"));
    server.stop().await;
}

#[tokio::test]
async fn run_returns_after_shutdown_and_stops_accepting() {
    let server = Server::start(config(&[], None)).await;
    let addr = server.addr;
    server.stop().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener still open"
    );
}
