//! Redirect policy (COMPAT.md §6; SECURITY.md §2.6, §2.8, §2.9): follow or pass, the hop limit,
//! which targets are refused, the realm allowlist, and the outbound address deny table.
//!
//! ```text
//!   3xx + Location ──► resolve against the current URL (RFC 3986)
//!                  ──► refuse: unparsable, userinfo, bad scheme / downgrade, hop limit
//!                  ──► blocked host?            ── yes ──► Follow
//!                  ──► FOLLOW_ALL_REDIRECTS set? ── yes ──► Follow (true) / Pass (false)
//!                  ──► the route's mode                  ──► Follow / Pass
//! ```
//!
//! The functions here decide; they resolve no name and open no connection. Which headers a hop
//! carries is in [`crate::headers`]; the address check runs in the wrapper's connector on the
//! address actually dialled, using [`is_denied_address`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::Url;

use crate::config::{Config, Origin, RedirectMode, Registry, Scheme};

/// What to do with an upstream 3xx.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedirectDecision {
    /// Follow server-side to this absolute URL. `same_origin` = the target's origin equals the
    /// registry's, so the original request headers (`Authorization` included) are kept.
    Follow {
        /// The resolved target.
        target: Url,
        /// Target origin equals the registry origin.
        same_origin: bool,
    },
    /// Relay to the client with this absolute `Location`.
    Pass {
        /// The absolute `Location` to send.
        location: String,
    },
    /// 502: too many hops, bad scheme, downgrade, userinfo, unparsable.
    Refuse(&'static str),
}

/// Statuses that are redirects to follow (301, 302, 303, 307, 308).
pub fn is_redirect(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308)
}

/// Decides an upstream 3xx. `current` is the URL that received it, `hops_done` how many hops were
/// already followed for this request.
///
/// The target is `location` resolved against `current`. It is refused when it cannot be parsed,
/// carries userinfo, is not `https` (plain `http`, including an https → http downgrade, only for
/// a development registry), or when `hops_done` already reached `config.max_redirects`. A
/// `Pass` location is the resolved absolute URL; moving a location on the registry's own origin
/// to the public base (COMPAT.md §7.2) is the caller's job.
pub fn decide(
    config: &Config,
    registry: &Registry,
    current: &Url,
    location: &str,
    hops_done: u8,
) -> RedirectDecision {
    if hops_done >= config.max_redirects {
        return RedirectDecision::Refuse("too many redirects");
    }
    let location = location.trim();
    if location.is_empty() {
        return RedirectDecision::Refuse("empty redirect Location");
    }
    let Ok(mut target) = current.join(location) else {
        return RedirectDecision::Refuse("unparsable redirect Location");
    };
    if has_userinfo(&target) {
        return RedirectDecision::Refuse("userinfo in redirect Location");
    }
    match target.scheme() {
        "https" => {}
        "http" if registry.development => {}
        "http" if current.scheme() == "https" => {
            return RedirectDecision::Refuse("https to http redirect downgrade");
        }
        _ => return RedirectDecision::Refuse("redirect Location is not https"),
    }
    let Some(host) = target.host_str() else {
        return RedirectDecision::Refuse("redirect Location has no host");
    };
    let follow = if is_blocked_host(config, host) {
        true
    } else {
        match config.follow_all_redirects {
            Some(all) => all,
            None => registry.redirects == RedirectMode::Follow,
        }
    };
    if follow {
        // A fragment is never sent on the wire.
        target.set_fragment(None);
        let same_origin = url_origin(&target).is_some_and(|o| o == registry.origin);
        RedirectDecision::Follow {
            target,
            same_origin,
        }
    } else {
        RedirectDecision::Pass {
            location: target.into(),
        }
    }
}

/// True when `host` contains an entry of the blocked list (always followed). The host is
/// compared case-insensitively and without a port; empty entries match nothing.
pub fn is_blocked_host(config: &Config, host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    config.blocked_hosts.iter().any(|entry| {
        let entry = entry.trim().to_ascii_lowercase();
        !entry.is_empty() && host.contains(&entry)
    })
}

