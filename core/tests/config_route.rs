//! Configuration loading (environment + TOML) and routing (COMPAT.md §1, §3; SECURITY.md §2.1,
//! §2.18).

use std::collections::BTreeMap;
use std::time::Duration;

use dockerproxy_core::config::{
    Config, ConfigError, ConfigWarning, Exposure, Flavour, RedirectMode, Scheme, load, load_with,
};
use dockerproxy_core::oci_error::ErrorCode;
use dockerproxy_core::route::{
    HostKind, HostPort, RouteResult, Routed, normalize_host, route, unknown_host_body,
};
use http::StatusCode;
use proptest::prelude::*;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn try_load(
    pairs: &[(&str, &str)],
    file: Option<&str>,
) -> Result<(Config, Vec<ConfigWarning>), ConfigError> {
    load(&env(pairs), file)
}

fn cfg(file: Option<&str>) -> Config {
    try_load(&[("CUSTOM_DOMAIN", "example.com")], file)
        .unwrap()
        .0
}

fn mirror_cfg() -> Config {
    cfg(Some("mirror_hosts = [\"mirror.example.com\"]\n"))
}

fn routed(c: &Config, host: &str, path: &str, query: Option<&str>) -> Routed {
    match route(c, Some(host), path, query) {
        RouteResult::Routed(r) => r,
        other => panic!("{host} {path} {query:?}: expected a route, got {other:?}"),
    }
}

fn name(c: &Config, r: &Routed) -> String {
    c.registries[r.registry].name.clone()
}

fn route_error(
    c: &Config,
    host: &str,
    path: &str,
    query: Option<&str>,
) -> (StatusCode, ErrorCode, Option<String>) {
    match route(c, Some(host), path, query) {
        RouteResult::Error(e, ns) => (e.status, e.code, ns),
        other => panic!("{host} {path} {query:?}: expected an error, got {other:?}"),
    }
}

fn warned(w: &[ConfigWarning], key: &str) -> bool {
    w.iter().any(|x| x.key == key)
}

const NINE: &str = concat!(
    r#"{"message":"Available registry routes","routes":{"#,
    r#""cloudsmith.example.com":"https://docker.cloudsmith.io","#,
    r#""docker-staging.example.com":"https://registry-1.docker.io","#,
    r#""docker.example.com":"https://registry-1.docker.io","#,
    r#""ecr.example.com":"https://public.ecr.aws","#,
    r#""gcr.example.com":"https://gcr.io","#,
    r#""ghcr.example.com":"https://ghcr.io","#,
    r#""k8s-gcr.example.com":"https://k8s.gcr.io","#,
    r#""k8s.example.com":"https://registry.k8s.io","#,
    r#""quay.example.com":"https://quay.io"}}"#,
    "\n"
);

// ---------------------------------------------------------------- COMPAT §9 cases

#[test]
fn compat_01_unknown_host_listing() {
    let c = cfg(None);
    assert_eq!(
        route(&c, Some("unknown.example.org"), "/v2/", None),
        RouteResult::UnknownHost
    );
    assert_eq!(&unknown_host_body(&c)[..], NINE.as_bytes());
    let v: serde_json::Value = serde_json::from_slice(&unknown_host_body(&c)).unwrap();
    assert_eq!(v["routes"].as_object().unwrap().len(), 9);
}

#[test]
fn compat_02_root_on_unknown_host() {
    let c = cfg(None);
    assert_eq!(
        route(&c, Some("unknown.example.org"), "/", None),
        RouteResult::UnknownHost
    );
    assert_eq!(
        route(
            &c,
            Some("unknown.example.org"),
            "/v2/ghcr.io/x/manifests/1",
            Some("ns=ghcr.io")
        ),
        RouteResult::UnknownHost
    );
    assert_eq!(route(&c, None, "/v2/", None), RouteResult::UnknownHost);
    assert_eq!(route(&c, Some(""), "/v2/", None), RouteResult::UnknownHost);
}

#[test]
fn compat_04_nine_hosts_reach_their_upstreams() {
    let c = cfg(None);
    let table = [
        ("docker", "docker.io", "https://registry-1.docker.io"),
        ("quay", "quay.io", "https://quay.io"),
        ("gcr", "gcr.io", "https://gcr.io"),
        ("k8s-gcr", "k8s.gcr.io", "https://k8s.gcr.io"),
        ("k8s", "registry.k8s.io", "https://registry.k8s.io"),
        ("ghcr", "ghcr.io", "https://ghcr.io"),
        (
            "cloudsmith",
            "docker.cloudsmith.io",
            "https://docker.cloudsmith.io",
        ),
        ("ecr", "public.ecr.aws", "https://public.ecr.aws"),
        (
            "docker-staging",
            "docker.io",
            "https://registry-1.docker.io",
        ),
    ];
    for (label, reg, origin) in table {
        let host = format!("{label}.example.com");
        let r = routed(&c, &host, "/v2/", None);
        assert_eq!(name(&c, &r), reg, "{host}");
        assert_eq!(c.registries[r.registry].origin.to_url_string(), origin);
        assert_eq!(r.host_kind, HostKind::Route);
        assert_eq!(r.public_host, host);
        assert_eq!(r.path, "/v2/");
        assert_eq!(
            (r.namespace.clone(), r.prefix.clone(), r.realm_ns),
            (None, None, false)
        );
    }
    // docker-staging shares docker.io's registry (and so its cache entries).
    let a = routed(&c, "docker.example.com", "/v2/", None).registry;
    let b = routed(&c, "docker-staging.example.com", "/v2/", None).registry;
    assert_eq!(a, b);
    assert_eq!(c.registries[a].flavour, Flavour::DockerHub);
    assert_eq!(c.registries.len(), 8);
}

