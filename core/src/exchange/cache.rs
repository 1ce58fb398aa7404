//! Cache hits (COMPAT.md §8): the lookup, the authorisation proof a hit needs (§8.6), tag
//! revalidation with one upstream HEAD and serving stale on transient failures (§8.5).
//!
//! ```text
//! CacheLookup ─┬─ Miss ─────────────────────────────────────────────► forward (MISS)
//!              ├─ hit, access proven, fresh ────────────────────────► Respond (HIT)
//!              ├─ hit, no proof ──── HEAD as the client ─┬─ 2xx/3xx ► RecordAccess, Respond (HIT)
//!              │                                         └─ 401/403/404/5xx ► relayed, no byte
//!              └─ tag past TTL ───── HEAD + If-None-Match ┬─ same digest / 304 ► TagValidated, HIT
//!                                                         ├─ other digest ─────► GET (MISS)
//!                                                         ├─ 401/403/404 ──────► TagDrop, relayed
//!                                                         └─ 5xx/429/timeout ──► stale HIT + Warning
//!                                                                                 (public, ≤ max_stale)
//! ```

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};

use super::forward::Step;
use super::machine::Exchange;
use super::respond::{self, CONTENT_DIGEST, decorate};
use super::{
    AccessRecord, Action, BodyPlan, CacheQuery, CacheResult, Purpose, Response, StoreTarget,
    UpstreamBody, UpstreamError, UpstreamHead,
};
use crate::Timestamp;
use crate::cache_policy::{
    CacheKey, TagFreshness, XCache, accept_class, may_serve_stale, tag_freshness,
};
use crate::oci_error::ErrorCode;
use crate::reference::{Digest, Reference};
use crate::request::RegistryRequest;
use crate::token::Identity;

/// A cache hit waiting to be served (after a proof or a revalidation).
#[derive(Debug)]
pub(super) enum Hit {
    /// A blob of this size.
    Blob {
        /// Size.
        size: u64,
    },
    /// A manifest.
    Manifest {
        /// Digest.
        digest: Digest,
        /// Stored `Content-Type`.
        media_type: String,
        /// Bytes.
        body: Bytes,
        /// Tag validation time, `None` for digests.
        validated_at: Option<Timestamp>,
        /// Public repository (for serving stale).
        public: bool,
    },
}

/// Which upstream check is in flight for a hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Check {
    /// A HEAD with the client's identity, as an authorisation proof.
    Authorize,
    /// A HEAD with `If-None-Match`, revalidating a tag past its TTL.
    Revalidate,
}

impl Exchange {
    /// The request's identity toward the upstream (COMPAT.md §8.6): the proxy's own for
    /// anonymous clients on credentialed routes, a keyed hash of the client's `Authorization`,
    /// or anonymous.
    pub(super) fn identity(&self) -> Identity {
        if let Some(id) = &self.proxy_auth.identity {
            return id.clone();
        }
        match self.req.headers.get(header::AUTHORIZATION) {
            None => Identity::Anonymous,
            Some(v)
                if v.to_str()
                    .is_ok_and(crate::proxy_token::looks_like_proxy_token) =>
            {
                Identity::Anonymous
            }
            Some(v) => Identity::Client(crate::token::identity_hash(
                &self.config.secret_key,
                v.as_bytes(),
            )),
        }
    }

    /// The lookup for a cacheable read, when the cache is on.
    pub(super) fn cache_query(&self) -> Option<CacheQuery> {
        let key = self.cache_key()?;
        let repository = self.request.as_ref()?.name()?.clone();
        Some(CacheQuery {
            key,
            repository,
            identity: self.identity(),
        })
    }

    /// Remembers that the upstream just served this repository to this identity.
    pub(super) fn record_access(&mut self) {
        if !self.config.cache.enabled {
            return;
        }
        let Some(repository) = self.request.as_ref().and_then(|r| r.name()).cloned() else {
            return;
        };
        let identity = self.identity();
        let anonymous = identity == Identity::Anonymous;
        self.queue.push_back(Action::RecordAccess(AccessRecord {
            registry: self.registry().name.clone(),
            repository,
            identity,
            anonymous,
        }));
    }

