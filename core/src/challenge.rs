//! `WWW-Authenticate` parsing and rewriting (RFC 9110 §11.6.1; COMPAT.md §4.1; SECURITY.md §2.7).

/// Largest header value considered; longer values are unusable.
pub const MAX_CHALLENGE_LEN: usize = 8 * 1024;

/// One challenge: a scheme and its parameters in upstream order (names lower-cased).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// Auth scheme as sent (`Bearer`, `Basic`); compare case-insensitively.
    pub scheme: String,
    /// `(lower-case name, unescaped value)` in order.
    pub params: Vec<(String, String)>,
}

/// Why a header value was unusable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChallengeError(pub &'static str);

impl Challenge {
    /// The value of a parameter (name compared case-insensitively).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    /// True for the `Bearer` scheme.
    pub fn is_bearer(&self) -> bool {
        self.scheme.eq_ignore_ascii_case("bearer")
    }
    /// Serialises as a header value: `Scheme k="v",k2="v2"` with `"` and `\` escaped.
    pub fn to_header_value(&self) -> String {
        todo!()
    }
}

/// Parses every challenge in one or more header values. A malformed value is unusable as a
/// whole (`Err`), never half-parsed.
pub fn parse(values: &[&[u8]]) -> Result<Vec<Challenge>, ChallengeError> {
    let _ = values;
    todo!()
}

/// Rewrites a Bearer challenge: `realm` becomes `new_realm` (placed first), every other
/// parameter kept in order. Non-Bearer challenges and Bearer ones without a realm come back
/// unchanged.
pub fn rewrite(challenge: &Challenge, new_realm: &str) -> Challenge {
    let _ = (challenge, new_realm);
    todo!()
}
