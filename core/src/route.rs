//! Routing: `Host` / `?ns=` / path prefix → registry (COMPAT.md §1).
//!
//! Decides only from the static table in [`Config`]; no request field can name an upstream
//! outside it. Forwarded-host headers are considered only when the caller says the peer is
//! trusted: this module gets the effective host value and never looks at headers itself.
//! Host-independent endpoints (`/health`, `/metrics`, ...) are the caller's business too.
//!
//! ```text
//! host ──normalize──► route host? ── mirror host? ── debug fallback? ── else UnknownHost
//!                          │              │                │
//!                          └──────────────┴────────────────┴──► prefix (/v2/<R>/…) ──► ns ──► Routed
//! ```

use std::net::{Ipv4Addr, Ipv6Addr};

use bytes::Bytes;
use http::StatusCode;

use crate::config::{Config, RegistryId};
use crate::oci_error::{ErrorCode, OciError};

/// A `Host` value split into host and port (COMPAT.md §1.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    /// Lower-case host without trailing dot; IPv6 literals keep their brackets.
    pub host: String,
    /// The port, if one was given.
    pub port: Option<u16>,
}

/// Normalises a `Host` header value. `None` for a missing, empty or unusable value.
///
/// Trims and lower-cases; `[v6]` then an optional `:port`; otherwise exactly one `:` splits host
/// and port, and two or more colons leave the whole value as the host (it matches nothing).
/// One trailing `.` is removed. IPv6 literals are put in canonical form. Unusable: characters
/// outside visible ASCII, an unclosed or invalid `[...]`, a port that is not 1-65535 in digits,
/// a host with an empty label other than the one trailing dot (`a..`, `.a`, `a..b`), so the
/// result normalises to itself. An empty port (`host:`) counts as no port.
pub fn normalize_host(raw: &str) -> Option<HostPort> {
    let s = raw.trim().to_ascii_lowercase();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    if let Some(after) = s.strip_prefix('[') {
        let close = after.find(']')?;
        let addr: Ipv6Addr = after[..close].parse().ok()?;
        let port = parse_port(after[close + 1..].strip_prefix(':'), &after[close + 1..])?;
        return Some(HostPort {
            host: format!("[{addr}]"),
            port,
        });
    }
    let (host, port) = match s.matches(':').count() {
        0 => (s.as_str(), None),
        1 => {
            let (h, p) = s.split_once(':')?;
            (h, parse_port(Some(p), p)?)
        }
        _ => (s.as_str(), None),
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || has_empty_label(host) {
        return None;
    }
    Some(HostPort {
        host: host.to_owned(),
        port,
    })
}

/// True when a dot-separated name has an empty label: a leading or trailing dot, or two dots in
/// a row. Callers strip the one permitted trailing dot first.
pub(crate) fn has_empty_label(host: &str) -> bool {
    host.starts_with('.') || host.ends_with('.') || host.contains("..")
}

/// `Some(None)` for no port, `Some(Some(p))` for a valid one, `None` when unusable.
/// `after_colon` is the text after a `:` if there was one; `rest` the whole remainder.
fn parse_port(after_colon: Option<&str>, rest: &str) -> Option<Option<u16>> {
    match after_colon {
        None if rest.is_empty() => Some(None),
        None => None,
        Some("") => Some(None),
        Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => match p.parse::<u16>() {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(Some(n)),
        },
        Some(_) => None,
    }
}

/// True when `host` is a lower-case DNS name (letters, digits, `-`; labels of 1-63 characters
/// not starting or ending with `-`; at most 253 characters), an IPv4 address, or a bracketed
/// IPv6 address. Wildcards, underscores and ports are refused.
pub fn is_valid_host(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().is_ok();
    }
    if host.parse::<Ipv4Addr>().is_ok() {
        return true;
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// How a route host matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostKind {
    /// One of the route hosts (bound to one registry).
    Route,
    /// A `mirror_hosts` entry (any registry by `ns` or prefix, Docker Hub by default).
    Mirror,
    /// The debug fallback (`TARGET_UPSTREAM`).
    DebugFallback,
}

/// A successfully routed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routed {
    /// The chosen registry.
    pub registry: RegistryId,
    /// How the host matched.
    pub host_kind: HostKind,
    /// The public host name for realms and `Location`s (from the table, never request text,
    /// except in debug fallback).
    pub public_host: String,
    /// The port in the matched host value, if any.
    pub port: Option<u16>,
    /// The accepted `ns` (canonical registry name) to echo as `OCI-Namespace`.
    pub namespace: Option<String>,
    /// The path prefix registry segment that was removed (`ghcr.io`), to put back into
    /// `Location`s.
    pub prefix: Option<String>,
    /// The path to forward (prefix removed), starting with `/`.
    pub path: String,
    /// True when `ns` or a prefix chose the registry on a mirror host: the realm gets `?ns=`.
    pub realm_ns: bool,
}

