//! Client login on the proxy itself (SECURITY.md §2.16, §2.10 "Proxy-login credentials").
//!
//! With a `[login]` section (or `LOGIN_HTPASSWD`) the proxy is no open relay: every `/v2/…`
//! request names a principal (a user whose htpasswd bcrypt password was verified, or
//! anonymous) and the allow rules decide, before any cache lookup or upstream request, whether
//! that principal may read the repository on that route.
//!
//! This module holds the pieces without I/O: the validated settings ([`LoginSettings`]), the
//! htpasswd parser, the rule decision, `Authorization` parsing and the bcrypt check itself
//! ([`verify_password`]). bcrypt is slow by design (tens to hundreds of milliseconds), so the
//! exchange never calls it: it asks the wrapper with [`crate::Action::VerifyPassword`], and the
//! wrapper runs [`verify_password`] off its event loop (and may memoise successes under
//! [`memo_key`], never the plaintext).
//!
//! What this module does not do: issue or check the proxy's login tokens
//! ([`crate::proxy_token`]), or track failed attempts (the wrapper's bounded state).

use std::collections::BTreeMap;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::RegistryId;

/// Who a request is, for the allow rules.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Principal {
    /// No login (no `Authorization`, or an anonymous login token).
    Anonymous,
    /// A user whose password was verified (directly or through a login token).
    User(String),
}

/// Who an allow rule names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserPattern {
    /// `"*"`: any logged-in user.
    AnyUser,
    /// `"anonymous"`: requests without login.
    Anonymous,
    /// One htpasswd user.
    Named(String),
}

impl UserPattern {
    fn matches(&self, who: &Principal) -> bool {
        match (self, who) {
            (Self::Anonymous, Principal::Anonymous) => true,
            (Self::AnyUser, Principal::User(_)) => true,
            (Self::Named(n), Principal::User(u)) => n == u,
            _ => false,
        }
    }
}

/// One `[[login.allow]]` rule: these users may read these repositories on these routes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Who.
    pub users: Vec<UserPattern>,
    /// Which registries (`None` = every route).
    pub routes: Option<Vec<RegistryId>>,
    /// Repository globs (`*` matches any run of characters, `/` included).
    pub repositories: Vec<String>,
}

impl Rule {
    /// The rule every user gets when no rule is configured.
    pub fn everyone_logged_in() -> Self {
        Self {
            users: vec![UserPattern::AnyUser],
            routes: None,
            repositories: vec!["*".to_owned()],
        }
    }

    fn matches(&self, who: &Principal, registry: RegistryId, repository: Option<&str>) -> bool {
        self.users.iter().any(|u| u.matches(who))
            && self.routes.as_ref().is_none_or(|r| r.contains(&registry))
            && self.repositories.iter().any(|p| match repository {
                Some(name) => glob_match(p, name),
                // A request without a repository (`_catalog`) needs a rule for everything.
                None => p == "*",
            })
    }
}

/// The validated login settings.
#[derive(Clone, PartialEq, Eq)]
pub struct LoginSettings {
    /// User → bcrypt hash (`$2a$`, `$2b$` or `$2y$`), from the htpasswd file.
    pub users: BTreeMap<String, String>,
    /// Allow rules; a request is allowed when one matches.
    pub rules: Vec<Rule>,
    /// Users who may read `/stats` and `/metrics` when their exposure is `login`.
    pub admins: Vec<String>,
    /// A bcrypt hash of no one's password, at the cost of the first user's hash: checked for
    /// unknown user names so that they take as long as known ones.
    pub dummy_hash: String,
}

impl core::fmt::Debug for LoginSettings {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LoginSettings")
            .field("users", &self.users.len())
            .field("rules", &self.rules)
            .field("admins", &self.admins.len())
            .finish_non_exhaustive()
    }
}

impl LoginSettings {
    /// True when `who` may read `repository` (`None`: a request naming no repository) on
    /// `registry`.
    pub fn allows(&self, who: &Principal, registry: RegistryId, repository: Option<&str>) -> bool {
        self.rules
            .iter()
            .any(|r| r.matches(who, registry, repository))
    }

    /// True when some rule names anonymous requests (so `/v2/auth` hands out anonymous tokens).
    pub fn anonymous_has_rules(&self) -> bool {
        self.rules
            .iter()
            .any(|r| r.users.contains(&UserPattern::Anonymous))
    }

