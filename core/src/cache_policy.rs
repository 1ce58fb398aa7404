//! Cache policy (COMPAT.md §8; DESIGN.md §4): what may be cached, under which key, and whether a
//! cached tag is fresh, needs a HEAD, or may be served stale.

use core::time::Duration;

use http::HeaderMap;

use crate::reference::{Digest, Name, Tag};
use crate::time::Timestamp;

/// A cache key. The route host and client mode are never part of it; the registry always is.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CacheKey {
    /// A blob by digest.
    Blob {
        /// Registry name.
        registry: String,
        /// Digest.
        digest: Digest,
    },
    /// A manifest by digest (immutable).
    Manifest {
        /// Registry name.
        registry: String,
        /// Digest.
        digest: Digest,
    },
    /// A tag mapping.
    Tag {
        /// Registry name.
        registry: String,
        /// Repository (with `library/` on Docker Hub).
        name: Name,
        /// Tag.
        tag: Tag,
        /// Accept class (see [`accept_class`]).
        accept: String,
    },
}

/// The Accept class: the sorted, de-duplicated media types of all `Accept` lines, parameters and
/// q-values ignored, joined by `,`.
///
/// ```text
/// Accept: application/vnd.oci.image.index.v1+json, */*;q=0.5
/// accept: Application/Vnd.Docker.Distribution.Manifest.V2+json
///   ─► "*/*,application/vnd.docker.distribution.manifest.v2+json,application/vnd.oci.image.index.v1+json"
/// ```
///
/// Values that are not visible ASCII are ignored; no `Accept` at all gives the empty class.
pub fn accept_class(headers: &HeaderMap) -> String {
    // Borrowed slices where possible: this runs on every manifest request (hits included).
    let mut types: Vec<std::borrow::Cow<'_, str>> = headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(bare_media_type)
        .filter(|t| !t.is_empty())
        .collect();
    types.sort_unstable();
    types.dedup();
    let mut class = String::with_capacity(types.iter().map(|t| t.len() + 1).sum());
    for t in &types {
        if !class.is_empty() {
            class.push(',');
        }
        class.push_str(t);
    }
    class
}

/// A media type without parameters, trimmed and lower-case (borrowed when it already is).
fn bare_media_type(s: &str) -> std::borrow::Cow<'_, str> {
    let t = s.split(';').next().unwrap_or("").trim();
    if t.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(t.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(t)
    }
}

/// Manifest media types a registry does not serve to a request without `Accept`: OCI manifests
/// and indexes get 404, and a Docker manifest list is replaced by one platform's manifest
/// (TESTBED.md §7 gotcha 2).
const NEEDS_ACCEPT: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// True when `media_type` is acceptable under the given Accept class (empty class = anything
/// except what a registry would refuse to serve without Accept; `*/*` accepts everything).
///
/// Parameters of `media_type` are ignored and the comparison is case-insensitive. An entry
/// `type/*` accepts every subtype of `type`. The empty class refuses the OCI manifest and index
/// types and the Docker manifest list, and accepts everything else (Docker schema 2 and schema 1
/// manifests included).
pub fn accepts(accept_class: &str, media_type: &str) -> bool {
    let media_type = bare_media_type(media_type);
    if accept_class.is_empty() {
        return !NEEDS_ACCEPT.contains(&media_type.as_ref());
    }
    accept_class.split(',').map(bare_media_type).any(|entry| {
        if entry == "*/*" || entry == media_type {
            return true;
        }
        // `type/*`: compare the `type/` part.
        entry.strip_suffix('*').is_some_and(|prefix| {
            prefix.ends_with('/') && prefix.len() > 1 && media_type.starts_with(prefix)
        })
    })
}

/// The `X-Cache` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XCache {
    /// Served from the local store.
    Hit,
    /// Fetched from upstream and being stored.
    Miss,
    /// The store was not used.
    Bypass,
}

impl XCache {
    /// `HIT`, `MISS` or `BYPASS`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "HIT",
            Self::Miss => "MISS",
            Self::Bypass => "BYPASS",
        }
    }
}

/// Freshness decision for a cached tag mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TagFreshness {
    /// Younger than the TTL: serve.
    Fresh,
    /// Older: revalidate with one upstream HEAD.
    Revalidate,
}

/// Decides freshness of a tag validated at `validated_at`.
/// A TTL of zero always revalidates. A validation time in the future counts as age zero.
pub fn tag_freshness(validated_at: Timestamp, now: Timestamp, ttl: Duration) -> TagFreshness {
    if now.saturating_since(validated_at) < ttl {
        TagFreshness::Fresh
    } else {
        TagFreshness::Revalidate
    }
}

