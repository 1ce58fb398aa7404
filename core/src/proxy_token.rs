//! The proxy's own opaque tokens (COMPAT.md §4.3): what `/v2/auth` answers anonymous clients on a
//! route with configured credentials, so the client's later requests can be recognised as
//! "anonymous through the proxy" and given the proxy's upstream token server-side.
//!
//! Format: `dpx1.<expiry ms>.<registry>.<hex HMAC-SHA256(key, "dpx1.<expiry>.<registry>")>`.
//! The token grants nothing beyond what a request without any `Authorization` gets; the MAC
//! only keeps clients from presenting arbitrary strings as proxy tokens.
//!
//! With proxy login on (SECURITY.md §2.16), `/v2/auth` issues login tokens instead:
//! `dpl1.<expiry ms>.<principal>.<hex HMAC-SHA256(key, "dpl1.<expiry>.<principal>")>`, where the
//! principal is `a` (anonymous) or `u` + the base64url user name. They carry who logged in,
//! not what they may read: the allow rules are applied on every request.

use core::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::login::Principal;
use crate::time::Timestamp;

/// Lifetime of a proxy token.
pub const PROXY_TOKEN_LIFETIME: Duration = Duration::from_secs(300);

const PREFIX: &str = "dpx1";
const LOGIN_PREFIX: &str = "dpl1";

fn mac(key: &[u8; 32], payload: &str) -> String {
    // A 32-byte key is always a valid HMAC key; the fallback is unreachable.
    let Ok(mut m) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    m.update(payload.as_bytes());
    hex::encode(m.finalize().into_bytes())
}

/// Issues a token for `registry`, valid from `now` for [`PROXY_TOKEN_LIFETIME`].
pub fn issue(key: &[u8; 32], registry: &str, now: Timestamp) -> String {
    let expiry = (now + PROXY_TOKEN_LIFETIME).as_millis();
    let payload = format!("{PREFIX}.{expiry}.{registry}");
    let tag = mac(key, &payload);
    format!("{payload}.{tag}")
}

/// True when `token` is a proxy token for `registry`, unexpired at `now`, with a valid MAC.
pub fn verify(key: &[u8; 32], token: &str, registry: &str, now: Timestamp) -> bool {
    let Some((payload, tag)) = token.rsplit_once('.') else {
        return false;
    };
    let mut parts = payload.splitn(3, '.');
    let (Some(prefix), Some(expiry), Some(reg)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let Ok(expiry) = expiry.parse::<u64>() else {
        return false;
    };
    if prefix != PREFIX || reg != registry || now.as_millis() >= expiry {
        return false;
    }
    let Ok(given) = hex::decode(tag) else {
        return false;
    };
    // Constant-time comparison through the MAC crate's verifier.
    let Ok(mut m) = Hmac::<Sha256>::new_from_slice(key) else {
        return false;
    };
    m.update(payload.as_bytes());
    m.verify_slice(&given).is_ok()
}

/// True when `authorization` is `Bearer <proxy token or login token>` (any validity): such a
/// value is never forwarded upstream.
pub fn looks_like_proxy_token(authorization: &str) -> bool {
    authorization
        .strip_prefix("Bearer ")
        .is_some_and(|t| t.starts_with("dpx1.") || t.starts_with("dpl1."))
}

/// Issues a login token for `who`, valid from `now` for [`PROXY_TOKEN_LIFETIME`].
pub fn issue_login(key: &[u8; 32], who: &Principal, now: Timestamp) -> String {
    let expiry = (now + PROXY_TOKEN_LIFETIME).as_millis();
    let principal = match who {
        Principal::Anonymous => "a".to_owned(),
        Principal::User(u) => format!("u{}", URL_SAFE_NO_PAD.encode(u)),
    };
    let payload = format!("{LOGIN_PREFIX}.{expiry}.{principal}");
    let tag = mac(key, &payload);
    format!("{payload}.{tag}")
}

/// The principal of a login token with a valid MAC, unexpired at `now`; `None` otherwise.
pub fn verify_login(key: &[u8; 32], token: &str, now: Timestamp) -> Option<Principal> {
    let (payload, tag) = token.rsplit_once('.')?;
    let mut parts = payload.splitn(3, '.');
    let (Some(LOGIN_PREFIX), Some(expiry), Some(principal)) =
        (parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let expiry = expiry.parse::<u64>().ok()?;
    if now.as_millis() >= expiry {
        return None;
    }
    let given = hex::decode(tag).ok()?;
    // Constant-time comparison through the MAC crate's verifier.
    let mut m = Hmac::<Sha256>::new_from_slice(key).ok()?;
    m.update(payload.as_bytes());
    m.verify_slice(&given).ok()?;
    match principal.strip_prefix('u') {
        Some(b64) => {
            let user = String::from_utf8(URL_SAFE_NO_PAD.decode(b64).ok()?).ok()?;
            (!user.is_empty()).then_some(Principal::User(user))
        }
        None => (principal == "a").then_some(Principal::Anonymous),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];
    const NOW: Timestamp = Timestamp::from_millis(1_790_000_000_000);

    #[test]
    fn issued_tokens_verify_until_expiry_for_their_registry_only() {
        let t = issue(&KEY, "docker.io", NOW);
        assert!(looks_like_proxy_token(&format!("Bearer {t}")));
        assert!(verify(&KEY, &t, "docker.io", NOW));
        assert!(!verify(&KEY, &t, "ghcr.io", NOW));
        assert!(!verify(&[8; 32], &t, "docker.io", NOW));
        assert!(!verify(&KEY, &t, "docker.io", NOW + PROXY_TOKEN_LIFETIME));
        // Flip the last hex digit: a forged MAC must always be refused.
        let mut forged = t;
        let last = forged.pop().unwrap();
        forged.push(if last == '0' { '1' } else { '0' });
        assert!(!verify(&KEY, &forged, "docker.io", NOW));
        assert!(!verify(&KEY, "dpx1.x.docker.io.00", "docker.io", NOW));
        assert!(!verify(&KEY, "", "docker.io", NOW));
    }

    #[test]
    fn login_tokens_carry_the_principal_until_expiry() {
        let alice = Principal::User("al.ice".to_owned());
        let t = issue_login(&KEY, &alice, NOW);
        assert!(looks_like_proxy_token(&format!("Bearer {t}")));
        assert_eq!(verify_login(&KEY, &t, NOW), Some(alice));
        assert_eq!(verify_login(&KEY, &t, NOW + PROXY_TOKEN_LIFETIME), None);
        assert_eq!(verify_login(&[8; 32], &t, NOW), None);
        let anon = issue_login(&KEY, &Principal::Anonymous, NOW);
        assert_eq!(verify_login(&KEY, &anon, NOW), Some(Principal::Anonymous));
        // A registry proxy token is no login token, and the reverse.
        assert_eq!(
            verify_login(&KEY, &issue(&KEY, "docker.io", NOW), NOW),
            None
        );
        assert!(!verify(&KEY, &t, "docker.io", NOW));
        // Another principal under the same MAC is refused.
        let (payload, tag) = t.rsplit_once('.').unwrap();
        let (head, _) = payload.rsplit_once('.').unwrap();
        let bob = URL_SAFE_NO_PAD.encode("bob");
        assert_eq!(
            verify_login(&KEY, &format!("{head}.u{bob}.{tag}"), NOW),
            None
        );
    }
}
