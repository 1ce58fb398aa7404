//! The go-docker-proxy environment variables (COMPAT.md §3.1): defaults, parsing and warnings.
//!
//! An empty value is unset. Bad booleans and durations fall back (booleans to false, durations to
//! their default) with a warning; an invalid `PORT`, `CUSTOM_DOMAIN`, or `TARGET_UPSTREAM` while
//! debug is on is an error.

use core::time::Duration;

use super::{ConfigError, ConfigWarning, EnvSource, Origin};
use crate::duration::{format_go_duration, parse_bool, parse_duration};
use crate::route::{is_valid_host, normalize_host};

/// The default `CUSTOM_DOMAIN`.
pub(super) const DEFAULT_DOMAIN: &str = "example.com";
/// Hosts whose redirects are always followed (before `BLOCKED_HOSTS`).
const BUILTIN_BLOCKED: [&str; 3] = ["cloudflare.docker.com", "docker.com", "docker.io"];

/// What the environment says, parsed.
#[derive(Clone, Debug)]
pub(super) struct EnvSettings {
    pub(super) custom_domain: String,
    pub(super) port: u16,
    pub(super) cache_dir: String,
    pub(super) cache_enabled: bool,
    pub(super) manifest_ttl: Duration,
    pub(super) blob_ttl: Duration,
    pub(super) follow_all_redirects: Option<bool>,
    pub(super) blocked_hosts: Vec<String>,
    pub(super) dns_enabled: bool,
    pub(super) dns_servers: Vec<String>,
    pub(super) dns_timeout: Duration,
    pub(super) debug: bool,
    /// `TARGET_UPSTREAM`, only when debug is on.
    pub(super) target_upstream: Option<Origin>,
    /// `LOGIN_HTPASSWD`: turns proxy login on (every htpasswd user may pull everything unless
    /// `[login]` says otherwise).
    pub(super) login_htpasswd: Option<String>,
    /// `MAX_UPSTREAM_FETCHES`, when set.
    pub(super) max_upstream_fetches: Option<u64>,
    /// `LISTEN_BACKLOG`, when set.
    pub(super) listen_backlog: Option<u64>,
}

/// Largest `MAX_UPSTREAM_FETCHES` / `limits.max_upstream_fetches`.
pub(super) const MAX_UPSTREAM_FETCHES: u64 = 65_536;
/// Largest `LISTEN_BACKLOG` / `limits.listen_backlog` (the kernel caps it lower anyway).
pub(super) const MAX_LISTEN_BACKLOG: u64 = 65_535;

/// `n` when it is within `1..=max`, else an error naming `key`.
pub(super) fn check_count(key: &str, n: u64, max: u64) -> Result<u64, ConfigError> {
    if (1..=max).contains(&n) {
        Ok(n)
    } else {
        Err(ConfigError::new(key, format!("{n} is not within 1-{max}")))
    }
}

/// A whole number within `1..=max` from the variable `key`, `None` when unset.
fn env_count(r: &Reader<'_>, key: &str, max: u64) -> Result<Option<u64>, ConfigError> {
    let Some(v) = r.get(key) else {
        return Ok(None);
    };
    let n = v
        .trim()
        .parse::<u64>()
        .map_err(|_| ConfigError::new(key, format!("{v:?} is not a whole number")))?;
    check_count(key, n, max).map(Some)
}

