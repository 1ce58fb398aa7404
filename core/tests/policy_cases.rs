//! COMPAT.md §9 cases decided by the pure policies: header forwarding (`headers`), redirects
//! (`redirect`) and the Accept class (`cache_policy`). The registries are built as literals; the
//! rest of the configuration comes from the loader's defaults.

use std::collections::BTreeMap;
use std::time::Duration;

use dockerproxy_core::Config;
use dockerproxy_core::cache_policy::{accept_class, accepts};
use dockerproxy_core::config::{CacheSettings, Flavour, Origin, RedirectMode, Registry};
use dockerproxy_core::headers::{forward_request_headers, redirect_hop_headers};
use dockerproxy_core::redirect::{RedirectDecision, decide, is_blocked_host, realm_allowed};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use url::Url;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

fn origin(s: &str) -> Origin {
    Origin::parse(s).unwrap()
}

fn registry(name: &str, origin_url: &str, flavour: Flavour) -> Registry {
    Registry {
        name: name.to_owned(),
        aliases: Vec::new(),
        origin: origin(origin_url),
        flavour,
        redirects: RedirectMode::Follow,
        allow_push: false,
        realm_allowlist: Vec::new(),
        development: false,
        credentials: None,
    }
}

/// A configuration with Docker Hub (0), ghcr (1) and registry.k8s.io (2), defaults elsewhere.
fn config() -> Config {
    let registries = vec![
        registry(
            "docker.io",
            "https://registry-1.docker.io",
            Flavour::DockerHub,
        ),
        registry("ghcr.io", "https://ghcr.io", Flavour::Generic),
        registry(
            "registry.k8s.io",
            "https://registry.k8s.io",
            Flavour::Generic,
        ),
    ];
    let hosts = BTreeMap::from([
        ("docker.example.com".to_owned(), 0),
        ("ghcr.example.com".to_owned(), 1),
        ("k8s.example.com".to_owned(), 2),
    ]);
    Config {
        custom_domain: "example.com".to_owned(),
        registries,
        hosts,
        mirror_hosts: Vec::new(),
        debug_fallback: None,
        hide_routes: false,
        public_scheme: None,
        public_port: None,
        trusted_proxies: Vec::new(),
        follow_all_redirects: None,
        blocked_hosts: vec![
            "cloudflare.docker.com".to_owned(),
            "docker.com".to_owned(),
            "docker.io".to_owned(),
        ],
        max_redirects: 5,
        cache: CacheSettings {
            enabled: true,
            dir: "/tmp/cache".to_owned(),
            manifest_ttl: Duration::from_secs(600),
            blob_ttl: Duration::ZERO,
            max_size: 0,
            max_stale: Duration::from_secs(86_400),
            s3: None,
        },
        // Every other field from the loader's defaults, so new fields need no edit here.
        ..dockerproxy_core::config::load(&BTreeMap::<String, String>::new(), None)
            .unwrap()
            .0
    }
}