#[test]
fn compat_05_port_is_kept_not_matched() {
    let c = cfg(None);
    let r = routed(&c, "docker.example.com:8443", "/v2/", None);
    assert_eq!(name(&c, &r), "docker.io");
    assert_eq!(r.port, Some(8443));
    assert_eq!(r.public_host, "docker.example.com");
}

#[test]
fn compat_06_host_case_and_dot() {
    let c = cfg(None);
    for h in [
        "DOCKER.Example.COM",
        "docker.example.com.",
        "DOCKER.Example.COM.",
        " docker.example.com ",
    ] {
        let r = routed(&c, h, "/v2/", None);
        assert_eq!(name(&c, &r), "docker.io", "{h}");
        assert_eq!(r.public_host, "docker.example.com");
    }
    let r = routed(&c, "Docker.Example.Com.:5000", "/v2/", None);
    assert_eq!((name(&c, &r), r.port), ("docker.io".to_owned(), Some(5000)));
}

#[test]
fn compat_07_debug_fallback() {
    let on = [
        ("DEBUG", "true"),
        ("TARGET_UPSTREAM", "http://127.0.0.1:5000/"),
        ("CUSTOM_DOMAIN", "example.com"),
    ];
    let (c, w) = try_load(&on, None).unwrap();
    let id = c.debug_fallback.expect("fallback active");
    assert_eq!(c.registries[id].name, "127.0.0.1");
    assert_eq!(
        c.registries[id].origin.to_url_string(),
        "http://127.0.0.1:5000"
    );
    assert_eq!(c.registries[id].flavour, Flavour::Generic);
    assert!(
        w.iter()
            .any(|x| x.key == "TARGET_UPSTREAM" && x.message.contains("open proxy")),
        "{w:?}"
    );
    let r = routed(&c, "Unknown.Example.Org:9000", "/v2/x/manifests/1", None);
    assert_eq!(r.registry, id);
    assert_eq!(r.host_kind, HostKind::DebugFallback);
    assert_eq!(r.public_host, "unknown.example.org");
    assert_eq!(r.port, Some(9000));
    // Route hosts still win over the fallback.
    assert_eq!(
        name(&c, &routed(&c, "ghcr.example.com", "/v2/", None)),
        "ghcr.io"
    );
    // A host that is not a DNS name or IP literal is never used as a public host.
    assert_eq!(
        route(&c, Some("fe80::1"), "/v2/", None),
        RouteResult::UnknownHost
    );

    // MODE=debug is the same switch; a Docker Hub target is Docker-Hub-flavoured.
    let (c, _) = try_load(
        &[
            ("MODE", "debug"),
            ("TARGET_UPSTREAM", "https://registry-1.docker.io"),
        ],
        None,
    )
    .unwrap();
    let id = c.debug_fallback.unwrap();
    assert_eq!(
        (c.registries[id].flavour, c.registries[id].development),
        (Flavour::DockerHub, false)
    );
    // The alias shadowed by docker.io still counts as the fallback's own prefix.
    let r = routed(
        &c,
        "anything.test",
        "/v2/registry-1.docker.io/library/x/manifests/1",
        None,
    );
    assert_eq!(
        (r.registry, r.path.as_str()),
        (id, "/v2/library/x/manifests/1")
    );

    // Debug off: the listing, and a warning that TARGET_UPSTREAM is ignored.
    let (c, w) = try_load(
        &[
            ("DEBUG", "false"),
            ("TARGET_UPSTREAM", "http://127.0.0.1:5000"),
        ],
        None,
    )
    .unwrap();
    assert_eq!(c.debug_fallback, None);
    assert!(warned(&w, "TARGET_UPSTREAM"));
    assert_eq!(
        route(&c, Some("unknown.example.org"), "/v2/", None),
        RouteResult::UnknownHost
    );
    assert_eq!(c.registries.len(), 8);

    // Invalid TARGET_UPSTREAM while debug is on stops startup; while off it is ignored.
    for bad in ["ftp://x", "https://x/path", "not a url", "https://u:p@x"] {
        let e = try_load(&[("DEBUG", "true"), ("TARGET_UPSTREAM", bad)], None).unwrap_err();
        assert_eq!(e.key, "TARGET_UPSTREAM", "{bad}");
        assert!(try_load(&[("TARGET_UPSTREAM", bad)], None).is_ok());
    }
}

#[test]
fn compat_59_mirror_ns_chooses() {
    let c = mirror_cfg();
    let r = routed(
        &c,
        "mirror.example.com",
        "/v2/foo/bar/manifests/1",
        Some("ns=ghcr.io"),
    );
    assert_eq!(name(&c, &r), "ghcr.io");
    assert_eq!(r.namespace.as_deref(), Some("ghcr.io"));
    assert_eq!(r.path, "/v2/foo/bar/manifests/1");
    assert_eq!(
        (r.host_kind, r.realm_ns, r.prefix.clone()),
        (HostKind::Mirror, true, None)
    );
    assert_eq!(r.public_host, "mirror.example.com");
}

#[test]
fn compat_60_ns_not_served_or_mismatched() {
    let c = mirror_cfg();
    assert_eq!(
        route_error(
            &c,
            "mirror.example.com",
            "/v2/foo/manifests/1",
            Some("ns=nvcr.io")
        ),
        (StatusCode::NOT_FOUND, ErrorCode::NameUnknown, None)
    );
    assert_eq!(
        route_error(
            &c,
            "docker.example.com",
            "/v2/foo/manifests/1",
            Some("ns=ghcr.io")
        ),
        (
            StatusCode::BAD_REQUEST,
            ErrorCode::NameInvalid,
            Some("ghcr.io".to_owned())
        )
    );
    assert_eq!(
        route_error(
            &c,
            "docker.example.com",
            "/v2/foo/manifests/1",
            Some("ns=nvcr.io")
        ),
        (StatusCode::NOT_FOUND, ErrorCode::NameUnknown, None)
    );
}

