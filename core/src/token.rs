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
        f.debug_struct("Token")
            .field("value", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Why a token response was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenError(pub &'static str);

/// Largest token response body parsed (COMPAT.md §10); the caller enforces it while reading.
pub const MAX_TOKEN_BODY: usize = 1024 * 1024;

/// How long a fetch may stay in flight before another asker takes it over.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Capacity of a [`TokenCache::default`].
pub const DEFAULT_TOKEN_CACHE_CAPACITY: usize = 1024;

/// Parses a token JSON body (≤ 1 MiB, checked by the caller). `issued_at` (RFC 3339) is honoured
/// when present and not in the future, else `now` is used.
///
/// The token is `token`, else `access_token` (the first non-empty string of the two); it must be
/// visible ASCII, since it goes into an `Authorization` header. `expires_in` missing, not a
/// number or ≤ 0 gives [`DEFAULT_TOKEN_LIFETIME`]; above [`MAX_TOKEN_LIFETIME`] it is clamped.
/// The cached copy expires [`TOKEN_MARGIN`] early (half the lifetime early for short tokens).
pub fn parse_token_response(body: &[u8], now: Timestamp) -> Result<Token, TokenError> {
    if body.len() > MAX_TOKEN_BODY {
        return Err(TokenError("token response too large"));
    }
    let json: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| TokenError("token response is not JSON"))?;
    let obj = json
        .as_object()
        .ok_or(TokenError("token response is not a JSON object"))?;
    let value = ["token", "access_token"]
        .iter()
        .filter_map(|k| obj.get(*k).and_then(serde_json::Value::as_str))
        .find(|t| !t.is_empty())
        .ok_or(TokenError("token response has no token"))?;
    if !value.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(TokenError(
            "token holds a character not allowed in a header",
        ));
    }
    let lifetime = match obj.get("expires_in").and_then(serde_json::Value::as_f64) {
        Some(secs) if secs > 0.0 => {
            // Clamped before conversion, so `from_secs_f64` cannot overflow.
            Duration::from_secs_f64(secs.min(MAX_TOKEN_LIFETIME.as_secs_f64()))
        }
        _ => DEFAULT_TOKEN_LIFETIME,
    };
    let issued = obj
        .get("issued_at")
        .and_then(serde_json::Value::as_str)
        .and_then(parse_rfc3339_millis)
        .map(Timestamp::from_millis)
        .filter(|t| *t <= now)
        .unwrap_or(now);
    let usable = if TOKEN_MARGIN >= lifetime {
        lifetime / 2
    } else {
        lifetime - TOKEN_MARGIN
    };
    Ok(Token {
        value: value.to_owned(),
        expires_at: issued + usable,
    })
}