/// True when a token realm may receive a token request for `registry` (SECURITY.md §2.8):
/// https (http only for a development registry), no userinfo, on the allowlist if one is set,
/// otherwise not an IP literal and not `localhost`.
///
/// A non-empty `realm_allowlist` is explicit configuration and decides alone: the realm's
/// origin (scheme, host, port) must equal one entry exactly, so a test can list an
/// `http://127.0.0.1:PORT` token server. Without an allowlist the realm must be `https` (or
/// `http` on a development registry), and its host a DNS name other than `localhost` and
/// `*.localhost`. Userinfo is refused in both cases.
pub fn realm_allowed(registry: &Registry, realm: &Url) -> bool {
    if has_userinfo(realm) {
        return false;
    }
    let Some(origin) = url_origin(realm) else {
        return false;
    };
    if !registry.realm_allowlist.is_empty() {
        return registry.realm_allowlist.contains(&origin);
    }
    let scheme_ok = match origin.scheme {
        Scheme::Https => true,
        Scheme::Http => registry.development,
    };
    let host_ok = match realm.host() {
        Some(url::Host::Domain(_)) => {
            // `origin.host` is lower-case without a trailing dot; a domain never parses as an IP
            // here because the URL parser turns every IPv4 spelling of a special scheme into
            // `Host::Ipv4`.
            origin.host != "localhost"
                && !origin.host.ends_with(".localhost")
                && !origin.host.is_empty()
        }
        _ => false,
    };
    scheme_ok && host_ok
}

/// The origin of an `http`/`https` URL: scheme, lower-case host without a trailing dot (IPv6 in
/// brackets), explicit or default port. `None` for other schemes or a URL without a host.
pub fn url_origin(url: &Url) -> Option<Origin> {
    let scheme = match url.scheme() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        _ => return None,
    };
    let host = match url.host()? {
        url::Host::Domain(d) => d.trim_end_matches('.').to_ascii_lowercase(),
        url::Host::Ipv4(a) => a.to_string(),
        url::Host::Ipv6(a) => format!("[{a}]"),
    };
    let port = url.port().unwrap_or(scheme.default_port());
    Some(Origin { scheme, host, port })
}

fn has_userinfo(url: &Url) -> bool {
    !url.username().is_empty() || url.password().is_some()
}

/// IPv4 networks denied as outbound destinations (SECURITY.md §2.9), as (network, prefix length).
const DENIED_V4: &[([u8; 4], u8)] = &[
    ([0, 0, 0, 0], 8),       // "this network"
    ([127, 0, 0, 0], 8),     // loopback
    ([10, 0, 0, 0], 8),      // RFC 1918
    ([172, 16, 0, 0], 12),   // RFC 1918
    ([192, 168, 0, 0], 16),  // RFC 1918
    ([100, 64, 0, 0], 10),   // CGNAT (holds 100.100.100.200)
    ([169, 254, 0, 0], 16),  // link-local, cloud metadata
    ([192, 0, 0, 0], 24),    // IETF protocol assignments
    ([198, 18, 0, 0], 15),   // benchmarking
    ([192, 0, 2, 0], 24),    // TEST-NET-1
    ([198, 51, 100, 0], 24), // TEST-NET-2
    ([203, 0, 113, 0], 24),  // TEST-NET-3
    ([224, 0, 0, 0], 4),     // multicast
    ([240, 0, 0, 0], 4),     // reserved, holds 255.255.255.255
];

/// IPv6 networks denied outright, as (network, prefix length).
const DENIED_V6: &[(u128, u8)] = &[
    (0, 128),                     // ::
    (1, 128),                     // ::1
    (0xfe80_u128 << 112, 10),     // link-local
    (0xfc00_u128 << 112, 7),      // ULA (holds fd00:ec2::254)
    (0xff00_u128 << 112, 8),      // multicast
    (0x2001_0db8_u128 << 96, 32), // documentation
    (0x2002_u128 << 112, 16),     // 6to4
    (0x2001_0000_u128 << 96, 32), // Teredo
];

fn in_net(addr: u128, net: u128, prefix: u8, width: u32) -> bool {
    let prefix = u32::from(prefix).min(width);
    if prefix == 0 {
        return true;
    }
    let shift = width - prefix;
    (addr >> shift) == (net >> shift)
}

fn is_denied_v4(ip: Ipv4Addr) -> bool {
    let addr = u128::from(u32::from(ip));
    DENIED_V4
        .iter()
        .any(|(net, prefix)| in_net(addr, u128::from(u32::from_be_bytes(*net)), *prefix, 32))
}

