//! Streaming digest verification with a held-back tail (SECURITY.md §2.4).
//!
//! A wrapper pushes upstream chunks in and forwards only what [`Verifier::push`] releases. The
//! last `holdback` bytes stay inside until [`Verifier::finish`] confirms digest and size, so a
//! client never receives a complete body with wrong bytes: on mismatch the wrapper aborts the
//! stream and the tail is never sent.

use bytes::Bytes;

use crate::reference::Digest;

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

/// An incremental sha256/sha512 verifier.
pub struct Verifier {
    expected: Digest,
    expected_len: Option<u64>,
    holdback: usize,
}

impl Verifier {
    /// Verifies against `expected`, and against `expected_len` when known.
    pub fn new(expected: Digest, expected_len: Option<u64>) -> Self {
        Self::with_holdback(expected, expected_len, DEFAULT_HOLDBACK)
    }

    /// As [`Verifier::new`] with an explicit tail size.
    pub fn with_holdback(expected: Digest, expected_len: Option<u64>, holdback: usize) -> Self {
        Self { expected, expected_len, holdback }
    }

    /// Feeds a chunk; returns the bytes that may be forwarded now.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Bytes, VerifyError> {
        let _ = (chunk, &self.expected, self.expected_len, self.holdback);
        todo!()
    }

    /// Ends the stream; returns the held tail when digest (and length) match.
    pub fn finish(self) -> Result<Bytes, VerifyError> {
        todo!()
    }

    /// Bytes accepted so far.
    pub fn len(&self) -> u64 {
        todo!()
    }

    /// True before any byte was pushed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Hashes a whole (small) body with the digest's algorithm and compares.
pub fn verify_all(expected: &Digest, body: &[u8]) -> Result<(), VerifyError> {
    let _ = (expected, body);
    todo!()
}

/// The sha256 digest of `body` (manifests by tag).
pub fn sha256_digest(body: &[u8]) -> Digest {
    let _ = body;
    todo!()
}
