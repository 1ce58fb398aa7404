//! The optional TOML configuration file (COMPAT.md §3.3, DESIGN.md §4): its shape and parsing.
//!
//! Every table refuses unknown fields. A parse error names the offending key path
//! (`routes.ghcr.io.upstrem`) and its line. Values are checked when the file is applied
//! ([`super::load_with`]); this module only reads the text.
//!
//! ```toml
//! public_scheme = "https"
//! mirror_hosts = ["mirror.example.com"]
//! cache_max_size = "50GiB"
//!
//! [routes."ghcr.io"]
//! redirects = "pass"
//!
//! [routes."nvcr.io"]
//! upstream = "https://nvcr.io"
//! host = "nvcr.example.com"
//!
//! [routes."docker.io".credentials]
//! username = "alice"
//! password_env = "DOCKERHUB_TOKEN"
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::ConfigError;

/// The optional TOML configuration file (COMPAT.md §3.3). Unknown fields are refused.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `"http"` or `"https"`: fixed scheme of realms and rewritten `Location`s.
    pub public_scheme: Option<SchemeSetting>,
    /// Fixed public port (1-65535).
    pub public_port: Option<u16>,
    /// Peers (CIDR or single address) whose forwarding headers are honoured; `[]` trusts nobody.
    pub trusted_proxies: Option<Vec<String>>,
    /// Hosts that route by `ns` or path prefix, Docker Hub by default.
    pub mirror_hosts: Option<Vec<String>>,
    /// Generic unknown-host body instead of the route listing.
    pub hide_routes: Option<bool>,
    /// `/stats` exposure.
    pub stats: Option<ExposureSetting>,
    /// `/metrics` exposure.
    pub metrics: Option<ExposureSetting>,
    /// Default `allow_push` of every route.
    pub allow_push: Option<bool>,
    /// Redirect hop limit (default 5, at most 10).
    pub max_redirects: Option<u8>,
    /// Oldest stale tag served on a transient failure (duration grammar).
    pub max_stale: Option<String>,
    /// Cache size cap (`"10GiB"`, or a number of bytes); 0 = no cap.
    pub cache_max_size: Option<SizeValue>,
    /// Extra listen addresses (`ip:port`).
    pub listen: Option<Vec<String>>,
    /// TLS certificate chain path (with `tls_key`).
    pub tls_cert: Option<String>,
    /// TLS private key path (with `tls_cert`).
    pub tls_key: Option<String>,
    /// Offer HTTP/2 (default true).
    pub http2: Option<bool>,
    /// Extra CA bundle for upstream TLS.
    pub ca_bundle: Option<String>,
    /// JSON log lines.
    pub json_logs: Option<bool>,
    /// Limits and timeouts.
    pub limits: Option<LimitsFile>,
    /// The shared cache store on an S3-compatible object store.
    pub s3: Option<super::S3File>,
    /// A file holding the key of the proxy's own tokens (at least 32 characters), shared by
    /// replicas behind one load balancer so a token from one is valid on the others.
    pub secret_key_file: Option<String>,
    /// Per-registry settings, keyed by canonical registry name (a new name adds a registry).
    #[serde(default)]
    pub routes: BTreeMap<String, RouteFile>,
    /// Credentials keyed by registry name (same as `routes.<name>.credentials`).
    #[serde(default)]
    pub credentials: BTreeMap<String, CredentialsFile>,
    /// Client login on the proxy (`[login]`, SECURITY.md §2.16).
    pub login: Option<super::login::LoginFile>,
}

/// `[routes."<registry name>"]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// Upstream origin URL; replaces a built-in registry's origin (its name stays).
    pub upstream: Option<String>,
    /// A route host to add (`nvcr.example.com`).
    pub host: Option<String>,
    /// Other names accepted in `ns` and path prefixes.
    pub aliases: Option<Vec<String>>,
    /// `"dockerhub"` or `"generic"`.
    pub flavour: Option<FlavourSetting>,
    /// `"follow"` or `"pass"`.
    pub redirects: Option<RedirectsSetting>,
    /// Forward writes for this registry.
    pub allow_push: Option<bool>,
    /// Realm origins allowed to receive token requests.
    pub realm_allowlist: Option<Vec<String>>,
    /// Allow plain-http upstream, realms and redirects (development and tests only).
    pub development: Option<bool>,
    /// Exact `host:port` pairs exempt from the outbound address policy.
    pub address_exceptions: Option<Vec<String>>,
    /// Upstream credentials.
    pub credentials: Option<CredentialsFile>,
}

/// Upstream credentials: a username and exactly one secret source.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsFile {
    /// Username.
    pub username: Option<String>,
    /// Inline secret.
    pub password: Option<String>,
    /// Name of an environment variable holding the secret.
    pub password_env: Option<String>,
    /// Path of a file holding the secret (one trailing newline is removed).
    pub password_file: Option<String>,
    /// Repositories anonymous clients may read with these credentials (default `["library/*"]`
    /// for `docker.io`, none otherwise).
    pub anonymous_repositories: Option<Vec<String>>,
}

impl core::fmt::Debug for CredentialsFile {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CredentialsFile")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_env", &self.password_env)
            .field("password_file", &self.password_file)
            .field("anonymous_repositories", &self.anonymous_repositories)
            .finish()
    }
}

