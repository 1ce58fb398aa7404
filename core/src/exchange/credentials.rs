//! Configured upstream credentials (COMPAT.md §4.3, SECURITY.md §2.10–2.11).
//!
//! On a route with credentials, a client without its own credentials ("anonymous": no
//! `Authorization`, or a proxy token from our `/v2/auth`) never talks to the upstream's token
//! server itself. `/v2/auth` answers with a proxy token, and the exchange attaches the proxy's
//! own upstream Bearer token to the client's requests: obtained with the configured credentials
//! for repositories on the `anonymous_repositories` allowlist, anonymously for the rest, so the
//! account's private images are never exposed.
//!
//! ```text
//! resource ─► upstream (no Authorization) ─► 401 Bearer ─► TokenLookup ─┬─ Hit ──────────────┐
//!                                                                       └─ Fetch ─► realm ─► TokenStore
//!                                                                                            │
//!            ◄──────────────── resend with the proxy's Bearer (once) ◄───────────────────────┘
//! ```

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};

use super::forward::{BodyStep, Step};
use super::machine::{Exchange, Phase};
use super::respond::{self, decorate, mark_private};
use super::{Action, Purpose, UpstreamBody, UpstreamHead};
use crate::Timestamp;
use crate::challenge;
use crate::oci_error::ErrorCode;
use crate::proxy_token;
use crate::token::{Identity, TokenKey, TokenLookup};

/// The proxy's handling of upstream auth for this request.
#[derive(Debug, Default)]
pub(super) struct ProxyAuth {
    /// `Some` when the proxy manages upstream auth (anonymous client, credentialed route).
    pub(super) identity: Option<Identity>,
    /// The Bearer token to attach.
    pub(super) bearer: Option<String>,
    /// Basic credentials to attach (registries that challenge with Basic).
    pub(super) basic: Option<String>,
    /// The key of the token in use or being fetched.
    pub(super) key: Option<TokenKey>,
    /// One authenticated retry per request.
    pub(super) retried: bool,
}

impl Exchange {
    /// True when the client has no credential of its own for the upstream.
    fn client_is_anonymous(&self) -> bool {
        // Every `Authorization` line counts: a client is anonymous only when none of them is a
        // credential of its own (found by the `exchange` fuzz target with two lines).
        self.req
            .headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .all(|v| v.to_str().is_ok_and(proxy_token::looks_like_proxy_token))
    }

    /// Decides, before the first upstream request, whether the proxy manages upstream auth.
    pub(super) fn decide_proxy_auth(&mut self) {
        // With proxy login on, the client's `Authorization` is a login credential: the client
        // is anonymous toward the upstream, and the grant stays server-side (SECURITY.md §2.10).
        let login = self.config.login.is_some();
        let registry = self.registry();
        let Some(creds) = registry.credentials.as_ref() else {
            if login {
                self.proxy_auth.identity = Some(Identity::Anonymous);
            }
            return;
        };
        if !login && !self.client_is_anonymous() {
            return;
        }
        let allowed = self
            .request
            .as_ref()
            .and_then(|r| r.name())
            .is_some_and(|n| {
                creds
                    .anonymous_repositories
                    .iter()
                    .any(|p| repo_matches(p, n.as_str()))
            });
        self.proxy_auth.identity = Some(if allowed {
            Identity::Configured
        } else {
            Identity::Anonymous
        });
    }

    /// `/v2/auth` for an anonymous client on a credentialed route: a proxy token, no upstream
    /// call. Returns false when the request is not such a case.
    pub(super) fn answer_proxy_token(&mut self, now: Timestamp) -> bool {
        if self.registry().credentials.is_none() || !self.client_is_anonymous() {
            return false;
        }
        let token = proxy_token::issue(&self.config.secret_key, &self.registry().name, now);
        let body = serde_json::json!({
            "token": token,
            "access_token": token,
            "expires_in": proxy_token::PROXY_TOKEN_LIFETIME.as_secs(),
            "issued_at": now.to_rfc3339(),
        })
        .to_string();
        let mut resp =
            respond::bytes_response(StatusCode::OK, "application/json", Bytes::from(body), false);
        mark_private(&mut resp);
        let ns = self.namespace();
        decorate(&mut resp, ns.as_deref(), None);
        self.respond(resp);
        true
    }