/// The IPv4 addresses a NAT64 address inside 64:ff9b:1::/48 may embed. The operator picks the
/// prefix length (48, 56, 64 or 96; RFC 6052 layouts, bits 64–71 and the suffix zero), which the
/// address alone does not reveal, so every layout the address is consistent with is returned.
/// The /96 reading is always consistent.
fn nat64_local_candidates(o: [u8; 16]) -> Vec<Ipv4Addr> {
    let zero = |range: core::ops::Range<usize>| o[range].iter().all(|b| *b == 0);
    let mut out = vec![Ipv4Addr::new(o[12], o[13], o[14], o[15])];
    if o[8] == 0 && zero(13..16) {
        out.push(Ipv4Addr::new(o[9], o[10], o[11], o[12]));
    }
    if o[8] == 0 && zero(12..16) {
        out.push(Ipv4Addr::new(o[7], o[9], o[10], o[11]));
    }
    if o[8] == 0 && zero(11..16) {
        out.push(Ipv4Addr::new(o[6], o[7], o[9], o[10]));
    }
    out
}

fn is_denied_v6(ip: Ipv6Addr) -> bool {
    let addr = u128::from(ip);
    let o = ip.octets();
    let low_v4 = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    // IPv4-mapped ::ffff:0:0/96 and IPv4-compatible ::/96 (which holds :: and ::1): check as IPv4.
    if in_net(addr, 0xffff_u128 << 32, 96, 128) || in_net(addr, 0, 96, 128) {
        return is_denied_v4(low_v4);
    }
    // NAT64 well-known prefix: the last 32 bits.
    if in_net(addr, 0x0064_ff9b_u128 << 96, 96, 128) {
        return is_denied_v4(low_v4);
    }
    // NAT64 local-use prefix: the embedding depends on the operator's prefix length, so every
    // consistent reading is checked and any denied one denies the address (ambiguity fails
    // closed).
    if in_net(addr, 0x0064_ff9b_0001_u128 << 80, 48, 128) {
        return nat64_local_candidates(o).into_iter().any(is_denied_v4);
    }
    DENIED_V6
        .iter()
        .any(|(net, prefix)| in_net(addr, *net, *prefix, 128))
}

