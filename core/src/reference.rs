//! The OCI grammars (SECURITY.md §2.3): repository names, tags, digests, references.
//! Hand-written anchored matchers rather than a regex crate: the grammars are small, and the
//! matchers double as the differential oracle's subject in property tests.

use core::fmt;

/// Longest repository name accepted.
pub const MAX_NAME_LEN: usize = 255;
/// Longest tag accepted.
pub const MAX_TAG_LEN: usize = 128;

/// A validated repository name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    /// Parses a repository name per the distribution-spec grammar, at most 255 characters.
    pub fn parse(s: &str) -> Option<Self> {
        let _ = s;
        todo!()
    }
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated tag.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    /// Parses a tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
    pub fn parse(s: &str) -> Option<Self> {
        let _ = s;
        todo!()
    }
    /// The tag.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Supported digest algorithms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// sha256, 64 hex characters.
    Sha256,
    /// sha512, 128 hex characters.
    Sha512,
}

impl Algorithm {
    /// `"sha256"` or `"sha512"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
        }
    }
    /// Length of the hex encoding.
    pub const fn hex_len(self) -> usize {
        match self {
            Self::Sha256 => 64,
            Self::Sha512 => 128,
        }
    }
}

/// A validated, supported digest: algorithm + lower-case hex.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

/// Why a digest was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestError {
    /// Not grammar-valid, or wrong length/case for its algorithm.
    Invalid,
    /// Grammar-valid but an algorithm this proxy does not support.
    Unsupported,
}

impl Digest {
    /// Parses `algorithm:hex`.
    pub fn parse(s: &str) -> Result<Self, DigestError> {
        let _ = s;
        todo!()
    }
    /// Builds a digest from raw hash output.
    pub fn from_hash(algorithm: Algorithm, hash: &[u8]) -> Self {
        Self { algorithm, hex: hex::encode(hash) }
    }
    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
    /// The lower-case hex encoding.
    pub fn hex(&self) -> &str {
        &self.hex
    }
    /// Relative storage path `blobs/<alg>/<hex[..2]>/<hex>`, built only from parsed parts.
    pub fn storage_path(&self) -> String {
        format!("blobs/{}/{}/{}", self.algorithm.as_str(), &self.hex[..2], self.hex)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

/// A manifest `<reference>`: a tag or a digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reference {
    /// By tag.
    Tag(Tag),
    /// By digest.
    Digest(Digest),
}

/// Why a reference was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReferenceError {
    /// Neither a tag nor a digest grammar matched.
    InvalidTag,
    /// Contains `:` but is not a valid digest.
    InvalidDigest,
    /// A digest of an unsupported algorithm.
    UnsupportedDigest,
}

impl Reference {
    /// A value containing `:` must be a digest; anything else must be a tag.
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        let _ = s;
        todo!()
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tag(t) => f.write_str(t.as_str()),
            Self::Digest(d) => d.fmt(f),
        }
    }
}
