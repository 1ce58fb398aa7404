//! One client request's state machine (DESIGN.md §3 `Exchange`).
//!
//! Contract (str0m style): create with [`Exchange::new`], then call [`Exchange::poll_action`]
//! until it returns [`Action::Wait`] or [`Action::Done`]; after every `handle_*` call, poll again.
//! Blob bytes never pass through the exchange: [`BodyPlan::Upstream`] tells the wrapper to stream
//! the current upstream body (through a [`crate::verifier::Verifier`] when a digest is given).

use std::net::IpAddr;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use url::Url;

use crate::cache_policy::{CacheKey, XCache};
use crate::reference::{Digest, Name};
use crate::token::Identity;

/// The head of a client request, as the wrapper received it.
#[derive(Clone, Debug)]
pub struct RequestHead {
    /// Method.
    pub method: Method,
    /// The raw request-target (`/v2/...?...`), percent-encoding untouched.
    pub target: String,
    /// Headers, repeated lines kept (`HeaderMap::append`).
    pub headers: HeaderMap,
    /// TCP peer address.
    pub peer: Option<IpAddr>,
    /// The client connection is TLS.
    pub tls: bool,
}

/// Host-independent endpoints the wrapper renders itself (they need process state).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalEndpoint {
    /// `/health`, `/healthz`.
    Health,
    /// `/readyz`.
    Ready,
    /// `/stats`.
    Stats,
    /// `/stats/cache`.
    StatsCache,
    /// `/metrics`.
    Metrics,
}

/// Why the exchange sends an upstream request (for metrics and logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// The client's `/v2/` ping.
    Ping,
    /// `GET /v2/` without credentials to learn the realm for `/v2/auth`.
    RealmDiscovery,
    /// A token request to the realm.
    Token,
    /// The client's manifest, blob, tags, ... request.
    Resource,
    /// A followed redirect hop.
    RedirectHop,
    /// A HEAD (or `Range: bytes=0-0` GET) that learns a size without downloading.
    SizeProbe,
}

/// The body of an upstream request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamBody {
    /// No body.
    Empty,
    /// These bytes (a token form).
    Bytes(Bytes),
    /// Stream the client's request body (push with `allow_push`).
    Client,
}

/// A request the wrapper must send.
#[derive(Clone, Debug)]
pub struct UpstreamRequest {
    /// Method.
    pub method: Method,
    /// Absolute URL (the wrapper dials its host after the address check).
    pub url: Url,
    /// Headers to send (the wrapper adds `Host` from the URL).
    pub headers: HeaderMap,
    /// Body.
    pub body: UpstreamBody,
    /// Why.
    pub purpose: Purpose,
    /// Registry name, for metrics.
    pub registry: String,
    /// Follow no redirect at transport level (always true: the core decides redirects).
    pub follow_redirects: bool,
}

/// The head of an upstream response.
#[derive(Clone, Debug)]
pub struct UpstreamHead {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
}

/// Transport failures the wrapper reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamError {
    /// DNS, connect, TLS or protocol failure before a response head.
    Unreachable,
    /// Connect or response-header timeout.
    Timeout,
    /// The body exceeded the limit of [`Action::ReadUpstreamBody`].
    TooLarge,
    /// The body could not be read completely.
    BodyFailed,
    /// The address policy refused the dialled address.
    Denied,
}

/// What the client gets as a body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyPlan {
    /// No body (HEAD, 301, ...).
    Empty,
    /// These bytes.
    Bytes(Bytes),
    /// Stream the current upstream response body; verify against `verify` when set (abort the
    /// client stream on mismatch); `store` says where a verified complete body may be cached.
    Upstream {
        /// Digest to verify while streaming.
        verify: Option<Digest>,
        /// Where to cache the verified complete body, if cacheable.
        store: Option<StoreTarget>,
    },
    /// Serve from the cache store.
    Cache {
        /// Key.
        key: CacheKey,
        /// Inclusive byte range for a 206.
        range: Option<(u64, u64)>,
    },
}

/// A response for the client.
#[derive(Clone, Debug)]
pub struct Response {
    /// Status.
    pub status: StatusCode,
    /// Headers (the wrapper adds framing headers only).
    pub headers: HeaderMap,
    /// Body.
    pub body: BodyPlan,
    /// `X-Cache` value, when the path is a manifest or blob (also present in `headers`).
    pub x_cache: Option<XCache>,
}

/// Where a verified upstream body is cached: the key, and the repository it was fetched through
/// (a blob becomes readable through that repository, COMPAT.md §8.6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreTarget {
    /// Cache key.
    pub key: CacheKey,
    /// Repository the object was fetched through.
    pub repository: Name,
    /// The inclusive byte range the client gets (a `206` served from the growing fill once the
    /// verifier released it), while the whole blob is fetched and stored; `None`: the whole body.
    /// Only planned after [`CacheResult::Lead`].
    pub range: Option<(u64, u64)>,
}

/// A cache lookup: the key, plus what the store needs to answer the authorisation questions of
/// COMPAT.md §8.6 for this request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheQuery {
    /// Key.
    pub key: CacheKey,
    /// Repository of the request.
    pub repository: Name,
    /// The request's identity toward the upstream.
    pub identity: Identity,
}