#[test]
fn compat_63_no_ns_goes_to_docker_hub() {
    let c = mirror_cfg();
    for host in ["docker.example.com", "mirror.example.com"] {
        let r = routed(&c, host, "/v2/library/nginx/manifests/latest", None);
        assert_eq!(name(&c, &r), "docker.io", "{host}");
        assert_eq!(r.path, "/v2/library/nginx/manifests/latest");
        assert_eq!(
            (r.namespace.clone(), r.prefix.clone(), r.realm_ns),
            (None, None, false)
        );
    }
}

#[test]
fn compat_64_mirror_host_with_port() {
    let c = mirror_cfg();
    let r = routed(&c, "mirror.example.com:5000", "/v2/", None);
    assert_eq!(
        (name(&c, &r), r.port, r.host_kind),
        ("docker.io".to_owned(), Some(5000), HostKind::Mirror)
    );
    let plain = cfg(None);
    assert_eq!(
        route(&plain, Some("mirror.example.com:5000"), "/v2/", None),
        RouteResult::UnknownHost
    );
}

#[test]
fn compat_65_mirror_path_prefix() {
    let c = mirror_cfg();
    let r = routed(
        &c,
        "mirror.example.com",
        "/v2/ghcr.io/foo/bar/manifests/1",
        None,
    );
    assert_eq!(name(&c, &r), "ghcr.io");
    assert_eq!(r.path, "/v2/foo/bar/manifests/1");
    assert_eq!(
        (r.prefix.as_deref(), r.namespace.as_deref(), r.realm_ns),
        (Some("ghcr.io"), None, true)
    );

    let r = routed(
        &c,
        "mirror.example.com",
        "/v2/docker.io/nginx/manifests/1",
        None,
    );
    assert_eq!(name(&c, &r), "docker.io");
    assert_eq!(r.path, "/v2/nginx/manifests/1");
    assert_eq!(r.prefix.as_deref(), Some("docker.io"));
}

// ---------------------------------------------------------------- routing details

#[test]
fn route_prefix_forms_and_aliases() {
    let c = mirror_cfg();
    for (path, fwd) in [
        ("/v2/ghcr.io", "/v2/"),
        ("/v2/ghcr.io/", "/v2/"),
        ("/v2/GHCR.IO/a/tags/list", "/v2/a/tags/list"),
    ] {
        let r = routed(&c, "mirror.example.com", path, None);
        assert_eq!(
            (name(&c, &r), r.path.as_str()),
            ("ghcr.io".to_owned(), fwd),
            "{path}"
        );
    }
    // An alias counts as a prefix; the canonical name is what is reported.
    let r = routed(
        &c,
        "docker.example.com",
        "/v2/index.docker.io/library/x/manifests/1",
        None,
    );
    assert_eq!(
        (r.prefix.as_deref(), r.path.as_str()),
        (Some("docker.io"), "/v2/library/x/manifests/1")
    );
    assert!(!r.realm_ns, "route hosts never add ns to the realm");
    // `library` is no registry: not a prefix.
    let r = routed(
        &c,
        "docker.example.com",
        "/v2/library/busybox/manifests/1",
        None,
    );
    assert_eq!(
        (r.prefix.clone(), r.path.as_str()),
        (None, "/v2/library/busybox/manifests/1")
    );
    // Another registry's prefix on a route host is refused.
    assert_eq!(
        route_error(
            &c,
            "docker.example.com",
            "/v2/ghcr.io/foo/manifests/1",
            None
        ),
        (StatusCode::BAD_REQUEST, ErrorCode::NameInvalid, None)
    );
}

#[test]
fn route_ns_parsing() {
    let c = mirror_cfg();
    // Own registry on a route host, spelled as an alias, with :443, percent-encoded, upper-case.
    for q in [
        "ns=docker.io",
        "ns=index.docker.io",
        "ns=docker.io:443",
        "ns=DOCKER.IO.",
        "ns=docker%2Eio",
        "x=1&ns=docker.io&ns=ghcr.io",
    ] {
        let r = routed(
            &c,
            "docker.example.com",
            "/v2/library/x/manifests/1",
            Some(q),
        );
        assert_eq!(r.namespace.as_deref(), Some("docker.io"), "{q}");
        assert!(!r.realm_ns);
    }
    // Invalid syntax → 400, no echo.
    for q in [
        "ns=",
        "ns=a%20b",
        "ns=bad_host",
        "ns=docker.io:0",
        "ns=*.io",
        "ns=a:b:c",
    ] {
        assert_eq!(
            route_error(&c, "mirror.example.com", "/v2/x/manifests/1", Some(q)),
            (StatusCode::BAD_REQUEST, ErrorCode::NameInvalid, None),
            "{q}"
        );
    }
    // A port other than 443 is part of the name: not served.
    assert_eq!(
        route_error(
            &c,
            "mirror.example.com",
            "/v2/x/manifests/1",
            Some("ns=ghcr.io:5000")
        )
        .1,
        ErrorCode::NameUnknown
    );
}

#[test]
fn route_mirror_prefix_and_ns_combinations() {
    let c = mirror_cfg();
    // Agreeing prefix and ns (alias spelling included).
    let r = routed(
        &c,
        "mirror.example.com",
        "/v2/docker.io/library/x/manifests/1",
        Some("ns=registry-1.docker.io"),
    );
    assert_eq!(
        (name(&c, &r), r.namespace.as_deref(), r.realm_ns),
        ("docker.io".to_owned(), Some("docker.io"), true)
    );
    // Disagreeing → 400 with the ns echoed.
    assert_eq!(
        route_error(
            &c,
            "mirror.example.com",
            "/v2/ghcr.io/x/manifests/1",
            Some("ns=quay.io")
        ),
        (
            StatusCode::BAD_REQUEST,
            ErrorCode::NameInvalid,
            Some("quay.io".to_owned())
        )
    );
    // ns picks the registry even for a ping.
    let r = routed(&c, "mirror.example.com", "/v2/", Some("ns=quay.io"));
    assert_eq!(
        (name(&c, &r), r.path.as_str()),
        ("quay.io".to_owned(), "/v2/")
    );
}

