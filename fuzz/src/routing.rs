//! Oracle for the route fuzz target (SECURITY.md §4 "Route resolution", §2.1), and the fuzz
//! configuration shared with the exchange target: the nine built-in route hosts, mirror hosts,
//! an extra route with an alias and a port in its name, a pass-through route and a credentialed
//! route.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use dockerproxy_core::config::{Config, load};
use dockerproxy_core::route::{HostKind, RouteResult, normalize_host, route};

use crate::input::form_pairs;

/// The configuration file of the route and exchange targets.
pub const FUZZ_TOML: &str = r#"
mirror_hosts = ["mirror.example.com", "[::1]", "10.1.2.3"]

[routes."registry.internal.test:5000"]
upstream = "https://registry.internal.test:5000"
host = "extra.example.com"
aliases = ["extra-alias.test"]
realm_allowlist = ["https://auth.internal.test"]

[routes."quay.io"]
redirects = "pass"

[routes."ghcr.io".credentials]
username = "fuzzuser"
password = "fuzz-s3cret-pw"
anonymous_repositories = ["pub/*"]
"#;

/// The configured secret of the credentialed route (`ghcr.io`).
pub const FUZZ_SECRET: &str = "fuzz-s3cret-pw";

/// The fuzz configuration, built once (`CUSTOM_DOMAIN=example.com`).
pub fn fuzz_config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let env: BTreeMap<String, String> =
            [("CUSTOM_DOMAIN".to_owned(), "example.com".to_owned())].into();
        match load(&env, Some(FUZZ_TOML)) {
            Ok((config, _warnings)) => config,
            Err(e) => panic!("the fuzz configuration does not load: {e:?}"),
        }
    })
}

/// The registry name an `ns` value asks for, as §1 of COMPAT.md spells it: the normalised host,
/// with its port unless 443; `None` when it is no valid host.
pub fn ns_name(value: &str) -> Option<String> {
    let hp = normalize_host(value)?;
    if !dockerproxy_core::route::is_valid_host(&hp.host) {
        return None;
    }
    Some(match hp.port {
        None | Some(443) => hp.host,
        Some(p) => format!("{}:{p}", hp.host),
    })
}

/// Whether `normalize_host` must be idempotent also for values ending in two or more dots. It
/// used to strip one trailing dot, so `a..` gave `a.` and normalising that gave `a`; it now
/// refuses any empty label but the one trailing dot (repros in fuzz/corpus/route/
/// `normalize_host_not_idempotent_*`). On since the fix.
const IDEMPOTENT_MULTI_DOT: bool = true;

/// `normalize_host` output is lower-case, trimmed, non-empty, and normalising its rendering
/// (`host[:port]`) gives it back.
pub fn check_normalize(raw: &str) {
    let Some(hp) = normalize_host(raw) else {
        return;
    };
    assert!(!hp.host.is_empty(), "{raw:?}");
    assert!(
        hp.host
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b.is_ascii_uppercase()),
        "{raw:?} -> {hp:?}"
    );
    assert_ne!(hp.port, Some(0), "{raw:?}");
    if !IDEMPOTENT_MULTI_DOT && hp.host.ends_with('.') {
        return;
    }
    let rendered = match hp.port {
        Some(p) => format!("{}:{p}", hp.host),
        None => hp.host.clone(),
    };
    assert_eq!(
        normalize_host(&rendered).as_ref(),
        Some(&hp),
        "normalize_host is not idempotent: {raw:?} -> {rendered:?}"
    );
}

