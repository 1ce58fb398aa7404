//! Streaming digest verification with a held-back tail (SECURITY.md §2.4).
//!
//! A wrapper pushes upstream chunks in and forwards only what [`Verifier::push`] releases. The
//! last `holdback` bytes stay inside until [`Verifier::finish`] confirms digest and size, so a
//! client never receives a complete body with wrong bytes: on mismatch the wrapper aborts the
//! stream and the tail is never sent.
//!
//! ```text
//!   push(chunk) ──► hash(chunk) ──► buffer += chunk ──► release all but the last `holdback` bytes
//!   finish()    ──► length ok? ──► digest ok? ──► release the held tail   (else Err, tail dropped)
//! ```
//!
//! The module only hashes and buffers; it does not decide what a wrapper does on failure.

use bytes::{Bytes, BytesMut};
use sha2::{Digest as _, Sha256, Sha512};

use crate::reference::{Algorithm, Digest};

/// Default held-back tail.
pub const DEFAULT_HOLDBACK: usize = 64 * 1024;

/// Why verification failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyError {
    /// The bytes hash to another digest.
    DigestMismatch {
        /// What the bytes hash to.
        actual: String,
    },
    /// More bytes than the expected length.
    TooLong,
    /// Fewer bytes than the expected length.
    TooShort,
}

impl core::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::DigestMismatch { actual } => write!(f, "upstream bytes hash to {actual}"),
            Self::TooLong => f.write_str("upstream sent more bytes than expected"),
            Self::TooShort => f.write_str("upstream sent fewer bytes than expected"),
        }
    }
}

impl std::error::Error for VerifyError {}

/// A running hash of one of the supported algorithms.
#[derive(Clone)]
enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => Self::Sha256(Sha256::new()),
            Algorithm::Sha512 => Self::Sha512(Sha512::new()),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Self::Sha256(h) => h.update(data),
            Self::Sha512(h) => h.update(data),
        }
    }

    fn finish(self) -> Digest {
        match self {
            Self::Sha256(h) => Digest::from_hash(Algorithm::Sha256, &h.finalize()),
            Self::Sha512(h) => Digest::from_hash(Algorithm::Sha512, &h.finalize()),
        }
    }
}

/// An incremental sha256/sha512 verifier.
pub struct Verifier {
    expected: Digest,
    expected_len: Option<u64>,
    holdback: usize,
    hasher: Hasher,
    /// Bytes seen but not yet released (at most `holdback` between calls).
    held: BytesMut,
    /// Bytes pushed so far, saturating.
    total: u64,
}

impl core::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Verifier")
            .field("expected", &self.expected)
            .field("expected_len", &self.expected_len)
            .field("holdback", &self.holdback)
            .field("held", &self.held.len())
            .field("total", &self.total)
            .finish()
    }
}

impl Verifier {
    /// Verifies against `expected`, and against `expected_len` when known.
    pub fn new(expected: Digest, expected_len: Option<u64>) -> Self {
        Self::with_holdback(expected, expected_len, DEFAULT_HOLDBACK)
    }

    /// As [`Verifier::new`] with an explicit tail size. A `holdback` of 0 is raised to 1: at
    /// least the last byte of a body is always withheld until it is verified, so a mismatch never
    /// releases the whole content.
    pub fn with_holdback(expected: Digest, expected_len: Option<u64>, holdback: usize) -> Self {
        let hasher = Hasher::new(expected.algorithm());
        Self {
            expected,
            expected_len,
            holdback: holdback.max(1),
            hasher,
            held: BytesMut::new(),
            total: 0,
        }
    }

    /// The digest the bytes must hash to.
    pub fn expected(&self) -> &Digest {
        &self.expected
    }

    /// The size of the held-back tail.
    pub fn holdback(&self) -> usize {
        self.holdback
    }

    /// Feeds a chunk; returns the bytes that may be forwarded now: everything pushed so far
    /// except the last `holdback` bytes. When the expected length is known and is exceeded, the
    /// chunk is refused with [`VerifyError::TooLong`], nothing more is released, and every later
    /// call fails the same way.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Bytes, VerifyError> {
        let chunk_len = u64::try_from(chunk.len()).unwrap_or(u64::MAX);
        self.total = self.total.saturating_add(chunk_len);
        if self.expected_len.is_some_and(|max| self.total > max) {
            return Err(VerifyError::TooLong);
        }
        self.hasher.update(chunk);
        self.held.extend_from_slice(chunk);
        let releasable = self.held.len().saturating_sub(self.holdback);
        Ok(self.held.split_to(releasable).freeze())
    }

    /// Ends the stream; returns the held tail when digest (and length) match.
    pub fn finish(self) -> Result<Bytes, VerifyError> {
        if let Some(expected_len) = self.expected_len {
            if self.total < expected_len {
                return Err(VerifyError::TooShort);
            }
            if self.total > expected_len {
                return Err(VerifyError::TooLong);
            }
        }
        let actual = self.hasher.finish();
        if actual != self.expected {
            return Err(VerifyError::DigestMismatch {
                actual: actual.to_string(),
            });
        }
        Ok(self.held.freeze())
    }

    /// Bytes pushed so far (including a refused over-long chunk).
    pub fn len(&self) -> u64 {
        self.total
    }

    /// True before any byte was pushed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Hashes `body` with `algorithm`.