/// Parses an RFC 3339 date-time (`YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`) into milliseconds since
/// the Unix epoch. `None` when malformed, out of range or before the epoch. Written here because
/// the core carries no date crate.
pub fn parse_rfc3339_millis(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let digits = b.get(from..from.checked_add(len)?)?;
        digits.iter().try_fold(0i64, |acc, &d| {
            d.is_ascii_digit().then(|| acc * 10 + i64::from(d - b'0'))
        })
    };
    let sep = |at: usize, allowed: &[u8]| b.get(at).is_some_and(|c| allowed.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    // 60 is a leap second.
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut pos = 19;
    let mut millis = 0i64;
    if b.get(pos) == Some(&b'.') {
        pos += 1;
        let start = pos;
        while b.get(pos).is_some_and(u8::is_ascii_digit) {
            pos += 1;
        }
        if pos == start {
            return None;
        }
        // First three fractional digits, right-padded: ".5" is 500 ms.
        for i in 0..3 {
            let d = if start + i < pos {
                b.get(start + i).map_or(0, |d| i64::from(d - b'0'))
            } else {
                0
            };
            millis = millis * 10 + d;
        }
    }
    let offset_secs = match b.get(pos) {
        Some(b'Z' | b'z') if pos + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) if pos + 6 == b.len() && sep(pos + 3, b":") => {
            let (oh, om) = (num(pos + 1, 2)?, num(pos + 4, 2)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if sign == b'+' { off } else { -off }
        }
        _ => return None,
    };
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - offset_secs;
    u64::try_from(secs.checked_mul(1000)?.checked_add(millis)?).ok()
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
/// Inputs are bounded by the parser (year ≤ 9999), so nothing overflows.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A keyed hash of a client credential for [`Identity::Client`]: the first 8 bytes
/// (big-endian) of HMAC-SHA256(`key`, `credential`). Keyed, so the hash of a low-entropy
/// password cannot be brute-forced by someone who sees only the cache key.
pub fn identity_hash(key: &[u8; 32], credential: &[u8]) -> u64 {
    use hmac::{Hmac, Mac};
    // A 32-byte key is always a valid HMAC key; the fallback is unreachable.
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(key) else {
        return 0;
    };
    mac.update(credential);
    let out = mac.finalize().into_bytes();
    let mut first = [0u8; 8];
    first.copy_from_slice(&out[..8]);
    u64::from_be_bytes(first)
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

impl TokenKey {
    /// Builds a key with `scopes` sorted and de-duplicated, as the cache expects.
    pub fn new(
        registry: impl Into<String>,
        realm: impl Into<String>,
        service: Option<String>,
        mut scopes: Vec<String>,
        identity: Identity,
    ) -> Self {
        scopes.sort();
        scopes.dedup();
        Self {
            registry: registry.into(),
            realm: realm.into(),
            service,
            scopes,
            identity,
        }
    }
}

/// A bounded token cache with single-flight fetches.
///
/// Each key is absent, `Fetching` (one asker is fetching since a time) or `Ready` (a token).
///
/// ```text
///            lookup: Fetch                   complete
///   absent ─────────────────▶ Fetching ───────────────────▶ Ready
///     ▲                        │  ▲  lookup < 30 s: Wait     │ lookup before expiry: Hit
///     └───────── fail ─────────┘  └──────────────────────────┘ lookup at/after expiry: Fetch
/// ```
///
/// A fetch in flight for [`FETCH_TIMEOUT`] or more is taken over by the next asker. When a new
/// key does not fit, expired tokens and stale fetches are dropped first, then the token closest
/// to expiry, then the oldest fetch.
#[derive(Debug)]
pub struct TokenCache {
    entries: BTreeMap<TokenKey, Entry>,
    capacity: usize,
}

#[derive(Debug)]
enum Entry {
    Ready(Token),
    Fetching { since: Timestamp },
}

impl Default for TokenCache {
    /// A cache of [`DEFAULT_TOKEN_CACHE_CAPACITY`] keys.
    fn default() -> Self {
        Self::new(DEFAULT_TOKEN_CACHE_CAPACITY)
    }
}

impl TokenCache {
    /// A cache holding at most `capacity` keys (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: BTreeMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// Number of keys held (tokens and fetches in flight).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Looks up `key` at `now`.
    pub fn lookup(&mut self, key: &TokenKey, now: Timestamp) -> TokenLookup {
        match self.entries.get_mut(key) {
            Some(Entry::Ready(token)) if now < token.expires_at => {
                return TokenLookup::Hit(token.clone());
            }
            Some(Entry::Fetching { since }) if now.saturating_since(*since) < FETCH_TIMEOUT => {
                return TokenLookup::Wait;
            }
            // Expired token, or a stale fetch taken over.
            Some(entry) => {
                *entry = Entry::Fetching { since: now };
                return TokenLookup::Fetch;
            }
            None => {}
        }
        self.make_room(Some(now));
        self.entries
            .insert(key.clone(), Entry::Fetching { since: now });
        TokenLookup::Fetch
    }

    /// Stores a fetched token and ends the fetch.
    pub fn complete(&mut self, key: TokenKey, token: Token) {
        if !self.entries.contains_key(&key) {
            // The fetch entry was evicted meanwhile; the token still has to fit.
            self.make_room(None);
        }
        self.entries.insert(key, Entry::Ready(token));
    }

    /// Ends a failed fetch (waiters will fetch again). A token stored meanwhile is kept.
    pub fn fail(&mut self, key: &TokenKey) {
        if matches!(self.entries.get(key), Some(Entry::Fetching { .. })) {
            self.entries.remove(key);
        }
    }

    /// Drops a token (after a 401 with it). A fetch in flight for the key is left alone, so
    /// fetches stay single-flight.
    pub fn invalidate(&mut self, key: &TokenKey) {
        if matches!(self.entries.get(key), Some(Entry::Ready(_))) {
            self.entries.remove(key);
        }
    }

    /// Frees one slot when the cache is full: expired tokens and stale fetches first (when the
    /// time is known), then the token closest to expiry, then the oldest fetch.
    fn make_room(&mut self, now: Option<Timestamp>) {
        if self.entries.len() < self.capacity {
            return;
        }
        if let Some(now) = now {
            self.entries.retain(|_, e| match e {
                Entry::Ready(t) => now < t.expires_at,
                Entry::Fetching { since } => now.saturating_since(*since) < FETCH_TIMEOUT,
            });
        }
        while self.entries.len() >= self.capacity {
            let victim = self
                .entries
                .iter()
                .min_by_key(|(_, e)| match e {
                    Entry::Ready(t) => (0, t.expires_at),
                    Entry::Fetching { since } => (1, *since),
                })
                .map(|(k, _)| k.clone());
            match victim {
                Some(k) => self.entries.remove(&k),
                None => break,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp::from_millis(1_795_953_600_000); // 2026-11-29T12:00:00Z

    #[test]
    fn rfc3339_values() {
        assert_eq!(parse_rfc3339_millis("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_millis("2026-11-29T12:00:00Z"),
            Some(NOW.as_millis())
        );
        assert_eq!(
            parse_rfc3339_millis("2026-11-29T12:00:00.123456789Z"),
            Some(NOW.as_millis() + 123)
        );
        assert_eq!(
            parse_rfc3339_millis("2026-11-29t12:00:00.5z"),
            Some(NOW.as_millis() + 500)
        );
        assert_eq!(
            parse_rfc3339_millis("2026-11-29T13:30:00+01:30"),
            Some(NOW.as_millis())
        );
        assert_eq!(
            parse_rfc3339_millis("2026-11-29T10:00:00-02:00"),
            Some(NOW.as_millis())
        );
        assert_eq!(
            parse_rfc3339_millis("2000-02-29T00:00:00Z"),
            Some(951_782_400_000)
        );
        assert_eq!(
            parse_rfc3339_millis("2024-12-31T23:59:59Z"),
            Some(1_735_689_599_000)
        );
    }

    #[test]
    fn rfc3339_rejects() {
        for bad in [
            "",
            "2026-11-29",
            "2026-11-29T12:00:00",
            "2026-11-29T12:00:00ZZ",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2026-11-29T24:00:00Z",
            "2026-11-29T12:00:00.Z",
            "2026-11-29T12:00:00+1:00",
            "2026-11-29T12:00:00+01:00x",
            "1970-01-01T00:00:00+00:01",
            "+026-11-29T12:00:00Z",
            "2026-11-29T12:00:00\u{e9}",
        ] {
            assert_eq!(parse_rfc3339_millis(bad), None, "{bad:?}");
        }
    }

    fn parse(body: &str) -> Result<Token, TokenError> {
        parse_token_response(body.as_bytes(), NOW)
    }

    #[test]
    fn token_field_precedence() {
        assert_eq!(
            parse(r#"{"token":"a","access_token":"b"}"#).unwrap().value,
            "a"
        );
        assert_eq!(
            parse(r#"{"token":"","access_token":"b"}"#).unwrap().value,
            "b"
        );
        assert_eq!(parse(r#"{"access_token":"b"}"#).unwrap().value, "b");
        assert!(parse(r#"{"token":""}"#).is_err());
        assert!(parse(r#"{"token":5}"#).is_err());
        assert!(parse(r#"["token"]"#).is_err());
        assert!(parse("not json").is_err());
        assert!(parse(r#"{"token":"a\r\nX-Evil: 1"}"#).is_err());
        assert!(parse(r#"{"token":"a b"}"#).is_err());
    }

    #[test]
    fn lifetime_default_clamp_and_margin() {
        let s = |secs: u64| NOW + Duration::from_secs(secs);
        assert_eq!(parse(r#"{"token":"t"}"#).unwrap().expires_at, s(50));
        assert_eq!(
            parse(r#"{"token":"t","expires_in":0}"#).unwrap().expires_at,
            s(50)
        );
        assert_eq!(
            parse(r#"{"token":"t","expires_in":-5}"#)
                .unwrap()
                .expires_at,
            s(50)
        );
        assert_eq!(
            parse(r#"{"token":"t","expires_in":"300"}"#)
                .unwrap()
                .expires_at,
            s(50)
        );
        assert_eq!(
            parse(r#"{"token":"t","expires_in":300}"#)
                .unwrap()
                .expires_at,
            s(290)
        );
        assert_eq!(
            parse(r#"{"token":"t","expires_in":1e300}"#)
                .unwrap()
                .expires_at,
            s(3590)
        );
        assert_eq!(
            parse(r#"{"token":"t","expires_in":99999999999999999999}"#)
                .unwrap()
                .expires_at,
            s(3590)
        );
        // Margin ≥ lifetime: half the lifetime.
        assert_eq!(
            parse(r#"{"token":"t","expires_in":8}"#).unwrap().expires_at,
            s(4)
        );
    }

    #[test]
    fn issued_at_honoured_unless_future_or_bad() {
        let t =
            parse(r#"{"token":"t","expires_in":300,"issued_at":"2026-11-29T11:58:00Z"}"#).unwrap();
        assert_eq!(t.expires_at, NOW + Duration::from_secs(170));
        let t =
            parse(r#"{"token":"t","expires_in":300,"issued_at":"2026-11-29T12:05:00Z"}"#).unwrap();
        assert_eq!(t.expires_at, NOW + Duration::from_secs(290));
        let t = parse(r#"{"token":"t","expires_in":300,"issued_at":"yesterday"}"#).unwrap();
        assert_eq!(t.expires_at, NOW + Duration::from_secs(290));
    }

    #[test]
    fn debug_redacts() {
        let t = parse(r#"{"token":"secret-value"}"#).unwrap();
        assert!(!format!("{t:?}").contains("secret-value"));
    }

    #[test]
    fn hmac_matches_rfc4231() {
        // RFC 4231 test case 2: key "Jefe" (zero-padded keys give the same HMAC).
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        assert_eq!(
            identity_hash(&key, b"what do ya want for nothing?"),
            0x5bdc_c146_bf60_754e
        );
        // Test case 1: key 0x0b × 20, "Hi There".
        let mut key = [0u8; 32];
        key[..20].fill(0x0b);
        assert_eq!(identity_hash(&key, b"Hi There"), 0xb034_4c61_d8db_3853);
        assert_ne!(
            identity_hash(&key, b"Hi There"),
            identity_hash(&[1; 32], b"Hi There")
        );
    }

    fn key(n: u8) -> TokenKey {
        TokenKey::new(
            "docker.io",
            "https://auth.docker.io/token",
            None,
            vec![format!("repository:r{n}:pull")],
            Identity::Anonymous,
        )
    }

    fn tok(v: &str, exp: Timestamp) -> Token {
        Token {
            value: v.to_owned(),
            expires_at: exp,
        }
    }

    #[test]
    fn key_scopes_sorted_deduped() {
        let k = TokenKey::new(
            "r",
            "x",
            None,
            vec!["b".into(), "a".into(), "b".into()],
            Identity::Configured,
        );
        assert_eq!(k.scopes, ["a", "b"]);
    }

    #[test]
    fn stale_fetch_taken_over() {
        let mut c = TokenCache::new(4);
        assert_eq!(c.lookup(&key(1), NOW), TokenLookup::Fetch);
        assert_eq!(
            c.lookup(&key(1), NOW + Duration::from_secs(29)),
            TokenLookup::Wait
        );
        assert_eq!(c.lookup(&key(1), NOW + FETCH_TIMEOUT), TokenLookup::Fetch);
        assert_eq!(c.lookup(&key(1), NOW + FETCH_TIMEOUT), TokenLookup::Wait);
    }

    #[test]
    fn fail_and_invalidate_only_touch_their_state() {
        let mut c = TokenCache::new(4);
        c.complete(key(1), tok("a", NOW + Duration::from_secs(60)));
        c.fail(&key(1));
        assert_eq!(
            c.lookup(&key(1), NOW),
            TokenLookup::Hit(tok("a", NOW + Duration::from_secs(60)))
        );
        assert_eq!(c.lookup(&key(2), NOW), TokenLookup::Fetch);
        c.invalidate(&key(2));
        assert_eq!(c.lookup(&key(2), NOW), TokenLookup::Wait);
        c.invalidate(&key(1));
        assert_eq!(c.lookup(&key(1), NOW), TokenLookup::Fetch);
    }

    #[test]
    fn eviction_prefers_expired_then_closest_to_expiry() {
        let mut c = TokenCache::new(3);
        c.complete(key(1), tok("1", NOW + Duration::from_secs(10)));
        c.complete(key(2), tok("2", NOW + Duration::from_secs(100)));
        c.complete(key(3), tok("3", NOW + Duration::from_secs(50)));
        assert_eq!(c.len(), 3);
        // At NOW+20 key 1 is expired: it goes, the others stay.
        let later = NOW + Duration::from_secs(20);
        assert_eq!(c.lookup(&key(4), later), TokenLookup::Fetch);
        assert_eq!(c.len(), 3);
        assert!(matches!(c.lookup(&key(2), later), TokenLookup::Hit(_)));
        assert!(matches!(c.lookup(&key(3), later), TokenLookup::Hit(_)));
        // Nothing expired: the token closest to expiry (key 3) goes, the fetch stays.
        assert_eq!(c.lookup(&key(5), later), TokenLookup::Fetch);
        assert_eq!(c.len(), 3);
        assert_eq!(c.lookup(&key(4), later), TokenLookup::Wait);
        assert!(matches!(c.lookup(&key(2), later), TokenLookup::Hit(_)));
        assert_eq!(c.lookup(&key(3), later), TokenLookup::Fetch);
    }

    #[test]
    fn default_capacity_is_usable() {
        let mut c = TokenCache::default();
        for n in 0..10 {
            assert_eq!(c.lookup(&key(n), NOW), TokenLookup::Fetch);
        }
        assert_eq!(c.len(), 10);
        assert!(TokenCache::new(0).is_empty());
        let mut one = TokenCache::new(0);
        assert_eq!(one.lookup(&key(1), NOW), TokenLookup::Fetch);
        assert_eq!(one.len(), 1);
    }
}