/// What the store knows about a request's right to a cached object (COMPAT.md §8.6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Access {
    /// The repository is public: a request without any credential succeeded upstream within
    /// the manifest TTL.
    pub public: bool,
    /// This identity got a 2xx/3xx from the upstream for this repository within the decision
    /// window (60 s).
    pub granted: bool,
    /// A request without any credential succeeded within `max_stale`: a stale copy of a tag may
    /// be served on a transient upstream failure (COMPAT.md §8.5). Never a proof for a hit.
    pub public_within_max_stale: bool,
    /// The object is linked to the repository: fetched through it, or listed in one of its
    /// cached manifests. Tags are always linked to their own repository.
    pub linked: bool,
}

impl Access {
    /// True when a hit may be served without asking the upstream.
    pub fn allows(self) -> bool {
        self.linked && (self.public || self.granted)
    }
}

/// What the cache store found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheResult {
    /// No entry (or the cache is off or broken).
    Miss,
    /// No entry, and this request leads the store's fill of it (a blob): the verified body of a
    /// whole `200` answer is stored, and the store can serve a byte range of it while it fills.
    /// The exchange then asks for the whole blob even for a `Range` request and answers the
    /// range from the fill (COMPAT.md §8.4). Only a wrapper with a fill-capable store answers
    /// this; any other treats every miss as [`CacheResult::Miss`].
    Lead,
    /// A blob of this size is stored.
    Blob {
        /// Size in bytes.
        size: u64,
        /// The request's access.
        access: Access,
    },
    /// A manifest stored by digest (immutable), or the manifest a tag maps to.
    Manifest {
        /// Its digest.
        digest: Digest,
        /// Stored `Content-Type`.
        media_type: String,
        /// Bytes.
        body: Bytes,
        /// The request's access.
        access: Access,
        /// For a tag: when the mapping was last validated upstream. `None` for digests.
        validated_at: Option<crate::Timestamp>,
    },
}

/// A successful upstream answer for a repository, to remember as an authorisation proof.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessRecord {
    /// Registry name.
    pub registry: String,
    /// Repository.
    pub repository: Name,
    /// Identity that succeeded.
    pub identity: Identity,
    /// The upstream request carried no credential at all (or only an anonymous token): the
    /// repository is public.
    pub anonymous: bool,
}

/// A verified manifest to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestEntry {
    /// Repository it was fetched through.
    pub repository: Name,
    /// The key of the manifest by digest.
    pub key: CacheKey,
    /// The tag mapping key, when fetched by tag.
    pub tag: Option<CacheKey>,
    /// The computed digest.
    pub digest: Digest,
    /// `Content-Type` to serve it with.
    pub media_type: String,
    /// The exact bytes.
    pub body: Bytes,
}

/// The next thing the wrapper must do.
#[derive(Clone, Debug)]
pub enum Action {
    /// Render a host-independent endpoint.
    Local(LocalEndpoint),
    /// Send this upstream request; answer with `handle_upstream_head` or `handle_upstream_error`.
    /// Any previous upstream response is dropped.
    SendUpstream(UpstreamRequest),
    /// Read the whole current upstream body, at most `limit` bytes; answer with
    /// `handle_upstream_body` or `handle_upstream_error(TooLarge | BodyFailed)`.
    ReadUpstreamBody {
        /// Byte limit.
        limit: usize,
    },
    /// Look up the cache; answer with `handle_cache_result`.
    CacheLookup(CacheQuery),
    /// Remember an authorisation proof. No answer is expected.
    RecordAccess(AccessRecord),
    /// A cached tag mapping was confirmed upstream now (revalidation HEAD). No answer.
    TagValidated(CacheKey),
    /// Forget a tag mapping (the upstream answered 401/403/404 for it). No answer.
    TagDrop(CacheKey),
    /// Store a verified manifest (by digest, and the tag mapping when `tag` is set). No answer is
    /// expected; a failure to store is the wrapper's to log.
    CacheStore(ManifestEntry),
    /// Look up the shared token cache (the proxy's own upstream tokens, COMPAT.md §4.3); answer
    /// with `handle_token_lookup`. The wrapper resolves [`crate::token::TokenLookup::Wait`]
    /// itself (waits for the other fetch, then looks up again) and passes only `Hit` or `Fetch`.
    TokenLookup(crate::token::TokenKey),
    /// End of a fetch the exchange was granted by `Fetch`: store the token (`Some`) or release
    /// the key (`None`). No answer is expected.
    TokenStore {
        /// The key.
        key: crate::token::TokenKey,
        /// The token, or `None` when the fetch failed.
        token: Option<crate::token::Token>,
    },
    /// Drop a cached token that the registry refused. No answer is expected.
    TokenInvalidate(crate::token::TokenKey),
    /// Read the client's request body (the `/v2/auth` POST form), at most `limit` bytes; answer with
    /// `handle_client_body` (`None` when it was larger or could not be read).
    ReadClientBody {
        /// Byte limit.
        limit: usize,
    },
    /// Check a proxy-login password (bcrypt: slow by design, so run
    /// [`crate::login::verify_password`] off the event loop); answer with
    /// `handle_password_result`. A wrapper may answer from a short memo of successes keyed by
    /// [`crate::login::memo_key`], and may throttle repeated failures.
    VerifyPassword(crate::login::PasswordCheck),
    /// Send this response. After it, poll again (normally `Done`).
    Respond(Response),
    /// Nothing to do until the deadline (or an input).
    Wait(crate::Timestamp),
    /// Finished.
    Done,
}

mod auth;
mod cache;
mod credentials;
mod forward;
mod login;
mod machine;
mod respond;

pub use machine::Exchange;
