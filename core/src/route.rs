//! Routing: `Host` / `?ns=` / path prefix → registry (COMPAT.md §1).
//!
//! Decides only from the static table in [`Config`]; no request field can name an upstream
//! outside it. Forwarded-host headers are considered only when the caller says the peer is
//! trusted.

use bytes::Bytes;

use crate::config::{Config, RegistryId};
use crate::oci_error::OciError;

/// A `Host` value split into host and port (COMPAT.md §1.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    /// Lower-case host without trailing dot; IPv6 literals keep their brackets.
    pub host: String,
    /// The port, if one was given.
    pub port: Option<u16>,
}

/// Normalises a `Host` header value. `None` for a missing, empty or unusable value.
pub fn normalize_host(raw: &str) -> Option<HostPort> {
    let _ = raw;
    todo!()
}

/// How a route host matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostKind {
    /// One of the route hosts (bound to one registry).
    Route,
    /// A `mirror_hosts` entry (any registry by `ns` or prefix, Docker Hub by default).
    Mirror,
    /// The debug fallback (`TARGET_UPSTREAM`).
    DebugFallback,
}

/// A successfully routed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routed {
    /// The chosen registry.
    pub registry: RegistryId,
    /// How the host matched.
    pub host_kind: HostKind,
    /// The public host name for realms and `Location`s (from the table, never request text,
    /// except in debug fallback).
    pub public_host: String,
    /// The port in the matched host value, if any.
    pub port: Option<u16>,
    /// The accepted `ns` (canonical registry name) to echo as `OCI-Namespace`.
    pub namespace: Option<String>,
    /// The path prefix registry segment that was removed (`ghcr.io`), to put back into
    /// `Location`s.
    pub prefix: Option<String>,
    /// The path to forward (prefix removed), starting with `/`.
    pub path: String,
    /// True when `ns` or a prefix chose the registry on a mirror host: the realm gets `?ns=`.
    pub realm_ns: bool,
}

/// The result of routing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteResult {
    /// A route was found.
    Routed(Routed),
    /// Unknown host: answer with [`unknown_host_body`].
    UnknownHost,
    /// A routing error (bad `ns`, prefix/host disagreement), with the `OCI-Namespace` to echo.
    Error(OciError, Option<String>),
}

/// Routes a request. `host` is the effective host value (the caller has already substituted a
/// trusted `X-Forwarded-Host`), `path` the raw path, `query` the raw query without `?`.
pub fn route(config: &Config, host: Option<&str>, path: &str, query: Option<&str>) -> RouteResult {
    let _ = (config, host, path, query);
    todo!()
}

/// The 404 body for unknown hosts (COMPAT.md §1.3): the sorted route listing, or with
/// `hide_routes` an OCI `NAME_UNKNOWN` error. One line plus `\n`.
pub fn unknown_host_body(config: &Config) -> Bytes {
    let _ = config;
    todo!()
}
