//! The shared cache store on an S3-compatible object store (issue 9, DESIGN.md §4): the `[s3]`
//! table of the configuration file and the `CACHE_S3_*` environment variables.
//!
//! ```toml
//! [s3]
//! endpoint = "https://s3.example.com"   # or http://127.0.0.1:3900 with allow_http = true
//! bucket = "dockerproxy"
//! region = "garage"
//! access_key_id = "GK..."
//! secret_access_key_env = "S3_SECRET"   # or secret_access_key / secret_access_key_file
//! prefix = "mirror/"                    # optional key prefix
//! lease_ttl = "30s"                     # how long a silent replica's fill blocks the others
//! ```
//!
//! The environment spelling of the same settings is `CACHE_S3_ENDPOINT`, `CACHE_S3_BUCKET`,
//! `CACHE_S3_REGION`, `CACHE_S3_ACCESS_KEY_ID`, `CACHE_S3_SECRET_ACCESS_KEY`,
//! `CACHE_S3_PREFIX`, `CACHE_S3_LEASE_TTL` and `CACHE_S3_ALLOW_HTTP`; the backend is on when
//! a bucket is named in either place. The file wins over the environment, key by key.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, EnvSource};
use crate::duration::parse_duration;

/// Default lease time-to-live: a fill whose replica stopped renewing for this long is taken
/// over by another replica.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);

/// `[s3]` in the configuration file. Unknown fields are refused.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3File {
    /// Endpoint URL (`https://…`; `http://` needs `allow_http`).
    pub endpoint: Option<String>,
    /// Bucket name.
    pub bucket: Option<String>,
    /// Region (default `us-east-1`).
    pub region: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Inline secret key.
    pub secret_access_key: Option<String>,
    /// Name of an environment variable holding the secret key.
    pub secret_access_key_env: Option<String>,
    /// Path of a file holding the secret key (one trailing newline is removed).
    pub secret_access_key_file: Option<String>,
    /// Prefix of every key the proxy writes (`""` by default).
    pub prefix: Option<String>,
    /// Lease time-to-live (duration grammar, at least 1 s).
    pub lease_ttl: Option<String>,
    /// Allow a plain-http endpoint (tests and private networks only).
    pub allow_http: Option<bool>,
}

impl core::fmt::Debug for S3File {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("S3File")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

/// The resolved shared-store settings. The core only carries them; the server dials.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Settings {
    /// Endpoint URL, without a trailing `/`.
    pub endpoint: String,
    /// Bucket.
    pub bucket: String,
    /// Region.
    pub region: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret key (never logged).
    pub secret_access_key: String,
    /// Key prefix, empty or ending in `/`.
    pub prefix: String,
    /// Lease time-to-live.
    pub lease_ttl: Duration,
    /// Plain-http endpoint allowed.
    pub allow_http: bool,
}

impl core::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("prefix", &self.prefix)
            .field("lease_ttl", &self.lease_ttl)
            .field("allow_http", &self.allow_http)
            .finish_non_exhaustive()
    }
}

