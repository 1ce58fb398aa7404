//! Oracle for the config fuzz target (SECURITY.md §2.18, COMPAT.md §1.1, §3): `config::load` on
//! arbitrary TOML-ish text and a few environment values.

use std::collections::BTreeMap;

use dockerproxy_core::config::{Config, Origin, Scheme, load};
use dockerproxy_core::route::{RouteResult, is_valid_host, route};

/// A secret only the environment holds (`password_env = "FUZZ_SECRET"`); it must not appear in
/// any error, warning or `Debug` output.
pub const ENV_SECRET: &str = "hunter2-env-secret";

/// Whether every origin must round-trip through `Origin::parse` exactly. `Origin::parse` used
/// to strip all trailing dots after URL parsing, so `http://254.0.0..` (a domain to the URL
/// parser) was stored as host `254.0.0`, which re-parses as the IPv4 address 254.0.0.0,
/// `http://1v8.08..` as `1v8.08`, which no longer parses at all, and a host of dots only
/// (`http:/%2E`, `https://.`) as an empty host. It now refuses every empty label but one
/// trailing dot (repros in fuzz/corpus/config/`origin_*`). On since the fix; off, it skips
/// empty hosts and hosts whose last label starts with a digit.
const ORIGIN_ROUND_TRIP_STRICT: bool = true;

/// The built-in route host labels and their registries.
const BUILTIN: [(&str, &str); 9] = [
    ("docker", "docker.io"),
    ("quay", "quay.io"),
    ("gcr", "gcr.io"),
    ("k8s-gcr", "k8s.gcr.io"),
    ("k8s", "registry.k8s.io"),
    ("ghcr", "ghcr.io"),
    ("cloudsmith", "docker.cloudsmith.io"),
    ("ecr", "public.ecr.aws"),
    ("docker-staging", "docker.io"),
];

/// Splits the input: `KEY=VALUE` lines up to a `---` line are the environment (default:
/// `CUSTOM_DOMAIN=example.com`), the rest is the TOML text. `FUZZ_SECRET` is always set.
fn split_input(text: &str) -> (BTreeMap<String, String>, &str) {
    let mut env = BTreeMap::new();
    let toml = match text.split_once("\n---\n") {
        Some((head, toml)) => {
            for line in head.lines() {
                if let Some((k, v)) = line.split_once('=') {
                    env.insert(k.to_owned(), v.to_owned());
                }
            }
            toml
        }
        None => {
            env.insert("CUSTOM_DOMAIN".to_owned(), "example.com".to_owned());
            text
        }
    };
    env.insert("FUZZ_SECRET".to_owned(), ENV_SECRET.to_owned());
    (env, toml)
}

/// Never panics. An accepted configuration has the nine built-in route hosts on its domain (and
/// any others valid, unique, and disjoint from the mirror hosts), each routing to its registry;
/// registry names and aliases answer for one registry only; every origin is http(s), round-trips
/// through `Origin::parse`, and is plain http only on a development registry (or the debug
/// fallback); credentials have a non-empty username, secret and realm allowlist; address
/// exceptions are one host and port of a configured registry. Loading is deterministic, and the
/// environment-only secret never shows in an error, warning or `Debug` output.
pub fn check_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (env, toml) = split_input(&text);
    let secret_elsewhere = text.to_ascii_lowercase().contains(ENV_SECRET);
    let first = load(&env, Some(toml));
    let second = load(&env, Some(toml));
    let (config, warnings) = match (first, second) {
        (Err(a), Err(b)) => {
            assert_eq!(a, b, "not deterministic");
            assert!(!a.key.is_empty() || !a.message.is_empty());
            if !secret_elsewhere {
                assert!(!format!("{a:?} {a}").contains(ENV_SECRET), "{a:?}");
            }
            return;
        }
        (Ok((a, wa)), Ok((b, wb))) => {
            assert_eq!(format!("{a:?}"), format!("{b:?}"), "not deterministic");
            assert_eq!(wa, wb);
            (a, wa)
        }
        (a, b) => panic!("not deterministic: {a:?} vs {b:?}"),
    };
    if !secret_elsewhere {
        let shown = format!("{config:?} {warnings:?}");
        assert!(!shown.contains(ENV_SECRET), "secret in output");
    }
    check_accepted(&config);
}

fn check_accepted(c: &Config) {
    let n = c.registries.len();
    assert!(is_valid_host(&c.custom_domain), "{:?}", c.custom_domain);
    assert!(c.hosts.len() >= 9, "{} route hosts", c.hosts.len());
    for (label, name) in BUILTIN {
        let host = format!("{label}.{}", c.custom_domain);
        let id = *c
            .hosts
            .get(&host)
            .unwrap_or_else(|| panic!("built-in host {host} missing"));
        assert_eq!(c.registries[id].name, name, "{host}");
    }
    for (host, id) in &c.hosts {
        assert!(*id < n, "{host} -> {id}");
        assert!(is_valid_host(host), "{host:?}");
        assert!(
            !c.mirror_hosts.contains(host),
            "{host} is also a mirror host"
        );
        match route(c, Some(host), "/v2/", None) {
            RouteResult::Routed(r) => assert_eq!(r.registry, *id, "{host}"),
            other => panic!("{host}: {other:?}"),
        }
    }
    for (i, m) in c.mirror_hosts.iter().enumerate() {
        assert!(is_valid_host(m), "{m:?}");
        assert!(!c.mirror_hosts[..i].contains(m), "duplicate mirror {m}");
    }
    for (i, r) in c.registries.iter().enumerate() {
        if !ORIGIN_ROUND_TRIP_STRICT && r.origin.host.is_empty() {
            continue;
        }
        assert!(!r.name.is_empty());
        // The debug fallback may shadow a name on purpose (`registry-1.docker.io`).
        if c.debug_fallback != Some(i) {
            for name in core::iter::once(&r.name).chain(&r.aliases) {
                assert_eq!(c.registry_by_name(name), Some(i), "{name} answers twice");
            }
        }
        let url = r.origin.to_url_string();
        assert!(
            url.starts_with("https://") || url.starts_with("http://"),
            "{url}"
        );
        let last_label_numeric = !r.origin.host.starts_with('[')
            && r.origin
                .host
                .rsplit('.')
                .next()
                .is_some_and(|l| l.starts_with(|ch: char| ch.is_ascii_digit()));
        if ORIGIN_ROUND_TRIP_STRICT || !last_label_numeric {
            assert_eq!(Origin::parse(&url).as_ref(), Ok(&r.origin), "{url}");
        }
        assert!(!r.origin.host.is_empty(), "{url}");
        if r.origin.scheme == Scheme::Http {
            assert!(
                r.development || c.debug_fallback == Some(i),
                "http upstream {url} without development"
            );
        }
        for realm in &r.realm_allowlist {
            assert!(
                realm.scheme == Scheme::Https || r.development,
                "http realm {realm:?} for {}",
                r.name
            );
        }
        if let Some(cr) = &r.credentials {
            assert!(!cr.username.is_empty() && !cr.secret.is_empty());
            assert!(
                !r.realm_allowlist.is_empty(),
                "credentials without a realm allowlist: {}",
                r.name
            );
        }
    }
    if let Some(id) = c.debug_fallback {
        assert!(id < n);
        assert!(c.debug, "debug fallback without DEBUG");
    }
    for ex in &c.address_exceptions {
        assert!(ex.registry < n);
        assert!(ex.port != 0);
        assert!(is_valid_host(&ex.host), "{:?}", ex.host);
    }
}
