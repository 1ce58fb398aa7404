//! Building a [`Config`] from environment values and an optional TOML file.

use super::*;

/// The optional TOML configuration file (COMPAT.md §3.3). Unknown fields are refused.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {}

/// Builds the configuration from environment values and an optional TOML text.
///
/// Returns the configuration and the warnings to log once at start-up.
pub fn load(env: &dyn EnvSource, file: Option<&str>) -> Result<(Config, Vec<ConfigWarning>), ConfigError> {
    let _ = (env, file);
    todo!("config loading")
}