    /// True when `user` is an admin.
    pub fn is_admin(&self, user: &str) -> bool {
        self.admins.iter().any(|a| a == user)
    }

    /// The check to run for `user`/`password`: against the user's hash, or against the dummy
    /// hash for an unknown user (`known` false: the answer is then always "invalid").
    pub fn check_for(&self, user: &str, password: &str) -> PasswordCheck {
        let (hash, known) = match self.users.get(user) {
            Some(h) => (h.clone(), true),
            None => (self.dummy_hash.clone(), false),
        };
        PasswordCheck {
            user: user.to_owned(),
            password: password.to_owned(),
            hash,
            known,
        }
    }
}

/// A password to check against a bcrypt hash ([`crate::Action::VerifyPassword`]). `Debug`
/// never shows the password or the hash.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordCheck {
    /// The user name as the client sent it.
    pub user: String,
    /// The password as the client sent it.
    pub password: String,
    /// The bcrypt hash to check against.
    pub hash: String,
    /// False for an unknown user (checked against a dummy hash, never valid).
    pub known: bool,
}

impl core::fmt::Debug for PasswordCheck {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PasswordCheck").finish_non_exhaustive()
    }
}

/// The wrapper's answer to [`crate::Action::VerifyPassword`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasswordVerdict {
    /// The password matches.
    Valid,
    /// It does not (or the user is unknown).
    Invalid,
    /// Too many recent failures for this user: not checked; retry after this many seconds.
    Throttled {
        /// Seconds until the next attempt is checked.
        retry_after_secs: u64,
    },
}

/// Runs bcrypt (slow by design: call it off any event loop). True only for a known user
/// whose password matches; bcrypt compares in constant time.
pub fn verify_password(check: &PasswordCheck) -> bool {
    let ok = bcrypt::verify(check.password.as_bytes(), &check.hash).unwrap_or(false);
    ok && check.known
}

/// A keyed hash identifying one successful check, for a wrapper's short-lived memo of
/// verified credentials (the plaintext is never stored): HMAC-SHA256(`key`, user, password,
/// hash), each part length-prefixed.
pub fn memo_key(key: &[u8; 32], check: &PasswordCheck) -> [u8; 32] {
    let mut out = [0u8; 32];
    // A 32-byte key is always a valid HMAC key; the fallback (all zero) is unreachable.
    let Ok(mut m) = Hmac::<Sha256>::new_from_slice(key) else {
        return out;
    };
    m.update(b"dockerproxy login memo\0");
    for part in [&check.user, &check.password, &check.hash] {
        m.update(&(part.len() as u64).to_be_bytes());
        m.update(part.as_bytes());
    }
    out.copy_from_slice(&m.finalize().into_bytes());
    out
}

/// A short keyed hash of a user name for logs (SECURITY.md §2.17): 8 hex digits.
pub fn user_tag(key: &[u8; 32], user: &str) -> String {
    let h = crate::token::identity_hash(key, format!("login-user\0{user}").as_bytes());
    format!("{:08x}", h >> 32)
}

/// The credential on a request, as far as login is concerned.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// No `Authorization` line.
    None,
    /// `Basic` user and password.
    Basic {
        /// User.
        user: String,
        /// Password.
        password: String,
    },
    /// `Bearer` token (a login token if it verifies).
    Bearer(String),
    /// Anything else: several lines, another scheme, undecodable Basic.
    Invalid,
}

impl core::fmt::Debug for Credential {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::None => "None",
            Self::Basic { .. } => "Basic",
            Self::Bearer(_) => "Bearer",
            Self::Invalid => "Invalid",
        })
    }
}

/// Reads the request's `Authorization` lines: exactly one line or none.
pub fn credential(headers: &http::HeaderMap) -> Credential {
    let mut lines = headers.get_all(http::header::AUTHORIZATION).iter();
    let (Some(value), None) = (lines.next(), lines.next()) else {
        return if headers.contains_key(http::header::AUTHORIZATION) {
            Credential::Invalid
        } else {
            Credential::None
        };
    };
    let Ok(value) = value.to_str() else {
        return Credential::Invalid;
    };
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        return Credential::Bearer(rest.to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        return parse_basic(rest).map_or(Credential::Invalid, |(user, password)| {
            Credential::Basic { user, password }
        });
    }
    Credential::Invalid
}

/// Decodes `base64(user:password)`; the user is non-empty and both are UTF-8.
pub fn parse_basic(b64: &str) -> Option<(String, String)> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, password) = text.split_once(':')?;
    (!user.is_empty()).then(|| (user.to_owned(), password.to_owned()))
}