/// The result of routing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteResult {
    /// A route was found.
    Routed(Routed),
    /// Unknown host: answer with [`unknown_host_body`].
    UnknownHost,
    /// A routing error (bad `ns`, prefix/host disagreement), with the `OCI-Namespace` to echo.
    Error(OciError, Option<String>),
}

/// The registry a host is bound to, or `None` for a mirror host.
struct HostMatch {
    kind: HostKind,
    own: Option<RegistryId>,
    public_host: String,
}

fn match_host(config: &Config, host: &str) -> Option<HostMatch> {
    if let Some((name, id)) = config.hosts.get_key_value(host) {
        return Some(HostMatch {
            kind: HostKind::Route,
            own: Some(*id),
            public_host: name.clone(),
        });
    }
    if let Some(name) = config.mirror_hosts.iter().find(|m| *m == host) {
        return Some(HostMatch {
            kind: HostKind::Mirror,
            own: None,
            public_host: name.clone(),
        });
    }
    // The fallback host ends up in realms, so it must be a plain DNS name or IP literal.
    match config.debug_fallback {
        Some(id) if id < config.registries.len() && is_valid_host(host) => Some(HostMatch {
            kind: HostKind::DebugFallback,
            own: Some(id),
            public_host: host.to_owned(),
        }),
        _ => None,
    }
}

/// The `ns` query parameter: absent, or a registry name, or an error to answer.
enum Ns {
    Absent,
    /// A served registry, and the normalised name that was asked for.
    Served(RegistryId, String),
    Invalid,
    NotServed,
}

fn read_ns(config: &Config, query: Option<&str>) -> Ns {
    let Some(q) = query else { return Ns::Absent };
    let Some((_, value)) = form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "ns") else {
        return Ns::Absent;
    };
    let Some(hp) = normalize_host(&value) else {
        return Ns::Invalid;
    };
    if !is_valid_host(&hp.host) {
        return Ns::Invalid;
    }
    let name = match hp.port {
        None | Some(443) => hp.host,
        Some(p) => format!("{}:{p}", hp.host),
    };
    match config.registry_by_name(&name) {
        Some(id) => Ns::Served(id, name),
        None => Ns::NotServed,
    }
}

