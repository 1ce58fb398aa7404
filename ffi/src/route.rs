//! Routing (`dp_route`) and request classification (`dp_classify`): the core's decisions about
//! one request, without starting an exchange.

use core::ffi::c_char;

use dockerproxy_core::reference::Reference;
use dockerproxy_core::request::{Classified, RegistryRequest, classify};
use dockerproxy_core::route::{HostKind, RouteResult, route};

use crate::error::dp_result;
use crate::headers::{dp_str, utf8, write};
use crate::panic::{check_null, guard, guard_value};
use crate::proxy::dp_proxy;

/// How a request was routed.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum dp_route_kind {
    /// A registry was chosen.
    DP_ROUTE_ROUTED = 0,
    /// The host is not served: answer with the unknown-host body.
    DP_ROUTE_UNKNOWN_HOST = 1,
    /// A routing error (bad `ns`, prefix/host disagreement): `error_*` fields are set.
    DP_ROUTE_ERROR = 2,
}

/// How the host matched.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum dp_host_kind {
    /// Not routed.
    DP_HOST_NONE = 0,
    /// A route host bound to one registry.
    DP_HOST_ROUTE = 1,
    /// A `mirror_hosts` entry.
    DP_HOST_MIRROR = 2,
    /// The debug fallback (`TARGET_UPSTREAM`).
    DP_HOST_DEBUG_FALLBACK = 3,
}

/// A view of a routing result. Every string points into the `dp_route_result` it was read
/// from and lives as long as that handle; absent strings are `{NULL, 0}`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[allow(non_camel_case_types)]
pub struct dp_route_info {
    /// Outcome.
    pub kind: dp_route_kind,
    /// Registry name (`docker.io`).
    pub registry: dp_str,
    /// How the host matched.
    pub host_kind: dp_host_kind,
    /// Public host for realms and `Location`s.
    pub public_host: dp_str,
    /// The port in the host value, or -1.
    pub port: i32,
    /// The accepted `ns`, to echo as `OCI-Namespace`.
    pub ns: dp_str,
    /// The removed path prefix registry segment.
    pub prefix: dp_str,
    /// The path to forward (prefix removed).
    pub path: dp_str,
    /// The realm gets `?ns=`.
    pub realm_ns: bool,
    /// `DP_ROUTE_ERROR`: HTTP status, else 0.
    pub error_status: u16,
    /// `DP_ROUTE_ERROR`: OCI error code (`NAME_UNKNOWN`).
    pub error_code: dp_str,
    /// `DP_ROUTE_ERROR` and `DP_ROUTE_UNKNOWN_HOST`: the JSON body to answer with.
    pub error_body: dp_str,
}

/// An owned routing result. Opaque; from `dp_route`, released by `dp_route_result_free`.
#[allow(non_camel_case_types)]
pub struct dp_route_result {
    kind: dp_route_kind,
    registry: Option<String>,
    host_kind: dp_host_kind,
    public_host: Option<String>,
    port: i32,
    ns: Option<String>,
    prefix: Option<String>,
    path: Option<String>,
    realm_ns: bool,
    error_status: u16,
    error_code: Option<&'static str>,
    error_body: Option<Vec<u8>>,
}

