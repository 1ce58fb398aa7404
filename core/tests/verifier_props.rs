//! Property tests of the verify-with-holdback state machine (SECURITY.md §4): for any content,
//! chunking, holdback and claimed digest, a match releases exactly the input and succeeds; a
//! mismatch releases at most `total - holdback` bytes, a strict prefix of the input, and fails.

use dockerproxy_core::reference::{Algorithm, Digest};
use dockerproxy_core::verifier::{Verifier, VerifyError, digest_of};
use proptest::prelude::*;

/// Splits `data` at the given cut points (taken modulo the length, sorted).
fn chunks<'a>(data: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| {
            if data.is_empty() {
                0
            } else {
                c % (data.len() + 1)
            }
        })
        .collect();
    points.push(0);
    points.push(data.len());
    points.sort_unstable();
    points.windows(2).map(|w| &data[w[0]..w[1]]).collect()
}

/// Pushes every chunk; returns the released bytes and the final result.
fn run(mut v: Verifier, parts: &[&[u8]]) -> (Vec<u8>, Result<(), VerifyError>) {
    let mut out = Vec::new();
    for p in parts {
        match v.push(p) {
            Ok(b) => out.extend_from_slice(&b),
            Err(e) => return (out, Err(e)),
        }
    }
    match v.finish() {
        Ok(tail) => {
            out.extend_from_slice(&tail);
            (out, Ok(()))
        }
        Err(e) => (out, Err(e)),
    }
}

fn algorithm() -> impl Strategy<Value = Algorithm> {
    prop_oneof![Just(Algorithm::Sha256), Just(Algorithm::Sha512)]
}

/// A digest of the same algorithm that differs from `d` in one hex digit.
fn corrupt(d: &Digest, at: usize) -> Digest {
    let mut raw = hex::decode(d.hex()).unwrap();
    let i = at % raw.len();
    raw[i] ^= 0x01;
    Digest::from_hash(d.algorithm(), &raw)
}

fn check_mismatch(data: &[u8], out: &[u8], holdback: usize, result: &Result<(), VerifyError>) {
    assert!(result.is_err(), "a mismatch must fail");
    let limit = data.len().saturating_sub(holdback.max(1));
    assert!(
        out.len() <= limit,
        "released {} bytes of {} with holdback {holdback}",
        out.len(),
        data.len()
    );
    assert_eq!(
        out,
        &data[..out.len()],
        "released bytes are a prefix of the input"
    );
    assert!(
        data.is_empty() || out.len() < data.len(),
        "never the whole content"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn match_releases_everything(
        data in proptest::collection::vec(any::<u8>(), 0..2048),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
        holdback in 0usize..300,
        alg in algorithm(),
        known_len in any::<bool>(),
    ) {
        let expected = digest_of(alg, &data);
        let len = known_len.then_some(data.len() as u64);
        let parts = chunks(&data, &cuts);
        let (out, result) = run(Verifier::with_holdback(expected, len, holdback), &parts);
        prop_assert_eq!(result, Ok(()));
        prop_assert_eq!(out, data);
    }

    #[test]
    fn wrong_digest_releases_a_strict_prefix(
        data in proptest::collection::vec(any::<u8>(), 0..2048),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
        holdback in 0usize..300,
        alg in algorithm(),
        flip in any::<usize>(),
        known_len in any::<bool>(),
    ) {
        let expected = corrupt(&digest_of(alg, &data), flip);
        let len = known_len.then_some(data.len() as u64);
        let parts = chunks(&data, &cuts);
        let (out, result) = run(Verifier::with_holdback(expected, len, holdback), &parts);
        let digest_mismatch = matches!(result, Err(VerifyError::DigestMismatch { .. }));
        prop_assert!(digest_mismatch);
        check_mismatch(&data, &out, holdback, &result);
    }

    #[test]
    fn wrong_length_releases_a_strict_prefix(
        data in proptest::collection::vec(any::<u8>(), 1..2048),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
        holdback in 0usize..300,
        alg in algorithm(),
        delta in 1u64..64,
        longer in any::<bool>(),
    ) {
        // The digest is right; only the announced length is wrong.
        let expected = digest_of(alg, &data);
        let actual = data.len() as u64;
        let claimed = if longer { actual + delta } else { actual.saturating_sub(delta) };
        let parts = chunks(&data, &cuts);
        let (out, result) = run(Verifier::with_holdback(expected, Some(claimed), holdback), &parts);
        let want = if longer { VerifyError::TooShort } else { VerifyError::TooLong };
        prop_assert_eq!(&result, &Err(want));
        check_mismatch(&data, &out, holdback, &result);
    }
}

#[test]
fn empty_blob_matches_with_and_without_length() {
    let empty = digest_of(Algorithm::Sha256, b"");
    assert_eq!(
        empty.to_string(),
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    let (out, result) = run(Verifier::new(empty.clone(), Some(0)), &[b""]);
    assert_eq!((out.len(), result), (0, Ok(())));
    let (out, result) = run(Verifier::new(empty, None), &[]);
    assert_eq!((out.len(), result), (0, Ok(())));
}

#[test]
fn empty_blob_with_wrong_digest_fails() {
    let wrong = digest_of(Algorithm::Sha512, b"x");
    let (out, result) = run(Verifier::new(wrong, Some(0)), &[b""]);
    assert!(out.is_empty());
    assert!(matches!(result, Err(VerifyError::DigestMismatch { .. })));
}

#[test]
fn large_body_in_small_chunks_keeps_default_holdback() {
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let expected = corrupt(&digest_of(Algorithm::Sha256, &data), 3);
    let parts: Vec<&[u8]> = data.chunks(4096).collect();
    let (out, result) = run(Verifier::new(expected, Some(data.len() as u64)), &parts);
    assert_eq!(
        out.len(),
        data.len() - dockerproxy_core::verifier::DEFAULT_HOLDBACK
    );
    check_mismatch(
        &data,
        &out,
        dockerproxy_core::verifier::DEFAULT_HOLDBACK,
        &result,
    );
}
