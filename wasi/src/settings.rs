//! The component's configuration: the server's environment variables (`CUSTOM_DOMAIN`,
//! `BLOCKED_HOSTS`, ... as read by the core's loader), plus [`CONFIG_VAR`] holding the TOML text
//! the server would read from its configuration file.
//!
//! Defaults are compiled in: the core's defaults, and optionally a TOML text embedded at build time
//! through the [`BUILD_CONFIG_VAR`] environment variable of `cargo build` (used when
//! [`CONFIG_VAR`] is unset at run time).
//!
//! The component has no cache store: the loaded configuration always has `cache.enabled = false`,
//! so the exchange never plans cache reads or writes. `password_file` credentials cannot be read
//! (the component opens no files); use the environment-variable form of credentials instead.

use std::collections::BTreeMap;

use dockerproxy_core::Config;
use dockerproxy_core::config::{ConfigError, ConfigWarning};

/// The run-time environment variable whose value is the TOML configuration text.
pub const CONFIG_VAR: &str = "DOCKERPROXY_CONFIG";

/// The build-time environment variable whose value, when set during `cargo build`, is compiled in
/// as the default TOML configuration.
pub const BUILD_CONFIG_VAR: &str = "DOCKERPROXY_WASI_DEFAULT_CONFIG";

/// The TOML text compiled in through [`BUILD_CONFIG_VAR`], if any.
pub const BUILD_CONFIG: Option<&str> = option_env!("DOCKERPROXY_WASI_DEFAULT_CONFIG");

/// Loads the configuration from the environment pairs `env` (as `wasi:cli/environment` returns
/// them; a later duplicate wins), with `secret_key` as the key for the proxy's own tokens.
///
/// # Errors
/// The core's [`ConfigError`] for an invalid variable or TOML key.
pub fn load_config(
    env: Vec<(String, String)>,
    secret_key: [u8; 32],
) -> Result<(Config, Vec<ConfigWarning>), ConfigError> {
    let env: BTreeMap<String, String> = env.into_iter().collect();
    let toml = env
        .get(CONFIG_VAR)
        .map(String::as_str)
        .filter(|t| !t.trim().is_empty())
        .or(BUILD_CONFIG);
    let (mut config, warnings) = dockerproxy_core::config::load(&env, toml)?;
    config.cache.enabled = false;
    config.secret_key = secret_key;
    Ok((config, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn environment_and_toml_text_are_both_read_and_the_cache_is_off() {
        let toml = "mirror_hosts = [\"127.0.0.1\"]\n[routes.\"docker.io\"]\nupstream = \"http://127.0.0.1:5000\"\ndevelopment = true\n";
        let env = pairs(&[
            ("CUSTOM_DOMAIN", "mirror.example.org"),
            (CONFIG_VAR, toml),
            ("CACHE_ENABLED", "true"),
        ]);
        let (config, _) = load_config(env, [7; 32]).unwrap();
        assert_eq!(config.custom_domain, "mirror.example.org");
        assert_eq!(config.mirror_hosts, vec!["127.0.0.1".to_owned()]);
        let hub = config.registry_by_name("docker.io").unwrap();
        assert_eq!(
            config.registries[hub].origin.to_url_string(),
            "http://127.0.0.1:5000"
        );
        assert!(config.registries[hub].development);
        assert!(!config.cache.enabled);
        assert_eq!(config.secret_key, [7; 32]);
    }

    #[test]
    fn defaults_without_any_variable() {
        let (config, warnings) = load_config(Vec::new(), [0; 32]).unwrap();
        assert_eq!(config.custom_domain, "example.com");
        assert!(warnings.iter().any(|w| w.key == "CUSTOM_DOMAIN"));
        assert!(config.route_host("docker.example.com").is_some());
    }

    #[test]
    fn bad_toml_is_an_error_naming_a_key() {
        let env = pairs(&[(CONFIG_VAR, "routes = 3")]);
        let err = load_config(env, [0; 32]).unwrap_err();
        assert!(!err.key.is_empty(), "{err}");
    }
}