pub fn digest_of(algorithm: Algorithm, body: &[u8]) -> Digest {
    let mut hasher = Hasher::new(algorithm);
    hasher.update(body);
    hasher.finish()
}

/// Hashes a whole (small) body with the digest's algorithm and compares.
pub fn verify_all(expected: &Digest, body: &[u8]) -> Result<(), VerifyError> {
    let actual = digest_of(expected.algorithm(), body);
    if &actual == expected {
        Ok(())
    } else {
        Err(VerifyError::DigestMismatch {
            actual: actual.to_string(),
        })
    }
}

/// The sha256 digest of `body` (manifests by tag).
pub fn sha256_digest(body: &[u8]) -> Digest {
    digest_of(Algorithm::Sha256, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const ABC_SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const ABC_SHA512: &str = "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
                              2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f";

    fn collect(v: &mut Verifier, chunks: &[&[u8]]) -> Result<Vec<u8>, VerifyError> {
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(&v.push(c)?);
        }
        Ok(out)
    }

    #[test]
    fn sha256_known_vectors() {
        assert_eq!(
            sha256_digest(b"").to_string(),
            format!("sha256:{EMPTY_SHA256}")
        );
        assert_eq!(sha256_digest(b"abc").hex(), ABC_SHA256);
        assert_eq!(digest_of(Algorithm::Sha512, b"abc").hex(), ABC_SHA512);
    }

    #[test]
    fn empty_blob_verifies() {
        let v = Verifier::new(sha256_digest(b""), Some(0));
        assert!(v.is_empty());
        assert_eq!(v.finish().unwrap(), Bytes::new());
        let v = Verifier::new(sha256_digest(b""), None);
        assert_eq!(v.finish().unwrap().len(), 0);
    }

    #[test]
    fn holds_back_the_tail_until_finish() {
        let mut v = Verifier::with_holdback(sha256_digest(b"hello world"), Some(11), 4);
        assert_eq!(&v.push(b"he").unwrap()[..], b"");
        assert_eq!(&v.push(b"llo w").unwrap()[..], b"hel");
        assert_eq!(&v.push(b"orld").unwrap()[..], b"lo w");
        assert_eq!(v.len(), 11);
        assert_eq!(&v.finish().unwrap()[..], b"orld");
    }

    #[test]
    fn sha512_streams() {
        let expected = digest_of(Algorithm::Sha512, b"abc");
        let mut v = Verifier::with_holdback(expected, None, 1);
        let out = collect(&mut v, &[b"a", b"b", b"c"]).unwrap();
        assert_eq!(out, b"ab");
        assert_eq!(&v.finish().unwrap()[..], b"c");
    }

    #[test]
    fn mismatch_reports_actual_and_keeps_tail() {
        let mut v = Verifier::with_holdback(sha256_digest(b"abd"), None, 2);
        assert_eq!(&v.push(b"abc").unwrap()[..], b"a");
        assert_eq!(
            v.finish(),
            Err(VerifyError::DigestMismatch {
                actual: format!("sha256:{ABC_SHA256}")
            })
        );
    }

    #[test]
    fn too_long_is_immediate_and_sticky() {
        let mut v = Verifier::with_holdback(sha256_digest(b"abc"), Some(3), 1);
        assert_eq!(&v.push(b"ab").unwrap()[..], b"a");
        assert_eq!(v.push(b"cd"), Err(VerifyError::TooLong));
        assert_eq!(v.push(b""), Err(VerifyError::TooLong));
        assert_eq!(v.finish(), Err(VerifyError::TooLong));
    }

    #[test]
    fn too_short_is_reported_before_digest() {
        let mut v = Verifier::with_holdback(sha256_digest(b"abc"), Some(4), 1);
        v.push(b"abc").unwrap();
        assert_eq!(v.finish(), Err(VerifyError::TooShort));
    }

    #[test]
    fn zero_holdback_still_withholds_one_byte() {
        let mut v = Verifier::with_holdback(sha256_digest(b"xyz"), None, 0);
        assert_eq!(v.holdback(), 1);
        assert_eq!(&v.push(b"xyz").unwrap()[..], b"xy");
        assert_eq!(&v.finish().unwrap()[..], b"z");
    }

    #[test]
    fn verify_all_compares() {
        assert_eq!(verify_all(&sha256_digest(b"m"), b"m"), Ok(()));
        let sha512 = digest_of(Algorithm::Sha512, b"m");
        assert_eq!(verify_all(&sha512, b"m"), Ok(()));
        assert!(matches!(
            verify_all(&sha512, b"n"),
            Err(VerifyError::DigestMismatch { .. })
        ));
    }
}
