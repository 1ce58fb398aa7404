//! Configuration: the route table built from `CUSTOM_DOMAIN` (COMPAT.md §1.1), the
//! go-docker-proxy environment variables (COMPAT.md §3.1) and the optional TOML file (§3.3).
//!
//! Parsed and validated once ("parse, don't validate"): everything else in the core takes a
//! `&Config` and trusts it. Environment values come in through [`EnvSource`], never from
//! `std::env`, so the same parser serves the server, the C ABI and the WASI component.

use core::time::Duration;
use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

/// Index of a registry in [`Config::registries`].
pub type RegistryId = usize;

/// `http` or `https`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

impl Scheme {
    /// `"http"` or `"https"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }

    /// 80 or 443.
    pub const fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }
}

/// An origin: scheme, lower-case host, port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    /// Scheme.
    pub scheme: Scheme,
    /// Lower-case host name or IP literal (IPv6 in brackets).
    pub host: String,
    /// Explicit port (the scheme's default when absent from the URL).
    pub port: u16,
}

impl Origin {
    /// Parses `scheme://host[:port]` (a trailing `/` is allowed; a path, query or userinfo is not).
    /// A domain may end in one dot, which is dropped; a host with any other empty label
    /// (`a..`, `.`, `a..b`) is refused (SECURITY.md §2.18).
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let u = url::Url::parse(s.trim())
            .map_err(|e| ConfigError::new("origin", format!("{s:?}: {e}")))?;
        let scheme = match u.scheme() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => {
                return Err(ConfigError::new(
                    "origin",
                    format!("{s:?}: scheme {other:?} is not http or https"),
                ));
            }
        };
        if !u.username().is_empty() || u.password().is_some() {
            return Err(ConfigError::new(
                "origin",
                format!("{s:?}: userinfo is not allowed"),
            ));
        }
        if u.path() != "/" || u.query().is_some() || u.fragment().is_some() {
            return Err(ConfigError::new(
                "origin",
                format!("{s:?}: must be an origin without path or query"),
            ));
        }
        let host = match u.host() {
            Some(url::Host::Domain(d)) => {
                // One trailing dot (the DNS root) is dropped; any other empty label is refused,
                // so the stored host means what the URL meant (`254.0.0..` would otherwise
                // become the IPv4 literal `254.0.0`, and `.` an empty host).
                let d = d.strip_suffix('.').unwrap_or(d);
                if d.is_empty() || crate::route::has_empty_label(d) {
                    return Err(ConfigError::new(
                        "origin",
                        format!(
                            "{s:?}: the host has an empty label (only one trailing dot is allowed)"
                        ),
                    ));
                }
                d.to_ascii_lowercase()
            }
            Some(url::Host::Ipv4(a)) => a.to_string(),
            Some(url::Host::Ipv6(a)) => format!("[{a}]"),
            None => return Err(ConfigError::new("origin", format!("{s:?}: no host"))),
        };
        let port = u.port().unwrap_or(scheme.default_port());
        Ok(Self { scheme, host, port })
    }

    /// `host` or `host:port` when the port is not the scheme's default.
    pub fn authority(&self) -> String {
        if self.port == self.scheme.default_port() {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// `scheme://authority`, no trailing slash.
    pub fn to_url_string(&self) -> String {
        format!("{}://{}", self.scheme.as_str(), self.authority())
    }
}

/// What kind of registry a route talks to. Behaviour follows the flavour, not the URL, so a test
/// can point a Docker-Hub-flavoured route at a local registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// Docker Hub: `library/` rules (COMPAT.md §5), blocked-host redirects.
    DockerHub,
    /// Any other registry.
    Generic,
}

/// Follow redirects server-side or relay them (COMPAT.md §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedirectMode {
    /// Follow server-side.
    Follow,
    /// Relay to the client (blocked-list hosts are still followed).
    Pass,
}

