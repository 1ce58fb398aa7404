//! The `/v2/auth` token endpoint (COMPAT.md §4.2): learn the upstream realm with an anonymous
//! `/v2/` ping, then forward the client's token request (GET or OAuth POST form) to that realm
//! with its scopes transformed, and relay the answer verbatim (no cookies, `no-store`).

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};

use super::forward::Step;
use super::machine::{Exchange, Phase};
use super::respond::{self, decorate, mark_private};
use super::{Action, BodyPlan, Purpose, Response, UpstreamBody, UpstreamHead};
use crate::Timestamp;
use crate::challenge;
use crate::oci_error::ErrorCode;
use crate::route::HostKind;
use crate::scope::{self, ScopeRules};

impl Exchange {
    /// Entry of the `/v2/auth` flow.
    pub(super) fn on_auth(&mut self, now: Timestamp) {
        if self.req.method == Method::POST {
            self.queue.push_back(Action::ReadClientBody {
                limit: self.config.limits.max_auth_form_bytes,
            });
            self.phase = Phase::ClientBody;
            return;
        }
        if self.req.method != Method::GET {
            return self.respond_method_not_allowed("GET, POST");
        }
        if self.answer_proxy_token(now) {
            return;
        }
        self.auth_form = None;
        self.discover_realm(now);
    }