    pub(super) fn on_cache_result(&mut self, result: CacheResult, now: Timestamp) {
        match result {
            CacheResult::Miss => self.send_resource(now),
            CacheResult::Lead => {
                // Only a blob GET can be served from a fill; for anything else a lead is a miss.
                self.lead = matches!(self.request, Some(RegistryRequest::Blob { .. }))
                    && self.req.method == Method::GET;
                self.send_resource(now);
            }
            CacheResult::Blob { size, access } => {
                self.hit = Some(Hit::Blob { size });
                if access.allows() {
                    self.serve_hit(None);
                } else {
                    self.send_check(Check::Authorize, now);
                }
            }
            CacheResult::Manifest {
                digest,
                media_type,
                body,
                access,
                validated_at,
            } => {
                // Never hand a client a media type its Accept lines exclude (a digest manifest
                // cached for another client): let the upstream decide instead. No Accept at all
                // accepts anything (HTTP semantics).
                let class = self.accept_class();
                if !class.is_empty() && !crate::cache_policy::accepts(class, &media_type) {
                    return self.send_resource(now);
                }
                let is_tag = matches!(
                    self.request,
                    Some(RegistryRequest::Manifest {
                        reference: Reference::Tag(_),
                        ..
                    })
                );
                let validated_at = if is_tag {
                    validated_at.or(Some(Timestamp::default()))
                } else {
                    None
                };
                self.hit = Some(Hit::Manifest {
                    digest,
                    media_type,
                    body,
                    validated_at,
                    public: access.public || access.public_within_max_stale,
                });
                let stale = validated_at.is_some_and(|at| {
                    tag_freshness(at, now, self.config.cache.manifest_ttl)
                        == TagFreshness::Revalidate
                });
                if stale {
                    self.send_check(Check::Revalidate, now);
                } else if access.allows() {
                    self.serve_hit(None);
                } else {
                    self.send_check(Check::Authorize, now);
                }
            }
        }
    }

    /// Sends the HEAD of a [`Check`] with the client's identity and `Accept` lines.
    pub(super) fn send_check(&mut self, check: Check, now: Timestamp) {
        self.check = Some(check);
        let path = self
            .routed
            .as_ref()
            .map(|r| r.path.clone())
            .unwrap_or_default();
        let query = self.query.clone();
        let Some(url) = self.upstream_url(&path, query.as_deref()) else {
            return self.respond_error(
                StatusCode::BAD_GATEWAY,
                ErrorCode::Unknown,
                "bad upstream URL",
            );
        };
        let mut headers = self.forwarded_headers();
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        headers.remove(header::RANGE);
        headers.remove(header::IF_RANGE);
        if check == Check::Revalidate
            && let Some(Hit::Manifest { digest, .. }) = &self.hit
            && let Ok(v) = HeaderValue::from_str(&format!("\"{digest}\""))
        {
            headers.insert(header::IF_NONE_MATCH, v);
        }
        self.send(
            Method::HEAD,
            url,
            headers,
            UpstreamBody::Empty,
            Purpose::Resource,
            Step::Check,
            now,
        );
    }