/// True when an outbound connection to `ip` is refused (SECURITY.md §2.9): the IPv4 private,
/// loopback, link-local, shared, documentation, benchmarking, multicast and reserved ranges; the
/// IPv6 unspecified, loopback, link-local, ULA, multicast and documentation ranges, 6to4 and
/// Teredo. IPv4-mapped, IPv4-compatible and NAT64 addresses are judged by their embedded IPv4.
/// Configured per-route exceptions are applied by the caller, not here.
pub fn is_denied_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_denied_v4(v4),
        IpAddr::V6(v6) => is_denied_v6(v6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_statuses() {
        for s in [301, 302, 303, 307, 308] {
            assert!(is_redirect(s), "{s}");
        }
        for s in [200, 300, 304, 305, 306, 309, 401] {
            assert!(!is_redirect(s), "{s}");
        }
    }

    /// (address, denied) for many encodings and both sides of every boundary.
    const ADDRESS_TABLE: &[(&str, bool)] = &[
        // IPv4 denied
        ("0.0.0.0", true),
        ("0.255.255.255", true),
        ("127.0.0.1", true),
        ("127.255.255.254", true),
        ("10.0.0.1", true),
        ("10.255.255.255", true),
        ("172.16.0.1", true),
        ("172.31.255.255", true),
        ("192.168.1.1", true),
        ("100.64.0.1", true),
        ("100.100.100.200", true),
        ("100.127.255.255", true),
        ("169.254.169.254", true),
        ("192.0.0.8", true),
        ("198.18.0.1", true),
        ("198.19.255.255", true),
        ("192.0.2.1", true),
        ("198.51.100.7", true),
        ("203.0.113.9", true),
        ("224.0.0.1", true),
        ("239.255.255.250", true),
        ("240.0.0.1", true),
        ("255.255.255.255", true),
        // IPv4 allowed, including the neighbours of denied ranges
        ("1.1.1.1", false),
        ("8.8.8.8", false),
        ("9.255.255.255", false),
        ("11.0.0.0", false),
        ("172.15.255.255", false),
        ("172.32.0.0", false),
        ("192.167.255.255", false),
        ("192.169.0.0", false),
        ("100.63.255.255", false),
        ("100.128.0.0", false),
        ("169.253.255.255", false),
        ("192.0.1.0", false),
        ("192.0.3.0", false),
        ("198.17.255.255", false),
        ("198.20.0.0", false),
        ("198.51.101.0", false),
        ("203.0.114.0", false),
        ("223.255.255.255", false),
        ("128.0.0.1", false),
        // IPv6 denied
        ("::", true),
        ("::1", true),
        ("fe80::1", true),
        ("febf:ffff::1", true),
        ("fc00::1", true),
        ("fd00:ec2::254", true),
        ("ff02::1", true),
        ("ff00::", true),
        ("2001:db8::1", true),
        ("2001:db8:ffff::1", true),
        ("2002:c000:0204::1", true),
        ("2002:0808:0808::1", true),
        ("2001::1", true),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", true),
        // IPv4-mapped and IPv4-compatible
        ("::ffff:127.0.0.1", true),
        ("::ffff:7f00:1", true),
        ("::ffff:169.254.169.254", true),
        ("::ffff:10.1.2.3", true),
        ("::ffff:8.8.8.8", false),
        ("::127.0.0.1", true),
        ("::7f00:1", true),
        ("::0.0.0.2", true),
        ("::8.8.8.8", false),
        // NAT64 well-known prefix
        ("64:ff9b::127.0.0.1", true),
        ("64:ff9b::a9fe:a9fe", true),
        ("64:ff9b::192.168.0.1", true),
        ("64:ff9b::8.8.8.8", false),
        // NAT64 local-use prefix, /96 and /48 layouts
        ("64:ff9b:1::7f00:1", true),
        ("64:ff9b:1:7f00:0:100::", true),
        ("64:ff9b:1:0:7f:0:100:0", true),
        ("64:ff9b:1:0:c0:a800:100:0", true),
        ("64:ff9b:1:0:8:808:800:0", false),
        ("64:ff9b:1::808:808", false),
        ("64:ff9b:1:abcd::808:808", false),
        ("64:ff9b:1:abcd::a00:1", true),
        // A /48-layout address also reads as 0.0.0.0 under /96: ambiguous, so denied.
        ("64:ff9b:1:808:8:800::", true),
        // IPv6 allowed
        ("2606:4700:4700::1111", false),
        ("2a00:1450:4001:80b::200e", false),
        ("fec0::1", false),
        ("fe7f:ffff::1", false),
        ("fbff::1", false),
        ("2001:db9::1", false),
        ("2001:1::1", false),
        ("2003::1", false),
        ("64:ff9c::1", false),
    ];

    #[test]
    fn address_deny_table() {
        for (text, denied) in ADDRESS_TABLE {
            let ip: IpAddr = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(is_denied_address(ip), *denied, "{text}");
        }
    }

    #[test]
    fn ipv4_spellings_in_urls_are_ip_literals() {
        // The URL parser normalises decimal, hex and short IPv4 forms; the connector then sees
        // the same address the policy judged.
        for raw in [
            "http://2130706433/",
            "http://0x7f.1/",
            "http://127.1/",
            "http://0177.0.0.1/",
        ] {
            let url = Url::parse(raw).unwrap();
            let Some(url::Host::Ipv4(a)) = url.host() else {
                panic!("{raw} is not an IPv4 host")
            };
            assert!(is_denied_address(IpAddr::V4(a)), "{raw}");
        }
    }

    #[test]
    fn origin_of_urls() {
        let o = url_origin(&Url::parse("https://Auth.Docker.IO./token?x=1").unwrap()).unwrap();
        assert_eq!(
            o,
            Origin {
                scheme: Scheme::Https,
                host: "auth.docker.io".into(),
                port: 443
            }
        );
        let o = url_origin(&Url::parse("http://[::1]:5000/").unwrap()).unwrap();
        assert_eq!(
            o,
            Origin {
                scheme: Scheme::Http,
                host: "[::1]".into(),
                port: 5000
            }
        );
        assert_eq!(url_origin(&Url::parse("ftp://x/").unwrap()), None);
    }
}