/// A configured upstream credential (COMPAT.md §4.3). The secret is resolved by the wrapper
/// (file or env) before it reaches the core.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Username.
    pub username: String,
    /// Password or token.
    pub secret: String,
    /// Repository patterns (`library/*`, `org/name`) that anonymous clients may read with these
    /// credentials.
    pub anonymous_repositories: Vec<String>,
}

impl core::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("secret", &"<redacted>")
            .field("anonymous_repositories", &self.anonymous_repositories)
            .finish()
    }
}

/// One upstream registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registry {
    /// Canonical registry name (`docker.io`, `ghcr.io`, ...): used by `ns`, prefixes, cache keys.
    pub name: String,
    /// Other names accepted in `ns` and path prefixes (`index.docker.io`, ...).
    pub aliases: Vec<String>,
    /// Where requests go.
    pub origin: Origin,
    /// Docker Hub or generic.
    pub flavour: Flavour,
    /// Redirect handling.
    pub redirects: RedirectMode,
    /// Forward writes (PUT/POST/PATCH/DELETE) instead of answering 405.
    pub allow_push: bool,
    /// Realm origins that may receive token requests. Empty = any https, non-IP, non-localhost
    /// realm (checked by [`crate::redirect::realm_allowed`]); tests list loopback realms here.
    pub realm_allowlist: Vec<Origin>,
    /// Plain-http upstream, realms and redirect targets allowed (development and tests only).
    pub development: bool,
    /// Configured credentials, if any.
    pub credentials: Option<Credentials>,
}

impl Registry {
    /// True when `name` (lower-case) is this registry's name or one of its aliases.
    pub fn answers_to(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
            || self.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
    }
}

/// Cache settings (COMPAT.md §3.1, §3.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheSettings {
    /// `CACHE_ENABLED`.
    pub enabled: bool,
    /// `CACHE_DIR` (the path is only carried; the core never opens it).
    pub dir: String,
    /// `CACHE_MANIFEST_TTL`: how long a tag mapping is fresh.
    pub manifest_ttl: Duration,
    /// `CACHE_BLOB_TTL`: idle age after which blobs are deleted; zero = no age limit.
    pub blob_ttl: Duration,
    /// `cache_max_size` in bytes; zero = no cap.
    pub max_size: u64,
    /// `max_stale`: oldest stale tag that may be served on a transient failure.
    pub max_stale: Duration,
    /// The shared store on an S3-compatible object store (`[s3]`), beside the local disk.
    pub s3: Option<S3Settings>,
}

/// Exposure of `/stats` and `/metrics` (COMPAT.md §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exposure {
    /// On the main listener, to everyone.
    Main,
    /// Only to loopback peers; others get 404.
    Loopback,
    /// Disabled (404).
    Off,
    /// Only to proxy-login admins (`login.admins`) with valid credentials; others get 401.
    Login,
}

/// Limits and timeouts (SECURITY.md §2.5, §2.14). Tests set them in milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest manifest accepted (4 MiB).
    pub max_manifest_bytes: usize,
    /// Largest token response (1 MiB).
    pub max_token_bytes: usize,
    /// Largest upstream error body read (64 KiB).
    pub max_error_body_bytes: usize,
    /// Largest `/v2/auth` POST form (16 KiB).
    pub max_auth_form_bytes: usize,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Upstream response-header timeout.
    pub header_timeout: Duration,
    /// Upstream per-read idle timeout.
    pub idle_timeout: Duration,
    /// Client request-header timeout.
    pub client_header_timeout: Duration,
    /// Upstream fetches in flight at once, from the request head to the end of the body
    /// (256; SECURITY.md §2.14). Cache hits and requests joining a fill take no slot.
    pub max_upstream_fetches: usize,
    /// How long a request waits for a fetch slot before `503` with `Retry-After` (2 s).
    pub upstream_fetch_wait: Duration,
    /// Listen backlog of the server's sockets (1024; the kernel caps it at `somaxconn`).
    pub listen_backlog: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_manifest_bytes: 4 * 1024 * 1024,
            max_token_bytes: 1024 * 1024,
            max_error_body_bytes: 64 * 1024,
            max_auth_form_bytes: 16 * 1024,
            connect_timeout: Duration::from_secs(5),
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            client_header_timeout: Duration::from_secs(10),
            max_upstream_fetches: 256,
            upstream_fetch_wait: Duration::from_secs(2),
            listen_backlog: 1024,
        }
    }
}