#[test]
fn route_look_alike_and_bare_hosts() {
    let c = mirror_cfg();
    for h in [
        "docker.example.com.evil.test",
        "example.com",
        "evil.docker.example.com",
        "docker.example.co",
        "docker.example.com..",
        "docker",
        "[2001:db8::1]:5000",
        "2001:db8::1",
    ] {
        assert_eq!(
            route(&c, Some(h), "/v2/", None),
            RouteResult::UnknownHost,
            "{h}"
        );
    }
}

#[test]
fn route_ipv6_mirror_host() {
    let c = cfg(Some(
        "mirror_hosts = [\"[2001:db8::1]\", \"2001:db8::2\", \"192.0.2.7\"]\n",
    ));
    assert_eq!(
        c.mirror_hosts,
        ["[2001:db8::1]", "[2001:db8::2]", "192.0.2.7"]
    );
    let r = routed(&c, "[2001:DB8:0::1]:5000", "/v2/", None);
    assert_eq!(
        (r.public_host.as_str(), r.port, r.host_kind),
        ("[2001:db8::1]", Some(5000), HostKind::Mirror)
    );
    let r = routed(&c, "192.0.2.7", "/v2/ghcr.io/", None);
    assert_eq!(name(&c, &r), "ghcr.io");
    assert_eq!(
        route(&c, Some("[2001:db8::3]:5000"), "/v2/", None),
        RouteResult::UnknownHost
    );
    assert_eq!(
        route(&c, Some("2001:db8::1"), "/v2/", None),
        RouteResult::UnknownHost
    );
}

#[test]
fn route_normalize_host_examples() {
    assert_eq!(
        normalize_host("[2001:db8::1]:5000"),
        Some(HostPort {
            host: "[2001:db8::1]".into(),
            port: Some(5000)
        })
    );
    assert_eq!(
        normalize_host("Docker.Example.COM.:8443"),
        Some(HostPort {
            host: "docker.example.com".into(),
            port: Some(8443)
        })
    );
    assert_eq!(
        normalize_host("a:b:c"),
        Some(HostPort {
            host: "a:b:c".into(),
            port: None
        })
    );
    assert_eq!(normalize_host("docker.example.com:99999"), None);
    assert_eq!(normalize_host("docker.example.com:x"), None);
}

#[test]
fn unknown_host_body_with_mirrors_and_hidden() {
    let c = mirror_cfg();
    let v: serde_json::Value = serde_json::from_slice(&unknown_host_body(&c)).unwrap();
    let routes = v["routes"].as_object().unwrap();
    assert_eq!(routes.len(), 10);
    assert_eq!(routes["mirror.example.com"], "https://registry-1.docker.io");
    let keys: Vec<&String> = routes.keys().collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);

    let c = cfg(Some("hide_routes = true\n"));
    let body = unknown_host_body(&c);
    assert!(body.ends_with(b"}\n") && !body[..body.len() - 1].contains(&b'\n'));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"errors":[{"code":"NAME_UNKNOWN","message":"unknown host","detail":null}]})
    );
    assert!(!String::from_utf8_lossy(&body).contains("example.com"));
}

// ---------------------------------------------------------------- environment

#[test]
fn env_defaults() {
    let (c, w) = try_load(&[], None).unwrap();
    assert_eq!(c.custom_domain, "example.com");
    assert!(warned(&w, "CUSTOM_DOMAIN"));
    assert_eq!(c.port, 8080);
    assert_eq!(c.cache.dir, "./cache");
    assert!(c.cache.enabled);
    assert_eq!(c.cache.manifest_ttl, Duration::from_secs(600));
    assert_eq!(c.cache.blob_ttl, Duration::from_secs(365 * 86_400));
    assert_eq!(c.cache.max_size, 10 << 30);
    assert_eq!(c.cache.max_stale, Duration::from_secs(86_400));
    assert_eq!(c.follow_all_redirects, None);
    assert_eq!(
        c.blocked_hosts,
        ["cloudflare.docker.com", "docker.com", "docker.io"]
    );
    assert!(!c.debug && !c.dns_enabled && c.dns_servers.is_empty());
    assert_eq!(c.dns_timeout, Duration::from_secs(5));
    assert_eq!(c.max_redirects, 5);
    assert_eq!((c.stats, c.metrics), (Exposure::Main, Exposure::Main));
    assert_eq!(
        c.user_agent,
        format!("dockerproxy/{}", dockerproxy_core::VERSION)
    );
    assert_eq!(
        (c.public_scheme, c.public_port, c.hide_routes),
        (None, None, false)
    );
    assert!(c.listen.is_empty() && c.mirror_hosts.is_empty() && c.debug_fallback.is_none());
    assert_eq!(c.trusted_proxies.len(), 6);
    assert!(c.is_trusted_peer(Some("172.17.0.1".parse().unwrap())));
    assert!(!c.is_trusted_peer(Some("8.8.8.8".parse().unwrap())));
    for r in &c.registries {
        assert_eq!(
            (r.redirects, r.allow_push, r.development),
            (RedirectMode::Follow, false, false),
            "{}",
            r.name
        );
        assert!(r.realm_allowlist.is_empty() && r.credentials.is_none());
    }
    assert_eq!(
        c.registries[c.registry_by_name("registry-1.docker.io").unwrap()].name,
        "docker.io"
    );
}