/// Parses an htpasswd file: `user:hash` lines, blank lines and `#` comments ignored. Only
/// bcrypt hashes (`$2a$`, `$2b$`, `$2y$`) are accepted; an error names the line, never the hash.
pub fn parse_htpasswd(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut users = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = line.split_once(':') else {
            return Err(format!("line {n}: not user:hash"));
        };
        if user.is_empty() || user == "*" || user.eq_ignore_ascii_case("anonymous") {
            return Err(format!("line {n}: user name {user:?} is reserved or empty"));
        }
        let bcrypt_prefix = ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p));
        if !bcrypt_prefix || hash.parse::<bcrypt::HashParts>().is_err() {
            return Err(format!(
                "line {n} (user {user:?}): only bcrypt hashes ($2y$, $2b$, $2a$) are supported; \
                 create entries with `htpasswd -B`"
            ));
        }
        if users.insert(user.to_owned(), hash.to_owned()).is_some() {
            return Err(format!("line {n}: user {user:?} appears twice"));
        }
    }
    if users.is_empty() {
        return Err("no users".to_owned());
    }
    Ok(users)
}

/// A bcrypt hash of a fixed string at `cost`, for unknown user names.
pub fn dummy_hash(cost: u32) -> String {
    bcrypt::hash_with_salt("dockerproxy: no such user", cost, [0x5a; 16])
        .map(|h| h.format_for_version(bcrypt::Version::TwoB))
        .unwrap_or_default()
}

/// The bcrypt cost of a hash (for [`dummy_hash`]); 10 when unreadable.
pub fn hash_cost(hash: &str) -> u32 {
    hash.parse::<bcrypt::HashParts>()
        .map_or(10, |p| p.get_cost())
}

/// Glob match: `*` matches any run of characters (including `/`), everything else itself.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0usize, 0usize);
    // The last `*` seen and the name position it currently stands for.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*", "library/busybox"));
        assert!(glob_match("library/*", "library/busybox"));
        assert!(!glob_match("library/*", "libraryx/busybox"));
        assert!(glob_match("*/app", "myorg/team/app"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
    }

    #[test]
    fn htpasswd_accepts_bcrypt_only() {
        let h = bcrypt::hash("pw", 4).unwrap();
        let users = parse_htpasswd(&format!("# c\n\nalice:{h}\n")).unwrap();
        assert_eq!(users.len(), 1);
        let e = parse_htpasswd("bob:{SHA}abc=").unwrap_err();
        assert!(e.contains("only bcrypt"), "{e}");
        let e = parse_htpasswd("bob:$apr1$x$y").unwrap_err();
        assert!(e.contains("line 1"), "{e}");
        assert!(parse_htpasswd(&format!("anonymous:{h}")).is_err());
        assert!(parse_htpasswd(&format!("a:{h}\na:{h}")).is_err());
        assert!(parse_htpasswd("").is_err());
    }

    #[test]
    fn basic_and_credentials() {
        let mut h = http::HeaderMap::new();
        assert_eq!(credential(&h), Credential::None);
        h.insert("authorization", "Basic YWxpY2U6cHc6eA==".parse().unwrap());
        assert_eq!(
            credential(&h),
            Credential::Basic {
                user: "alice".into(),
                password: "pw:x".into()
            }
        );
        h.append("authorization", "Bearer x".parse().unwrap());
        assert_eq!(credential(&h), Credential::Invalid);
        assert!(parse_basic("OnB3").is_none(), "empty user");
    }

    #[test]
    fn unknown_users_never_verify_and_memo_keys_differ() {
        let h = bcrypt::hash("pw", 4).unwrap();
        let s = LoginSettings {
            users: BTreeMap::from([("alice".to_owned(), h)]),
            rules: vec![Rule::everyone_logged_in()],
            admins: vec![],
            dummy_hash: dummy_hash(4),
        };
        assert!(verify_password(&s.check_for("alice", "pw")));
        assert!(!verify_password(&s.check_for("alice", "px")));
        assert!(!verify_password(&s.check_for("mallory", "pw")));
        let k = [1; 32];
        assert_ne!(
            memo_key(&k, &s.check_for("alice", "pw")),
            memo_key(&k, &s.check_for("alice", "px"))
        );
        assert!(!format!("{:?}", s.check_for("alice", "pw")).contains("pw"));
    }
}
