//! A Docker-Hub-compatible token server that distribution 2.8 accepts (TESTBED §1.4).
//!
//! * `GET /token?service=S&scope=…&scope=…[&account=U][&offline_token=true][&client_id=X]` with
//!   optional `Authorization: Basic`;
//! * `POST /token` (form): `grant_type=password` or `grant_type=refresh_token`.
//!
//! Users: `alice:secret`, `bob:hunter2`. Repositories named `private/…` are readable and writable
//! by alice only; other repositories: `pull` for anyone, everything for a logged-in user.
//! Anonymous requests for a private repository get 200 with `"actions":[]` (as Docker Hub), so
//! the registry answers `insufficient_scope`. Tokens are ES256 JWTs with `kid` = the libtrust key
//! ID of the signer certificate in the registry's `rootcertbundle`. Every request is recorded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use crate::error::{FixtureResult, unexpected};
use crate::pki::Pki;
use crate::serve::{Handler, RespBody, ServerHandle, respond};

/// The `service` (= token `aud`) the registry is configured with.
pub const SERVICE: &str = "test-registry";
/// The token issuer (`iss`) the registry is configured with.
pub const ISSUER: &str = "test-issuer";
/// The known users and their passwords.
pub const USERS: &[(&str, &str)] = &[("alice", "secret"), ("bob", "hunter2")];

/// One request the token server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// `GET`, `POST`, …
    pub method: String,
    /// Path and query as received.
    pub path_and_query: String,
    /// Whether an `Authorization` header was present.
    pub authorization: bool,
    /// The user name of a `Basic` authorization, if any.
    pub basic_user: Option<String>,
    /// The decoded `application/x-www-form-urlencoded` body (POST), in order.
    pub form: Vec<(String, String)>,
    /// The decoded query parameters, in order (repeated `scope` stay separate).
    pub query: Vec<(String, String)>,
}

impl TokenRequest {
    /// The first value of query parameter or form field `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .chain(self.form.iter())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One entry of the token's `access` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// `repository`, `registry`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// Repository name (or `catalog`).
    pub name: String,
    /// Granted actions (`pull`, `push`, `delete`, `*`); may be empty.
    pub actions: Vec<String>,
}

/// The JWT claims the server issues (`aud` is a string, as distribution 2.8 requires).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Subject (the user), absent for anonymous tokens.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sub: Option<String>,
    /// Audience (the registry's `service`).
    pub aud: String,
    /// Expiry (Unix seconds).
    pub exp: u64,
    /// Not before (Unix seconds).
    pub nbf: u64,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Unique token id.
    pub jti: String,
    /// Granted access.
    pub access: Vec<Access>,
}

struct State {
    key: EncodingKey,
    kid: String,
    requests: Mutex<Vec<TokenRequest>>,
    refresh_tokens: Mutex<HashMap<String, String>>,
    expires_in: AtomicU64,
    post_enabled: AtomicBool,
    counter: AtomicU64,
}

/// A running token server; dropping it stops it.
pub struct TokenServer {
    state: Arc<State>,
    server: ServerHandle,
}

impl std::fmt::Debug for TokenServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenServer")
            .field("addr", &self.server.addr())
            .finish()
    }
}

impl TokenServer {
    /// Starts a token server on `127.0.0.1:0` signing with the PKI's signer key.
    pub fn start(pki: &Pki) -> FixtureResult<Self> {
        let key = EncodingKey::from_ec_pem(pki.signer_key_pem.as_bytes())
            .map_err(|e| unexpected(format!("signer key: {e}")))?;
        let state = Arc::new(State {
            key,
            kid: pki.signer_kid.clone(),
            requests: Mutex::new(Vec::new()),
            refresh_tokens: Mutex::new(HashMap::new()),
            expires_in: AtomicU64::new(300),
            post_enabled: AtomicBool::new(true),
            counter: AtomicU64::new(0),
        });
        let handler_state = state.clone();
        let handler: Handler = Arc::new(move |req| {
            let state = handler_state.clone();
            Box::pin(async move { handle(&state, req).await })
        });
        let server = ServerHandle::spawn("token-server", handler)?;
        Ok(Self { state, server })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The realm URL to configure in the registry: `http://127.0.0.1:PORT/token`.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr())
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<TokenRequest> {
        lock(&self.state.requests).clone()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        lock(&self.state.requests).clear();
    }

    /// Sets `expires_in` (and the `exp` claim) of tokens issued from now on; default 300 s.
    pub fn set_expires_in(&self, secs: u64) {
        self.state.expires_in.store(secs, Ordering::Relaxed);
    }

    /// When disabled, `POST /token` answers 404 so clients fall back to GET.
    pub fn set_post_enabled(&self, enabled: bool) {
        self.state.post_enabled.store(enabled, Ordering::Relaxed);
    }

