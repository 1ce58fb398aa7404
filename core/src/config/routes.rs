//! The file's `routes`, `credentials` and `mirror_hosts` applied to the route table
//! (COMPAT.md §1.1, §3.3, §4.3; SECURITY.md §2.8, §2.9, §2.18). Every refusal names its key.

use super::file::{FlavourSetting, RedirectsSetting, RouteFile};
use super::load::origin;
use super::*;
use crate::route::{is_valid_host, normalize_host};

/// Known token realms of built-in registries (SECURITY.md §2.8), used as the allowlist of a
/// credentialed registry whose origin was not replaced and that lists none.
const KNOWN_REALMS: [(&str, &str); 5] = [
    ("docker.io", "https://auth.docker.io"),
    ("ghcr.io", "https://ghcr.io"),
    ("quay.io", "https://quay.io"),
    ("gcr.io", "https://gcr.io"),
    ("public.ecr.aws", "https://public.ecr.aws"),
];

/// A registry name or alias: `host[:port]`, lower-case, with a dot or a port (or `localhost`) so
/// it cannot be mistaken for a repository namespace in a path prefix.
fn registry_name(key: &str, raw: &str) -> Result<String, ConfigError> {
    let bad = || {
        ConfigError::new(
            key,
            format!(
                "{raw:?} is not a registry name (host[:port] with a dot, a port, or localhost)"
            ),
        )
    };
    let hp = normalize_host(raw).ok_or_else(bad)?;
    if !is_valid_host(&hp.host) {
        return Err(bad());
    }
    let name = match hp.port {
        Some(p) => format!("{}:{p}", hp.host),
        None => hp.host,
    };
    if !(name.contains('.') || name.contains(':') || name == "localhost") {
        return Err(bad());
    }
    Ok(name)
}

/// A route or mirror host: a DNS name or IP literal without port.
fn host_name(key: &str, raw: &str) -> Result<String, ConfigError> {
    let t = raw.trim();
    // Accept an unbracketed IPv6 literal in the file and store it bracketed.
    let t = match t.parse::<std::net::Ipv6Addr>() {
        Ok(a) => format!("[{a}]"),
        Err(_) => t.to_owned(),
    };
    match normalize_host(&t) {
        Some(hp) if hp.port.is_none() && is_valid_host(&hp.host) => Ok(hp.host),
        _ => Err(ConfigError::new(
            key,
            format!("{raw:?} is not a host name or IP literal without port"),
        )),
    }
}

pub(super) fn apply_route(
    c: &mut Config,
    replaced: &mut Vec<bool>,
    raw_name: &str,
    r: &RouteFile,
    f: &ConfigFile,
) -> Result<(), ConfigError> {
    let base = format!("routes.{raw_name}");
    let key = |k: &str| format!("{base}.{k}");
    let name = registry_name(&base, raw_name)?;
    let id = match c.registry_by_name(&name) {
        Some(id) => {
            let canonical = &c.registries[id].name;
            if *canonical != name {
                return Err(ConfigError::new(
                    &base,
                    format!("{name:?} is an alias: use routes.{canonical:?}"),
                ));
            }
            id
        }
        None => {
            if r.upstream.is_none() {
                return Err(ConfigError::new(
                    key("upstream"),
                    "required for a new registry",
                ));
            }
            c.registries.push(Registry {
                name: name.clone(),
                aliases: Vec::new(),
                origin: origin("https://invalid"),
                flavour: Flavour::Generic,
                redirects: RedirectMode::Follow,
                allow_push: f.allow_push.unwrap_or(false),
                realm_allowlist: Vec::new(),
                development: false,
                credentials: None,
            });
            replaced.push(true);
            c.registries.len() - 1
        }
    };
    let development = r.development.unwrap_or(c.registries[id].development);
    if let Some(u) = &r.upstream {
        let o = Origin::parse(u).map_err(|e| ConfigError::new(key("upstream"), e.message))?;
        if o.scheme == Scheme::Http && !development {
            return Err(ConfigError::new(
                key("upstream"),
                "http upstream needs `development = true`",
            ));
        }
        c.registries[id].origin = o;
        replaced[id] = true;
    }
    if c.registries[id].origin.scheme == Scheme::Http && !development {
        return Err(ConfigError::new(
            key("development"),
            "the upstream is http: development must stay true",
        ));
    }
    if let Some(h) = &r.host {
        let host = host_name(&key("host"), h)?;
        if c.hosts.contains_key(&host) {
            return Err(ConfigError::new(
                key("host"),
                format!("duplicate host {host:?}"),
            ));
        }
        c.hosts.insert(host, id);
    }
    for a in r.aliases.iter().flatten() {
        let alias = registry_name(&key("aliases"), a)?;
        if c.registries
            .iter()
            .enumerate()
            .any(|(i, other)| i != id && other.answers_to(&alias))
        {
            return Err(ConfigError::new(
                key("aliases"),
                format!("{alias:?} already names another registry"),
            ));
        }
        let reg = &mut c.registries[id];
        if reg.name != alias && !reg.aliases.contains(&alias) {
            reg.aliases.push(alias);
        }
    }
    if let Some(list) = &r.realm_allowlist {
        let mut origins = Vec::new();
        for s in list {
            let o = Origin::parse(s)
                .map_err(|e| ConfigError::new(key("realm_allowlist"), e.message))?;
            if o.scheme == Scheme::Http && !development {
                return Err(ConfigError::new(
                    key("realm_allowlist"),
                    format!("{s:?}: http realm needs `development = true`"),
                ));
            }
            origins.push(o);
        }
        c.registries[id].realm_allowlist = origins;
    }
    for s in r.address_exceptions.iter().flatten() {
        let hp = normalize_host(s)
            .filter(|hp| is_valid_host(&hp.host) && !s.contains(['*', '/']))
            .ok_or_else(|| {
                ConfigError::new(
                    key("address_exceptions"),
                    format!("{s:?} is not one exact host:port"),
                )
            })?;
        let port = hp.port.ok_or_else(|| {
            ConfigError::new(key("address_exceptions"), format!("{s:?} has no port"))
        })?;
        c.address_exceptions.push(AddressException {
            registry: id,
            host: hp.host,
            port,
        });
    }
    let reg = &mut c.registries[id];
    reg.development = development;
    if let Some(fl) = r.flavour {
        reg.flavour = match fl {
            FlavourSetting::Dockerhub => Flavour::DockerHub,
            FlavourSetting::Generic => Flavour::Generic,
        };
    }
    if let Some(m) = r.redirects {
        reg.redirects = match m {
            RedirectsSetting::Follow => RedirectMode::Follow,
            RedirectsSetting::Pass => RedirectMode::Pass,
        };
    }
    if let Some(p) = r.allow_push {
        reg.allow_push = p;
    }
    Ok(())
}

