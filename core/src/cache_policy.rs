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
pub fn accept_class(headers: &HeaderMap) -> String {
    let _ = headers;
    todo!()
}

/// True when `media_type` is acceptable under the given Accept class (empty class = anything
/// except what a registry would refuse to serve without Accept; `*/*` accepts everything).
pub fn accepts(accept_class: &str, media_type: &str) -> bool {
    let _ = (accept_class, media_type);
    todo!()
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
pub fn tag_freshness(validated_at: Timestamp, now: Timestamp, ttl: Duration) -> TagFreshness {
    let _ = (validated_at, now, ttl);
    todo!()
}

/// After a failed revalidation: may the stale copy be served? Only on a transient failure
/// (5xx, 429, timeout, connect error), a public repository, and within `max_stale`.
pub fn may_serve_stale(validated_at: Timestamp, now: Timestamp, max_stale: Duration, public: bool, transient: bool) -> bool {
    let _ = (validated_at, now, max_stale, public, transient);
    todo!()
}

/// True when a response with this status to a GET may be stored (only complete `200`s).
pub fn is_storable_status(status: u16) -> bool {
    status == 200
}
