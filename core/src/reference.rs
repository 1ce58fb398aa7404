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
        is_valid_name(s).then(|| Self(s.to_owned()))
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
        is_valid_tag(s).then(|| Self(s.to_owned()))
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
        let (alg, encoded) = s.split_once(':').ok_or(DigestError::Invalid)?;
        if !is_valid_algorithm(alg) || !is_valid_encoded(encoded) {
            return Err(DigestError::Invalid);
        }
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => return Err(DigestError::Unsupported),
        };
        let lower_hex = encoded
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if encoded.len() != algorithm.hex_len() || !lower_hex {
            return Err(DigestError::Invalid);
        }
        Ok(Self {
            algorithm,
            hex: encoded.to_owned(),
        })
    }
    /// Builds a digest from raw hash output.
    pub fn from_hash(algorithm: Algorithm, hash: &[u8]) -> Self {
        Self {
            algorithm,
            hex: hex::encode(hash),
        }
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
        // A parsed digest has 64 or 128 hex characters; `from_hash` gets a hash's output. The
        // fallback only guards against a caller passing an empty "hash".
        let shard = self.hex.get(..2).unwrap_or("00");
        format!("blobs/{}/{}/{}", self.algorithm.as_str(), shard, self.hex)
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
        if s.contains(':') {
            Digest::parse(s).map(Self::Digest).map_err(|e| match e {
                DigestError::Invalid => ReferenceError::InvalidDigest,
                DigestError::Unsupported => ReferenceError::UnsupportedDigest,
            })
        } else {
            Tag::parse(s)
                .map(Self::Tag)
                .ok_or(ReferenceError::InvalidTag)
        }
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

/// The kind of the last byte seen by the name matcher.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Prev {
    /// Nothing yet.
    Start,
    /// `[a-z0-9]`.
    Alnum,
    /// `.`
    Dot,
    /// One `_`.
    Underscore,
    /// `__`.
    DoubleUnderscore,
    /// One or more `-`.
    Dash,
    /// `/`.
    Slash,
}

/// The anchored repository-name grammar of SECURITY.md §2.3, plus the length limit. A single
/// pass state machine: a separator (`.`, `_`, `__`, `-+`) or `/` may only follow an
/// alphanumeric (or, for `_` and `-`, extend a run that may legally continue), and the name must
/// end on an alphanumeric.
pub fn is_valid_name(s: &str) -> bool {
    if s.is_empty() || s.len() > MAX_NAME_LEN {
        return false;
    }
    let mut prev = Prev::Start;
    for b in s.bytes() {
        prev = match (b, prev) {
            (b'a'..=b'z' | b'0'..=b'9', _) => Prev::Alnum,
            (b'.', Prev::Alnum) => Prev::Dot,
            (b'_', Prev::Alnum) => Prev::Underscore,
            (b'_', Prev::Underscore) => Prev::DoubleUnderscore,
            (b'-', Prev::Alnum | Prev::Dash) => Prev::Dash,
            (b'/', Prev::Alnum) => Prev::Slash,
            _ => return false,
        };
    }
    prev == Prev::Alnum
}

/// The anchored tag grammar `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn is_valid_tag(s: &str) -> bool {
    let bytes = s.as_bytes();
    let Some((&first, rest)) = bytes.split_first() else {
        return false;
    };
    bytes.len() <= MAX_TAG_LEN
        && (first.is_ascii_alphanumeric() || first == b'_')
        && rest
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The digest `algorithm` grammar: `[a-z0-9]+` components joined by single `[+._-]`.
fn is_valid_algorithm(s: &str) -> bool {
    let mut after_alnum = false;
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' => after_alnum = true,
            b'+' | b'.' | b'_' | b'-' if after_alnum => after_alnum = false,
            _ => return false,
        }
    }
    after_alnum
}

