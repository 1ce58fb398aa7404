//! Token requests and the token cache (COMPAT.md §4.2, §4.3; SECURITY.md §2.10).
//!
//! [`TokenCache`] is a pure data structure: the wrapper keeps one per process behind a lock and
//! asks it what to do. "One fetch at a time per key" is decided here ([`TokenLookup::Fetch`] to the
//! first asker, [`TokenLookup::Wait`] to the others until [`TokenCache::complete`] or
//! [`TokenCache::fail`]).

use core::time::Duration;
use std::collections::BTreeMap;

use crate::time::Timestamp;

/// Default lifetime when `expires_in` is missing or ≤ 0.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Upper clamp on a token's lifetime.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// Safety margin before expiry.
pub const TOKEN_MARGIN: Duration = Duration::from_secs(10);

/// A parsed token response.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// `token`, else `access_token`.
    pub value: String,
    /// When the cached copy stops being used (issued_at + clamped lifetime − margin).
    pub expires_at: Timestamp,
}

impl core::fmt::Debug for Token {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Token").field("value", &"<redacted>").field("expires_at", &self.expires_at).finish()
    }
}

/// Why a token response was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenError(pub &'static str);

/// Parses a token JSON body (≤ 1 MiB, checked by the caller). `issued_at` (RFC 3339) is honoured
/// when present and not in the future, else `now` is used.
pub fn parse_token_response(body: &[u8], now: Timestamp) -> Result<Token, TokenError> {
    let _ = (body, now);
    todo!()
}

/// Whose credential a token was obtained with.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Identity {
    /// No credential.
    Anonymous,
    /// The route's configured credentials.
    Configured,
    /// A keyed hash of a client credential (never the credential itself).
    Client(u64),
}

/// The token cache key (SECURITY.md §2.10).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenKey {
    /// Registry name.
    pub registry: String,
    /// Realm URL.
    pub realm: String,
    /// `service`.
    pub service: Option<String>,
    /// Scopes, sorted and de-duplicated.
    pub scopes: Vec<String>,
    /// Identity.
    pub identity: Identity,
}

/// What the caller should do for a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenLookup {
    /// A valid cached token.
    Hit(Token),
    /// The caller is the one fetcher; it must call `complete` or `fail` later.
    Fetch,
    /// Someone else is fetching; wait for `complete`/`fail` and look up again.
    Wait,
}

/// A bounded token cache with single-flight fetches.
#[derive(Debug, Default)]
pub struct TokenCache {
    entries: BTreeMap<TokenKey, Entry>,
    capacity: usize,
}

#[derive(Debug)]
enum Entry {
    Ready(Token),
    Fetching { since: Timestamp },
}

impl TokenCache {
    /// A cache holding at most `capacity` keys.
    pub fn new(capacity: usize) -> Self {
        Self { entries: BTreeMap::new(), capacity }
    }

    /// Looks up `key` at `now`.
    pub fn lookup(&mut self, key: &TokenKey, now: Timestamp) -> TokenLookup {
        let _ = (key, now, &self.entries, self.capacity);
        let _ = Entry::Fetching { since: now };
        let _ = |t: Token| Entry::Ready(t);
        todo!()
    }

    /// Stores a fetched token and ends the fetch.
    pub fn complete(&mut self, key: TokenKey, token: Token) {
        let _ = (key, token);
        todo!()
    }

    /// Ends a failed fetch (waiters will fetch again).
    pub fn fail(&mut self, key: &TokenKey) {
        let _ = key;
        todo!()
    }

    /// Drops a token (after a 401 with it).
    pub fn invalidate(&mut self, key: &TokenKey) {
        let _ = key;
        todo!()
    }
}
