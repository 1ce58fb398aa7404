//! A fake upstream written as a pure function, a simulated clock, and a driver that runs an
//! [`Exchange`] to completion and records the transcript.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use dockerproxy_core::config::{Config, Origin};
use dockerproxy_core::exchange::{
    Action, BodyPlan, CacheResult, LocalEndpoint, ManifestEntry, RequestHead, Response,
    UpstreamError, UpstreamHead, UpstreamRequest,
};
use dockerproxy_core::token::TokenCache;
use dockerproxy_core::{Exchange, Timestamp};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

/// What the fake upstream answers.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

impl Reply {
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }
    pub fn json(self, body: &str) -> Self {
        self.header("content-type", "application/json")
            .body(Bytes::from(body.to_owned()))
    }
}

/// The result of driving one exchange.
pub struct Transcript {
    pub sent: Vec<UpstreamRequest>,
    pub response: Option<Response>,
    /// The body the client receives (bytes, or the streamed upstream body).
    pub body: Bytes,
    pub local: Option<LocalEndpoint>,
    pub stored: Vec<ManifestEntry>,
    pub lookups: usize,
    pub access: Vec<dockerproxy_core::exchange::AccessRecord>,
    pub validated: Vec<dockerproxy_core::cache_policy::CacheKey>,
    pub dropped: Vec<dockerproxy_core::cache_policy::CacheKey>,
    /// Proxy-login password checks performed (bcrypt).
    pub password_checks: usize,
}