/// `route` over (Host, path, query), given as up to three lines of the input (`-` as the first
/// line means no Host). Never panics; a result names a configured registry through a configured
/// host or none; the route of a route host is its own registry; `ns` and path prefixes only pick
/// registries that answer to the name given; the forwarded path is the input path or the path
/// with the prefix removed, and starts with `/` when the input did; every spelling of a Host
/// (case, surrounding whitespace) routes the same.
pub fn check_route(data: &[u8]) {
    let c = fuzz_config();
    let text = String::from_utf8_lossy(data);
    let mut lines = text.splitn(3, '\n');
    let host = lines.next().filter(|h| *h != "-");
    let path = lines.next().unwrap_or("/v2/");
    let query = lines.next();
    if let Some(h) = host {
        check_normalize(h);
    }

    let result = route(c, host, path, query);
    let norm = host.and_then(normalize_host);
    let known = norm
        .as_ref()
        .is_some_and(|hp| c.hosts.contains_key(&hp.host) || c.mirror_hosts.contains(&hp.host));
    let ns_raw = query.and_then(|q| {
        form_pairs(q)
            .into_iter()
            .find(|(k, _)| k == "ns")
            .map(|(_, v)| v)
    });
    let ns = ns_raw.as_deref().map(ns_name);
    let ctx = || format!("host={host:?} path={path:?} query={query:?}: {result:?}");

    match &result {
        RouteResult::Routed(r) => {
            assert!(known, "{}", ctx());
            let hp = norm.as_ref().unwrap_or_else(|| panic!("{}", ctx()));
            let reg = c
                .registries
                .get(r.registry)
                .unwrap_or_else(|| panic!("unconfigured registry: {}", ctx()));
            assert_eq!(r.port, hp.port, "{}", ctx());
            assert_eq!(r.public_host, hp.host, "{}", ctx());
            match r.host_kind {
                HostKind::Route => {
                    assert_eq!(c.hosts.get(&hp.host), Some(&r.registry), "{}", ctx());
                    assert!(!r.realm_ns, "{}", ctx());
                }
                HostKind::Mirror => {
                    assert!(c.mirror_hosts.contains(&hp.host), "{}", ctx());
                    assert_eq!(
                        r.realm_ns,
                        r.prefix.is_some() || r.namespace.is_some(),
                        "{}",
                        ctx()
                    );
                    if r.prefix.is_none() && r.namespace.is_none() {
                        assert_eq!(reg.name, "docker.io", "{}", ctx());
                    }
                }
                HostKind::DebugFallback => panic!("no debug fallback is configured: {}", ctx()),
            }
            if path.starts_with('/') {
                assert!(r.path.starts_with('/'), "{}", ctx());
            }
            match &r.prefix {
                Some(p) => {
                    assert_eq!(p, &reg.name, "{}", ctx());
                    let rest = path
                        .strip_prefix("/v2/")
                        .unwrap_or_else(|| panic!("prefix without /v2/: {}", ctx()));
                    let (seg, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                    assert!(reg.answers_to(&seg.to_ascii_lowercase()), "{}", ctx());
                    let want = if tail.is_empty() || tail == "/" {
                        "/v2/".to_owned()
                    } else {
                        format!("/v2{tail}")
                    };
                    assert_eq!(r.path, want, "{}", ctx());
                }
                None => assert_eq!(r.path, path, "{}", ctx()),
            }
            match &ns {
                Some(name) => {
                    let name = name
                        .as_deref()
                        .unwrap_or_else(|| panic!("routed with an invalid ns: {}", ctx()));
                    assert!(reg.answers_to(name), "ns {name:?}: {}", ctx());
                    assert_eq!(r.namespace.as_deref(), Some(reg.name.as_str()), "{}", ctx());
                }
                None => assert_eq!(r.namespace, None, "{}", ctx()),
            }
        }
        RouteResult::UnknownHost => assert!(!known, "{}", ctx()),
        RouteResult::Error(e, echo) => {
            assert!(known, "{}", ctx());
            assert!(matches!(e.status.as_u16(), 400 | 404), "{}", ctx());
            if let Some(n) = echo {
                assert!(c.registry_by_name(n).is_some(), "{}", ctx());
            }
        }
    }
    // A served ns never leads to UnknownHost on a known host, and an unusable one always errs.
    if known && matches!(ns, Some(None)) {
        assert!(matches!(result, RouteResult::Error(..)), "{}", ctx());
    }
    if known
        && let Some(Some(name)) = &ns
        && c.registry_by_name(name).is_none()
    {
        assert!(matches!(result, RouteResult::Error(..)), "{}", ctx());
    }

    if let Some(h) = host {
        let upper = h.to_ascii_uppercase();
        assert_eq!(
            route(c, Some(&upper), path, query),
            result,
            "upper-case {}",
            ctx()
        );
        let padded = format!(" {h}\t");
        assert_eq!(
            route(c, Some(&padded), path, query),
            result,
            "padded {}",
            ctx()
        );
    }
}