/// The whole validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Base domain (`CUSTOM_DOMAIN`, normalised).
    pub custom_domain: String,
    /// Upstream registries. The nine route hosts of COMPAT.md §1.1 map onto eight of them.
    pub registries: Vec<Registry>,
    /// Route hosts (lower-case, no port, no trailing dot) → registry.
    pub hosts: BTreeMap<String, RegistryId>,
    /// Mirror hosts (route by `ns` or prefix, Docker Hub by default).
    pub mirror_hosts: Vec<String>,
    /// Debug fallback registry (`DEBUG=true` + `TARGET_UPSTREAM`), if active.
    pub debug_fallback: Option<RegistryId>,
    /// Replace the unknown-host listing with a generic error.
    pub hide_routes: bool,
    /// Fixed public scheme for realms and `Location`s.
    pub public_scheme: Option<Scheme>,
    /// Fixed public port.
    pub public_port: Option<u16>,
    /// Peers whose forwarding headers are honoured.
    pub trusted_proxies: Vec<IpNet>,
    /// `FOLLOW_ALL_REDIRECTS`: `None` unset, `Some(true)`, `Some(false)`.
    pub follow_all_redirects: Option<bool>,
    /// Built-in blocked hosts plus `BLOCKED_HOSTS`, lower-case.
    pub blocked_hosts: Vec<String>,
    /// Redirect hop limit (5).
    pub max_redirects: u8,
    /// Cache settings.
    pub cache: CacheSettings,
    /// `/stats` exposure.
    pub stats: Exposure,
    /// `/metrics` exposure.
    pub metrics: Exposure,
    /// Limits and timeouts.
    pub limits: Limits,
    /// `DEBUG` (or `MODE=debug`).
    pub debug: bool,
    /// Plain-HTTP listen port (`PORT`).
    pub port: u16,
    /// `User-Agent` the proxy sends when the client sent none.
    pub user_agent: String,
    /// `DNS_ENABLED`: resolve through [`Config::dns_servers`].
    pub dns_enabled: bool,
    /// `DNS_SERVERS`: `host:port` entries (IPv6 as `[addr]:port`, port 53 filled in), in order.
    pub dns_servers: Vec<String>,
    /// `DNS_TIMEOUT`: timeout per server query.
    pub dns_timeout: Duration,
    /// Extra listen addresses (`ip:port`) from the file; empty = the `PORT` listener only.
    pub listen: Vec<String>,
    /// PEM certificate chain path for TLS listeners (carried, never opened by the core).
    pub tls_cert: Option<String>,
    /// PEM private key path for TLS listeners (carried, never opened by the core).
    pub tls_key: Option<String>,
    /// Offer HTTP/2 to clients.
    pub http2: bool,
    /// Extra CA bundle path for upstream TLS (carried, never opened by the core).
    pub ca_bundle: Option<String>,
    /// Log as JSON lines.
    pub json_logs: bool,
    /// Exact `host:port` pairs a registry may dial although the address policy denies them
    /// (SECURITY.md §2.9), e.g. a loopback test upstream.
    pub address_exceptions: Vec<AddressException>,
    /// Key for the proxy's own tokens (`/v2/auth` answers on credentialed routes) and for keyed
    /// hashes of client credentials. The loader leaves it zero; wrappers set a random key at
    /// start (a forged proxy token grants nothing an anonymous client does not already get).
    pub secret_key: [u8; 32],
    /// Client login on the proxy (`[login]` or `LOGIN_HTPASSWD`); `None` = off.
    pub login: Option<crate::login::LoginSettings>,
}

