//! The proxy-login step (SECURITY.md §2.16, §2.2): with login on, every `/v2/…` request is
//! authenticated and authorised here, after routing and validation and before any cache
//! lookup, token lookup or upstream request.
//!
//! ```text
//!  /v2/…  ── Authorization? ─┬─ none ───────────────► anonymous ─┐
//!                            ├─ Bearer dpl1 (MAC ok) ► principal ┤
//!                            ├─ Basic ─ VerifyPassword ─ valid ──┤
//!                            └─ other / invalid ─► 401 challenge │
//!                                                                ▼
//!   ping:     user → 200 locally; anonymous → 401 Bearer realm=<proxy>/v2/auth
//!   /v2/auth: user (or anonymous with rules) → the proxy's own login token; else 401
//!   resource: rules allow → continue (the upstream grant stays server-side);
//!             anonymous → 401 challenge; user → 403 DENIED
//! ```
//!
//! Login credentials never travel upstream: an allowed request is "anonymous through the
//! proxy" (`credentials.rs`), so every client `Authorization` line is dropped.

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};

use super::machine::{Exchange, Phase};
use super::respond::{self, decorate, error_response, mark_private, oci};
use super::{Action, LocalEndpoint};
use crate::Timestamp;
use crate::login::{Credential, PasswordVerdict, Principal};
use crate::oci_error::ErrorCode;
use crate::proxy_token;
use crate::request::RegistryRequest;

/// What waits for the login result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// The `/v2/` ping.
    Ping,
    /// `/v2/auth`: issue a login token.
    Token,
    /// A manifest, blob, tags, ... request.
    Resource,
    /// `/stats` or `/metrics` with `login` exposure.
    Admin(LocalEndpoint),
}

/// A password check in flight.
#[derive(Debug)]
pub(crate) struct Pending {
    next: Next,
    user: String,
}

impl Exchange {
    /// Entry for `/v2/…` when login is on (replaces the ping, auth and resource dispatch).
    pub(super) fn on_login(&mut self, request: &RegistryRequest, now: Timestamp) {
        match request {
            RegistryRequest::Base => {
                if self.req.method != Method::GET && self.req.method != Method::HEAD {
                    return self.respond_method_not_allowed("GET, HEAD");
                }
                self.authenticate(Next::Ping, None, now);
            }
            RegistryRequest::Auth => match self.req.method {
                Method::GET => self.authenticate(Next::Token, None, now),
                Method::POST => {
                    self.queue.push_back(Action::ReadClientBody {
                        limit: self.config.limits.max_auth_form_bytes,
                    });
                    self.phase = Phase::ClientBody;
                }
                _ => self.respond_method_not_allowed("GET, POST"),
            },
            _ => self.authenticate(Next::Resource, None, now),
        }
    }

    /// The `/v2/auth` POST form with login on: an OAuth password grant names the user;
    /// otherwise the `Authorization` line decides.
    pub(super) fn on_login_form(&mut self, body: &Bytes, now: Timestamp) {
        let mut grant = None;
        let (mut user, mut password) = (None, None);
        for (k, v) in form_urlencoded::parse(body) {
            match k.as_ref() {
                "grant_type" => grant = Some(v.into_owned()),
                "username" => user = Some(v.into_owned()),
                "password" => password = Some(v.into_owned()),
                _ => {}
            }
        }
        let form = match (grant.as_deref(), user, password) {
            (Some("password"), Some(u), Some(p)) if !u.is_empty() => Some(Credential::Basic {
                user: u,
                password: p,
            }),
            _ => None,
        };
        self.authenticate(Next::Token, form, now);
    }

    /// `/stats` or `/metrics` behind login: admins with valid credentials only.
    pub(super) fn on_admin_login(&mut self, endpoint: LocalEndpoint, now: Timestamp) {
        self.authenticate(Next::Admin(endpoint), None, now);
    }

    fn authenticate(&mut self, next: Next, form: Option<Credential>, now: Timestamp) {
        let Some(login) = self.config.login.as_ref() else {
            return self.respond_challenge(next);
        };
        let credential = form.unwrap_or_else(|| crate::login::credential(&self.req.headers));
        match credential {
            Credential::None => self.proceed(next, Principal::Anonymous, now),
            Credential::Bearer(t) => {
                match proxy_token::verify_login(&self.config.secret_key, &t, now) {
                    // A user removed from the htpasswd file loses their tokens at once (they
                    // may have been issued by another replica sharing the secret key).
                    Some(Principal::User(u)) if !login.users.contains_key(&u) => {
                        self.respond_challenge(next)
                    }
                    Some(who) => self.proceed(next, who, now),
                    None => self.respond_challenge(next),
                }
            }
            Credential::Basic { user, password } => {
                let check = login.check_for(&user, &password);
                self.queue.push_back(Action::VerifyPassword(check));
                self.phase = Phase::Password(Pending { next, user });
            }
            Credential::Invalid => self.respond_challenge(next),
        }
    }