/// After a failed revalidation: may the stale copy be served? Only on a transient failure
/// (5xx, 429, timeout, connect error), a public repository, and within `max_stale`.
/// The age is measured from the last successful validation.
pub fn may_serve_stale(
    validated_at: Timestamp,
    now: Timestamp,
    max_stale: Duration,
    public: bool,
    transient: bool,
) -> bool {
    transient && public && now.saturating_since(validated_at) <= max_stale
}

/// True when a response with this status to a GET may be stored (only complete `200`s).
pub fn is_storable_status(status: u16) -> bool {
    status == 200
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use http::header::ACCEPT;

    const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    const DOCKER_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
    const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    const DOCKER_V1: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

    fn accept(lines: &[&str]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for l in lines {
            m.append(ACCEPT, HeaderValue::from_str(l).unwrap());
        }
        m
    }

    #[test]
    fn class_is_sorted_deduplicated_and_parameter_free() {
        let m = accept(&[
            "Application/Vnd.OCI.Image.Index.v1+json; q=0.9, application/json ;charset=utf-8",
            " application/vnd.oci.image.index.v1+json ,, */*;q=0.1",
        ]);
        assert_eq!(
            accept_class(&m),
            format!("*/*,application/json,{OCI_INDEX}")
        );
        assert_eq!(accept_class(&HeaderMap::new()), "");
        assert_eq!(accept_class(&accept(&[" , ;q=1"])), "");
    }

    #[test]
    fn class_ignores_line_order() {
        let a = accept(&[DOCKER_V2, OCI_INDEX]);
        let b = accept(&[&format!("{OCI_INDEX}, {DOCKER_V2}")]);
        let c = accept(&[OCI_INDEX, DOCKER_V2, DOCKER_V2]);
        assert_eq!(accept_class(&a), accept_class(&b));
        assert_eq!(accept_class(&a), accept_class(&c));
    }

    #[test]
    fn empty_class_refuses_types_that_need_accept() {
        assert!(!accepts("", OCI_MANIFEST));
        assert!(!accepts("", OCI_INDEX));
        assert!(!accepts("", DOCKER_LIST));
        assert!(accepts("", DOCKER_V2));
        assert!(accepts("", DOCKER_V1));
    }

    #[test]
    fn explicit_classes() {
        let class = format!("{DOCKER_V2},{OCI_MANIFEST}");
        assert!(accepts(
            &class,
            "Application/Vnd.Docker.Distribution.Manifest.V2+JSON; charset=utf-8"
        ));
        assert!(accepts(&class, OCI_MANIFEST));
        assert!(!accepts(&class, OCI_INDEX));
        assert!(accepts("*/*", OCI_INDEX));
        assert!(accepts("application/json,*/*", "text/plain"));
        assert!(accepts("application/*", OCI_INDEX));
        assert!(!accepts("text/*", OCI_INDEX));
        assert!(!accepts("application/json", "application/jsonx"));
    }

    #[test]
    fn freshness_boundaries() {
        let t0 = Timestamp::from_millis(1_000_000);
        let ttl = Duration::from_secs(600);
        assert_eq!(tag_freshness(t0, t0, ttl), TagFreshness::Fresh);
        assert_eq!(
            tag_freshness(t0, t0 + Duration::from_millis(599_999), ttl),
            TagFreshness::Fresh
        );
        assert_eq!(tag_freshness(t0, t0 + ttl, ttl), TagFreshness::Revalidate);
        assert_eq!(
            tag_freshness(t0, t0, Duration::ZERO),
            TagFreshness::Revalidate
        );
        // A validation time ahead of `now` (clock step back) counts as age zero.
        assert_eq!(tag_freshness(t0 + ttl, t0, ttl), TagFreshness::Fresh);
    }

    #[test]
    fn stale_only_when_transient_public_and_young_enough() {
        let t0 = Timestamp::from_millis(5_000);
        let max = Duration::from_secs(86_400);
        let at_limit = t0 + max;
        assert!(may_serve_stale(t0, at_limit, max, true, true));
        assert!(!may_serve_stale(
            t0,
            at_limit + Duration::from_millis(1),
            max,
            true,
            true
        ));
        assert!(!may_serve_stale(t0, t0, max, false, true));
        assert!(!may_serve_stale(t0, t0, max, true, false));
    }

    #[test]
    fn only_200_is_storable() {
        assert!(is_storable_status(200));
        for s in [201, 203, 206, 304, 307, 404, 500] {
            assert!(!is_storable_status(s), "{s}");
        }
    }

    #[test]
    fn x_cache_strings() {
        assert_eq!(XCache::Hit.as_str(), "HIT");
        assert_eq!(XCache::Miss.as_str(), "MISS");
        assert_eq!(XCache::Bypass.as_str(), "BYPASS");
    }
}