/// One exact outbound address exception (SECURITY.md §2.9): never a wildcard or a range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressException {
    /// The registry whose upstream, realm and redirect hops may use it.
    pub registry: RegistryId,
    /// Lower-case host name or IP literal (IPv6 in brackets).
    pub host: String,
    /// Port.
    pub port: u16,
}

/// A configuration problem: the key and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The offending key (`PORT`, `routes.ghcr.io.upstream`, ...).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// Builds an error.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "configuration key `{}`: {}", self.key, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A non-fatal problem found while loading (default `CUSTOM_DOMAIN`, bad boolean, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigWarning {
    /// The key concerned.
    pub key: String,
    /// What happened.
    pub message: String,
}

/// Where environment values come from. The server passes `std::env`, tests pass a map.
pub trait EnvSource {
    /// The raw value of `name`; an empty value is treated as unset by the parser.
    fn get(&self, name: &str) -> Option<String>;
}

impl EnvSource for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        Self::get(self, name).cloned()
    }
}

impl<F: Fn(&str) -> Option<String>> EnvSource for F {
    fn get(&self, name: &str) -> Option<String> {
        self(name)
    }
}

/// Peer address helpers.
impl Config {
    /// True when forwarded headers from `peer` are honoured.
    pub fn is_trusted_peer(&self, peer: Option<IpAddr>) -> bool {
        // A dual-stack listener reports IPv4 peers as `::ffff:a.b.c.d`.
        peer.map(|ip| ip.to_canonical())
            .is_some_and(|ip| self.trusted_proxies.iter().any(|n| n.contains(&ip)))
    }

    /// The registry of a route host, if `host` (normalised) is one.
    pub fn route_host(&self, host: &str) -> Option<RegistryId> {
        self.hosts.get(host).copied()
    }

    /// The registry answering to `name` or one of its aliases.
    pub fn registry_by_name(&self, name: &str) -> Option<RegistryId> {
        self.registries.iter().position(|r| r.answers_to(name))
    }
}

// Loading: environment values (`env.rs`), the TOML file (`file.rs`), and both combined into a
// validated `Config` (`load.rs`).
mod env;
mod file;
mod load;
mod login;
mod routes;
mod s3;
pub use file::{
    ConfigFile, CredentialsFile, ExposureSetting, FlavourSetting, LimitsFile, RedirectsSetting,
    RouteFile, SchemeSetting, SizeValue, parse_file,
};
pub use load::{load, load_with};
pub use login::{LoginAllowFile, LoginFile};
pub use s3::{DEFAULT_LEASE_TTL, S3File, S3Settings};

#[cfg(test)]
mod limits_tests {
    use std::collections::BTreeMap;

    use super::{Duration, load};

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn fetch_cap_and_backlog_defaults() {
        let (c, _) = load(&env(&[]), None).unwrap();
        assert_eq!(c.limits.max_upstream_fetches, 256);
        assert_eq!(c.limits.upstream_fetch_wait, Duration::from_secs(2));
        assert_eq!(c.limits.listen_backlog, 1024);
    }

    #[test]
    fn fetch_cap_and_backlog_from_env_then_file() {
        let e = env(&[("MAX_UPSTREAM_FETCHES", "8"), ("LISTEN_BACKLOG", "2048")]);
        let (c, _) = load(&e, None).unwrap();
        assert_eq!(c.limits.max_upstream_fetches, 8);
        assert_eq!(c.limits.listen_backlog, 2048);
        let toml = "[limits]\nmax_upstream_fetches = 2\nupstream_fetch_wait = \"0s\"\nlisten_backlog = 4096\n";
        let (c, _) = load(&e, Some(toml)).unwrap();
        assert_eq!(c.limits.max_upstream_fetches, 2);
        assert_eq!(c.limits.upstream_fetch_wait, Duration::ZERO);
        assert_eq!(c.limits.listen_backlog, 4096);
    }

