//! The `[login]` section and `LOGIN_HTPASSWD` (SECURITY.md §2.16): client login on the proxy.
//!
//! ```toml
//! [login]
//! htpasswd = "/etc/dockerproxy/htpasswd"   # bcrypt entries only
//! admins = ["ops"]                          # may read /stats and /metrics set to "login"
//! [[login.allow]]                           # any rule matching allows the request
//! users = ["alice", "anonymous"]            # "*" = any logged-in user
//! routes = ["*"]                            # route hosts or registry names
//! repositories = ["library/*"]              # globs on the repository name
//! ```
//!
//! The htpasswd file is read through the loader's `read_file` seam (the core never opens it).
//! Without `[[login.allow]]` every htpasswd user may read everything and anonymous nothing.

use serde::Deserialize;

use super::{Config, ConfigError, Exposure};
use crate::login::{self, LoginSettings, Rule, UserPattern};

/// `[login]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginFile {
    /// Path of the htpasswd file (bcrypt entries); `LOGIN_HTPASSWD` when absent.
    pub htpasswd: Option<String>,
    /// Users who may read `/stats` and `/metrics` when their exposure is `"login"`.
    pub admins: Option<Vec<String>>,
    /// Allow rules (`[[login.allow]]`).
    pub allow: Option<Vec<LoginAllowFile>>,
}

/// `[[login.allow]]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginAllowFile {
    /// User names, `"*"` (any logged-in user) or `"anonymous"`.
    pub users: Vec<String>,
    /// Route hosts or registry names, or `"*"` (default `["*"]`).
    pub routes: Option<Vec<String>>,
    /// Repository globs (default `["*"]`).
    pub repositories: Option<Vec<String>>,
}

/// The key inside `[login]` that its type refuses (for the parse error's key path).
pub(super) fn locate(table: &toml::Table) -> Option<String> {
    table.iter().find_map(|(k, v)| {
        let mut single = toml::Table::new();
        single.insert(k.clone(), v.clone());
        if toml::Value::Table(single).try_into::<LoginFile>().is_ok() {
            return None;
        }
        let inner = match v {
            toml::Value::Array(rules) if k == "allow" => {
                rules.iter().enumerate().find_map(|(i, r)| {
                    r.clone()
                        .try_into::<LoginAllowFile>()
                        .is_err()
                        .then(|| format!("{i}"))
                })
            }
            _ => None,
        };
        Some(match inner {
            Some(i) => format!("{k}.{i}"),
            None => k.clone(),
        })
    })
}

/// Builds [`Config::login`] from the file section and `LOGIN_HTPASSWD`, and checks that a
/// `"login"` exposure has a login to rely on.
pub(super) fn apply_login(
    c: &mut Config,
    file: Option<&LoginFile>,
    env_htpasswd: Option<&str>,
    read_file: &dyn Fn(&str) -> Result<String, String>,
) -> Result<(), ConfigError> {
    let path = file
        .and_then(|f| f.htpasswd.as_deref())
        .map(|p| ("login.htpasswd", p))
        .or(env_htpasswd.map(|p| ("LOGIN_HTPASSWD", p)));
    let Some((key, path)) = path else {
        if file.is_some() {
            return Err(ConfigError::new(
                "login.htpasswd",
                "[login] needs an htpasswd file (login.htpasswd or LOGIN_HTPASSWD)",
            ));
        }
        for (name, e) in [("stats", c.stats), ("metrics", c.metrics)] {
            if e == Exposure::Login {
                return Err(ConfigError::new(
                    name,
                    "\"login\" needs proxy login ([login] or LOGIN_HTPASSWD)",
                ));
            }
        }
        return Ok(());
    };
    if path.trim().is_empty() {
        return Err(ConfigError::new(key, "empty path"));
    }
    let text = read_file(path).map_err(|e| ConfigError::new(key, e))?;
    let users = login::parse_htpasswd(&text)
        .map_err(|e| ConfigError::new(key, format!("{path:?}: {e}")))?;
    let admins = file.and_then(|f| f.admins.clone()).unwrap_or_default();
    if let Some(a) = admins.iter().find(|a| !users.contains_key(*a)) {
        return Err(ConfigError::new(
            "login.admins",
            format!("{a:?} is not a user of the htpasswd file"),
        ));
    }
    let rules = match file.and_then(|f| f.allow.as_ref()) {
        None => vec![Rule::everyone_logged_in()],
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, r)| rule(c, &users, i, r))
            .collect::<Result<_, _>>()?,
    };
    // The highest cost in the file: an unknown user name then never answers faster than a known
    // one (no user enumeration by timing).
    let cost = users
        .values()
        .map(|h| login::hash_cost(h))
        .max()
        .unwrap_or(10);
    c.login = Some(LoginSettings {
        users,
        rules,
        admins,
        dummy_hash: login::dummy_hash(cost),
    });
    Ok(())
}

fn rule(
    c: &Config,
    users: &std::collections::BTreeMap<String, String>,
    i: usize,
    r: &LoginAllowFile,
) -> Result<Rule, ConfigError> {
    let key = |k: &str| format!("login.allow.{i}.{k}");
    if r.users.is_empty() {
        return Err(ConfigError::new(key("users"), "names no user"));
    }
    let patterns = r
        .users
        .iter()
        .map(|u| match u.as_str() {
            "*" => Ok(UserPattern::AnyUser),
            "anonymous" => Ok(UserPattern::Anonymous),
            name if users.contains_key(name) => Ok(UserPattern::Named(name.to_owned())),
            name => Err(ConfigError::new(
                key("users"),
                format!("{name:?} is not a user of the htpasswd file"),
            )),
        })
        .collect::<Result<_, _>>()?;
    let routes = match r.routes.as_deref() {
        None => None,
        Some(list) if list.iter().any(|r| r == "*") => None,
        Some([]) => return Err(ConfigError::new(key("routes"), "names no route")),
        Some(list) => Some(
            list.iter()
                .map(|name| {
                    let n = name.trim().trim_end_matches('.').to_ascii_lowercase();
                    c.route_host(&n)
                        .or_else(|| c.registry_by_name(&n))
                        .ok_or_else(|| {
                            ConfigError::new(
                                key("routes"),
                                format!("{name:?} is neither a route host nor a registry name"),
                            )
                        })
                })
                .collect::<Result<_, _>>()?,
        ),
    };
    let repositories = r.repositories.clone().unwrap_or_else(|| vec!["*".into()]);
    if repositories.is_empty() {
        return Err(ConfigError::new(key("repositories"), "names no repository"));
    }
    if let Some(bad) = repositories.iter().find(|p| {
        p.is_empty()
            || !p
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/*".contains(&b))
    }) {
        return Err(ConfigError::new(
            key("repositories"),
            format!("{bad:?} is not a repository glob (lower-case name characters and *)"),
        ));
    }
    Ok(Rule {
        users: patterns,
        routes,
        repositories,
    })
}
