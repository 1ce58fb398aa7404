//! What the component checks before it asks the host to fetch a URL, and how requests and
//! responses are shaped for `wasi:http`.
//!
//! The host resolves and dials, so the component can never apply the post-DNS address check of
//! SECURITY.md §2.9: a name that resolves to an internal address is the host's to refuse (see the
//! README: restrict outbound hosts in the host). What the component can check, it checks: a URL
//! whose host is an IP literal in a denied range, or `localhost`, is refused unless it is one of the
//! configured exact `address_exceptions`. Which hosts are contacted at all (upstream, realm and
//! redirect allowlists) is decided by the core before an action reaches here.
//!
//! Header helpers: `wasi:http` hosts refuse hop-by-hop and `Host` headers in `fields`
//! ([`is_forbidden_header`]); the host sets `Host` from the authority and frames bodies itself.

use std::net::IpAddr;
use std::time::Duration;

use dockerproxy_core::Config;
use dockerproxy_core::exchange::UpstreamError;
use dockerproxy_core::redirect::is_denied_address;
use http::HeaderName;
use url::{Host, Url};

/// Decides whether the component may ask the host to fetch `url`.
///
/// # Errors
/// [`UpstreamError::Denied`] for a denied IP literal or `localhost` that is not an exact
/// configured exception; [`UpstreamError::Unreachable`] for a URL without host or port.
pub fn check_url(config: &Config, url: &Url) -> Result<(), UpstreamError> {
    let host = url.host().ok_or(UpstreamError::Unreachable)?;
    let port = url
        .port_or_known_default()
        .ok_or(UpstreamError::Unreachable)?;
    let denied = match &host {
        Host::Ipv4(v4) => is_denied_address(IpAddr::V4(*v4)),
        Host::Ipv6(v6) => is_denied_address(IpAddr::V6(*v6)),
        Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
    };
    if !denied || is_exception(config, &host, port) {
        Ok(())
    } else {
        Err(UpstreamError::Denied)
    }
}

/// True when `host:port` is one of the configured exact exceptions.
fn is_exception(config: &Config, host: &Host<&str>, port: u16) -> bool {
    let wanted = match host {
        Host::Domain(d) => d.trim_end_matches('.').to_ascii_lowercase(),
        Host::Ipv4(v4) => v4.to_string(),
        Host::Ipv6(v6) => v6.to_string(),
    };
    config.address_exceptions.iter().any(|e| {
        let h = e.host.trim_start_matches('[').trim_end_matches(']');
        e.port == port && h.eq_ignore_ascii_case(&wanted)
    })
}

/// The headers a `wasi:http` host refuses in `fields` (wasmtime's default list): hop-by-hop,
/// proxy and `Host`. The host frames bodies and sets `Host` from the authority.
pub fn is_forbidden_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "http2-settings"
    )
}

/// The `authority` (`host[:port]`) of `url` as `wasi:http` wants it: the port only when it is not
/// the scheme's default.
pub fn authority(url: &Url) -> Option<String> {
    let host = url.host_str()?;
    Some(match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    })
}

/// The path and query of `url` (`/v2/...?...`).
pub fn path_with_query(url: &Url) -> String {
    match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    }
}

/// A duration in the nanoseconds of `wasi:clocks`, saturating.
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> Config {
        let env: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
        dockerproxy_core::config::load(&env, Some(toml)).unwrap().0
    }

    const DEV: &str = "mirror_hosts = [\"127.0.0.1\"]\n[routes.\"docker.io\"]\nupstream = \"http://127.0.0.1:5000\"\ndevelopment = true\naddress_exceptions = [\"127.0.0.1:5000\"]\n";

    #[test]
    fn ip_literals_in_denied_ranges_are_refused_unless_excepted() {
        let c = config(DEV);
        let ok = |u: &str| check_url(&c, &Url::parse(u).unwrap());
        assert_eq!(ok("http://127.0.0.1:5000/v2/"), Ok(()));
        assert_eq!(ok("http://127.0.0.1:5001/v2/"), Err(UpstreamError::Denied));
        assert_eq!(ok("http://10.1.2.3/x"), Err(UpstreamError::Denied));
        assert_eq!(
            ok("http://169.254.169.254/latest"),
            Err(UpstreamError::Denied)
        );
        assert_eq!(ok("http://[::1]:5000/"), Err(UpstreamError::Denied));
        assert_eq!(ok("http://[::ffff:10.0.0.1]/"), Err(UpstreamError::Denied));
        assert_eq!(ok("http://localhost:5000/"), Err(UpstreamError::Denied));
        assert_eq!(ok("http://a.localhost./"), Err(UpstreamError::Denied));
        assert_eq!(ok("https://registry-1.docker.io/v2/"), Ok(()));
        assert_eq!(ok("https://8.8.8.8/"), Ok(()));
    }

    #[test]
    fn forbidden_headers_are_the_hop_by_hop_ones() {
        for h in [
            "host",
            "connection",
            "transfer-encoding",
            "upgrade",
            "keep-alive",
        ] {
            assert!(is_forbidden_header(&HeaderName::from_static(h)), "{h}");
        }
        for h in ["authorization", "content-length", "accept", "location"] {
            assert!(!is_forbidden_header(&HeaderName::from_static(h)), "{h}");
        }
    }

    #[test]
    fn authority_and_path_keep_non_default_ports_and_queries() {
        let u = Url::parse("http://127.0.0.1:5000/token?scope=a%3Ab&service=x").unwrap();
        assert_eq!(authority(&u).as_deref(), Some("127.0.0.1:5000"));
        assert_eq!(path_with_query(&u), "/token?scope=a%3Ab&service=x");
        let u = Url::parse("https://quay.io:443/v2/").unwrap();
        assert_eq!(authority(&u).as_deref(), Some("quay.io"));
        assert_eq!(path_with_query(&u), "/v2/");
        let u = Url::parse("http://[::1]:8080/").unwrap();
        assert_eq!(authority(&u).as_deref(), Some("[::1]:8080"));
    }

    #[test]
    fn nanos_saturate() {
        assert_eq!(nanos(Duration::from_millis(5)), 5_000_000);
        assert_eq!(nanos(Duration::MAX), u64::MAX);
    }
}