    /// The answer to [`Action::VerifyPassword`].
    pub fn handle_password_result(&mut self, verdict: PasswordVerdict, now: Timestamp) {
        let Phase::Password(_) = self.phase else {
            return;
        };
        let Phase::Password(p) = core::mem::replace(&mut self.phase, Phase::Finished) else {
            return;
        };
        match verdict {
            PasswordVerdict::Valid => self.proceed(p.next, Principal::User(p.user), now),
            PasswordVerdict::Invalid => self.respond_challenge(p.next),
            PasswordVerdict::Throttled { retry_after_secs } => {
                let mut resp = error_response(
                    &oci(
                        StatusCode::TOO_MANY_REQUESTS,
                        ErrorCode::TooManyRequests,
                        "too many failed logins: retry later",
                    ),
                    self.is_head(),
                );
                resp.headers
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
                mark_private(&mut resp);
                let ns = self.namespace();
                decorate(&mut resp, ns.as_deref(), None);
                self.respond(resp);
            }
        }
    }

    fn proceed(&mut self, next: Next, who: Principal, now: Timestamp) {
        let Some(login) = self.config.login.as_ref() else {
            return self.respond_challenge(next);
        };
        match (next, &who) {
            (Next::Ping, Principal::Anonymous) => self.respond_challenge(next),
            (Next::Ping, Principal::User(_)) => {
                let mut resp = respond::bytes_response(
                    StatusCode::OK,
                    "application/json",
                    Bytes::from_static(b"{}"),
                    self.is_head(),
                );
                mark_private(&mut resp);
                let ns = self.namespace();
                decorate(&mut resp, ns.as_deref(), None);
                self.respond(resp);
            }
            (Next::Token, Principal::Anonymous) if !login.anonymous_has_rules() => {
                self.respond_challenge(next)
            }
            (Next::Token, _) => self.issue_login_token(&who, now),
            (Next::Admin(endpoint), Principal::User(u)) if login.is_admin(u) => {
                self.queue.push_back(Action::Local(endpoint));
                self.phase = Phase::Finished;
            }
            (Next::Admin(_), Principal::User(_)) => self.respond_denied(),
            (Next::Admin(_), Principal::Anonymous) => self.respond_challenge(next),
            (Next::Resource, _) => {
                let registry = self.routed.as_ref().map_or(0, |r| r.registry);
                let name = self.request.as_ref().and_then(|r| r.name()).cloned();
                let repository = name.as_ref().map(|n| n.as_str());
                if login.allows(&who, registry, repository) {
                    self.on_resource(now);
                } else if who == Principal::Anonymous {
                    self.respond_challenge(next);
                } else {
                    self.respond_denied();
                }
            }
        }
    }

    fn issue_login_token(&mut self, who: &Principal, now: Timestamp) {
        let token = proxy_token::issue_login(&self.config.secret_key, who, now);
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
    }

    /// 401 with the proxy's challenge: Bearer pointing at our `/v2/auth` for registry paths,
    /// Basic for the admin endpoints.
    fn respond_challenge(&mut self, next: Next) {
        let mut resp = error_response(
            &oci(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "authentication required",
            ),
            self.is_head(),
        );
        let challenge = match (next, self.routed.as_ref()) {
            (Next::Admin(_), _) | (_, None) => "Basic realm=\"dockerproxy\"".to_owned(),
            (_, Some(routed)) => {
                let realm = respond::public_realm(&self.config, &self.req, routed);
                format!("Bearer realm=\"{realm}\",service=\"dockerproxy\"")
            }
        };
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            resp.headers.insert(header::WWW_AUTHENTICATE, v);
        }
        mark_private(&mut resp);
        if !matches!(next, Next::Admin(_)) {
            let ns = self.namespace();
            let x = self.x_cache_default();
            decorate(&mut resp, ns.as_deref(), x);
        }
        self.respond(resp);
    }

    /// 403 `DENIED`: a logged-in user the rules do not allow.
    fn respond_denied(&mut self) {
        let mut resp = error_response(
            &oci(
                StatusCode::FORBIDDEN,
                ErrorCode::Denied,
                "requested access to the resource is denied",
            ),
            self.is_head(),
        );
        mark_private(&mut resp);
        let ns = self.namespace();
        let x = self.x_cache_default();
        decorate(&mut resp, ns.as_deref(), x);
        self.respond(resp);
    }
}
