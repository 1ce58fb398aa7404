//! Token scopes (`type:name:actions`) and the `/v2/auth` request transformation
//! (COMPAT.md §4.2).

/// Most scopes accepted in one token request.
pub const MAX_SCOPES: usize = 32;

/// A parsed scope. `type` runs to the first `:`, actions start after the last `:`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scope {
    /// `repository`, `registry`, ...
    pub kind: String,
    /// Resource name (may contain `host:port`).
    pub name: String,
    /// Actions in order.
    pub actions: Vec<String>,
}

impl Scope {
    /// Parses one scope; `None` when it has fewer than two `:`.
    pub fn parse(s: &str) -> Option<Self> {
        let _ = s;
        todo!()
    }
}

impl core::fmt::Display for Scope {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}:{}:{}", self.kind, self.name, self.actions.join(","))
    }
}

/// How to transform client scopes for one registry.
#[derive(Clone, Copy, Debug)]
pub struct ScopeRules<'a> {
    /// Canonical registry name and its aliases, removed as a `<registry>/` name prefix.
    pub registry_names: &'a [&'a str],
    /// Docker Hub: single-component names get `library/`.
    pub docker_hub: bool,
    /// Keep push actions (`allow_push`), else repository actions become `pull`.
    pub allow_push: bool,
}

/// Transforms one scope string. Unparsable scopes pass through unchanged.
pub fn transform(scope: &str, rules: &ScopeRules<'_>) -> String {
    let _ = (scope, rules);
    todo!()
}

/// Splits every `scope` value (repeated parameters and space-separated values) into single
/// scopes, in order, capped at [`MAX_SCOPES`].
pub fn split_scopes<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let _ = values;
    todo!()
}

/// The registry prefix of the first repository scope whose name starts with a known registry
/// name (`repository:ghcr.io/owner/img:pull` → `ghcr.io`), used to route `/v2/auth` on a mirror
/// host.
pub fn registry_prefix<'a>(scopes: &[&'a str], is_registry: impl Fn(&str) -> bool) -> Option<&'a str> {
    let _ = (scopes, is_registry);
    todo!()
}