impl Transcript {
    pub fn status(&self) -> u16 {
        self.response
            .as_ref()
            .map(|r| r.status.as_u16())
            .unwrap_or(0)
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.response
            .as_ref()?
            .headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }
    pub fn headers_all(&self, name: &str) -> Vec<String> {
        self.response
            .as_ref()
            .map(|r| {
                r.headers
                    .get_all(name)
                    .iter()
                    .map(|v| v.to_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
    pub fn body_str(&self) -> String {
        String::from_utf8(self.body.to_vec()).unwrap()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    pub fn error_code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

/// The default configuration with `CUSTOM_DOMAIN=example.com`, plus env overrides.
pub fn config_with(env: &[(&str, &str)]) -> Config {
    let mut map = BTreeMap::new();
    map.insert("CUSTOM_DOMAIN".to_owned(), "example.com".to_owned());
    for (k, v) in env {
        map.insert((*k).to_owned(), (*v).to_owned());
    }
    let (config, _warnings) = dockerproxy_core::config::load(&map, None).unwrap();
    config
}

/// The default test configuration.
pub fn config() -> Config {
    config_with(&[])
}

/// Points a registry at another origin (the registry name is unchanged).
pub fn set_origin(config: &mut Config, registry: &str, origin: &str) {
    let id = config.registry_by_name(registry).unwrap();
    config.registries[id].origin = Origin::parse(origin).unwrap();
}

pub const NOW: Timestamp = Timestamp::from_millis(1_790_000_000_000);

/// A client request.
pub fn request(method: Method, host: &str, target: &str, headers: &[(&str, &str)]) -> RequestHead {
    let mut h = HeaderMap::new();
    h.insert(http::header::HOST, HeaderValue::from_str(host).unwrap());
    for (k, v) in headers {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    RequestHead {
        method,
        target: target.to_owned(),
        headers: h,
        peer: Some("127.0.0.1".parse().unwrap()),
        tls: false,
    }
}

/// GET shorthand.
pub fn get(host: &str, target: &str) -> RequestHead {
    request(Method::GET, host, target, &[])
}

/// Drives `head` to `Done` against `upstream`. `client_body` answers `ReadClientBody`.
pub fn drive_with(
    config: &Config,
    head: RequestHead,
    client_body: Option<Bytes>,
    cache: impl FnMut(&dockerproxy_core::exchange::CacheQuery) -> CacheResult,
    upstream: impl FnMut(&UpstreamRequest) -> Result<Reply, UpstreamError>,
) -> Transcript {
    let mut tokens = TokenCache::new(64);
    drive_full(config, head, client_body, cache, &mut tokens, upstream)
}

/// Drives with a token cache shared across exchanges.
pub fn drive_tokens(
    config: &Config,
    head: RequestHead,
    tokens: &mut TokenCache,
    upstream: impl FnMut(&UpstreamRequest) -> Result<Reply, UpstreamError>,
) -> Transcript {
    drive_full(config, head, None, |_| CacheResult::Miss, tokens, upstream)
}

/// The full driver.
pub fn drive_full(
    config: &Config,
    head: RequestHead,
    client_body: Option<Bytes>,
    mut cache: impl FnMut(&dockerproxy_core::exchange::CacheQuery) -> CacheResult,
    tokens: &mut TokenCache,
    mut upstream: impl FnMut(&UpstreamRequest) -> Result<Reply, UpstreamError>,
) -> Transcript {
    let config = Arc::new(config.clone());
    let mut ex = Exchange::new(config, head, NOW);
    let mut t = Transcript {
        sent: Vec::new(),
        response: None,
        body: Bytes::new(),
        local: None,
        stored: Vec::new(),
        lookups: 0,
        access: Vec::new(),
        validated: Vec::new(),
        dropped: Vec::new(),
        password_checks: 0,
    };
    let mut current_body = Bytes::new();
    for _ in 0..100 {
        match ex.poll_action(NOW) {
            Action::SendUpstream(req) => {
                let reply = upstream(&req);
                t.sent.push(req);
                match reply {
                    Ok(r) => {
                        let mut headers = HeaderMap::new();
                        for (k, v) in r.headers {
                            headers.append(
                                HeaderName::from_static(k),
                                HeaderValue::from_str(&v).unwrap(),
                            );
                        }
                        current_body = r.body;
                        ex.handle_upstream_head(
                            UpstreamHead {
                                status: StatusCode::from_u16(r.status).unwrap(),
                                headers,
                            },
                            NOW,
                        );
                    }
                    Err(e) => ex.handle_upstream_error(e, NOW),
                }
            }
            Action::ReadUpstreamBody { limit } => {
                if current_body.len() > limit {
                    ex.handle_upstream_error(UpstreamError::TooLarge, NOW);
                } else {
                    ex.handle_upstream_body(current_body.clone(), NOW);
                }
            }
            Action::ReadClientBody { limit } => {
                let b = client_body.clone().filter(|b| b.len() <= limit);
                ex.handle_client_body(b, NOW);
            }
            Action::CacheLookup(key) => {
                t.lookups += 1;
                let r = cache(&key);
                ex.handle_cache_result(r, NOW);
            }
            Action::CacheStore(entry) => t.stored.push(entry),
            Action::RecordAccess(r) => t.access.push(r),
            Action::TagValidated(k) => t.validated.push(k),
            Action::TagDrop(k) => t.dropped.push(k),
            Action::TokenLookup(key) => {
                let r = tokens.lookup(&key, NOW);
                ex.handle_token_lookup(r, NOW);
            }
            Action::TokenStore { key, token } => match token {
                Some(tok) => tokens.complete(key, tok),
                None => tokens.fail(&key),
            },
            Action::TokenInvalidate(key) => tokens.invalidate(&key),
            Action::VerifyPassword(check) => {
                let ok = dockerproxy_core::login::verify_password(&check);
                let verdict = if ok {
                    dockerproxy_core::login::PasswordVerdict::Valid
                } else {
                    dockerproxy_core::login::PasswordVerdict::Invalid
                };
                t.password_checks += 1;
                ex.handle_password_result(verdict, NOW);
            }
            Action::Respond(resp) => {
                assert!(t.response.is_none(), "two responses");
                t.body = match &resp.body {
                    BodyPlan::Empty => Bytes::new(),
                    BodyPlan::Bytes(b) => b.clone(),
                    BodyPlan::Upstream { .. } => current_body.clone(),
                    BodyPlan::Cache { .. } => Bytes::from_static(b"<cache>"),
                };
                t.response = Some(resp);
            }
            Action::Local(e) => t.local = Some(e),
            Action::Wait(_) => panic!("exchange waits without pending input"),
            Action::Done => return t,
        }
    }
    panic!("exchange did not finish in 100 steps");
}

/// Drives with no cache and no client body.
pub fn drive(
    config: &Config,
    head: RequestHead,
    upstream: impl FnMut(&UpstreamRequest) -> Result<Reply, UpstreamError>,
) -> Transcript {
    drive_with(config, head, None, |_| CacheResult::Miss, upstream)
}

/// An upstream that must not be contacted.
pub fn no_upstream(req: &UpstreamRequest) -> Result<Reply, UpstreamError> {
    panic!("unexpected upstream request to {}", req.url)
}

/// Header values of an upstream request.
pub fn sent_header(req: &UpstreamRequest, name: &str) -> Vec<String> {
    req.headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// sha256 digest string of bytes.
pub fn sha256(b: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}