/// Routes a request: `host` is the `Host` header value, `path` the raw path (no query),
/// `query` the raw query without `?` (NULL with length 0 when absent). Inputs are copied.
///
/// On success writes a new handle to `*out`, owned by the caller and released with
/// `dp_route_result_free`; it does not reference the proxy. `DP_INVALID_ARGUMENT` when an
/// input is not UTF-8.
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_route(
    proxy: *const dp_proxy,
    host: *const c_char,
    host_len: usize,
    path: *const c_char,
    path_len: usize,
    query: *const c_char,
    query_len: usize,
    out: *mut *mut dp_route_result,
) -> dp_result {
    guard(|| {
        check_null!(proxy, path, out);
        // SAFETY: the caller passes a live proxy and readable strings of the given lengths.
        let (p, host, path) = unsafe {
            (
                dp_proxy::borrow(proxy),
                utf8(host, host_len)?,
                utf8(path, path_len)?,
            )
        };
        // SAFETY: as above.
        let query = (!query.is_null())
            .then(|| unsafe { utf8(query, query_len) })
            .transpose()?;
        let host = (!host.is_empty()).then_some(host);
        let config = &p.config;
        let mut r = dp_route_result {
            kind: dp_route_kind::DP_ROUTE_UNKNOWN_HOST,
            registry: None,
            host_kind: dp_host_kind::DP_HOST_NONE,
            public_host: None,
            port: -1,
            ns: None,
            prefix: None,
            path: None,
            realm_ns: false,
            error_status: 0,
            error_code: None,
            error_body: None,
        };
        match route(config, host, path, query) {
            RouteResult::Routed(routed) => {
                r.kind = dp_route_kind::DP_ROUTE_ROUTED;
                r.registry = config
                    .registries
                    .get(routed.registry)
                    .map(|reg| reg.name.clone());
                r.host_kind = match routed.host_kind {
                    HostKind::Route => dp_host_kind::DP_HOST_ROUTE,
                    HostKind::Mirror => dp_host_kind::DP_HOST_MIRROR,
                    HostKind::DebugFallback => dp_host_kind::DP_HOST_DEBUG_FALLBACK,
                };
                r.public_host = Some(routed.public_host);
                r.port = routed.port.map_or(-1, i32::from);
                r.ns = routed.namespace;
                r.prefix = routed.prefix;
                r.path = Some(routed.path);
                r.realm_ns = routed.realm_ns;
            }
            RouteResult::UnknownHost => {
                r.error_body = Some(dockerproxy_core::route::unknown_host_body(config).to_vec());
            }
            RouteResult::Error(e, ns) => {
                r.kind = dp_route_kind::DP_ROUTE_ERROR;
                r.ns = ns;
                r.error_status = e.status.as_u16();
                r.error_code = Some(e.code.as_str());
                r.error_body = Some(e.body().to_vec());
            }
        }
        // SAFETY: `out` is non-NULL and writable.
        unsafe { write(out, Box::into_raw(Box::new(r))) };
        Ok(())
    })
}

/// Writes the fields of a routing result to `*out`. The strings live as long as `result`.
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_route_result_info(
    result: *const dp_route_result,
    out: *mut dp_route_info,
) -> dp_result {
    guard(|| {
        check_null!(result, out);
        // SAFETY: the caller passes a live handle from `dp_route`.
        let r = unsafe { &*result };
        let info = dp_route_info {
            kind: r.kind,
            registry: dp_str::from_opt(r.registry.as_deref()),
            host_kind: r.host_kind,
            public_host: dp_str::from_opt(r.public_host.as_deref()),
            port: r.port,
            ns: dp_str::from_opt(r.ns.as_deref()),
            prefix: dp_str::from_opt(r.prefix.as_deref()),
            path: dp_str::from_opt(r.path.as_deref()),
            realm_ns: r.realm_ns,
            error_status: r.error_status,
            error_code: dp_str::from_opt(r.error_code),
            error_body: r
                .error_body
                .as_deref()
                .map_or(dp_str::NONE, dp_str::from_bytes),
        };
        // SAFETY: `out` is non-NULL and writable.
        unsafe { write(out, info) };
        Ok(())
    })
}

/// Releases a routing result from `dp_route`. NULL is ignored. Strings read from it become
/// invalid.
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_route_result_free(result: *mut dp_route_result) {
    guard_value((), || {
        if !result.is_null() {
            // SAFETY: from `Box::into_raw` in `dp_route`; the caller gives it up.
            drop(unsafe { Box::from_raw(result) });
        }
    });
}

/// What a path asks for.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum dp_request_kind {
    /// `/`.
    DP_REQUEST_ROOT = 0,
    /// `/v2/`.
    DP_REQUEST_BASE = 1,
    /// `/v2/auth`.
    DP_REQUEST_AUTH = 2,
    /// `/v2/<name>/manifests/<reference>`.
    DP_REQUEST_MANIFEST = 3,
    /// `/v2/<name>/blobs/<digest>`.
    DP_REQUEST_BLOB = 4,
    /// `/v2/<name>/blobs/uploads/...`.
    DP_REQUEST_UPLOAD = 5,
    /// `/v2/<name>/tags/list`.
    DP_REQUEST_TAGS = 6,
    /// `/v2/<name>/referrers/<digest>`.
    DP_REQUEST_REFERRERS = 7,
    /// `/v2/_catalog`.
    DP_REQUEST_CATALOG = 8,
    /// Any other path.
    DP_REQUEST_OTHER = 9,
    /// Invalid: `error_status` and `error_code` say how to answer.
    DP_REQUEST_INVALID = 10,
}

/// The classification of a path, written by `dp_classify` into caller memory. Strings point
/// into the static tables or into `buf` given to `dp_classify` (see there).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[allow(non_camel_case_types)]
pub struct dp_classification {
    /// What the path asks for.
    pub kind: dp_request_kind,
    /// Repository name, when the request names one.
    pub name: dp_str,
    /// Tag or digest of a manifest request; digest of a blob or referrers request.
    pub reference: dp_str,
    /// The reference is a digest.
    pub reference_is_digest: bool,
    /// `DP_REQUEST_INVALID`: the HTTP status to answer with; else 0.
    pub error_status: u16,
    /// `DP_REQUEST_INVALID`: the OCI error code (static string).
    pub error_code: dp_str,
}