/// Splits `/v2/<R>[/<rest>]` when `<R>` is a registry name or alias: (segment, forwarded path).
fn split_prefix(path: &str) -> Option<(&str, String)> {
    let rest = path.strip_prefix("/v2/")?;
    let (seg, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if seg.is_empty() {
        return None;
    }
    let forwarded = if tail.is_empty() || tail == "/" {
        "/v2/".to_owned()
    } else {
        format!("/v2{tail}")
    };
    Some((seg, forwarded))
}

fn name_invalid(message: &str) -> OciError {
    OciError::new(StatusCode::BAD_REQUEST, ErrorCode::NameInvalid, message)
}

/// Routes a request. `host` is the effective host value (the caller has already substituted a
/// trusted `X-Forwarded-Host`), `path` the raw path, `query` the raw query without `?`.
pub fn route(config: &Config, host: Option<&str>, path: &str, query: Option<&str>) -> RouteResult {
    let Some(hp) = host.and_then(normalize_host) else {
        return RouteResult::UnknownHost;
    };
    let Some(m) = match_host(config, &hp.host) else {
        return RouteResult::UnknownHost;
    };

    // Step 3: path prefix. On a bound host its own names count even when shadowed by another
    // registry's alias (a debug fallback named `registry-1.docker.io`).
    let own = m
        .own
        .and_then(|id| config.registries.get(id).map(|r| (id, r)));
    let prefix = split_prefix(path).and_then(|(seg, fwd)| {
        let seg = seg.to_ascii_lowercase();
        match own {
            Some((id, r)) if r.answers_to(&seg) => Some((id, fwd)),
            _ => config.registry_by_name(&seg).map(|id| (id, fwd)),
        }
    });

    // Step 4: ns.
    let ns = match read_ns(config, query) {
        Ns::Absent => None,
        Ns::Invalid => return RouteResult::Error(name_invalid("invalid ns parameter"), None),
        Ns::NotServed => {
            let e = OciError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NameUnknown,
                "registry not served by this proxy",
            );
            return RouteResult::Error(e, None);
        }
        Ns::Served(id, name) => match own {
            Some((own_id, r)) if r.answers_to(&name) => Some(own_id),
            _ => Some(id),
        },
    };
    let echo = ns
        .and_then(|id| config.registries.get(id))
        .map(|r| r.name.clone());

    let registry = match own {
        Some((own_id, _)) => {
            if prefix.as_ref().is_some_and(|(id, _)| *id != own_id) {
                return RouteResult::Error(
                    name_invalid("path prefix names another registry than this host's"),
                    echo,
                );
            }
            if ns.is_some_and(|id| id != own_id) {
                return RouteResult::Error(
                    name_invalid("ns names another registry than this host's"),
                    echo,
                );
            }
            own_id
        }
        None => match (&prefix, ns) {
            (Some((p, _)), Some(n)) if *p != n => {
                return RouteResult::Error(
                    name_invalid("path prefix and ns name different registries"),
                    echo,
                );
            }
            (Some((p, _)), _) => *p,
            (None, Some(n)) => n,
            (None, None) => match config.registry_by_name("docker.io") {
                Some(id) => id,
                None => return RouteResult::UnknownHost,
            },
        },
    };

    let realm_ns = m.kind == HostKind::Mirror && (prefix.is_some() || ns.is_some());
    let prefix_name = prefix
        .as_ref()
        .and_then(|_| config.registries.get(registry))
        .map(|r| r.name.clone());
    let path = prefix.map_or_else(|| path.to_owned(), |(_, fwd)| fwd);
    RouteResult::Routed(Routed {
        registry,
        host_kind: m.kind,
        public_host: m.public_host,
        port: hp.port,
        namespace: echo,
        prefix: prefix_name,
        path,
        realm_ns,
    })
}

#[derive(serde::Serialize)]
struct Listing<'a> {
    message: &'static str,
    routes: std::collections::BTreeMap<&'a str, String>,
}

