//! Building a [`Config`] from environment values and an optional TOML file.
//!
//! Order: the environment (`env.rs`), the built-in route table of COMPAT.md §1.1, the file's
//! global settings, its `routes` and `credentials` (`routes.rs`), then `mirror_hosts` and the
//! debug fallback.
//! Every refusal (SECURITY.md §2.18) is a [`ConfigError`] naming the key.

use std::net::{IpAddr, SocketAddr};

use super::env::{EnvSettings, MAX_LISTEN_BACKLOG, MAX_UPSTREAM_FETCHES, check_count, read_env};
use super::file::{ExposureSetting, LimitsFile, SchemeSetting, SizeValue, parse_file};
use super::routes::{apply_credentials, apply_mirrors, apply_route};
use super::*;
use crate::duration::{parse_duration, parse_size};
use crate::route::is_valid_host;

/// Built-in registries: name, origin, aliases, Docker Hub flavour.
const BUILTIN_REGISTRIES: [(&str, &str, &[&str]); 8] = [
    (
        "docker.io",
        "https://registry-1.docker.io",
        &["index.docker.io", "registry-1.docker.io"],
    ),
    ("quay.io", "https://quay.io", &[]),
    ("gcr.io", "https://gcr.io", &[]),
    ("k8s.gcr.io", "https://k8s.gcr.io", &[]),
    ("registry.k8s.io", "https://registry.k8s.io", &[]),
    ("ghcr.io", "https://ghcr.io", &[]),
    ("docker.cloudsmith.io", "https://docker.cloudsmith.io", &[]),
    ("public.ecr.aws", "https://public.ecr.aws", &[]),
];