/// Classifies a raw path (percent-encoded, registry prefix removed) per the distribution-spec
/// grammar. `buf` (capacity `buf_cap`, at least 512 bytes is always enough) receives the name
/// and reference bytes that `out`'s strings point at, so they live as long as `buf`.
///
/// Returns `DP_OK` and fills `*out` also for invalid paths (`kind == DP_REQUEST_INVALID`, with
/// the status and code to answer); `DP_OUT_OF_RANGE` when `buf` is too small (nothing written).
///
/// # Safety
/// Every non-NULL pointer must be valid for the accesses described above, and every
/// handle must be a live one from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dp_classify(
    path: *const c_char,
    path_len: usize,
    buf: *mut u8,
    buf_cap: usize,
    out: *mut dp_classification,
) -> dp_result {
    guard(|| {
        check_null!(path, buf, out);
        // SAFETY: the caller passes `path_len` readable bytes.
        let path = unsafe { utf8(path, path_len) }?;
        let mut c = dp_classification {
            kind: dp_request_kind::DP_REQUEST_OTHER,
            name: dp_str::NONE,
            reference: dp_str::NONE,
            reference_is_digest: false,
            error_status: 0,
            error_code: dp_str::NONE,
        };
        let (name, reference) = match classify(path) {
            Err(e) => {
                c.kind = dp_request_kind::DP_REQUEST_INVALID;
                c.error_status = e.status.as_u16();
                c.error_code = dp_str::from_str(e.code.as_str());
                (None, None)
            }
            Ok(Classified::Root) => {
                c.kind = dp_request_kind::DP_REQUEST_ROOT;
                (None, None)
            }
            Ok(Classified::Other) => (None, None),
            Ok(Classified::Registry(req)) => {
                let name = req.name().map(|n| n.as_str().to_owned());
                let (kind, reference) = match &req {
                    RegistryRequest::Base => (dp_request_kind::DP_REQUEST_BASE, None),
                    RegistryRequest::Auth => (dp_request_kind::DP_REQUEST_AUTH, None),
                    RegistryRequest::Manifest { reference, .. } => {
                        c.reference_is_digest = matches!(reference, Reference::Digest(_));
                        (
                            dp_request_kind::DP_REQUEST_MANIFEST,
                            Some(reference.to_string()),
                        )
                    }
                    RegistryRequest::Blob { digest, .. } => {
                        c.reference_is_digest = true;
                        (dp_request_kind::DP_REQUEST_BLOB, Some(digest.to_string()))
                    }
                    RegistryRequest::Upload { .. } => (dp_request_kind::DP_REQUEST_UPLOAD, None),
                    RegistryRequest::Tags { .. } => (dp_request_kind::DP_REQUEST_TAGS, None),
                    RegistryRequest::Referrers { digest, .. } => {
                        c.reference_is_digest = true;
                        (
                            dp_request_kind::DP_REQUEST_REFERRERS,
                            Some(digest.to_string()),
                        )
                    }
                    RegistryRequest::Catalog => (dp_request_kind::DP_REQUEST_CATALOG, None),
                };
                c.kind = kind;
                (name, reference)
            }
        };
        let name = name.unwrap_or_default();
        let reference = reference.unwrap_or_default();
        let need = name.len().saturating_add(reference.len());
        if need > buf_cap {
            return Err(dp_result::DP_OUT_OF_RANGE);
        }
        // SAFETY: `buf` has `buf_cap >= need` writable bytes; sources are fresh Strings.
        unsafe {
            core::ptr::copy_nonoverlapping(name.as_ptr(), buf, name.len());
            core::ptr::copy_nonoverlapping(
                reference.as_ptr(),
                buf.add(name.len()),
                reference.len(),
            );
        }
        if !name.is_empty() {
            c.name = dp_str {
                data: buf.cast_const().cast(),
                len: name.len(),
            };
        }
        if !reference.is_empty() {
            // SAFETY: `name.len() <= buf_cap`, so the offset stays inside `buf`.
            let at = unsafe { buf.add(name.len()) };
            c.reference = dp_str {
                data: at.cast_const().cast(),
                len: reference.len(),
            };
        }
        // SAFETY: `out` is non-NULL and writable.
        unsafe { write(out, c) };
        Ok(())
    })
}