    /// The answer to a check HEAD.
    pub(super) fn on_check_head(&mut self, head: UpstreamHead, now: Timestamp) {
        let Some(check) = self.check else {
            return self.respond_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Unknown,
                "internal error",
            );
        };
        let status = head.status.as_u16();
        if status == 401 && self.on_proxy_auth_challenge(&head, now) {
            return;
        }
        match status {
            200..=399 => {
                if check == Check::Revalidate && status != 304 && !self.same_digest(&head) {
                    // The tag moved: fetch the new manifest (MISS), which replaces the mapping.
                    self.hit = None;
                    self.check = None;
                    return self.send_resource(now);
                }
                self.record_access();
                if check == Check::Revalidate
                    && let Some(key) = self.cache_key()
                {
                    self.queue.push_back(Action::TagValidated(key));
                }
                self.serve_hit(None);
            }
            401 | 403 | 404 => {
                self.drop_tag();
                self.check = None;
                self.respond_upstream_error(head);
            }
            _ => self.check_failed(Some(head), now),
        }
    }

    /// A check failed transiently (5xx, 429, timeout, unreachable): serve a public tag stale
    /// within `max_stale`, else relay the failure.
    pub(super) fn check_failed(&mut self, head: Option<UpstreamHead>, now: Timestamp) {
        let stale_ok = match (&self.hit, self.check) {
            (
                Some(Hit::Manifest {
                    validated_at: Some(at),
                    public,
                    ..
                }),
                Some(Check::Revalidate),
            ) => may_serve_stale(*at, now, self.config.cache.max_stale, *public, true),
            _ => false,
        };
        self.check = None;
        if stale_ok {
            return self.serve_hit(Some("299 - \"stale\""));
        }
        match head {
            Some(h) => self.respond_upstream_error(h),
            None => self.respond_error(
                StatusCode::BAD_GATEWAY,
                ErrorCode::Unavailable,
                "upstream unavailable",
            ),
        }
    }

    /// A transport error during a check.
    pub(super) fn on_check_error(&mut self, err: UpstreamError, now: Timestamp) {
        let transient = matches!(err, UpstreamError::Timeout | UpstreamError::Unreachable);
        if transient {
            let stale = matches!(
                self.hit,
                Some(Hit::Manifest {
                    validated_at: Some(_),
                    ..
                })
            ) && self.check == Some(Check::Revalidate);
            if stale {
                return self.check_failed(None, now);
            }
        }
        self.check = None;
        let (status, msg) = match err {
            UpstreamError::Timeout => (StatusCode::GATEWAY_TIMEOUT, "upstream timeout"),
            _ => (StatusCode::BAD_GATEWAY, "upstream unavailable"),
        };
        self.respond_error(status, ErrorCode::Unavailable, msg);
    }

    fn same_digest(&self, head: &UpstreamHead) -> bool {
        let Some(Hit::Manifest { digest, .. }) = &self.hit else {
            return true;
        };
        respond::header_str(&head.headers, "docker-content-digest")
            .and_then(|d| Digest::parse(d.trim()).ok())
            .is_some_and(|d| &d == digest)
    }

    fn drop_tag(&mut self) {
        if matches!(
            self.hit,
            Some(Hit::Manifest {
                validated_at: Some(_),
                ..
            })
        ) && let Some(key) = self.cache_key()
        {
            self.queue.push_back(Action::TagDrop(key));
        }
        self.hit = None;
    }

    /// Serves the pending hit (`warning` for a stale tag).
    fn serve_hit(&mut self, warning: Option<&'static str>) {
        self.check = None;
        match self.hit.take() {
            Some(Hit::Blob { size }) => self.respond_blob_hit(size),
            Some(Hit::Manifest {
                digest,
                media_type,
                body,
                ..
            }) => {
                self.respond_manifest(&digest, &media_type, body, XCache::Hit);
                if let (Some(w), Some(Action::Respond(resp))) = (warning, self.queue.back_mut()) {
                    resp.headers
                        .insert(header::WARNING, HeaderValue::from_static(w));
                }
            }
            None => self.respond_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Unknown,
                "internal error",
            ),
        }
    }

    /// The request's Accept class (see [`accept_class`]), computed on first use.
    pub(super) fn accept_class(&self) -> &str {
        self.accept_class
            .get_or_init(|| accept_class(&self.req.headers))
    }

    /// The cache key of a cacheable read, when the cache is on.
    pub(super) fn cache_key(&self) -> Option<CacheKey> {
        if !self.config.cache.enabled {
            return None;
        }
        let registry = self.registry().name.clone();
        match self.request.as_ref()? {
            RegistryRequest::Blob { digest, .. } => Some(CacheKey::Blob {
                registry,
                digest: digest.clone(),
            }),
            RegistryRequest::Manifest { name, reference } => Some(match reference {
                Reference::Digest(d) => CacheKey::Manifest {
                    registry,
                    digest: d.clone(),
                },
                Reference::Tag(t) => CacheKey::Tag {
                    registry,
                    name: name.clone(),
                    tag: t.clone(),
                    accept: self.accept_class().to_owned(),
                },
            }),
            _ => None,
        }
    }

    fn respond_blob_hit(&mut self, size: u64) {
        let Some(RegistryRequest::Blob { digest, .. }) = self.request.clone() else {
            return self.respond_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Unknown,
                "cache mismatch",
            );
        };
        let registry = self.registry().name.clone();
        let key = CacheKey::Blob {
            registry,
            digest: digest.clone(),
        };
        let range = self
            .req
            .headers
            .get(header::RANGE)
            .map(HeaderValue::as_bytes);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        insert_digest(&mut headers, &digest);
        let (status, body, len) = match crate::range::decide(range, size) {
            crate::range::RangeDecision::Full => {
                (StatusCode::OK, BodyPlan::Cache { key, range: None }, size)
            }
            crate::range::RangeDecision::Partial { start, end } => {
                if let Ok(v) = HeaderValue::from_str(&crate::range::content_range(start, end, size))
                {
                    headers.insert(header::CONTENT_RANGE, v);
                }
                (
                    StatusCode::PARTIAL_CONTENT,
                    BodyPlan::Cache {
                        key,
                        range: Some((start, end)),
                    },
                    end - start + 1,
                )
            }
            crate::range::RangeDecision::Unsatisfiable => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    headers.insert(header::CONTENT_RANGE, v);
                }
                (StatusCode::RANGE_NOT_SATISFIABLE, BodyPlan::Empty, 0)
            }
        };
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        let body = if self.is_head() {
            BodyPlan::Empty
        } else {
            body
        };
        let mut resp = Response {
            status,
            headers,
            body,
            x_cache: None,
        };
        let ns = self.namespace();
        decorate(&mut resp, ns.as_deref(), Some(XCache::Hit));
        self.respond(resp);
    }

    pub(super) fn respond_manifest(
        &mut self,
        digest: &Digest,
        media_type: &str,
        body: Bytes,
        x: XCache,
    ) {
        let mut headers = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(media_type) {
            headers.insert(header::CONTENT_TYPE, v);
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        insert_digest(&mut headers, digest);
        if let Ok(v) = HeaderValue::from_str(&format!("\"{digest}\"")) {
            headers.insert(header::ETAG, v);
        }
        let body = if self.is_head() {
            BodyPlan::Empty
        } else {
            BodyPlan::Bytes(body)
        };
        let mut resp = Response {
            status: StatusCode::OK,
            headers,
            body,
            x_cache: None,
        };
        let ns = self.namespace();
        decorate(&mut resp, ns.as_deref(), Some(x));
        self.respond(resp);
    }
}