#[test]
fn env_custom_domain_normalised() {
    let (c, w) = try_load(&[("CUSTOM_DOMAIN", "  Mirror.Corp.EXAMPLE. ")], None).unwrap();
    assert_eq!(c.custom_domain, "mirror.corp.example");
    assert!(!warned(&w, "CUSTOM_DOMAIN"));
    assert_eq!(
        c.route_host("docker.mirror.corp.example"),
        c.registry_by_name("docker.io")
    );
    // Empty = unset.
    let (c, w) = try_load(&[("CUSTOM_DOMAIN", "")], None).unwrap();
    assert_eq!(c.custom_domain, "example.com");
    assert!(warned(&w, "CUSTOM_DOMAIN"));
    for bad in ["exa mple.com", "*.example.com", "a..b", "\"x\""] {
        assert_eq!(
            try_load(&[("CUSTOM_DOMAIN", bad)], None).unwrap_err().key,
            "CUSTOM_DOMAIN",
            "{bad}"
        );
    }
}

#[test]
fn env_port() {
    assert_eq!(try_load(&[("PORT", "9000")], None).unwrap().0.port, 9000);
    assert_eq!(try_load(&[("PORT", "")], None).unwrap().0.port, 8080);
    for bad in ["0", "65536", "abc", "-1", "+80", "80 80"] {
        let e = try_load(&[("PORT", bad)], None).unwrap_err();
        assert_eq!(e.key, "PORT", "{bad}");
        assert!(e.to_string().contains("PORT"));
    }
}

#[test]
fn env_duration_table() {
    let table = [
        ("24h", 86_400_000),
        ("90m", 5_400_000),
        ("1h30m", 5_400_000),
        ("0.5s", 500),
        ("0", 0),
        ("1d", 86_400_000),
        ("1.5d", 36 * 3_600_000),
        ("2w", 14 * 86_400_000),
        ("6M", 180 * 86_400_000),
        ("1y", 365 * 86_400_000),
    ];
    for (v, ms) in table {
        let (c, w) = try_load(
            &[
                ("CACHE_MANIFEST_TTL", v),
                ("CACHE_BLOB_TTL", v),
                ("DNS_TIMEOUT", v),
            ],
            None,
        )
        .unwrap();
        assert_eq!(c.cache.manifest_ttl, Duration::from_millis(ms), "{v}");
        assert_eq!(c.cache.blob_ttl, Duration::from_millis(ms), "{v}");
        assert_eq!(c.dns_timeout, Duration::from_millis(ms), "{v}");
        assert!(!warned(&w, "CACHE_MANIFEST_TTL"));
    }
    for bad in ["1d12h", "1D", "-5m", "5", "1x"] {
        let (c, w) = try_load(
            &[
                ("CACHE_MANIFEST_TTL", bad),
                ("CACHE_BLOB_TTL", bad),
                ("DNS_TIMEOUT", bad),
            ],
            None,
        )
        .unwrap();
        assert_eq!(c.cache.manifest_ttl, Duration::from_secs(600), "{bad}");
        assert_eq!(c.cache.blob_ttl, Duration::from_secs(365 * 86_400), "{bad}");
        assert_eq!(c.dns_timeout, Duration::from_secs(5), "{bad}");
        for k in ["CACHE_MANIFEST_TTL", "CACHE_BLOB_TTL", "DNS_TIMEOUT"] {
            assert!(warned(&w, k), "{bad} {k}");
        }
    }
}

#[test]
fn env_booleans() {
    let (c, w) = try_load(
        &[
            ("CACHE_ENABLED", "FALSE"),
            ("DEBUG", "True"),
            ("DNS_ENABLED", "true"),
        ],
        None,
    )
    .unwrap();
    assert!(!c.cache.enabled && c.debug && c.dns_enabled);
    assert!(!warned(&w, "CACHE_ENABLED") && warned(&w, "DNS_SERVERS"));
    // Anything else is false plus a warning (COMPAT §3.1).
    let (c, w) = try_load(&[("CACHE_ENABLED", "yes"), ("DEBUG", "1")], None).unwrap();
    assert!(!c.cache.enabled && !c.debug);
    assert!(warned(&w, "CACHE_ENABLED") && warned(&w, "DEBUG"));
    // Empty is unset (CACHE_ENABLED keeps its default true).
    assert!(
        try_load(&[("CACHE_ENABLED", "")], None)
            .unwrap()
            .0
            .cache
            .enabled
    );
    let f = |v: &str| {
        try_load(&[("FOLLOW_ALL_REDIRECTS", v)], None)
            .unwrap()
            .0
            .follow_all_redirects
    };
    assert_eq!(
        (f(""), f("true"), f("FALSE"), f("bogus")),
        (None, Some(true), Some(false), Some(false))
    );
    let (c, _) = try_load(&[("MODE", "production")], None).unwrap();
    assert!(!c.debug);
}

#[test]
fn env_blocked_hosts_and_dns() {
    let (c, w) = try_load(
        &[
            (
                "BLOCKED_HOSTS",
                " CDN.Example.NET:443 , ,r2.dev., docker.com, [::1]:80",
            ),
            ("DNS_ENABLED", "true"),
            (
                "DNS_SERVERS",
                "1.1.1.1, 9.9.9.9:5353,[2606:4700::1111],[2606:4700::1111]:54, bad host",
            ),
        ],
        None,
    )
    .unwrap();
    assert_eq!(
        c.blocked_hosts,
        [
            "cloudflare.docker.com",
            "docker.com",
            "docker.io",
            "cdn.example.net",
            "r2.dev",
            "[::1]"
        ]
    );
    assert_eq!(
        c.dns_servers,
        [
            "1.1.1.1:53",
            "9.9.9.9:5353",
            "[2606:4700::1111]:53",
            "[2606:4700::1111]:54"
        ]
    );
    assert!(warned(&w, "DNS_SERVERS"));
}

// ---------------------------------------------------------------- TOML file

