//! Oracle for the verifier fuzz target (SECURITY.md §4 "Verify-with-holdback state machine",
//! §2.4): content, chunking, holdback, claimed digest (right or wrong) and claimed length come
//! from the input; digests are computed here with `sha2` directly.

use dockerproxy_core::reference::{Algorithm, Digest};
use dockerproxy_core::verifier::{DEFAULT_HOLDBACK, Verifier, VerifyError, digest_of, verify_all};
use sha2::Digest as _;

use crate::input::Reader;

/// The `algorithm:hex` digest of `body`.
fn digest_string(sha512: bool, body: &[u8]) -> String {
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    if sha512 {
        format!("sha512:{}", hex(&sha2::Sha512::digest(body)))
    } else {
        format!("sha256:{}", hex(&sha2::Sha256::digest(body)))
    }
}

/// Input: flags (bit 0 sha512, bits 1–2 claim: right / last hex digit changed / digest of other
/// bytes / right; bit 3 a claimed length, bits 4–7 its error), holdback (255 = the default),
/// up to 15 chunk sizes, then the content.
///
/// Properties: every push releases exactly the bytes beyond the holdback (at least 1), as a
/// prefix of the content; a match (right digest, right or no length) ends Ok with
/// released + tail == content; otherwise Err of the right kind (too long on the push that
/// overran, too short, or a mismatch naming the actual digest), and what was released is a strict
/// prefix of at most total − holdback bytes. The empty content works like any other.
pub fn check_verifier(data: &[u8]) {
    let mut r = Reader::new(data);
    let flags = r.byte();
    let holdback_byte = r.byte();
    let sizes: Vec<usize> = r.bytes(15).iter().map(|b| usize::from(*b)).collect();
    let content = r.rest();

    let sha512 = flags & 1 != 0;
    let right = digest_string(sha512, content);
    let claim_kind = (flags >> 1) & 3;
    let claimed = match claim_kind {
        1 => {
            let mut s = right.clone();
            let last = s.pop().unwrap_or('0');
            s.push(if last == '0' { '1' } else { '0' });
            s
        }
        2 => {
            let mut other = content.to_vec();
            other.push(0);
            digest_string(sha512, &other)
        }
        _ => right.clone(),
    };
    let digest_ok = claimed == right;
    let total = content.len() as u64;
    let len_error = i64::from(flags >> 4) - 8;
    let expected_len = (flags & 8 != 0).then(|| total.saturating_add_signed(len_error));
    let len_ok = expected_len.is_none_or(|l| l == total);

    let expected = Digest::parse(&claimed).unwrap_or_else(|e| panic!("{claimed}: {e:?}"));
    let alg = if sha512 {
        Algorithm::Sha512
    } else {
        Algorithm::Sha256
    };
    assert_eq!(expected.algorithm(), alg);
    assert_eq!(digest_of(alg, content).to_string(), right);
    assert_eq!(verify_all(&expected, content).is_ok(), digest_ok);

    let (mut v, holdback) = if holdback_byte == 255 {
        (Verifier::new(expected, expected_len), DEFAULT_HOLDBACK)
    } else {
        let h = usize::from(holdback_byte);
        (Verifier::with_holdback(expected, expected_len, h), h.max(1))
    };
    assert_eq!(v.holdback(), holdback);

    let mut released = Vec::new();
    let mut pushed = 0usize;
    let mut overran = false;
    let mut i = 0;
    while pushed < content.len() || (i < sizes.len() && i < 4) {
        let size = sizes
            .get(i % sizes.len().max(1))
            .copied()
            .unwrap_or(content.len());
        i += 1;
        // A run of zero sizes still ends: after 64 pushes the rest goes in one chunk.
        let size = if i > 64 { content.len() } else { size };
        let end = pushed.saturating_add(size).min(content.len());
        let chunk = &content[pushed..end];
        pushed = end;
        match v.push(chunk) {
            Ok(out) => {
                assert!(!overran, "a push succeeded after an overrun");
                released.extend_from_slice(&out);
                assert_eq!(
                    released.len(),
                    pushed.saturating_sub(holdback),
                    "release amount"
                );
                assert_eq!(
                    released,
                    content[..released.len()],
                    "release is not a prefix"
                );
            }
            Err(e) => {
                assert_eq!(e, VerifyError::TooLong);
                let limit = expected_len.unwrap_or_else(|| panic!("TooLong without a length"));
                assert!(pushed as u64 > limit, "TooLong at {pushed} of {limit}");
                overran = true;
            }
        }
        if !overran && let Some(limit) = expected_len {
            assert!(pushed as u64 <= limit, "no TooLong at {pushed} of {limit}");
        }
        assert_eq!(v.len(), pushed as u64);
        if i > 200 {
            break;
        }
    }
    assert_eq!(v.is_empty(), content.is_empty());
    if overran {
        assert_eq!(
            v.push(b""),
            Err(VerifyError::TooLong),
            "overrun is not sticky"
        );
    }

    let result = v.finish();
    if digest_ok && len_ok {
        let tail = result.unwrap_or_else(|e| panic!("right digest and length refused: {e:?}"));
        released.extend_from_slice(&tail);
        assert_eq!(released, content, "released + tail != content");
        return;
    }
    let err = match result {
        Ok(tail) => panic!(
            "accepted: digest_ok={digest_ok} len_ok={len_ok}, tail of {} bytes",
            tail.len()
        ),
        Err(e) => e,
    };
    assert!(
        released.len() as u64 <= total.saturating_sub(holdback as u64),
        "released {} of {total} with holdback {holdback}",
        released.len()
    );
    if total > 0 {
        assert!((released.len() as u64) < total, "released everything");
    }
    match (expected_len, err) {
        (Some(l), VerifyError::TooLong) => assert!(total > l),
        (Some(l), VerifyError::TooShort) => assert!(total < l),
        (_, VerifyError::DigestMismatch { actual }) => {
            assert!(len_ok && !digest_ok);
            assert_eq!(actual, right);
        }
        (l, e) => panic!("unexpected {e:?} with length {l:?}"),
    }
}