    /// Forgets every refresh token issued so far (as a restarted token server would).
    pub fn forget_refresh_tokens(&self) {
        lock(&self.state.refresh_tokens).clear();
    }

    /// Signs arbitrary claims with the server's key and `kid` (for tests of odd tokens).
    pub fn sign(&self, claims: &Claims) -> FixtureResult<String> {
        sign(&self.state, claims)
    }

    /// Issues a token for `user` (None = anonymous) granting what the policy allows for the
    /// given scopes (`repository:NAME:pull,push`), as `GET /token` would.
    pub fn issue(&self, user: Option<&str>, scopes: &[&str]) -> FixtureResult<String> {
        let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
        let claims = claims_for(&self.state, user, &scopes);
        sign(&self.state, &claims)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn handle(state: &State, req: Request<Incoming>) -> Response<RespBody> {
    let method = req.method().as_str().to_owned();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |pq| pq.as_str().to_owned());
    let path = req.uri().path().to_owned();
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let authorization = req.headers().get(http::header::AUTHORIZATION).cloned();
    let body = match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => bytes::Bytes::new(),
    };
    let form: Vec<(String, String)> = if method == "POST" {
        form_urlencoded::parse(&body).into_owned().collect()
    } else {
        Vec::new()
    };
    let basic = authorization
        .as_ref()
        .and_then(|v| parse_basic(v.to_str().ok()?));
    lock(&state.requests).push(TokenRequest {
        method: method.clone(),
        path_and_query,
        authorization: authorization.is_some(),
        basic_user: basic.as_ref().map(|(u, _)| u.clone()),
        form: form.clone(),
        query: query.clone(),
    });

    if path != "/token" {
        return json_error(404, "not_found", "no such endpoint");
    }
    match method.as_str() {
        "GET" => handle_get(state, &query, basic),
        "POST" if state.post_enabled.load(Ordering::Relaxed) => handle_post(state, &form),
        "POST" => json_error(404, "not_found", "POST disabled"),
        _ => json_error(405, "method_not_allowed", "use GET or POST"),
    }
}

fn handle_get(
    state: &State,
    query: &[(String, String)],
    basic: Option<(String, String)>,
) -> Response<RespBody> {
    let user = match basic {
        Some((user, password)) if check_password(&user, &password) => Some(user),
        Some(_) => return json_details(401, "incorrect username or password"),
        None => None,
    };
    let scopes: Vec<String> = query
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').filter(|s| !s.is_empty()).map(str::to_owned))
        .collect();
    let claims = claims_for(state, user.as_deref(), &scopes);
    let token = match sign(state, &claims) {
        Ok(token) => token,
        Err(e) => return json_error(500, "server_error", &e.to_string()),
    };
    let mut body = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": claims.exp.saturating_sub(claims.iat),
        "issued_at": rfc3339(claims.iat),
    });
    let offline = query
        .iter()
        .any(|(k, v)| k == "offline_token" && v == "true");
    if let (true, Some(user)) = (offline, user) {
        body["refresh_token"] = new_refresh_token(state, &user).into();
    }
    respond(200, "application/json", body.to_string())
}

fn handle_post(state: &State, form: &[(String, String)]) -> Response<RespBody> {
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let user = match field("grant_type") {
        Some("password") => {
            let (Some(user), Some(password)) = (field("username"), field("password")) else {
                return json_error(400, "invalid_request", "username and password required");
            };
            if !check_password(user, password) {
                return json_error(401, "invalid_grant", "incorrect username or password");
            }
            user.to_owned()
        }
        Some("refresh_token") => {
            let known =
                field("refresh_token").and_then(|t| lock(&state.refresh_tokens).get(t).cloned());
            let Some(user) = known else {
                return json_error(401, "invalid_grant", "unknown refresh token");
            };
            user
        }
        _ => return json_error(400, "unsupported_grant_type", "unsupported grant_type"),
    };
    let scope = field("scope").unwrap_or("");
    let scopes: Vec<String> = scope
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let claims = claims_for(state, Some(&user), &scopes);
    let token = match sign(state, &claims) {
        Ok(token) => token,
        Err(e) => return json_error(500, "server_error", &e.to_string()),
    };
    let mut body = serde_json::json!({
        "access_token": token,
        "expires_in": claims.exp.saturating_sub(claims.iat),
        "scope": scope,
        "issued_at": rfc3339(claims.iat),
    });
    if field("access_type") == Some("offline") {
        body["refresh_token"] = new_refresh_token(state, &user).into();
    }
    respond(200, "application/json", body.to_string())
}