impl Exchange {
    /// True when a `Range` GET of a blob is answered from the fill this request leads: the
    /// upstream is asked for the whole blob (no `Range`, verifiable) on every hop.
    pub(super) fn range_from_fill(&self) -> bool {
        self.lead && self.req.headers.contains_key(header::RANGE)
    }

    /// Answers a `Range` GET from the fill of the whole blob this request leads (COMPAT.md
    /// §8.4, SECURITY.md §2.4): the upstream's verified `200` is stored, and the client gets a
    /// `206` of the requested bytes as the verifier releases them (the last byte only once the
    /// digest matched), `416` for an unsatisfiable range, or the whole body (`200`) for a
    /// malformed or multiple range or when the upstream announced no length.
    pub(super) fn respond_range_from_fill(
        &mut self,
        head: UpstreamHead,
        digest: Digest,
        mut target: StoreTarget,
    ) {
        let size = respond::header_str(&head.headers, "content-length")
            .and_then(|v| v.trim().parse::<u64>().ok());
        let range = self
            .req
            .headers
            .get(header::RANGE)
            .map(HeaderValue::as_bytes);
        let decision = size.map(|size| (size, crate::range::decide(range, size)));
        let (status, extra, len) = match decision {
            None | Some((_, crate::range::RangeDecision::Full)) => (StatusCode::OK, None, None),
            Some((size, crate::range::RangeDecision::Partial { start, end })) => {
                target.range = Some((start, end));
                let cr = crate::range::content_range(start, end, size);
                (StatusCode::PARTIAL_CONTENT, Some(cr), Some(end - start + 1))
            }
            Some((size, crate::range::RangeDecision::Unsatisfiable)) => (
                StatusCode::RANGE_NOT_SATISFIABLE,
                Some(format!("bytes */{size}")),
                Some(0),
            ),
        };
        let body = if status == StatusCode::RANGE_NOT_SATISFIABLE {
            // Nothing to serve: the upstream body is dropped unread, nothing is stored.
            BodyPlan::Empty
        } else {
            BodyPlan::Upstream {
                verify: Some(digest),
                store: Some(target),
            }
        };
        self.relay(head, body, Some(XCache::Miss));
        if let Some(Action::Respond(resp)) = self.queue.back_mut() {
            resp.status = status;
            if let Some(v) = extra.and_then(|cr| HeaderValue::from_str(&cr).ok()) {
                resp.headers.insert(header::CONTENT_RANGE, v);
            }
            if let Some(len) = len {
                resp.headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            }
        }
    }
}

/// Sets `Docker-Content-Digest`.
pub(super) fn insert_digest(headers: &mut HeaderMap, digest: &Digest) {
    if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
        headers.insert(CONTENT_DIGEST, v);
    }
}