#[test]
fn toml_unknown_fields_name_the_key() {
    let cases = [
        ("foo = 1\n", "foo"),
        (
            "[routes.\"ghcr.io\"]\nupstrem = \"https://x\"\n",
            "routes.ghcr.io.upstrem",
        ),
        (
            "[routes.\"ghcr.io\".credentials]\nusername = \"u\"\npasword = \"p\"\n",
            "routes.ghcr.io.credentials.pasword",
        ),
        (
            "[credentials.\"docker.io\"]\nuser = \"u\"\n",
            "credentials.docker.io.user",
        ),
        ("[limits]\nmax_manifest = 3\n", "limits.max_manifest"),
        ("public_port = \"x\"\n", "public_port"),
        ("stats = \"public\"\n", "stats"),
        (
            "[routes.\"ghcr.io\"]\nredirects = \"maybe\"\n",
            "routes.ghcr.io.redirects",
        ),
        ("routes = 3\n", "routes"),
    ];
    for (text, key) in cases {
        let e = try_load(&[], Some(text)).unwrap_err();
        assert_eq!(e.key, key, "{text}: {e}");
        assert!(e.message.contains("line"), "{e}");
    }
    let e = try_load(&[], Some("a = [\n")).unwrap_err();
    assert_eq!(e.key, "config file");
}

#[test]
fn toml_globals() {
    let text = r#"
public_scheme = "https"
public_port = 8443
trusted_proxies = ["10.1.0.0/16", "192.0.2.1"]
hide_routes = true
stats = "loopback"
metrics = "off"
allow_push = true
max_redirects = 3
max_stale = "2h"
cache_max_size = "500MB"
listen = ["127.0.0.1:9000", "[::1]:9001"]
tls_cert = "/c.pem"
tls_key = "/k.pem"
http2 = false
ca_bundle = "/ca.pem"
json_logs = true
[limits]
connect_timeout = "250ms"
max_manifest_bytes = "1MiB"
max_token_bytes = 2048
"#;
    let c = cfg(Some(text));
    assert_eq!(
        (c.public_scheme, c.public_port),
        (Some(Scheme::Https), Some(8443))
    );
    assert_eq!(c.trusted_proxies.len(), 2);
    assert!(c.is_trusted_peer(Some("192.0.2.1".parse().unwrap())));
    assert!(!c.is_trusted_peer(Some("127.0.0.1".parse().unwrap())));
    assert!(c.hide_routes);
    assert_eq!((c.stats, c.metrics), (Exposure::Loopback, Exposure::Off));
    assert!(c.registries.iter().all(|r| r.allow_push));
    assert_eq!(c.max_redirects, 3);
    assert_eq!(c.cache.max_stale, Duration::from_secs(7200));
    assert_eq!(c.cache.max_size, 500_000_000);
    assert_eq!(c.listen, ["127.0.0.1:9000", "[::1]:9001"]);
    assert_eq!(
        (c.tls_cert.as_deref(), c.tls_key.as_deref()),
        (Some("/c.pem"), Some("/k.pem"))
    );
    assert!(!c.http2 && c.json_logs);
    assert_eq!(c.ca_bundle.as_deref(), Some("/ca.pem"));
    assert_eq!(c.limits.connect_timeout, Duration::from_millis(250));
    assert_eq!(
        (c.limits.max_manifest_bytes, c.limits.max_token_bytes),
        (1 << 20, 2048)
    );

    assert!(
        cfg(Some("trusted_proxies = []\n"))
            .trusted_proxies
            .is_empty()
    );
    assert_eq!(cfg(Some("cache_max_size = 0\n")).cache.max_size, 0);
}

#[test]
fn toml_global_errors() {
    let cases = [
        ("public_scheme = \"ftp\"\n", "public_scheme"),
        ("public_port = 0\n", "public_port"),
        ("trusted_proxies = [\"nope\"]\n", "trusted_proxies"),
        ("max_redirects = 50\n", "max_redirects"),
        ("max_stale = \"1d12h\"\n", "max_stale"),
        ("cache_max_size = \"lots\"\n", "cache_max_size"),
        ("listen = [\"localhost\"]\n", "listen"),
        ("tls_cert = \"/c.pem\"\n", "tls_key"),
        ("mirror_hosts = [\"docker.example.com\"]\n", "mirror_hosts"),
        (
            "mirror_hosts = [\"m.example.com\", \"M.example.com.\"]\n",
            "mirror_hosts",
        ),
        ("mirror_hosts = [\"*.example.com\"]\n", "mirror_hosts"),
        ("mirror_hosts = [\"m.example.com:5000\"]\n", "mirror_hosts"),
        ("[limits]\nidle_timeout = \"0\"\n", "limits.idle_timeout"),
    ];
    for (text, key) in cases {
        let e = try_load(&[("CUSTOM_DOMAIN", "example.com")], Some(text)).unwrap_err();
        assert_eq!(e.key, key, "{text}: {e}");
    }
}

#[test]
fn toml_route_override_keeps_name() {
    let text = r#"
[routes."ghcr.io"]
upstream = "http://127.0.0.1:5001"
development = true
redirects = "pass"
allow_push = true
realm_allowlist = ["http://127.0.0.1:5002"]
address_exceptions = ["127.0.0.1:5001", "127.0.0.1:5002"]
aliases = ["ghcr.local:5000"]
"#;
    let (c, w) = try_load(&[("CUSTOM_DOMAIN", "example.com")], Some(text)).unwrap();
    let id = c.registry_by_name("ghcr.io").unwrap();
    let r = &c.registries[id];
    assert_eq!(r.name, "ghcr.io");
    assert_eq!(r.origin.to_url_string(), "http://127.0.0.1:5001");
    assert_eq!(
        (r.redirects, r.allow_push, r.development),
        (RedirectMode::Pass, true, true)
    );
    assert_eq!(
        r.realm_allowlist[0].to_url_string(),
        "http://127.0.0.1:5002"
    );
    assert_eq!(c.address_exceptions.len(), 2);
    assert_eq!(
        (
            c.address_exceptions[0].registry,
            c.address_exceptions[0].port
        ),
        (id, 5001)
    );
    assert!(warned(&w, "routes.ghcr.io.address_exceptions"));
    assert_eq!(c.registry_by_name("ghcr.local:5000"), Some(id));
    assert_eq!(
        name(&c, &routed(&c, "ghcr.example.com", "/v2/", None)),
        "ghcr.io"
    );
    // Other registries are untouched; the listing shows the swapped origin.
    assert!(!c.registries[c.registry_by_name("quay.io").unwrap()].allow_push);
    let v: serde_json::Value = serde_json::from_slice(&unknown_host_body(&c)).unwrap();
    assert_eq!(v["routes"]["ghcr.example.com"], "http://127.0.0.1:5001");
}