    /// Applies the proxy's upstream auth to forwarded headers: a proxy token never leaves, the
    /// proxy's Bearer (or Basic) is attached when it has one.
    pub(super) fn apply_proxy_auth(&self, headers: &mut HeaderMap) {
        // A proxy token never leaves the proxy, on whichever line it comes.
        if headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .any(|v| v.to_str().is_ok_and(proxy_token::looks_like_proxy_token))
        {
            headers.remove(header::AUTHORIZATION);
        }
        if self.proxy_auth.identity.is_none() {
            return;
        }
        headers.remove(header::AUTHORIZATION);
        let value = match (&self.proxy_auth.bearer, &self.proxy_auth.basic) {
            (Some(t), _) => Some(format!("Bearer {t}")),
            (None, Some(b)) => Some(format!("Basic {b}")),
            (None, None) => None,
        };
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
            headers.insert(header::AUTHORIZATION, v);
        }
    }

    /// An upstream 401 on a proxy-managed request: fetch or reuse the proxy's token and retry
    /// once. Returns false when the 401 should be relayed to the client.
    pub(super) fn on_proxy_auth_challenge(&mut self, head: &UpstreamHead, now: Timestamp) -> bool {
        let Some(identity) = self.proxy_auth.identity.clone() else {
            return false;
        };
        if self.proxy_auth.retried {
            if let Some(key) = self.proxy_auth.key.take() {
                self.queue.push_back(Action::TokenInvalidate(key));
            }
            return false;
        }
        let values: Vec<&[u8]> = head
            .headers
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        let Ok(challenges) = challenge::parse(&values) else {
            return false;
        };
        if let Some(bearer) = challenges.iter().find(|c| c.is_bearer()) {
            let Some(realm) = bearer.param("realm").and_then(|r| url::Url::parse(r).ok()) else {
                return false;
            };
            if !crate::redirect::realm_allowed(self.registry(), &realm) {
                return false;
            }
            let scope = match (
                bearer.param("scope"),
                self.request.as_ref().and_then(|r| r.name()),
            ) {
                (Some(s), _) => s.to_owned(),
                (None, Some(n)) => format!("repository:{n}:pull"),
                (None, None) => String::new(),
            };
            let scopes = crate::scope::split_scopes([scope.as_str()])
                .into_iter()
                .map(str::to_owned)
                .collect();
            let key = TokenKey::new(
                self.registry().name.clone(),
                realm.as_str(),
                bearer.param("service").map(str::to_owned),
                scopes,
                identity,
            );
            self.proxy_auth.retried = true;
            self.proxy_auth.key = Some(key.clone());
            self.queue.push_back(Action::TokenLookup(key));
            self.phase = Phase::Token;
            return true;
        }
        if identity == Identity::Configured
            && challenges
                .iter()
                .any(|c| c.scheme.eq_ignore_ascii_case("basic"))
        {
            self.proxy_auth.retried = true;
            self.proxy_auth.basic = self.configured_basic();
            if self.proxy_auth.basic.is_some() {
                self.resend_after_auth_at(now);
                return true;
            }
        }
        false
    }

    /// `base64(username:secret)` of the route's credentials.
    fn configured_basic(&self) -> Option<String> {
        let c = self.registry().credentials.as_ref()?;
        Some(
            base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", c.username, c.secret)),
        )
    }

    /// The answer to [`Action::TokenLookup`].
    pub fn handle_token_lookup(&mut self, lookup: TokenLookup, now: Timestamp) {
        if !matches!(self.phase, Phase::Token) {
            return;
        }
        self.phase = Phase::Finished;
        match lookup {
            TokenLookup::Hit(token) => {
                self.proxy_auth.bearer = Some(token.value);
                self.resend_after_auth_at(now);
            }
            // `Wait` must be resolved by the wrapper; treat it like `Fetch` rather than stall.
            TokenLookup::Fetch | TokenLookup::Wait => self.fetch_proxy_token(now),
        }
    }

    fn fetch_proxy_token(&mut self, now: Timestamp) {
        let Some(key) = self.proxy_auth.key.clone() else {
            return self.respond_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Unknown,
                "internal error",
            );
        };
        let Ok(realm) = url::Url::parse(&key.realm) else {
            self.queue
                .push_back(Action::TokenStore { key, token: None });
            return self.respond_error(
                StatusCode::BAD_GATEWAY,
                ErrorCode::Unknown,
                "upstream realm refused",
            );
        };
        let url = crate::scope::token_query(&realm, key.service.as_deref(), &key.scopes, &[]);
        let mut headers = HeaderMap::new();
        if let Ok(ua) = HeaderValue::from_str(&self.config.user_agent) {
            headers.insert(header::USER_AGENT, ua);
        }
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        if key.identity == Identity::Configured
            && let Some(b) = self
                .configured_basic()
                .and_then(|b| HeaderValue::from_str(&format!("Basic {b}")).ok())
        {
            headers.insert(header::AUTHORIZATION, b);
        }
        self.send(
            Method::GET,
            url,
            headers,
            UpstreamBody::Empty,
            Purpose::Token,
            Step::ProxyToken,
            now,
        );
    }

    /// The head of the proxy's own token request.
    pub(super) fn on_proxy_token_head(&mut self, head: UpstreamHead) {
        if head.status == StatusCode::OK {
            self.last_head = Some(head);
            self.ask_body(BodyStep::ProxyToken, self.config.limits.max_token_bytes);
        } else {
            self.proxy_token_failed();
        }
    }

    /// The body of the proxy's own token request.
    pub(super) fn on_proxy_token_body(&mut self, body: &[u8], now: Timestamp) {
        let Some(key) = self.proxy_auth.key.clone() else {
            return self.proxy_token_failed();
        };
        match crate::token::parse_token_response(body, now) {
            Ok(token) => {
                self.proxy_auth.bearer = Some(token.value.clone());
                self.queue.push_back(Action::TokenStore {
                    key,
                    token: Some(token),
                });
                self.resend_after_auth_at(now);
            }
            Err(_) => self.proxy_token_failed(),
        }
    }

    /// The proxy could not get its token: release the key, answer 502.
    pub(super) fn proxy_token_failed(&mut self) {
        if let Some(key) = self.proxy_auth.key.take() {
            self.queue
                .push_back(Action::TokenStore { key, token: None });
        }
        self.respond_error(
            StatusCode::BAD_GATEWAY,
            ErrorCode::Unavailable,
            "upstream token request failed",
        );
    }

    fn resend_after_auth_at(&mut self, now: Timestamp) {
        self.hops = 0;
        match self.check {
            Some(check) => self.send_check(check, now),
            None => self.send_resource(now),
        }
    }
}

/// `library/*` matches `library/busybox` (one trailing `*` = any rest); otherwise exact.
pub(super) fn repo_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}