    /// The POST form arrived (or was too large).
    pub(super) fn on_client_body(&mut self, body: Option<Bytes>, now: Timestamp) {
        let Some(body) = body else {
            return self.respond_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::Unsupported,
                "form too large",
            );
        };
        if self.config.login.is_some() {
            return self.on_login_form(&body, now);
        }
        // A form carrying the client's own grant (password or refresh token) is forwarded;
        // otherwise an anonymous client on a credentialed route gets a proxy token.
        let own_grant = form_urlencoded::parse(&body)
            .any(|(k, v)| (k == "password" || k == "refresh_token") && !v.is_empty());
        if !own_grant && self.answer_proxy_token(now) {
            return;
        }
        self.auth_form = Some(body);
        self.discover_realm(now);
    }

    /// The client's scopes: repeated `scope` parameters and space-separated values (query for GET,
    /// form for POST).
    fn client_scopes(&self) -> Vec<String> {
        let source: Vec<u8> = match &self.auth_form {
            Some(form) => form.to_vec(),
            None => self.query.clone().unwrap_or_default().into_bytes(),
        };
        let values: Vec<String> = form_urlencoded::parse(&source)
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.into_owned())
            .collect();
        scope::split_scopes(values.iter().map(String::as_str))
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    /// Step 1: `GET {upstream}/v2/` without the client's credentials.
    fn discover_realm(&mut self, now: Timestamp) {
        // On a mirror host without `ns`, the first repository scope's registry prefix routes.
        let scopes = self.client_scopes();
        let refs: Vec<&str> = scopes.iter().map(String::as_str).collect();
        let config = self.config.clone();
        if let Some(prefix) =
            scope::registry_prefix(&refs, |n| config.registry_by_name(n).is_some())
            && let (Some(id), Some(routed)) =
                (config.registry_by_name(prefix), self.routed.as_mut())
        {
            match routed.host_kind {
                HostKind::Mirror if routed.namespace.is_none() && routed.prefix.is_none() => {
                    routed.registry = id
                }
                _ if routed.registry != id => {
                    return self.respond_error(
                        StatusCode::BAD_REQUEST,
                        ErrorCode::NameInvalid,
                        "scope names another registry than this host serves",
                    );
                }
                _ => {}
            }
        }
        let Some(url) = self.upstream_url("/v2/", None) else {
            return self.respond_error(
                StatusCode::BAD_GATEWAY,
                ErrorCode::Unknown,
                "bad upstream URL",
            );
        };
        let mut headers = HeaderMap::new();
        self.add_user_agent(&mut headers);
        self.send(
            Method::GET,
            url,
            headers,
            UpstreamBody::Empty,
            Purpose::RealmDiscovery,
            Step::Realm,
            now,
        );
    }

    fn add_user_agent(&self, headers: &mut HeaderMap) {
        let ua = self
            .req
            .headers
            .get(header::USER_AGENT)
            .cloned()
            .or_else(|| HeaderValue::from_str(&self.config.user_agent).ok());
        if let Some(ua) = ua {
            headers.insert(header::USER_AGENT, ua);
        }
    }

    /// Step 1 answered: a Bearer challenge gives the realm; anything else is relayed.
    pub(super) fn on_realm_head(&mut self, head: UpstreamHead, now: Timestamp) {
        if head.status != StatusCode::UNAUTHORIZED {
            return self.relay_verbatim(head);
        }
        let values: Vec<&[u8]> = head
            .headers
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        let Ok(challenges) = challenge::parse(&values) else {
            return self.respond_error(
                StatusCode::BAD_GATEWAY,
                ErrorCode::Unknown,
                "unusable upstream challenge",
            );
        };
        let Some(bearer) = challenges.iter().find(|c| c.is_bearer()) else {
            return self.relay_verbatim(head);
        };
        let Some(realm) = bearer.param("realm").and_then(|r| url::Url::parse(r).ok()) else {
            return self.respond_error(
                StatusCode::BAD_GATEWAY,
                ErrorCode::Unknown,
                "upstream challenge has no usable realm",
            );
        };
        if !crate::redirect::realm_allowed(self.registry(), &realm) {
            return self.respond_error(
                StatusCode::BAD_GATEWAY,
                ErrorCode::Unknown,
                "upstream realm refused",
            );
        }
        let service = bearer.param("service").map(str::to_owned);
        let registry = self.registry().clone();
        let mut names: Vec<&str> = vec![registry.name.as_str()];
        names.extend(registry.aliases.iter().map(String::as_str));
        let rules = ScopeRules {
            registry_names: &names,
            docker_hub: registry.flavour == crate::config::Flavour::DockerHub,
            allow_push: registry.allow_push,
        };
        let mut headers = HeaderMap::new();
        self.add_user_agent(&mut headers);
        // The client's own credential goes to the realm; a proxy token never does (SECURITY.md
        // §2.10, found by the `exchange` fuzz target).
        if let Some(auth) = self.req.headers.get(header::AUTHORIZATION)
            && !auth
                .to_str()
                .is_ok_and(crate::proxy_token::looks_like_proxy_token)
            && self
                .req
                .headers
                .get_all(header::AUTHORIZATION)
                .iter()
                .count()
                == 1
        {
            headers.insert(header::AUTHORIZATION, auth.clone());
        }
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        match self.auth_form.clone() {
            Some(form) => {
                let Ok(body) = scope::transform_form(&form, service.as_deref(), &rules) else {
                    return self.respond_error(
                        StatusCode::BAD_REQUEST,
                        ErrorCode::Unsupported,
                        "malformed form",
                    );
                };
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/x-www-form-urlencoded"),
                );
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
                self.send(
                    Method::POST,
                    realm,
                    headers,
                    UpstreamBody::Bytes(Bytes::from(body)),
                    Purpose::Token,
                    Step::Token,
                    now,
                );
            }
            None => {
                let scopes: Vec<String> = self
                    .client_scopes()
                    .iter()
                    .map(|s| scope::transform(s, &rules))
                    .collect();
                let other = scope::passthrough_params(self.query.as_deref().unwrap_or(""));
                let url = scope::token_query(&realm, service.as_deref(), &scopes, &other);
                self.send(
                    Method::GET,
                    url,
                    headers,
                    UpstreamBody::Empty,
                    Purpose::Token,
                    Step::Token,
                    now,
                );
            }
        }
    }

    /// Relays an upstream answer as it is (status, end-to-end headers, streamed body).
    fn relay_verbatim(&mut self, head: UpstreamHead) {
        let headers = crate::headers::relay_response_headers(&head.headers);
        let mut resp = Response {
            status: head.status,
            headers,
            body: BodyPlan::Upstream {
                verify: None,
                store: None,
            },
            x_cache: None,
        };
        let ns = self.namespace();
        decorate(&mut resp, ns.as_deref(), None);
        self.respond(resp);
    }

    /// Step 3: the token server's answer, verbatim except cookies; never cached.
    pub(super) fn on_token_body(&mut self, head: UpstreamHead, body: Bytes, _now: Timestamp) {
        let mut headers = crate::headers::relay_response_headers(&head.headers);
        headers.remove(header::SET_COOKIE);
        headers.remove(header::TRANSFER_ENCODING);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        let mut resp = Response {
            status: head.status,
            headers,
            body: BodyPlan::Bytes(body),
            x_cache: None,
        };
        mark_private(&mut resp);
        let ns = self.namespace();
        decorate(&mut resp, ns.as_deref(), None);
        self.respond(resp);
        let _ = respond::API_VERSION;
    }
}