#[test]
fn toml_new_route() {
    let text = r#"
[routes."nvcr.io"]
upstream = "https://nvcr.io/"
host = "NVCR.example.com."
flavour = "generic"
"#;
    let c = cfg(Some(text));
    let r = routed(&c, "nvcr.example.com", "/v2/", None);
    assert_eq!(name(&c, &r), "nvcr.io");
    assert_eq!(
        c.registries[r.registry].origin.to_url_string(),
        "https://nvcr.io"
    );
    assert_eq!(c.registries.len(), 9);
    let v: serde_json::Value = serde_json::from_slice(&unknown_host_body(&c)).unwrap();
    assert_eq!(v["routes"].as_object().unwrap().len(), 10);
    // With a mirror host, a new registry needs no route host of its own.
    let c = cfg(Some(
        "mirror_hosts = [\"mirror.example.com\"]\n[routes.\"nvcr.io\"]\nupstream = \"https://nvcr.io\"\n",
    ));
    let r = routed(
        &c,
        "mirror.example.com",
        "/v2/x/manifests/1",
        Some("ns=nvcr.io"),
    );
    assert_eq!(r.namespace.as_deref(), Some("nvcr.io"));
}

#[test]
fn toml_route_errors() {
    let cases = [
        (
            "[routes.\"nvcr.io\"]\nhost = \"nvcr.example.com\"\n",
            "routes.nvcr.io.upstream",
        ),
        (
            "[routes.\"nvcr.io\"]\nupstream = \"https://nvcr.io\"\n",
            "routes.nvcr.io.host",
        ),
        (
            "[routes.\"ghcr.io\"]\nupstream = \"http://127.0.0.1:5000\"\n",
            "routes.ghcr.io.upstream",
        ),
        (
            "[routes.\"ghcr.io\"]\nupstream = \"https://x/v2\"\n",
            "routes.ghcr.io.upstream",
        ),
        (
            "[routes.\"ghcr.io\"]\nhost = \"docker.example.com\"\n",
            "routes.ghcr.io.host",
        ),
        (
            "[routes.\"ghcr.io\"]\nhost = \"*.example.com\"\n",
            "routes.ghcr.io.host",
        ),
        (
            "[routes.\"ghcr.io\"]\naliases = [\"quay.io\"]\n",
            "routes.ghcr.io.aliases",
        ),
        (
            "[routes.\"ghcr.io\"]\nrealm_allowlist = [\"http://127.0.0.1:1\"]\n",
            "routes.ghcr.io.realm_allowlist",
        ),
        (
            "[routes.\"ghcr.io\"]\naddress_exceptions = [\"10.0.0.0/8\"]\n",
            "routes.ghcr.io.address_exceptions",
        ),
        (
            "[routes.\"ghcr.io\"]\naddress_exceptions = [\"127.0.0.1\"]\n",
            "routes.ghcr.io.address_exceptions",
        ),
        (
            "[routes.\"index.docker.io\"]\nallow_push = true\n",
            "routes.index.docker.io",
        ),
        (
            "[routes.\"library\"]\nupstream = \"https://x.io\"\nhost = \"x.example.com\"\n",
            "routes.library",
        ),
    ];
    for (text, key) in cases {
        let e = try_load(&[("CUSTOM_DOMAIN", "example.com")], Some(text)).unwrap_err();
        assert_eq!(e.key, key, "{text}: {e}");
    }
}

#[test]
fn toml_credentials_from_env_and_file() {
    let text = r#"
[routes."docker.io".credentials]
username = "alice"
password_env = "HUB_TOKEN"

[credentials."ghcr.io"]
username = "bob"
password_file = "/run/secrets/ghcr"
anonymous_repositories = ["org/*"]
"#;
    let e = env(&[("HUB_TOKEN", "s3cret")]);
    let reader = |p: &str| {
        if p == "/run/secrets/ghcr" {
            Ok("tok\n".to_owned())
        } else {
            Err("no".to_owned())
        }
    };
    let (c, _) = load_with(&e, Some(text), &reader).unwrap();
    let hub = &c.registries[c.registry_by_name("docker.io").unwrap()];
    let cr = hub.credentials.as_ref().unwrap();
    assert_eq!(
        (cr.username.as_str(), cr.secret.as_str()),
        ("alice", "s3cret")
    );
    assert_eq!(cr.anonymous_repositories, ["library/*"]);
    assert_eq!(
        hub.realm_allowlist[0].to_url_string(),
        "https://auth.docker.io"
    );
    assert!(
        !format!("{c:?}").contains("s3cret"),
        "Debug must redact secrets"
    );
    let gh = c.registries[c.registry_by_name("ghcr.io").unwrap()]
        .credentials
        .as_ref()
        .unwrap();
    assert_eq!(
        (gh.secret.as_str(), gh.anonymous_repositories.clone()),
        ("tok", vec!["org/*".to_owned()])
    );

    // Without a reader, password_file fails and names the key.
    assert_eq!(
        load(&e, Some(text)).unwrap_err().key,
        "credentials.ghcr.io.password_file"
    );
}