/// The 404 body for unknown hosts (COMPAT.md §1.3): the sorted route listing, or with
/// `hide_routes` an OCI `NAME_UNKNOWN` error. One line plus `\n`.
pub fn unknown_host_body(config: &Config) -> Bytes {
    if config.hide_routes {
        return OciError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NameUnknown,
            "unknown host",
        )
        .body();
    }
    let mut routes = std::collections::BTreeMap::new();
    for (host, id) in &config.hosts {
        if let Some(r) = config.registries.get(*id) {
            routes.insert(host.as_str(), r.origin.to_url_string());
        }
    }
    if let Some(hub) = config
        .registry_by_name("docker.io")
        .and_then(|id| config.registries.get(id))
    {
        for m in &config.mirror_hosts {
            routes.insert(m.as_str(), hub.origin.to_url_string());
        }
    }
    let listing = Listing {
        message: "Available registry routes",
        routes,
    };
    // Serialising a struct of strings cannot fail; an empty object is the harmless fallback.
    let mut s = serde_json::to_string(&listing).unwrap_or_else(|_| "{}".to_owned());
    s.push('\n');
    Bytes::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(host: &str, port: Option<u16>) -> Option<HostPort> {
        Some(HostPort {
            host: host.to_owned(),
            port,
        })
    }

    #[test]
    fn normalize() {
        assert_eq!(
            normalize_host("docker.example.com:8443"),
            hp("docker.example.com", Some(8443))
        );
        assert_eq!(
            normalize_host(" DOCKER.Example.COM. "),
            hp("docker.example.com", None)
        );
        assert_eq!(
            normalize_host("docker.example.com.:80"),
            hp("docker.example.com", Some(80))
        );
        assert_eq!(
            normalize_host("[2001:DB8::1]:5000"),
            hp("[2001:db8::1]", Some(5000))
        );
        assert_eq!(normalize_host("[2001:db8:0::1]"), hp("[2001:db8::1]", None));
        assert_eq!(normalize_host("2001:db8::1"), hp("2001:db8::1", None));
        assert_eq!(normalize_host("host:"), hp("host", None));
        for bad in [
            "",
            "  ",
            ".",
            ":80",
            "host:0",
            "host:65536",
            "host:8o",
            "host:+80",
            "[::1",
            "[::1]x",
            "[x]",
            "a b",
            "h\u{e9}",
        ] {
            assert_eq!(normalize_host(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn valid_hosts() {
        for ok in [
            "example.com",
            "a",
            "127.0.0.1",
            "[::1]",
            "k8s-gcr.example.com",
            "x1.y2",
        ] {
            assert!(is_valid_host(ok), "{ok}");
        }
        for bad in [
            "",
            "*.example.com",
            "a..b",
            "-a.com",
            "a-.com",
            "a_b.com",
            "A.com",
            "a.com:80",
            "[x]",
            "::1",
        ] {
            assert!(!is_valid_host(bad), "{bad}");
        }
    }

    /// fuzz/crashes/route/normalize_host_not_idempotent_*: `a..` used to give `a.`, which
    /// normalised to `a`.
    #[test]
    fn normalize_host_refuses_empty_labels() {
        for bad in [
            "a..", "mi10..", "a..:80", "a..b", ".a", ".a.", "..", "...", "a...",
        ] {
            assert_eq!(normalize_host(bad), None, "{bad:?}");
        }
        assert_eq!(normalize_host("a."), hp("a", None));
        assert_eq!(normalize_host("a.b.:443"), hp("a.b", Some(443)));
    }

    /// Normalising the rendering of a result gives the result back (the route fuzz oracle).
    #[test]
    fn normalize_host_is_idempotent() {
        for raw in [
            "a",
            "a.",
            "a..",
            "A.B.",
            "a.b..:80",
            "[::1]:80",
            "x:y:z",
            "mi10..\n\u{1}",
            "h.:",
        ] {
            let Some(first) = normalize_host(raw) else {
                continue;
            };
            let rendered = match first.port {
                Some(p) => format!("{}:{p}", first.host),
                None => first.host.clone(),
            };
            assert_eq!(normalize_host(&rendered), Some(first), "{raw:?}");
        }
    }

    #[test]
    fn prefix_split() {
        assert_eq!(
            split_prefix("/v2/ghcr.io"),
            Some(("ghcr.io", "/v2/".to_owned()))
        );
        assert_eq!(
            split_prefix("/v2/ghcr.io/"),
            Some(("ghcr.io", "/v2/".to_owned()))
        );
        assert_eq!(
            split_prefix("/v2/ghcr.io/a/b"),
            Some(("ghcr.io", "/v2/a/b".to_owned()))
        );
        assert_eq!(split_prefix("/v2/"), None);
        assert_eq!(split_prefix("/v2"), None);
        assert_eq!(split_prefix("/x/ghcr.io"), None);
    }
}