/// Resolves `[s3]` over the `CACHE_S3_*` variables; `None` when no bucket is named anywhere.
pub(super) fn resolve(
    file: Option<&S3File>,
    env: &dyn EnvSource,
    read_file: &dyn Fn(&str) -> Result<String, String>,
) -> Result<Option<S3Settings>, ConfigError> {
    let empty = S3File::default();
    let f = file.unwrap_or(&empty);
    let get = |v: &Option<String>, var: &str| -> Option<String> {
        v.clone()
            .or_else(|| env.get(var))
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    let Some(bucket) = get(&f.bucket, "CACHE_S3_BUCKET") else {
        if file.is_some() {
            return Err(ConfigError::new(
                "s3.bucket",
                "the [s3] table needs a bucket",
            ));
        }
        return Ok(None);
    };
    if !valid_bucket(&bucket) {
        return Err(ConfigError::new(
            "s3.bucket",
            format!("{bucket:?} is not a valid bucket name (3-63 of a-z 0-9 . -)"),
        ));
    }
    let allow_http = match (f.allow_http, env.get("CACHE_S3_ALLOW_HTTP")) {
        (Some(b), _) => b,
        (None, Some(v)) => matches!(v.trim(), "1" | "true" | "yes" | "on"),
        (None, None) => false,
    };
    let endpoint = get(&f.endpoint, "CACHE_S3_ENDPOINT")
        .ok_or_else(|| ConfigError::new("s3.endpoint", "an S3 endpoint URL is required"))?;
    let endpoint = endpoint.trim_end_matches('/').to_owned();
    match url::Url::parse(&endpoint) {
        Ok(u) if u.scheme() == "https" || (u.scheme() == "http" && allow_http) => {
            if u.host_str().is_none_or(str::is_empty) || !u.username().is_empty() {
                return Err(ConfigError::new(
                    "s3.endpoint",
                    "the endpoint needs a host and no user info",
                ));
            }
        }
        Ok(u) if u.scheme() == "http" => {
            return Err(ConfigError::new(
                "s3.endpoint",
                "a plain-http endpoint needs allow_http = true (CACHE_S3_ALLOW_HTTP)",
            ));
        }
        _ => {
            return Err(ConfigError::new(
                "s3.endpoint",
                format!("{endpoint:?} is not an http(s) URL"),
            ));
        }
    }
    let region = get(&f.region, "CACHE_S3_REGION").unwrap_or_else(|| "us-east-1".to_owned());
    let access_key_id = get(&f.access_key_id, "CACHE_S3_ACCESS_KEY_ID")
        .ok_or_else(|| ConfigError::new("s3.access_key_id", "an access key id is required"))?;
    let secret_access_key = secret(f, env, read_file)?;
    let mut prefix = get(&f.prefix, "CACHE_S3_PREFIX").unwrap_or_default();
    let prefix_ok = prefix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
        && !prefix.split('/').any(|s| s == "." || s == "..")
        && !prefix.starts_with('/');
    if !prefix_ok {
        return Err(ConfigError::new(
            "s3.prefix",
            "use letters, digits, '-', '_', '.' and '/' (no leading '/', no dot segments)",
        ));
    }
    if !prefix.is_empty() && !prefix.ends_with('/') {
        prefix.push('/');
    }
    let lease_ttl = match get(&f.lease_ttl, "CACHE_S3_LEASE_TTL") {
        Some(v) => parse_duration(&v).map_err(|e| ConfigError::new("s3.lease_ttl", e.0))?,
        None => DEFAULT_LEASE_TTL,
    };
    if lease_ttl < Duration::from_secs(1) {
        return Err(ConfigError::new("s3.lease_ttl", "at least 1s"));
    }
    Ok(Some(S3Settings {
        endpoint,
        bucket,
        region,
        access_key_id,
        secret_access_key,
        prefix,
        lease_ttl,
        allow_http,
    }))
}

fn secret(
    f: &S3File,
    env: &dyn EnvSource,
    read_file: &dyn Fn(&str) -> Result<String, String>,
) -> Result<String, ConfigError> {
    let key = "s3.secret_access_key";
    let sources = [
        f.secret_access_key.is_some(),
        f.secret_access_key_env.is_some(),
        f.secret_access_key_file.is_some(),
    ];
    if sources.iter().filter(|s| **s).count() > 1 {
        return Err(ConfigError::new(
            key,
            "give exactly one of the three secret sources",
        ));
    }
    let value = if let Some(v) = &f.secret_access_key {
        v.clone()
    } else if let Some(var) = &f.secret_access_key_env {
        env.get(var)
            .ok_or_else(|| ConfigError::new(key, format!("environment variable {var} is unset")))?
    } else if let Some(path) = &f.secret_access_key_file {
        let mut s = read_file(path).map_err(|e| ConfigError::new(key, e))?;
        if s.ends_with('\n') {
            s.pop();
            if s.ends_with('\r') {
                s.pop();
            }
        }
        s
    } else {
        env.get("CACHE_S3_SECRET_ACCESS_KEY").unwrap_or_default()
    };
    if value.is_empty() {
        return Err(ConfigError::new(key, "a secret access key is required"));
    }
    Ok(value)
}

/// S3 bucket names: 3-63 characters of lower-case letters, digits, `.` and `-`, starting and
/// ending with a letter or digit.
fn valid_bucket(b: &str) -> bool {
    let bytes = b.as_bytes();
    (3..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'.' || *c == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct Env(HashMap<&'static str, &'static str>);
    impl EnvSource for Env {
        fn get(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|s| (*s).to_owned())
        }
    }
    fn no_files(p: &str) -> Result<String, String> {
        if p == "/run/secret" {
            Ok("filesecret\n".to_owned())
        } else {
            Err(format!("cannot read {p}"))
        }
    }

    #[test]
    fn absent_without_bucket() {
        let env = Env(HashMap::new());
        assert_eq!(resolve(None, &env, &no_files).unwrap(), None);
    }

    #[test]
    fn env_settings() {
        let env = Env(HashMap::from([
            ("CACHE_S3_BUCKET", "mirror"),
            ("CACHE_S3_ENDPOINT", "http://127.0.0.1:3900/"),
            ("CACHE_S3_ALLOW_HTTP", "true"),
            ("CACHE_S3_ACCESS_KEY_ID", "GK1"),
            ("CACHE_S3_SECRET_ACCESS_KEY", "s3cr3t"),
            ("CACHE_S3_PREFIX", "a/b"),
            ("CACHE_S3_LEASE_TTL", "5s"),
        ]));
        let s = resolve(None, &env, &no_files).unwrap().unwrap();
        assert_eq!(s.endpoint, "http://127.0.0.1:3900");
        assert_eq!(s.prefix, "a/b/");
        assert_eq!(s.region, "us-east-1");
        assert_eq!(s.lease_ttl, Duration::from_secs(5));
        assert!(!format!("{s:?}").contains("s3cr3t"));
    }

    #[test]
    fn file_settings_and_refusals() {
        let env = Env(HashMap::new());
        let mut f = S3File {
            bucket: Some("mirror".into()),
            endpoint: Some("http://127.0.0.1:3900".into()),
            access_key_id: Some("GK1".into()),
            secret_access_key_file: Some("/run/secret".into()),
            ..S3File::default()
        };
        let e = resolve(Some(&f), &env, &no_files).unwrap_err();
        assert_eq!(e.key, "s3.endpoint", "http without allow_http: {e:?}");
        f.allow_http = Some(true);
        let s = resolve(Some(&f), &env, &no_files).unwrap().unwrap();
        assert_eq!(s.secret_access_key, "filesecret");
        f.prefix = Some("../x".into());
        assert_eq!(
            resolve(Some(&f), &env, &no_files).unwrap_err().key,
            "s3.prefix"
        );
        f.prefix = None;
        f.bucket = Some("Bad_Bucket".into());
        assert_eq!(
            resolve(Some(&f), &env, &no_files).unwrap_err().key,
            "s3.bucket"
        );
        f.bucket = Some("mirror".into());
        f.secret_access_key = Some("x".into());
        assert_eq!(
            resolve(Some(&f), &env, &no_files).unwrap_err().key,
            "s3.secret_access_key"
        );
        f.secret_access_key = None;
        f.lease_ttl = Some("10ms".into());
        assert_eq!(
            resolve(Some(&f), &env, &no_files).unwrap_err().key,
            "s3.lease_ttl"
        );
        let bare = S3File::default();
        assert_eq!(
            resolve(Some(&bare), &env, &no_files).unwrap_err().key,
            "s3.bucket"
        );
    }
}