#[test]
fn toml_credentials_errors() {
    let cases = [
        (
            "[routes.\"ghcr.io\".credentials]\nusername = \"u\"\npassword_env = \"MISSING\"\n",
            "routes.ghcr.io.credentials.password_env",
        ),
        (
            "[routes.\"ghcr.io\".credentials]\nusername = \"u\"\npassword_env = \"EMPTY\"\n",
            "routes.ghcr.io.credentials.password_env",
        ),
        (
            "[routes.\"ghcr.io\".credentials]\nusername = \"u\"\npassword = \"\"\n",
            "routes.ghcr.io.credentials.password",
        ),
        (
            "[routes.\"ghcr.io\".credentials]\nusername = \"u\"\npassword = \"p\"\npassword_env = \"X\"\n",
            "routes.ghcr.io.credentials",
        ),
        (
            "[routes.\"ghcr.io\".credentials]\nusername = \"u\"\n",
            "routes.ghcr.io.credentials",
        ),
        (
            "[routes.\"ghcr.io\".credentials]\npassword = \"p\"\n",
            "routes.ghcr.io.credentials.username",
        ),
        (
            "[credentials.\"nvcr.io\"]\nusername = \"u\"\npassword = \"p\"\n",
            "credentials.nvcr.io",
        ),
        (
            "[credentials.\"ghcr.io\"]\nusername = \"u\"\npassword = \"p\"\n[routes.\"ghcr.io\".credentials]\nusername = \"u\"\npassword = \"p\"\n",
            "credentials.ghcr.io",
        ),
        // A credentialed registry whose origin was swapped needs an explicit realm allowlist.
        (
            "[routes.\"ghcr.io\"]\nupstream = \"https://ghcr.internal\"\n[routes.\"ghcr.io\".credentials]\nusername = \"u\"\npassword = \"p\"\n",
            "routes.ghcr.io.realm_allowlist",
        ),
        (
            "[routes.\"k8s.gcr.io\".credentials]\nusername = \"u\"\npassword = \"p\"\n",
            "routes.k8s.gcr.io.realm_allowlist",
        ),
    ];
    for (text, key) in cases {
        let e = load(&env(&[("EMPTY", "")]), Some(text)).unwrap_err();
        assert_eq!(e.key, key, "{text}: {e}");
    }
}

// ---------------------------------------------------------------- properties

fn host_strategy() -> impl Strategy<Value = String> {
    let known = prop::sample::select(vec![
        "docker.example.com",
        "ghcr.example.com",
        "mirror.example.com",
        "example.com",
        "[2001:db8::1]",
        "docker-staging.example.com",
    ]);
    prop_oneof![
        known.clone().prop_map(str::to_owned),
        (known, "[.:A-Z0-9]{0,6}").prop_map(|(h, s)| format!("{h}{s}")),
        "[a-zA-Z0-9.:\\[\\]-]{0,30}",
        any::<String>(),
    ]
}

proptest! {
    #[test]
    fn route_never_panics_and_stays_in_table(
        host in host_strategy(),
        path in prop_oneof![Just("/v2/".to_owned()), "/v2/[a-z.]{0,12}(/[a-z]{0,5}){0,3}", any::<String>()],
        query in prop::option::of(prop_oneof!["ns=[a-zA-Z0-9.:%\\[\\]]{0,20}", any::<String>()]),
    ) {
        let c = cfg(Some("mirror_hosts = [\"mirror.example.com\", \"[2001:db8::1]\"]\n"));
        match route(&c, Some(&host), &path, query.as_deref()) {
            RouteResult::Routed(r) => {
                prop_assert!(r.registry < c.registries.len());
                let hp = normalize_host(&host).unwrap();
                prop_assert_eq!(&r.public_host, &hp.host);
                match r.host_kind {
                    HostKind::Route => prop_assert_eq!(c.route_host(&hp.host), Some(r.registry)),
                    HostKind::Mirror => prop_assert!(c.mirror_hosts.contains(&hp.host)),
                    HostKind::DebugFallback => prop_assert!(false, "no fallback configured"),
                }
                prop_assert!(r.path.starts_with('/') || r.path == path);
            }
            RouteResult::UnknownHost => {
                let hp = normalize_host(&host);
                prop_assert!(hp.is_none_or(|h| c.route_host(&h.host).is_none() && !c.mirror_hosts.contains(&h.host)));
            }
            RouteResult::Error(e, _) => prop_assert!(e.status == StatusCode::BAD_REQUEST || e.status == StatusCode::NOT_FOUND),
        }
        let _ = unknown_host_body(&c);
    }

    #[test]
    fn debug_fallback_routes_only_to_configured(host in host_strategy()) {
        let (c, _) = try_load(&[("DEBUG", "true"), ("TARGET_UPSTREAM", "https://upstream.test")], None).unwrap();
        if let RouteResult::Routed(r) = route(&c, Some(&host), "/v2/", None) {
            prop_assert!(r.registry < c.registries.len());
            if r.host_kind == HostKind::DebugFallback {
                prop_assert_eq!(Some(r.registry), c.debug_fallback);
                prop_assert!(dockerproxy_core::route::is_valid_host(&r.public_host));
            }
        }
    }
}

/// The documented example configuration stays valid.
#[test]
fn example_config_file_loads() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/config.example.toml"
    ))
    .unwrap();
    let mut env = BTreeMap::new();
    env.insert("CUSTOM_DOMAIN".to_owned(), "example.com".to_owned());
    env.insert("DOCKERHUB_TOKEN".to_owned(), "dckr_pat_x".to_owned());
    let (c, _) = load(&env, Some(&text)).unwrap();
    assert!(c.hide_routes);
    assert_eq!(c.mirror_hosts, vec!["mirror.example.com".to_owned()]);
    let hub = &c.registries[c.registry_by_name("docker.io").unwrap()];
    assert_eq!(hub.credentials.as_ref().unwrap().secret, "dckr_pat_x");
    assert!(c.route_host("nvcr.example.com").is_some());
}