/// `[limits]`: caps (sizes) and timeouts (durations, e.g. `"250ms"`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Largest manifest.
    pub max_manifest_bytes: Option<SizeValue>,
    /// Largest token response.
    pub max_token_bytes: Option<SizeValue>,
    /// Largest upstream error body read.
    pub max_error_body_bytes: Option<SizeValue>,
    /// Largest `/v2/auth` form.
    pub max_auth_form_bytes: Option<SizeValue>,
    /// Upstream connect timeout.
    pub connect_timeout: Option<String>,
    /// Upstream response-header timeout.
    pub header_timeout: Option<String>,
    /// Upstream idle read timeout.
    pub idle_timeout: Option<String>,
    /// Client request-header timeout.
    pub client_header_timeout: Option<String>,
    /// Upstream fetches in flight at once (`MAX_UPSTREAM_FETCHES`).
    pub max_upstream_fetches: Option<u64>,
    /// How long a request waits for a fetch slot (`"2s"`; `"0s"` refuses at once).
    pub upstream_fetch_wait: Option<String>,
    /// Listen backlog (`LISTEN_BACKLOG`).
    pub listen_backlog: Option<u64>,
}

/// A size: a number of bytes or a string with a unit.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum SizeValue {
    /// Bytes.
    Bytes(u64),
    /// `"10GiB"`, `"500MB"`, ...
    Text(String),
}

/// `public_scheme`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchemeSetting {
    /// `http`
    Http,
    /// `https`
    Https,
}

/// `stats` / `metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExposureSetting {
    /// `main`
    Main,
    /// `loopback`
    Loopback,
    /// `off`
    Off,
    /// `login`: proxy-login admins only (needs `[login]`).
    Login,
}

/// `routes.<name>.flavour`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlavourSetting {
    /// `dockerhub`
    Dockerhub,
    /// `generic`
    Generic,
}

/// `routes.<name>.redirects`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedirectsSetting {
    /// `follow`
    Follow,
    /// `pass`
    Pass,
}

/// Parses the TOML text. Errors name the key path (`routes.ghcr.io.upstrem`) and the line.
pub fn parse_file(text: &str) -> Result<ConfigFile, ConfigError> {
    let err = match toml::from_str::<ConfigFile>(text) {
        Ok(f) => return Ok(f),
        Err(e) => e,
    };
    let line = err
        .span()
        .map(|s| 1 + text.get(..s.start).map_or(0, |t| t.matches('\n').count()));
    let message = match line {
        Some(l) => format!("{} (line {l})", err.message().trim_end()),
        None => err.message().trim_end().to_owned(),
    };
    let key = match text.parse::<toml::Table>() {
        Ok(table) => locate_top(&table),
        Err(_) => None, // a syntax error: no key to name
    };
    Err(ConfigError::new(
        key.unwrap_or_else(|| "config file".to_owned()),
        message,
    ))
}

/// The first key of `table` that `T` refuses on its own (every field of `T` is optional, so a
/// single known, well-typed field always deserializes).
fn culprit<T: DeserializeOwned>(table: &toml::Table) -> Option<&str> {
    table.iter().find_map(|(k, v)| {
        let mut single = toml::Table::new();
        single.insert(k.clone(), v.clone());
        toml::Value::Table(single)
            .try_into::<T>()
            .is_err()
            .then_some(k.as_str())
    })
}

fn locate_top(table: &toml::Table) -> Option<String> {
    let k = culprit::<ConfigFile>(table)?;
    let inner = match (k, table.get(k)) {
        ("routes", Some(toml::Value::Table(routes))) => {
            locate_map::<RouteFile>(routes, locate_route)
        }
        ("credentials", Some(toml::Value::Table(creds))) => {
            locate_map::<CredentialsFile>(creds, |t| {
                culprit::<CredentialsFile>(t).map(str::to_owned)
            })
        }
        ("limits", Some(toml::Value::Table(l))) => culprit::<LimitsFile>(l).map(str::to_owned),
        ("login", Some(toml::Value::Table(l))) => super::login::locate(l),
        _ => None,
    };
    Some(match inner {
        Some(rest) => format!("{k}.{rest}"),
        None => k.to_owned(),
    })
}

/// In a map of tables (`routes`), the first entry `T` refuses, and the key inside it.
fn locate_map<T: DeserializeOwned>(
    map: &toml::Table,
    inner: impl Fn(&toml::Table) -> Option<String>,
) -> Option<String> {
    map.iter().find_map(|(name, v)| {
        if v.clone().try_into::<T>().is_ok() {
            return None;
        }
        Some(match v {
            toml::Value::Table(t) => match inner(t) {
                Some(rest) => format!("{name}.{rest}"),
                None => name.clone(),
            },
            _ => name.clone(),
        })
    })
}

fn locate_route(route: &toml::Table) -> Option<String> {
    let k = culprit::<RouteFile>(route)?;
    let inner = match route.get(k) {
        Some(toml::Value::Table(c)) if k == "credentials" => culprit::<CredentialsFile>(c),
        _ => None,
    };
    Some(match inner {
        Some(rest) => format!("{k}.{rest}"),
        None => k.to_owned(),
    })
}