/// The digest `encoded` grammar: `[a-zA-Z0-9=_-]+`.
fn is_valid_encoded(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX64: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn names_accepted() {
        for n in [
            "a",
            "library/busybox",
            "a0/b-c/d__e/f.g/h---i",
            "my_repo/sub.name",
            "1/2/3",
            "a/manifests/b",
            "blobs",
        ] {
            assert_eq!(
                Name::parse(n).map(|x| x.as_str().to_owned()),
                Some(n.to_owned()),
                "{n}"
            );
        }
    }

    #[test]
    fn names_rejected() {
        for n in [
            "",
            "A",
            "Library/busybox",
            "a/",
            "/a",
            "a//b",
            "a__",
            "a___b",
            "a._b",
            "a-.b",
            "a_-b",
            "-a",
            ".a",
            "_a",
            "a..b",
            "a/.b",
            "a/../b",
            "..",
            "a:b",
            "a b",
            "a%2fb",
            "é",
            "a\0b",
            "a\u{0}",
        ] {
            assert!(Name::parse(n).is_none(), "{n:?}");
        }
    }

    #[test]
    fn name_length_limit() {
        let ok = "a".repeat(MAX_NAME_LEN);
        let long = "a".repeat(MAX_NAME_LEN + 1);
        assert_eq!(Name::parse(&ok).map(|n| n.as_str().len()), Some(255));
        assert!(Name::parse(&long).is_none());
        let mut with_slashes = "ab/".repeat(85); // 255 characters, ends in '/'
        assert!(Name::parse(&with_slashes).is_none());
        with_slashes.pop();
        with_slashes.push('c');
        assert_eq!(with_slashes.len(), 255);
        assert!(Name::parse(&with_slashes).is_some());
    }

    #[test]
    fn tags() {
        for t in ["latest", "_x", "1.0", "V1.2-rc_3", "A", "__", "a..b", "a--"] {
            assert_eq!(
                Tag::parse(t).map(|x| x.as_str().to_owned()),
                Some(t.to_owned()),
                "{t}"
            );
        }
        for t in ["", ".x", "-x", "a:b", "a/b", "a b", "é", "a+b"] {
            assert!(Tag::parse(t).is_none(), "{t:?}");
        }
        assert!(Tag::parse(&"t".repeat(128)).is_some());
        assert!(Tag::parse(&"t".repeat(129)).is_none());
    }

    #[test]
    fn digests_supported() {
        let s = format!("sha256:{HEX64}");
        let d = Digest::parse(&s).expect("valid sha256");
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d.hex(), HEX64);
        assert_eq!(d.to_string(), s);
        assert_eq!(d.storage_path(), format!("blobs/sha256/01/{HEX64}"));
        let s512 = format!("sha512:{HEX64}{HEX64}");
        let d = Digest::parse(&s512).expect("valid sha512");
        assert_eq!(d.algorithm(), Algorithm::Sha512);
        assert_eq!(d.to_string(), s512);
    }

    #[test]
    fn digests_invalid() {
        let upper = format!("sha256:{}", HEX64.to_uppercase());
        let short = format!("sha256:{}", &HEX64[..63]);
        let long = format!("sha256:{HEX64}0");
        let s512_short = format!("sha512:{HEX64}");
        let non_hex = format!("sha256:{}g", &HEX64[..63]);
        let two_colons = format!("sha256:{HEX64}:x");
        for d in [
            upper.as_str(),
            &short,
            &long,
            &s512_short,
            &non_hex,
            &two_colons,
            "sha256:",
            ":abc",
            "sha256",
            "",
            "SHA256:abc",
            "sha256+:abc",
            "+sha256:abc",
            "sha256..x:abc",
            "sha256:ab/cd",
            "sha256:../../etc",
        ] {
            assert_eq!(Digest::parse(d), Err(DigestError::Invalid), "{d:?}");
        }
    }

    #[test]
    fn digests_unsupported() {
        let sha384 = format!("sha384:{HEX64}{}", &HEX64[..32]);
        for d in [
            sha384.as_str(),
            "md5:abc",
            "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8",
            "a.b-c_d+e:x=",
        ] {
            assert_eq!(Digest::parse(d), Err(DigestError::Unsupported), "{d:?}");
        }
    }

    #[test]
    fn references() {
        assert_eq!(
            Reference::parse("latest").map(|r| r.to_string()),
            Ok("latest".to_owned())
        );
        let s = format!("sha256:{HEX64}");
        assert!(matches!(Reference::parse(&s), Ok(Reference::Digest(_))));
        assert_eq!(
            Reference::parse("sha256:abc"),
            Err(ReferenceError::InvalidDigest)
        );
        assert_eq!(
            Reference::parse("md5:abc"),
            Err(ReferenceError::UnsupportedDigest)
        );
        assert_eq!(Reference::parse(".bad"), Err(ReferenceError::InvalidTag));
        assert_eq!(Reference::parse(""), Err(ReferenceError::InvalidTag));
        assert_eq!(
            Reference::parse("a:b:c"),
            Err(ReferenceError::InvalidDigest)
        );
    }

    #[test]
    fn from_hash_and_storage_path() {
        let d = Digest::from_hash(Algorithm::Sha256, &[0xab; 32]);
        assert_eq!(d.hex(), "ab".repeat(32));
        assert_eq!(
            d.storage_path(),
            format!("blobs/sha256/ab/{}", "ab".repeat(32))
        );
        assert_eq!(Digest::parse(&d.to_string()), Ok(d));
    }
}
