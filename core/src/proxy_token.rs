//! The proxy's own opaque tokens (COMPAT.md §4.3): what `/v2/auth` answers anonymous clients on a
//! route with configured credentials, so the client's later requests can be recognised as
//! "anonymous through the proxy" and given the proxy's upstream token server-side.
//!
//! Format: `dpx1.<expiry ms>.<registry>.<hex HMAC-SHA256(key, "dpx1.<expiry>.<registry>")>`.
//! The token grants nothing beyond what a request without any `Authorization` gets; the MAC
//! only keeps clients from presenting arbitrary strings as proxy tokens.

use core::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::time::Timestamp;

/// Lifetime of a proxy token.
pub const PROXY_TOKEN_LIFETIME: Duration = Duration::from_secs(300);

const PREFIX: &str = "dpx1";

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

/// True when `authorization` is `Bearer <proxy token>` (any validity): such a value is never
/// forwarded upstream.
pub fn looks_like_proxy_token(authorization: &str) -> bool {
    authorization
        .strip_prefix("Bearer ")
        .is_some_and(|t| t.starts_with("dpx1."))
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
}