/// The route hosts of COMPAT.md §1.1: first label (before `.D`) → registry name.
const BUILTIN_HOSTS: [(&str, &str); 9] = [
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

/// The default `trusted_proxies`.
const DEFAULT_TRUSTED: [&str; 6] = [
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
];

/// Hosts that make a debug fallback Docker-Hub-flavoured.
const DOCKER_HUB_HOSTS: [&str; 3] = ["registry-1.docker.io", "index.docker.io", "docker.io"];

/// Builds the configuration from environment values and an optional TOML text.
///
/// Returns the configuration and the warnings to log once at start-up. `password_file`
/// credentials cannot be read here (the core does no I/O): use [`load_with`] for them.
pub fn load(
    env: &dyn EnvSource,
    file: Option<&str>,
) -> Result<(Config, Vec<ConfigWarning>), ConfigError> {
    load_with(env, file, &|path: &str| {
        Err(format!("cannot read {path:?}: no file reader was supplied"))
    })
}

/// As [`load`], with `read_file` to resolve `password_file` references (the wrapper passes a
/// function that reads the file; the core never opens it).
pub fn load_with(
    env: &dyn EnvSource,
    file: Option<&str>,
    read_file: &dyn Fn(&str) -> Result<String, String>,
) -> Result<(Config, Vec<ConfigWarning>), ConfigError> {
    let mut warnings = Vec::new();
    let settings = read_env(env, &mut warnings)?;
    let file = match file {
        Some(text) => parse_file(text)?,
        None => ConfigFile::default(),
    };
    let mut config = defaults(&settings)?;
    apply_globals(&mut config, &file)?;
    let mut replaced = vec![false; config.registries.len()];
    for (name, route) in &file.routes {
        apply_route(&mut config, &mut replaced, name, route, &file)?;
    }
    apply_credentials(&mut config, &replaced, &file, env, read_file)?;
    apply_mirrors(&mut config, &file)?;
    config.cache.s3 = s3::resolve(file.s3.as_ref(), env, read_file)?;
    if let Some(path) = file
        .secret_key_file
        .clone()
        .or_else(|| env.get("SECRET_KEY_FILE"))
    {
        config.secret_key = secret_key_from_file(&path, read_file)?;
    }
    for (i, r) in config.registries.iter().enumerate() {
        let reachable = config.hosts.values().any(|id| *id == i) || !config.mirror_hosts.is_empty();
        if !reachable {
            return Err(ConfigError::new(
                format!("routes.{}.host", r.name),
                "a new registry needs a route host (or mirror_hosts to reach it by ns or prefix)",
            ));
        }
    }
    if let Some(origin) = settings.target_upstream {
        add_debug_fallback(&mut config, origin, &mut warnings);
    }
    login::apply_login(
        &mut config,
        file.login.as_ref(),
        settings.login_htpasswd.as_deref(),
        read_file,
    )?;
    for ex in &config.address_exceptions {
        let name = config
            .registries
            .get(ex.registry)
            .map_or("", |r| r.name.as_str());
        warnings.push(ConfigWarning {
            key: format!("routes.{name}.address_exceptions"),
            message: format!(
                "{}:{} may be dialled although the address policy denies it",
                ex.host, ex.port
            ),
        });
    }
    Ok((config, warnings))
}

pub(super) fn origin(s: &str) -> Origin {
    // The built-in origins are constant, valid URLs; the fallback is never used.
    Origin::parse(s).unwrap_or(Origin {
        scheme: Scheme::Https,
        host: String::new(),
        port: 443,
    })
}

fn defaults(e: &EnvSettings) -> Result<Config, ConfigError> {
    let registries = BUILTIN_REGISTRIES
        .iter()
        .map(|(name, url, aliases)| Registry {
            name: (*name).to_owned(),
            aliases: aliases.iter().map(|a| (*a).to_owned()).collect(),
            origin: origin(url),
            flavour: if *name == "docker.io" {
                Flavour::DockerHub
            } else {
                Flavour::Generic
            },
            redirects: RedirectMode::Follow,
            allow_push: false,
            realm_allowlist: Vec::new(),
            development: false,
            credentials: None,
        })
        .collect::<Vec<_>>();
    let mut hosts = BTreeMap::new();
    for (label, name) in BUILTIN_HOSTS {
        let id = registries.iter().position(|r| r.name == name).unwrap_or(0);
        let host = format!("{label}.{}", e.custom_domain);
        if !is_valid_host(&host) {
            return Err(ConfigError::new(
                "CUSTOM_DOMAIN",
                format!("{host:?} is not a valid host name"),
            ));
        }
        hosts.insert(host, id);
    }
    let trusted_proxies = DEFAULT_TRUSTED
        .iter()
        .filter_map(|n| n.parse::<IpNet>().ok())
        .collect();
    Ok(Config {
        custom_domain: e.custom_domain.clone(),
        registries,
        hosts,
        mirror_hosts: Vec::new(),
        debug_fallback: None,
        hide_routes: false,
        public_scheme: None,
        public_port: None,
        trusted_proxies,
        follow_all_redirects: e.follow_all_redirects,
        blocked_hosts: e.blocked_hosts.clone(),
        max_redirects: 5,
        cache: CacheSettings {
            enabled: e.cache_enabled,
            dir: e.cache_dir.clone(),
            manifest_ttl: e.manifest_ttl,
            blob_ttl: e.blob_ttl,
            max_size: 10 * 1024 * 1024 * 1024,
            max_stale: Duration::from_secs(86_400),
            s3: None,
        },
        stats: Exposure::Main,
        metrics: Exposure::Main,
        limits: env_limits(e),
        debug: e.debug,
        port: e.port,
        user_agent: format!("dockerproxy/{}", crate::VERSION),
        dns_enabled: e.dns_enabled,
        dns_servers: e.dns_servers.clone(),
        dns_timeout: e.dns_timeout,
        listen: Vec::new(),
        tls_cert: None,
        tls_key: None,
        http2: true,
        ca_bundle: None,
        json_logs: false,
        address_exceptions: Vec::new(),
        secret_key: [0; 32],
        login: None,
    })
}

fn exposure(s: ExposureSetting) -> Exposure {
    match s {
        ExposureSetting::Main => Exposure::Main,
        ExposureSetting::Loopback => Exposure::Loopback,
        ExposureSetting::Off => Exposure::Off,
        ExposureSetting::Login => Exposure::Login,
    }
}

fn size(key: &str, v: &SizeValue) -> Result<u64, ConfigError> {
    match v {
        SizeValue::Bytes(n) => Ok(*n),
        SizeValue::Text(t) => parse_size(t).map_err(|e| ConfigError::new(key, e.0)),
    }
}

/// The token key from a shared secret file: SHA-256 of its trimmed text (at least 32
/// characters), so every replica given the same file derives the same key.
fn secret_key_from_file(
    path: &str,
    read_file: &dyn Fn(&str) -> Result<String, String>,
) -> Result<[u8; 32], ConfigError> {
    use sha2::Digest as _;
    let key = "secret_key_file";
    let text = read_file(path).map_err(|e| ConfigError::new(key, e))?;
    let text = text.trim();
    if text.len() < 32 {
        return Err(ConfigError::new(
            key,
            "the secret needs at least 32 characters (e.g. `openssl rand -hex 32`)",
        ));
    }
    Ok(sha2::Sha256::digest(text.as_bytes()).into())
}

fn duration(key: &str, v: &str) -> Result<Duration, ConfigError> {
    parse_duration(v).map_err(|e| ConfigError::new(key, e.0))
}

fn non_empty_path(key: &str, v: &Option<String>) -> Result<Option<String>, ConfigError> {
    match v {
        Some(p) if p.trim().is_empty() => Err(ConfigError::new(key, "empty path")),
        other => Ok(other.clone()),
    }
}

fn apply_globals(c: &mut Config, f: &ConfigFile) -> Result<(), ConfigError> {
    c.public_scheme = f.public_scheme.map(|s| match s {
        SchemeSetting::Http => Scheme::Http,
        SchemeSetting::Https => Scheme::Https,
    });
    if f.public_port == Some(0) {
        return Err(ConfigError::new("public_port", "must be 1-65535"));
    }
    c.public_port = f.public_port;
    if let Some(list) = &f.trusted_proxies {
        c.trusted_proxies = list
            .iter()
            .map(|s| {
                let t = s.trim();
                t.parse::<IpNet>()
                    .or_else(|_| t.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        ConfigError::new(
                            "trusted_proxies",
                            format!("{s:?} is not an address or CIDR network"),
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
    }
    c.hide_routes = f.hide_routes.unwrap_or(false);
    c.stats = f.stats.map_or(Exposure::Main, exposure);
    c.metrics = f.metrics.map_or(Exposure::Main, exposure);
    let push = f.allow_push.unwrap_or(false);
    for r in &mut c.registries {
        r.allow_push = push;
    }
    if let Some(n) = f.max_redirects {
        if n > 10 {
            return Err(ConfigError::new(
                "max_redirects",
                format!("{n} is more than 10"),
            ));
        }
        c.max_redirects = n;
    }
    if let Some(v) = &f.max_stale {
        c.cache.max_stale = duration("max_stale", v)?;
    }
    if let Some(v) = &f.cache_max_size {
        c.cache.max_size = size("cache_max_size", v)?;
    }
    if let Some(list) = &f.listen {
        c.listen = list
            .iter()
            .map(|s| {
                s.trim()
                    .parse::<SocketAddr>()
                    .map(|a| a.to_string())
                    .map_err(|_| ConfigError::new("listen", format!("{s:?} is not ip:port")))
            })
            .collect::<Result<_, _>>()?;
    }
    c.tls_cert = non_empty_path("tls_cert", &f.tls_cert)?;
    c.tls_key = non_empty_path("tls_key", &f.tls_key)?;
    match (&c.tls_cert, &c.tls_key) {
        (Some(_), None) => {
            return Err(ConfigError::new(
                "tls_key",
                "tls_cert is set without tls_key",
            ));
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                "tls_cert",
                "tls_key is set without tls_cert",
            ));
        }
        _ => {}
    }
    c.http2 = f.http2.unwrap_or(true);
    c.ca_bundle = non_empty_path("ca_bundle", &f.ca_bundle)?;
    c.json_logs = f.json_logs.unwrap_or(false);
    if let Some(l) = &f.limits {
        apply_limits(&mut c.limits, l)?;
    }
    Ok(())
}

/// The default limits with `MAX_UPSTREAM_FETCHES` and `LISTEN_BACKLOG` applied (already
/// range-checked by `env.rs`); the file's `[limits]` may override them.
fn env_limits(e: &EnvSettings) -> Limits {
    let mut l = Limits::default();
    if let Some(n) = e.max_upstream_fetches.and_then(|n| usize::try_from(n).ok()) {
        l.max_upstream_fetches = n;
    }
    if let Some(n) = e.listen_backlog.and_then(|n| u32::try_from(n).ok()) {
        l.listen_backlog = n;
    }
    l
}

/// `[limits]` counts: the upstream fetch cap, its wait, and the listen backlog.
fn apply_limit_counts(l: &mut Limits, f: &LimitsFile) -> Result<(), ConfigError> {
    if let Some(n) = f.max_upstream_fetches {
        let key = "limits.max_upstream_fetches";
        let n = check_count(key, n, MAX_UPSTREAM_FETCHES)?;
        l.max_upstream_fetches =
            usize::try_from(n).map_err(|_| ConfigError::new(key, "too large"))?;
    }
    if let Some(n) = f.listen_backlog {
        let key = "limits.listen_backlog";
        let n = check_count(key, n, MAX_LISTEN_BACKLOG)?;
        l.listen_backlog = u32::try_from(n).map_err(|_| ConfigError::new(key, "too large"))?;
    }
    if let Some(v) = &f.upstream_fetch_wait {
        let key = "limits.upstream_fetch_wait";
        let d = duration(key, v)?;
        if d > Duration::from_secs(60) {
            return Err(ConfigError::new(key, "must be at most 60s"));
        }
        l.upstream_fetch_wait = d;
    }
    Ok(())
}

fn apply_limits(l: &mut Limits, f: &LimitsFile) -> Result<(), ConfigError> {
    apply_limit_counts(l, f)?;
    let caps = [
        (
            "limits.max_manifest_bytes",
            &f.max_manifest_bytes,
            &mut l.max_manifest_bytes,
        ),
        (
            "limits.max_token_bytes",
            &f.max_token_bytes,
            &mut l.max_token_bytes,
        ),
        (
            "limits.max_error_body_bytes",
            &f.max_error_body_bytes,
            &mut l.max_error_body_bytes,
        ),
        (
            "limits.max_auth_form_bytes",
            &f.max_auth_form_bytes,
            &mut l.max_auth_form_bytes,
        ),
    ];
    for (key, v, slot) in caps {
        if let Some(v) = v {
            let n = size(key, v)?;
            *slot = usize::try_from(n)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| ConfigError::new(key, "must be at least 1 byte"))?;
        }
    }
    let timeouts = [
        (
            "limits.connect_timeout",
            &f.connect_timeout,
            &mut l.connect_timeout,
        ),
        (
            "limits.header_timeout",
            &f.header_timeout,
            &mut l.header_timeout,
        ),
        ("limits.idle_timeout", &f.idle_timeout, &mut l.idle_timeout),
        (
            "limits.client_header_timeout",
            &f.client_header_timeout,
            &mut l.client_header_timeout,
        ),
    ];
    for (key, v, slot) in timeouts {
        if let Some(v) = v {
            let d = duration(key, v)?;
            if d.is_zero() {
                return Err(ConfigError::new(key, "must be more than 0"));
            }
            *slot = d;
        }
    }
    Ok(())
}

fn add_debug_fallback(c: &mut Config, origin: Origin, warnings: &mut Vec<ConfigWarning>) {
    let hub = DOCKER_HUB_HOSTS.contains(&origin.host.as_str());
    warnings.push(ConfigWarning {
        key: "TARGET_UPSTREAM".to_owned(),
        message: format!(
            "debug fallback active: every unknown hostname or IP is an open proxy to {}",
            origin.to_url_string()
        ),
    });
    c.registries.push(Registry {
        name: origin.host.clone(),
        aliases: Vec::new(),
        flavour: if hub {
            Flavour::DockerHub
        } else {
            Flavour::Generic
        },
        redirects: RedirectMode::Follow,
        allow_push: false,
        realm_allowlist: Vec::new(),
        development: origin.scheme == Scheme::Http,
        credentials: None,
        origin,
    });
    c.debug_fallback = Some(c.registries.len() - 1);
}