fn claims_for(state: &State, user: Option<&str>, scopes: &[String]) -> Claims {
    let now = now_secs();
    let n = state.counter.fetch_add(1, Ordering::Relaxed);
    let mut access: Vec<Access> = Vec::new();
    for scope in scopes {
        let Some((kind, name, actions)) = parse_scope(scope) else {
            continue;
        };
        let allowed = allowed_actions(user, kind, name);
        let granted: Vec<String> = actions
            .iter()
            .filter(|a| allowed.contains(a))
            .map(|a| (*a).to_owned())
            .collect();
        match access.iter_mut().find(|a| a.kind == kind && a.name == name) {
            Some(existing) => {
                for action in granted {
                    if !existing.actions.contains(&action) {
                        existing.actions.push(action);
                    }
                }
            }
            None => access.push(Access {
                kind: kind.to_owned(),
                name: name.to_owned(),
                actions: granted,
            }),
        }
    }
    Claims {
        iss: ISSUER.to_owned(),
        sub: user.map(str::to_owned),
        aud: SERVICE.to_owned(),
        exp: now + state.expires_in.load(Ordering::Relaxed),
        nbf: now.saturating_sub(10),
        iat: now,
        jti: format!("jti-{now}-{n}"),
        access,
    }
}

/// Splits `type:name:actions`; the name lies between the first and the last `:` (it may hold a
/// port-like `:`), actions are comma-separated.
pub fn parse_scope(scope: &str) -> Option<(&str, &str, Vec<&str>)> {
    let first = scope.find(':')?;
    let last = scope.rfind(':')?;
    if first == last {
        return None;
    }
    let actions = scope[last + 1..]
        .split(',')
        .filter(|a| !a.is_empty())
        .collect();
    Some((&scope[..first], &scope[first + 1..last], actions))
}

/// The actions the policy allows `user` (None = anonymous) on a resource.
pub fn allowed_actions(user: Option<&str>, kind: &str, name: &str) -> &'static [&'static str] {
    const ALL: &[&str] = &["pull", "push", "delete", "*"];
    match (kind, user) {
        ("repository", Some("alice")) => ALL,
        ("repository", _) if name.starts_with("private/") => &[],
        ("repository", Some(_)) => ALL,
        ("repository", None) => &["pull"],
        ("registry", Some(_)) if name == "catalog" => &["*"],
        _ => &[],
    }
}

fn sign(state: &State, claims: &Claims) -> FixtureResult<String> {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(state.kid.clone());
    header.typ = Some("JWT".to_owned());
    jsonwebtoken::encode(&header, claims, &state.key).map_err(|e| unexpected(format!("jwt: {e}")))
}

fn new_refresh_token(state: &State, user: &str) -> String {
    let n = state.counter.fetch_add(1, Ordering::Relaxed);
    let token = format!("refresh-{user}-{}-{n}", now_secs());
    lock(&state.refresh_tokens).insert(token.clone(), user.to_owned());
    token
}

fn check_password(user: &str, password: &str) -> bool {
    USERS.iter().any(|(u, p)| *u == user && *p == password)
}

/// Decodes `Basic base64(user:password)`.
pub fn parse_basic(value: &str) -> Option<(String, String)> {
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn json_error(status: u16, error: &str, description: &str) -> Response<RespBody> {
    let body = serde_json::json!({"error": error, "error_description": description});
    respond(status, "application/json", body.to_string())
}

fn json_details(status: u16, details: &str) -> Response<RespBody> {
    respond(
        status,
        "application/json",
        serde_json::json!({"details": details}).to_string(),
    )
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Formats Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian, UTC).
pub fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil-from-days (H. Hinnant), shifted so the era starts on 0000-03-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_parsing_takes_name_between_first_and_last_colon() {
        let (kind, name, actions) =
            parse_scope("repository:host:5000/a/b:pull,push").expect("scope");
        assert_eq!((kind, name), ("repository", "host:5000/a/b"));
        assert_eq!(actions, vec!["pull", "push"]);
        assert!(parse_scope("repository:pull").is_none());
    }

    #[test]
    fn policy() {
        assert_eq!(
            allowed_actions(None, "repository", "library/busybox"),
            &["pull"]
        );
        assert!(allowed_actions(None, "repository", "private/secret").is_empty());
        assert!(allowed_actions(Some("bob"), "repository", "private/secret").is_empty());
        assert!(allowed_actions(Some("alice"), "repository", "private/secret").contains(&"pull"));
        assert!(allowed_actions(Some("bob"), "repository", "x").contains(&"push"));
    }

    #[test]
    fn rfc3339_known_values() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn basic_parsing() {
        assert_eq!(
            parse_basic("Basic YWxpY2U6c2VjcmV0"),
            Some(("alice".to_owned(), "secret".to_owned()))
        );
        assert_eq!(parse_basic("Bearer x"), None);
    }
}