pub(super) fn apply_credentials(
    c: &mut Config,
    replaced: &[bool],
    f: &ConfigFile,
    env: &dyn EnvSource,
    read_file: &dyn Fn(&str) -> Result<String, String>,
) -> Result<(), ConfigError> {
    let from_routes = f.routes.iter().filter_map(|(n, r)| {
        r.credentials
            .as_ref()
            .map(|cr| (n, cr, format!("routes.{n}.credentials")))
    });
    let from_top = f
        .credentials
        .iter()
        .map(|(n, cr)| (n, cr, format!("credentials.{n}")));
    for (raw_name, cr, base) in from_routes.chain(from_top) {
        let key = |k: &str| format!("{base}.{k}");
        let name = registry_name(&base, raw_name)?;
        let id = c
            .registry_by_name(&name)
            .ok_or_else(|| ConfigError::new(&base, format!("no registry named {name:?}")))?;
        let reg_name = c.registries[id].name.clone();
        if c.registries[id].credentials.is_some() {
            return Err(ConfigError::new(
                &base,
                format!("credentials for {reg_name:?} are set twice"),
            ));
        }
        let username = cr
            .username
            .clone()
            .filter(|u| !u.is_empty())
            .ok_or_else(|| ConfigError::new(key("username"), "required"))?;
        let secret = match (&cr.password, &cr.password_env, &cr.password_file) {
            (Some(p), None, None) => p.clone(),
            (None, Some(var), None) => env.get(var).ok_or_else(|| {
                ConfigError::new(
                    key("password_env"),
                    format!("environment variable {var:?} is not set"),
                )
            })?,
            (None, None, Some(path)) => {
                let text =
                    read_file(path).map_err(|e| ConfigError::new(key("password_file"), e))?;
                let t = text.strip_suffix('\n').unwrap_or(&text);
                t.strip_suffix('\r').unwrap_or(t).to_owned()
            }
            _ => {
                return Err(ConfigError::new(
                    &base,
                    "set exactly one of password, password_env, password_file",
                ));
            }
        };
        if secret.is_empty() {
            let which = if cr.password.is_some() {
                "password"
            } else if cr.password_env.is_some() {
                "password_env"
            } else {
                "password_file"
            };
            return Err(ConfigError::new(key(which), "the secret is empty"));
        }
        let anonymous_repositories = match &cr.anonymous_repositories {
            Some(list) => {
                for p in list {
                    if p.is_empty()
                        || p.starts_with('/')
                        || p.chars().any(|ch| ch.is_whitespace() || ch.is_control())
                    {
                        return Err(ConfigError::new(
                            key("anonymous_repositories"),
                            format!("{p:?} is not a repository pattern"),
                        ));
                    }
                }
                list.clone()
            }
            None if reg_name == "docker.io" => vec!["library/*".to_owned()],
            None => Vec::new(),
        };
        let reg = &mut c.registries[id];
        if reg.realm_allowlist.is_empty() {
            let known = KNOWN_REALMS
                .iter()
                .find(|(n, _)| *n == reg_name)
                .map(|(_, realm)| origin(realm));
            match known {
                Some(o) if !replaced.get(id).copied().unwrap_or(true) => {
                    reg.realm_allowlist = vec![o]
                }
                _ => {
                    return Err(ConfigError::new(
                        format!("routes.{reg_name}.realm_allowlist"),
                        "a registry with credentials needs a realm allowlist",
                    ));
                }
            }
        }
        reg.credentials = Some(Credentials {
            username,
            secret,
            anonymous_repositories,
        });
    }
    Ok(())
}

pub(super) fn apply_mirrors(c: &mut Config, f: &ConfigFile) -> Result<(), ConfigError> {
    for m in f.mirror_hosts.iter().flatten() {
        let host = host_name("mirror_hosts", m)?;
        if c.hosts.contains_key(&host) || c.mirror_hosts.contains(&host) {
            return Err(ConfigError::new(
                "mirror_hosts",
                format!("duplicate host {host:?}"),
            ));
        }
        c.mirror_hosts.push(host);
    }
    Ok(())
}