fn headers(lines: &[(&str, &str)]) -> HeaderMap {
    let mut m = HeaderMap::new();
    for (k, v) in lines {
        m.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    m
}

fn values(m: &HeaderMap, name: HeaderName) -> Vec<String> {
    m.get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

fn url(s: &str) -> Url {
    Url::parse(s).unwrap()
}

fn follow_target(d: &RedirectDecision) -> (&str, bool) {
    match d {
        RedirectDecision::Follow {
            target,
            same_origin,
        } => (target.as_str(), *same_origin),
        other => panic!("expected Follow, got {other:?}"),
    }
}

#[test]
fn compat_35_hop_by_hop() {
    let client = headers(&[
        ("Host", "docker.example.com"),
        ("Connection", "close, X-Hop"),
        ("X-Hop", "1"),
        ("Upgrade", "h2c"),
        ("Proxy-Connection", "keep-alive"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Trailer", "X-Checksum"),
        ("Transfer-Encoding", "chunked"),
        ("Proxy-Authorization", "Basic eDp5"),
        ("Proxy-Authenticate", "Basic"),
        ("Accept", DOCKER_V2),
        ("Authorization", "Bearer good"),
        ("User-Agent", "docker/27.0"),
    ]);
    let out = forward_request_headers(&client);
    let names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
    assert_eq!(names, ["accept", "authorization", "user-agent"]);
    assert_eq!(out.len(), 3);
    assert!(out.get("x-hop").is_none());
    assert!(
        out.get(header::HOST).is_none(),
        "Host is set from the upstream, never copied"
    );
}

#[test]
fn compat_35_connection_names_are_case_insensitive_across_lines() {
    let client = headers(&[
        ("connection", "X-One"),
        ("Connection", " x-TWO , keep-alive"),
        ("X-One", "1"),
        ("X-Two", "2"),
        ("X-Three", "3"),
    ]);
    let out = forward_request_headers(&client);
    assert_eq!(values(&out, HeaderName::from_static("x-three")), ["3"]);
    assert_eq!(out.len(), 1);
}

#[test]
fn compat_38_cdn_gets_no_authorization() {
    let cfg = config();
    let hub = &cfg.registries[0];
    let current = url("https://registry-1.docker.io/v2/library/busybox/blobs/sha256:abc");
    let location =
        "https://production.cloudflare.docker.com/registry-v2/docker/registry/v2/blobs/x?sig=1";
    let decision = decide(&cfg, hub, &current, location, 0);
    let (target, same_origin) = follow_target(&decision);
    assert_eq!(target, location);
    assert!(!same_origin);

    let client = headers(&[
        ("Authorization", "Bearer good"),
        ("Cookie", "session=1"),
        ("Proxy-Authorization", "Basic eDp5"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("X-Custom", "1"),
        ("Accept", "application/octet-stream"),
        ("Accept-Encoding", "gzip"),
        ("User-Agent", "docker/27.0"),
    ]);
    let hop = redirect_hop_headers(&client);
    assert!(hop.get(header::AUTHORIZATION).is_none());
    assert!(hop.get(header::COOKIE).is_none());
    assert!(hop.get(header::PROXY_AUTHORIZATION).is_none());
    assert!(hop.get("x-forwarded-for").is_none());
    assert!(hop.get("x-custom").is_none());
    assert_eq!(values(&hop, header::ACCEPT_ENCODING), ["identity"]);
    assert_eq!(values(&hop, header::USER_AGENT), ["docker/27.0"]);
    assert_eq!(hop.len(), 3);
}

#[test]
fn compat_38_same_origin_hop_is_flagged() {
    let cfg = config();
    let hub = &cfg.registries[0];
    let current = url("https://registry-1.docker.io/v2/library/busybox/blobs/sha256:abc");
    let decision = decide(
        &cfg,
        hub,
        &current,
        "https://REGISTRY-1.docker.io:443/v2/other",
        0,
    );
    assert_eq!(
        follow_target(&decision),
        ("https://registry-1.docker.io/v2/other", true)
    );
    // Another port is another origin.
    let decision = decide(
        &cfg,
        hub,
        &current,
        "https://registry-1.docker.io:8443/v2/other",
        0,
    );
    assert!(!follow_target(&decision).1);
}

#[test]
fn compat_39_range_kept() {
    let client = headers(&[
        ("Range", "bytes=0-99"),
        ("If-Range", "\"etag\""),
        ("Authorization", "Bearer good"),
        ("Accept", "*/*"),
    ]);
    let hop = redirect_hop_headers(&client);
    assert_eq!(values(&hop, header::RANGE), ["bytes=0-99"]);
    assert_eq!(values(&hop, header::IF_RANGE), ["\"etag\""]);
    assert_eq!(values(&hop, header::ACCEPT), ["*/*"]);
    assert!(hop.get(header::AUTHORIZATION).is_none());
    // Without a client Range, none is invented.
    let hop = redirect_hop_headers(&headers(&[("Accept", "*/*")]));
    assert!(hop.get(header::RANGE).is_none());
    assert!(hop.get(header::IF_RANGE).is_none());
    // The forwarded request keeps Range too.
    let fwd = forward_request_headers(&client);
    assert_eq!(values(&fwd, header::RANGE), ["bytes=0-99"]);
}

#[test]
fn compat_41_pass_on_ghcr() {
    let mut cfg = config();
    let current = url("https://ghcr.io/v2/owner/img/blobs/sha256:abc");
    let location = "https://pkg-containers.githubusercontent.com/ghcr1/blobs/sha256:abc?se=1&sig=x";

    // Default: followed, without the registry's headers (another origin).
    let decision = decide(&cfg, &cfg.registries[1], &current, location, 0);
    assert_eq!(follow_target(&decision), (location, false));

    // registry.k8s.io → *.pkg.dev is followed by default too.
    let k8s_current = url("https://registry.k8s.io/v2/pause/blobs/sha256:abc");
    let decision = decide(
        &cfg,
        &cfg.registries[2],
        &k8s_current,
        "https://us-west1-docker.pkg.dev/v2/x",
        0,
    );
    assert_eq!(
        follow_target(&decision),
        ("https://us-west1-docker.pkg.dev/v2/x", false)
    );

    // `redirects = "pass"` on ghcr: relayed with the absolute Location.
    cfg.registries[1].redirects = RedirectMode::Pass;
    let decision = decide(&cfg, &cfg.registries[1], &current, location, 0);
    assert_eq!(
        decision,
        RedirectDecision::Pass {
            location: location.to_owned()
        }
    );
    // A relative Location is made absolute against the upstream URL.
    let decision = decide(&cfg, &cfg.registries[1], &current, "/storage/x?sig=1", 0);
    assert_eq!(
        decision,
        RedirectDecision::Pass {
            location: "https://ghcr.io/storage/x?sig=1".to_owned()
        }
    );
    // Docker Hub keeps following.
    let hub_current = url("https://registry-1.docker.io/v2/library/busybox/blobs/sha256:abc");
    let decision = decide(
        &cfg,
        &cfg.registries[0],
        &hub_current,
        "https://cdn.example.net/x",
        0,
    );
    assert!(matches!(decision, RedirectDecision::Follow { .. }));
}

#[test]
fn compat_42_too_many_hops() {
    let cfg = config();
    let hub = &cfg.registries[0];
    let mut current = url("https://registry-1.docker.io/v2/library/busybox/blobs/sha256:abc");
    let mut followed = 0u8;
    // A chain of 11 redirects: the first five are followed, the sixth 3xx is refused.
    let mut refused = None;
    for hop in 0..11u8 {
        let location = format!("https://cdn{hop}.example.net/blob");
        match decide(&cfg, hub, &current, &location, followed) {
            RedirectDecision::Follow { target, .. } => {
                current = target;
                followed += 1;
            }
            RedirectDecision::Refuse(reason) => {
                refused = Some((hop, reason));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(followed, 5);
    assert_eq!(refused, Some((5, "too many redirects")));
}

#[test]
fn compat_42_limit_follows_configuration() {
    let mut cfg = config();
    cfg.max_redirects = 1;
    let hub = &cfg.registries[0];
    let current = url("https://registry-1.docker.io/v2/x/blobs/sha256:abc");
    assert!(matches!(
        decide(&cfg, hub, &current, "https://cdn.example.net/a", 0),
        RedirectDecision::Follow { .. }
    ));
    assert_eq!(
        decide(&cfg, hub, &current, "https://cdn.example.net/a", 1),
        RedirectDecision::Refuse("too many redirects")
    );
}

#[test]
fn compat_43_relative_location() {
    let cfg = config();
    let hub = &cfg.registries[0];
    let current = url("https://registry-1.docker.io/v2/library/busybox/blobs/sha256:abc?x=1");
    let cases = [
        ("/cdn/x", "https://registry-1.docker.io/cdn/x", true),
        (
            "../x",
            "https://registry-1.docker.io/v2/library/busybox/x",
            true,
        ),
        (
            "x?y=2",
            "https://registry-1.docker.io/v2/library/busybox/blobs/x?y=2",
            true,
        ),
        (
            "//cdn.example.net/blob#frag",
            "https://cdn.example.net/blob",
            false,
        ),
    ];
    for (location, want, same) in cases {
        let decision = decide(&cfg, hub, &current, location, 0);
        assert_eq!(follow_target(&decision), (want, same), "{location}");
    }
}

#[test]
fn refused_locations() {
    let cfg = config();
    let hub = &cfg.registries[0];
    let current = url("https://registry-1.docker.io/v2/x/blobs/sha256:abc");
    for location in [
        "http://cdn.example.net/blob",
        "ftp://cdn.example.net/blob",
        "file:///etc/passwd",
        "https://user:pw@cdn.example.net/blob",
        "https://user@cdn.example.net/blob",
        "//user@cdn.example.net/blob",
        "https://[::1/blob",
        "https://",
        "",
    ] {
        let decision = decide(&cfg, hub, &current, location, 0);
        assert!(
            matches!(decision, RedirectDecision::Refuse(_)),
            "{location:?}: {decision:?}"
        );
    }
}

#[test]
fn development_registry_allows_plain_http() {
    let mut cfg = config();
    cfg.registries[1].origin = origin("http://127.0.0.1:5001");
    cfg.registries[1].development = true;
    let dev = &cfg.registries[1];
    let current = url("http://127.0.0.1:5001/v2/x/blobs/sha256:abc");
    let decision = decide(&cfg, dev, &current, "http://127.0.0.1:5002/cdn/x", 0);
    assert_eq!(
        follow_target(&decision),
        ("http://127.0.0.1:5002/cdn/x", false)
    );
    let decision = decide(&cfg, dev, &current, "/cdn/x", 0);
    assert_eq!(
        follow_target(&decision),
        ("http://127.0.0.1:5001/cdn/x", true)
    );

    // Not in development: plain http and downgrades are refused.
    cfg.registries[1].development = false;
    let decision = decide(&cfg, &cfg.registries[1], &current, "/cdn/x", 0);
    assert!(matches!(decision, RedirectDecision::Refuse(_)));
    let https_current = url("https://ghcr.io/v2/x/blobs/sha256:abc");
    let decision = decide(
        &cfg,
        &cfg.registries[1],
        &https_current,
        "http://ghcr.io/x",
        0,
    );
    assert!(matches!(decision, RedirectDecision::Refuse(_)));
}

#[test]
fn compat_47_accept_class() {
    let index_request = headers(&[(
        "Accept",
        &format!("{OCI_INDEX}, {DOCKER_LIST}, {DOCKER_V2}, {OCI_MANIFEST}"),
    )]);
    let v2_request = headers(&[("Accept", DOCKER_V2)]);
    let index_class = accept_class(&index_request);
    let v2_class = accept_class(&v2_request);
    assert_ne!(
        index_class, v2_class,
        "different Accept sets are different cache keys"
    );
    assert_eq!(v2_class, DOCKER_V2);
    // The cached index is not acceptable to the v2-only client.
    assert!(accepts(&index_class, OCI_INDEX));
    assert!(!accepts(&v2_class, OCI_INDEX));
    assert!(accepts(&v2_class, DOCKER_V2));
    // Order and q-values do not change the class.
    let reordered = headers(&[
        ("Accept", &format!("{OCI_MANIFEST};q=0.5")),
        ("Accept", &format!("{DOCKER_V2}, {OCI_INDEX}")),
        ("Accept", DOCKER_LIST),
    ]);
    assert_eq!(accept_class(&reordered), index_class);
    // No Accept: what a registry serves without one (TESTBED.md §7 gotcha 2).
    assert!(!accepts("", OCI_MANIFEST));
    assert!(!accepts("", OCI_INDEX));
    assert!(accepts("", DOCKER_V2));
}

#[test]
fn compat_71_follow_all_false() {
    let mut cfg = config();
    cfg.follow_all_redirects = Some(false);
    let ghcr_current = url("https://ghcr.io/v2/owner/img/blobs/sha256:abc");
    let ghcr_location = "https://pkg-containers.githubusercontent.com/ghcr1/blobs/sha256:abc";
    let decision = decide(&cfg, &cfg.registries[1], &ghcr_current, ghcr_location, 0);
    assert_eq!(
        decision,
        RedirectDecision::Pass {
            location: ghcr_location.to_owned()
        }
    );

    // A Docker Hub CDN redirect (host contains `docker.com`) is still followed.
    let hub_current = url("https://registry-1.docker.io/v2/library/busybox/blobs/sha256:abc");
    let cdn = "https://production.cloudflare.docker.com/blob";
    let decision = decide(&cfg, &cfg.registries[0], &hub_current, cdn, 0);
    assert_eq!(follow_target(&decision), (cdn, false));
    // BLOCKED_HOSTS entries are followed the same way, and the match ignores case and port.
    cfg.blocked_hosts.push("githubusercontent.com".to_owned());
    assert!(is_blocked_host(
        &cfg,
        "PKG-Containers.GitHubUserContent.com"
    ));
    let decision = decide(
        &cfg,
        &cfg.registries[1],
        &ghcr_current,
        "https://pkg-containers.githubusercontent.com:8443/b",
        0,
    );
    assert!(matches!(decision, RedirectDecision::Follow { .. }));

    // FOLLOW_ALL_REDIRECTS=true overrides a route in pass mode.
    cfg.follow_all_redirects = Some(true);
    cfg.registries[1].redirects = RedirectMode::Pass;
    let decision = decide(
        &cfg,
        &cfg.registries[1],
        &ghcr_current,
        "https://other.example.net/b",
        0,
    );
    assert!(matches!(decision, RedirectDecision::Follow { .. }));
}

#[test]
fn compat_76_two_accept_lines() {
    let client = headers(&[
        ("Accept", &format!("{OCI_INDEX}, {OCI_MANIFEST}")),
        ("User-Agent", "docker/27.0"),
        ("Accept", &format!("{DOCKER_V2}, {DOCKER_LIST}")),
    ]);
    let want = [
        format!("{OCI_INDEX}, {OCI_MANIFEST}"),
        format!("{DOCKER_V2}, {DOCKER_LIST}"),
    ];
    assert_eq!(
        values(&forward_request_headers(&client), header::ACCEPT),
        want
    );
    assert_eq!(values(&redirect_hop_headers(&client), header::ACCEPT), want);
}

#[test]
fn realm_policy() {
    let mut reg = registry(
        "docker.io",
        "https://registry-1.docker.io",
        Flavour::DockerHub,
    );
    assert!(realm_allowed(&reg, &url("https://auth.docker.io/token")));
    assert!(realm_allowed(
        &reg,
        &url("https://Auth.Docker.IO./token?x=1")
    ));
    for bad in [
        "http://auth.docker.io/token",
        "https://user:pw@auth.docker.io/token",
        "https://127.0.0.1/token",
        "https://2130706433/token",
        "https://0x7f.1/token",
        "https://[::1]/token",
        "https://[::ffff:7f00:1]/token",
        "https://localhost/token",
        "https://LOCALHOST./token",
        "https://auth.localhost/token",
        "ftp://auth.docker.io/token",
    ] {
        assert!(!realm_allowed(&reg, &url(bad)), "{bad}");
    }

    // Development: plain http for names, still no IP literal without an allowlist.
    reg.development = true;
    assert!(realm_allowed(&reg, &url("http://auth.test/token")));
    assert!(!realm_allowed(&reg, &url("http://127.0.0.1:5001/token")));

    // An allowlist decides alone: exact origin, loopback test realms included.
    reg.development = false;
    reg.realm_allowlist = vec![
        origin("https://auth.docker.io"),
        origin("http://127.0.0.1:5001"),
    ];
    assert!(realm_allowed(&reg, &url("https://auth.docker.io/token")));
    assert!(realm_allowed(
        &reg,
        &url("http://127.0.0.1:5001/token?service=x")
    ));
    assert!(!realm_allowed(&reg, &url("http://127.0.0.1:5002/token")));
    assert!(!realm_allowed(&reg, &url("https://127.0.0.1:5001/token")));
    assert!(!realm_allowed(
        &reg,
        &url("https://auth.docker.io:444/token")
    ));
    assert!(!realm_allowed(
        &reg,
        &url("https://auth.docker.io.evil.net/token")
    ));
    assert!(!realm_allowed(&reg, &url("https://evil.net/token")));
    assert!(!realm_allowed(&reg, &url("https://x@auth.docker.io/token")));
}
