//! Redirect policy (COMPAT.md §6; SECURITY.md §2.6, §2.8): follow or pass, which headers a hop
//! keeps, the hop limit, and the realm allowlist.

use url::Url;

use crate::config::{Config, Registry};

/// What to do with an upstream 3xx.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedirectDecision {
    /// Follow server-side to this absolute URL. `same_origin` = the target's origin equals the
    /// registry's, so the original request headers (`Authorization` included) are kept.
    Follow {
        /// The resolved target.
        target: Url,
        /// Target origin equals the registry origin.
        same_origin: bool,
    },
    /// Relay to the client with this absolute `Location`.
    Pass {
        /// The absolute `Location` to send.
        location: String,
    },
    /// 502: too many hops, bad scheme, downgrade, userinfo, unparsable.
    Refuse(&'static str),
}

/// Statuses that are redirects to follow (301, 302, 303, 307, 308).
pub fn is_redirect(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308)
}

/// Decides an upstream 3xx. `current` is the URL that received it, `hops_done` how many hops were
/// already followed for this request.
pub fn decide(config: &Config, registry: &Registry, current: &Url, location: &str, hops_done: u8) -> RedirectDecision {
    let _ = (config, registry, current, location, hops_done);
    todo!()
}

/// True when `host` contains an entry of the blocked list (always followed).
pub fn is_blocked_host(config: &Config, host: &str) -> bool {
    let _ = (config, host);
    todo!()
}

/// True when a token realm may receive a token request for `registry` (SECURITY.md §2.8):
/// https (http only for a development registry), no userinfo, on the allowlist if one is set,
/// otherwise not an IP literal and not `localhost`.
pub fn realm_allowed(registry: &Registry, realm: &Url) -> bool {
    let _ = (registry, realm);
    todo!()
}