/// Reads every variable; warnings are appended to `warnings`.
pub(super) fn read_env(
    env: &dyn EnvSource,
    warnings: &mut Vec<ConfigWarning>,
) -> Result<EnvSettings, ConfigError> {
    let mut r = Reader { env, warnings };

    let custom_domain = match r.get("CUSTOM_DOMAIN") {
        None => {
            r.warn(
                "CUSTOM_DOMAIN",
                format!("not set: using the default {DEFAULT_DOMAIN:?}; set it to your own domain"),
            );
            DEFAULT_DOMAIN.to_owned()
        }
        Some(v) => normalize_domain(&v)?,
    };

    let port = match r.get("PORT") {
        None => 8080,
        Some(v) => match v.parse::<u16>() {
            Ok(p) if p != 0 && v.bytes().all(|b| b.is_ascii_digit()) => p,
            _ => {
                return Err(ConfigError::new(
                    "PORT",
                    format!("{v:?} is not a port (1-65535)"),
                ));
            }
        },
    };

    let cache_dir = r.get("CACHE_DIR").unwrap_or_else(|| "./cache".to_owned());
    let cache_enabled = r.bool("CACHE_ENABLED", true);
    let manifest_ttl = r.duration("CACHE_MANIFEST_TTL", Duration::from_secs(600));
    let blob_ttl = r.duration("CACHE_BLOB_TTL", Duration::from_secs(365 * 86_400));
    let follow_all_redirects = r
        .get("FOLLOW_ALL_REDIRECTS")
        .map(|v| r.bool_value("FOLLOW_ALL_REDIRECTS", &v));

    let mut blocked_hosts: Vec<String> = BUILTIN_BLOCKED.iter().map(|s| (*s).to_owned()).collect();
    if let Some(v) = r.get("BLOCKED_HOSTS") {
        for entry in v.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            match normalize_host(entry) {
                Some(hp) => {
                    if !blocked_hosts.contains(&hp.host) {
                        blocked_hosts.push(hp.host);
                    }
                }
                None => r.warn(
                    "BLOCKED_HOSTS",
                    format!("entry {entry:?} ignored: not a host"),
                ),
            }
        }
    }

    let dns_enabled = r.bool("DNS_ENABLED", false);
    let mut dns_servers = Vec::new();
    if let Some(v) = r.get("DNS_SERVERS") {
        for entry in v.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            match normalize_host(entry) {
                Some(hp) if is_valid_host(&hp.host) && hp.port != Some(0) => {
                    dns_servers.push(format!("{}:{}", hp.host, hp.port.unwrap_or(53)));
                }
                _ => r.warn(
                    "DNS_SERVERS",
                    format!("entry {entry:?} ignored: not host[:port]"),
                ),
            }
        }
    }
    if dns_enabled && dns_servers.is_empty() {
        r.warn(
            "DNS_SERVERS",
            "DNS_ENABLED is true but no server is set: using the system resolver",
        );
    }
    let dns_timeout = r.duration("DNS_TIMEOUT", Duration::from_secs(5));

    let mut debug = r.bool("DEBUG", false);
    if r.get("MODE")
        .is_some_and(|m| m.eq_ignore_ascii_case("debug"))
    {
        debug = true;
    }
    let target_upstream = match r.get("TARGET_UPSTREAM") {
        Some(v) if debug => Some(Origin::parse(&v).map_err(|e| {
            ConfigError::new(
                "TARGET_UPSTREAM",
                format!("{v:?} is not an http(s) origin: {}", e.message),
            )
        })?),
        Some(_) => {
            r.warn(
                "TARGET_UPSTREAM",
                "ignored: debug is off (DEBUG=true or MODE=debug enables it)",
            );
            None
        }
        None => None,
    };
    let max_upstream_fetches = env_count(&r, "MAX_UPSTREAM_FETCHES", MAX_UPSTREAM_FETCHES)?;
    let listen_backlog = env_count(&r, "LISTEN_BACKLOG", MAX_LISTEN_BACKLOG)?;
    let login_htpasswd = r.get("LOGIN_HTPASSWD");

    Ok(EnvSettings {
        custom_domain,
        port,
        cache_dir,
        cache_enabled,
        manifest_ttl,
        blob_ttl,
        follow_all_redirects,
        blocked_hosts,
        dns_enabled,
        dns_servers,
        dns_timeout,
        debug,
        target_upstream,
        login_htpasswd,
        max_upstream_fetches,
        listen_backlog,
    })
}

/// Lower-cases and trims `CUSTOM_DOMAIN`, removes one trailing dot, and checks it is a DNS name.
fn normalize_domain(v: &str) -> Result<String, ConfigError> {
    let mut d = v.trim().to_ascii_lowercase();
    if d.ends_with('.') {
        d.pop();
    }
    if is_valid_host(&d) && !d.starts_with('[') {
        Ok(d)
    } else {
        Err(ConfigError::new(
            "CUSTOM_DOMAIN",
            format!("{v:?} is not a domain name"),
        ))
    }
}

struct Reader<'a> {
    env: &'a dyn EnvSource,
    warnings: &'a mut Vec<ConfigWarning>,
}

impl Reader<'_> {
    /// The value, `None` when unset or empty (whitespace only counts as empty).
    fn get(&self, name: &str) -> Option<String> {
        self.env
            .get(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn warn(&mut self, key: &str, message: impl Into<String>) {
        self.warnings.push(ConfigWarning {
            key: key.to_owned(),
            message: message.into(),
        });
    }

    fn bool_value(&mut self, name: &str, v: &str) -> bool {
        parse_bool(v).unwrap_or_else(|()| {
            self.warn(name, format!("{v:?} is not true or false: using false"));
            false
        })
    }

    fn bool(&mut self, name: &str, default: bool) -> bool {
        match self.get(name) {
            None => default,
            Some(v) => self.bool_value(name, &v),
        }
    }

    fn duration(&mut self, name: &str, default: Duration) -> Duration {
        match self.get(name) {
            None => default,
            Some(v) => parse_duration(&v).unwrap_or_else(|e| {
                self.warn(
                    name,
                    format!("{e}: using the default {}", format_go_duration(default)),
                );
                default
            }),
        }
    }
}
