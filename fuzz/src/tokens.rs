//! Oracle for the token_response fuzz target (SECURITY.md §4 "Token scope handling": token JSON
//! parsing; §2.10): `parse_token_response` against an independent reading of the same JSON with
//! `serde_json`, at several clocks.

use dockerproxy_core::Timestamp;
use dockerproxy_core::token::{MAX_TOKEN_BODY, parse_rfc3339_millis, parse_token_response};
use serde_json::Value;

/// The clocks every input is parsed at: a realistic one, the epoch, and the far end (saturation).
const CLOCKS: [u64; 3] = [1_790_000_000_000, 0, u64::MAX];

/// Default lifetime (ms) when `expires_in` is missing or ≤ 0.
const DEFAULT_MS: f64 = 60_000.0;
/// Lifetime clamp (ms).
const MAX_MS: f64 = 3_600_000.0;
/// Safety margin (ms).
const MARGIN_MS: f64 = 10_000.0;

/// What the token should be, read independently: `Err(())` when the body must be refused.
fn expected_token(body: &[u8]) -> Result<(String, &'static str), ()> {
    let v: Value = serde_json::from_slice(body).map_err(|_| ())?;
    let obj = v.as_object().ok_or(())?;
    for field in ["token", "access_token"] {
        if let Some(t) = obj
            .get(field)
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            if !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(());
            }
            return Ok((t.to_owned(), field));
        }
    }
    Err(())
}

/// Never panics; a body is accepted exactly when it is a JSON object whose first non-empty string
/// of `token`, `access_token` is visible ASCII (header-safe: no space, CR, LF or control), and the
/// token is that string (`token` preferred); the expiry is `issued + usable lifetime`, where
/// `issued` is `issued_at` when valid and not in the future (else now), the lifetime is
/// `expires_in` clamped to (0, 1 h] or 60 s, and the margin is 10 s (half the lifetime when
/// shorter). Without `issued_at` the expiry lies within [now, now + 1 h].
pub fn check_token_response(data: &[u8]) {
    let expected = if data.len() > MAX_TOKEN_BODY {
        Err(())
    } else {
        expected_token(data)
    };
    for now_ms in CLOCKS {
        let now = Timestamp::from_millis(now_ms);
        let got = parse_token_response(data, now);
        let (want, _field) = match (&expected, &got) {
            (Err(()), Err(_)) => continue,
            (Ok(w), Ok(_)) => w.clone(),
            (want, got) => panic!("expected {want:?}, got {got:?}"),
        };
        let Ok(token) = got else { unreachable!() };
        assert_eq!(token.value, want);
        assert!(!token.value.is_empty());
        assert!(token.value.bytes().all(|b| (0x21..=0x7e).contains(&b)));

        let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(data) else {
            unreachable!("accepted a non-object")
        };
        let lifetime_ms = match obj.get("expires_in").and_then(Value::as_f64) {
            Some(s) if s > 0.0 => (s * 1000.0).min(MAX_MS),
            _ => DEFAULT_MS,
        };
        let issued_at = obj.get("issued_at").and_then(Value::as_str);
        let issued = issued_at
            .and_then(parse_rfc3339_millis)
            .filter(|t| *t <= now_ms)
            .unwrap_or(now_ms);
        let upper = now_ms.saturating_add(3_600_000);
        let at = token.expires_at.as_millis();
        assert!(at <= upper, "expiry {at} after now + 1 h ({now_ms})");
        assert!(at >= issued, "expiry {at} before issue {issued}");
        if issued_at.is_none() {
            assert!(at >= now_ms, "expiry {at} before now {now_ms}");
        }
        // The exact expiry, to a millisecond; both margin readings near the 10 s boundary,
        // where the float-to-duration rounding decides.
        let readings = [lifetime_ms - MARGIN_MS, lifetime_ms / 2.0];
        let usable: Vec<f64> = if (lifetime_ms - MARGIN_MS).abs() < 0.01 {
            readings.to_vec()
        } else if lifetime_ms > MARGIN_MS {
            vec![readings[0]]
        } else {
            vec![readings[1]]
        };
        let close = usable.iter().any(|u| {
            let want = (issued as f64 + u).min(u64::MAX as f64);
            (at as f64 - want).abs() <= 1.0 + want * 1e-15
        });
        assert!(
            close,
            "expiry {at}, issued {issued}, lifetime {lifetime_ms} ms"
        );
    }
    check_rfc3339(data);
}

/// `parse_rfc3339_millis` on the input as text: a whole-second UTC instant prints back as itself.
fn check_rfc3339(data: &[u8]) {
    let Ok(s) = core::str::from_utf8(data) else {
        return;
    };
    let Some(ms) = parse_rfc3339_millis(s) else {
        return;
    };
    let b = s.as_bytes();
    let plain = b.len() == 20 && b[10] == b'T' && b[19] == b'Z' && &s[17..19] != "60";
    if plain {
        assert_eq!(ms % 1000, 0, "{s:?}");
        assert_eq!(Timestamp::from_millis(ms).to_rfc3339(), s, "{s:?} -> {ms}");
    }
}