    #[test]
    fn fetch_cap_and_backlog_refused_values_name_the_key() {
        for (k, v) in [
            ("MAX_UPSTREAM_FETCHES", "0"),
            ("MAX_UPSTREAM_FETCHES", "lots"),
            ("MAX_UPSTREAM_FETCHES", "70000"),
            ("LISTEN_BACKLOG", "0"),
            ("LISTEN_BACKLOG", "65536"),
        ] {
            let err = load(&env(&[(k, v)]), None).unwrap_err();
            assert_eq!(err.key, k, "{v}: {err}");
        }
        for (toml, key) in [
            (
                "[limits]\nmax_upstream_fetches = 0\n",
                "limits.max_upstream_fetches",
            ),
            ("[limits]\nlisten_backlog = 0\n", "limits.listen_backlog"),
            (
                "[limits]\nupstream_fetch_wait = \"2m\"\n",
                "limits.upstream_fetch_wait",
            ),
        ] {
            let err = load(&env(&[]), Some(toml)).unwrap_err();
            assert_eq!(err.key, key, "{toml}: {err}");
        }
    }
}

#[cfg(test)]
mod origin_tests {
    use super::{Origin, Scheme};

    /// fuzz/crashes/config/origin_multi_dot_becomes_ipv4*: the URL parser reads `254.0.0..` as a
    /// domain; trimming every dot used to store the IPv4 literal `254.0.0`.
    #[test]
    fn origin_multi_dot_becomes_ipv4_refused() {
        let e = Origin::parse("http://254.0.0..").unwrap_err();
        assert_eq!(e.key, "origin");
        assert!(e.message.contains("empty label"), "{e}");
    }

    /// fuzz/crashes/config/origin_multi_dot_unparsable*: `1v8.08..` used to become `1v8.08`,
    /// which no URL parser accepts.
    #[test]
    fn origin_multi_dot_unparsable_refused() {
        assert!(Origin::parse("http://1v8.08..").is_err());
        assert!(Origin::parse("http://1V8.08..").is_err());
    }

    /// fuzz/crashes/config/origin_dots_only_empty_host*: a host of dots only used to load with
    /// an empty host.
    #[test]
    fn origin_dots_only_empty_host_refused() {
        for bad in ["https://.", "http:/%2E", "https://..", "https://...:5000"] {
            assert!(Origin::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn origin_empty_inner_or_leading_label_refused() {
        for bad in [
            "https://a..b",
            "https://.a",
            "https://a.b..",
            "https://a.b../",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad:?}");
        }
    }

    /// SECURITY.md §2.18: such origins stop the load with an error naming the key.
    #[test]
    fn load_refuses_multi_dot_origins() {
        use std::collections::BTreeMap;
        for target in ["http://254.0.0..", "http:/%2E", "https://."] {
            let env: BTreeMap<String, String> = [
                ("DEBUG".to_owned(), "true".to_owned()),
                ("TARGET_UPSTREAM".to_owned(), target.to_owned()),
            ]
            .into();
            let e = super::load(&env, None).unwrap_err();
            assert_eq!(e.key, "TARGET_UPSTREAM", "{target:?}: {e}");
        }
        let env = BTreeMap::new();
        let toml = "[routes.\"r.example.com\"]\nupstream = \"https://.\"\n";
        let e = super::load(&env, Some(toml)).unwrap_err();
        assert!(e.key.contains("upstream"), "{e}");
    }

    /// One trailing dot is the DNS root: dropped, and the result round-trips.
    #[test]
    fn origin_single_trailing_dot_round_trips() {
        let o = Origin::parse("https://Registry.Example.COM.:5000/").unwrap();
        assert_eq!(o.scheme, Scheme::Https);
        assert_eq!(o.host, "registry.example.com");
        assert_eq!(o.port, 5000);
        assert_eq!(Origin::parse(&o.to_url_string()), Ok(o));
        let ip = Origin::parse("http://254.0.0.").unwrap();
        assert_eq!(ip.host, "254.0.0.0");
    }
}
