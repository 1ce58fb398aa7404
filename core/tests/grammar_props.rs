//! Differential property tests for the OCI grammars (SECURITY.md §2.3, §4): each parser in
//! `reference`, `request` and `range` is compared with a small independent oracle written here
//! in a different style (split-and-classify instead of a state machine), over both generated
//! valid inputs and random strings from an alphabet rich in edge characters.

use dockerproxy_core::range::{RangeDecision, decide};
use dockerproxy_core::reference::{
    Algorithm, Digest, DigestError, MAX_NAME_LEN, MAX_TAG_LEN, Name, Reference, ReferenceError, Tag,
};
use dockerproxy_core::request::{Classified, RegistryRequest, classify};
use proptest::prelude::*;
use proptest::string::string_regex;

// ---------------------------------------------------------------------------------------------
// Oracles
// ---------------------------------------------------------------------------------------------

/// Splits `s` into maximal runs of bytes for which `alnum` is true or false, in order.
fn runs(s: &str, alnum: impl Fn(char) -> bool) -> Vec<(bool, String)> {
    let mut out: Vec<(bool, String)> = Vec::new();
    for c in s.chars() {
        let kind = alnum(c);
        match out.last_mut() {
            Some((k, run)) if *k == kind => run.push(c),
            _ => out.push((kind, c.to_string())),
        }
    }
    out
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`: alternating runs, alnum at both ends, each separator
/// run one of the allowed spellings.
fn oracle_component(c: &str) -> bool {
    let lower = |ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit();
    let rs = runs(c, lower);
    !rs.is_empty()
        && rs.first().is_some_and(|r| r.0)
        && rs.last().is_some_and(|r| r.0)
        && rs.iter().filter(|r| !r.0).all(|(_, sep)| {
            sep == "." || sep == "_" || sep == "__" || sep.chars().all(|ch| ch == '-')
        })
}

fn oracle_name(s: &str) -> bool {
    s.chars().count() <= 255 && s.split('/').all(oracle_component)
}

fn oracle_tag(s: &str) -> bool {
    const FIRST: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_";
    let mut chars = s.chars();
    match chars.next() {
        Some(first) if FIRST.contains(first) => {
            s.chars().count() <= 128 && chars.all(|c| FIRST.contains(c) || c == '.' || c == '-')
        }
        _ => false,
    }
}

#[derive(Debug, PartialEq, Eq)]
enum OracleDigest {
    Ok,
    Invalid,
    Unsupported,
}

fn oracle_digest(s: &str) -> OracleDigest {
    let parts: Vec<&str> = s.split(':').collect();
    let [alg, enc] = parts.as_slice() else {
        return OracleDigest::Invalid;
    };
    let lower = |ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit();
    let rs = runs(alg, lower);
    let alg_ok = rs.first().is_some_and(|r| r.0)
        && rs.last().is_some_and(|r| r.0)
        && rs
            .iter()
            .filter(|r| !r.0)
            .all(|(_, sep)| ["+", ".", "_", "-"].contains(&sep.as_str()));
    let enc_ok = !enc.is_empty()
        && enc
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '=' || c == '_' || c == '-');
    if !alg_ok || !enc_ok {
        return OracleDigest::Invalid;
    }
    let hex_len = match *alg {
        "sha256" => 64,
        "sha512" => 128,
        _ => return OracleDigest::Unsupported,
    };
    if enc.len() == hex_len && enc.chars().all(|c| "0123456789abcdef".contains(c)) {
        OracleDigest::Ok
    } else {
        OracleDigest::Invalid
    }
}

/// Range oracle: same contract, computed with i128 and an explicit token list.
fn oracle_range(header: &[u8], size: u64) -> RangeDecision {
    let Ok(h) = std::str::from_utf8(header) else {
        return RangeDecision::Full;
    };
    let Some(eq) = h.find('=') else {
        return RangeDecision::Full;
    };
    let unit = h[..eq].trim_matches([' ', '\t']).to_ascii_lowercase();
    let set = &h[eq + 1..];
    if unit != "bytes" || set.contains(',') {
        return RangeDecision::Full;
    }
    let Some(dash) = set.find('-') else {
        return RangeDecision::Full;
    };
    let num = |t: &str| -> Option<Option<i128>> {
        let t = t.trim_matches([' ', '\t']);
        if t.is_empty() {
            return Some(None);
        }
        if !t.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let v: u128 = t.parse().ok()?;
        (v <= u128::from(u64::MAX)).then_some(Some(v as i128))
    };
    let (Some(a), Some(b)) = (num(&set[..dash]), num(&set[dash + 1..])) else {
        return RangeDecision::Full;
    };
    let size = i128::from(size);
    let (start, end) = match (a, b) {
        (None, None) => return RangeDecision::Full,
        (Some(a), Some(b)) if a > b => return RangeDecision::Full,
        (Some(a), b) => (a, b.unwrap_or(size - 1).min(size - 1)),
        (None, Some(n)) => ((size - n).max(0), size - 1),
    };
    if start >= size || end < start {
        return RangeDecision::Unsatisfiable;
    }
    RangeDecision::Partial {
        start: start as u64,
        end: end as u64,
    }
}

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

const NAME_RE: &str = "[a-z0-9]{1,4}((\\.|_|__|-{1,3})[a-z0-9]{1,4}){0,3}(/[a-z0-9]{1,4}((\\.|_|__|-{1,3})[a-z0-9]{1,4}){0,3}){0,4}";

fn valid_name() -> impl Strategy<Value = String> {
    string_regex(NAME_RE).expect("name regex")
}

/// Strings over an alphabet of name, tag, digest and path edge characters.
fn edgy(max: usize) -> impl Strategy<Value = String> {
    let alphabet = prop::sample::select(vec![
        'a', 'b', 'z', '0', '9', 'A', 'F', 'Z', '.', '_', '-', '/', ':', '+', '=', '%', ' ', '\0',
        'é', '2', 'e', 'f',
    ]);
    prop::collection::vec(alphabet, 0..max).prop_map(|v| v.into_iter().collect())
}

/// Strings dense in name separators, so that runs like `___`, `._` or `-/` come up often.
fn name_like(max: usize) -> impl Strategy<Value = String> {
    let alphabet = prop::sample::select(vec!['a', '0', '.', '_', '-', '/', 'A']);
    prop::collection::vec(alphabet, 0..max).prop_map(|v| v.into_iter().collect())
}

fn hex(len: usize) -> impl Strategy<Value = String> {
    string_regex(&format!("[0-9a-f]{{{len}}}")).expect("hex regex")
}

fn range_header() -> impl Strategy<Value = Vec<u8>> {
    let number = prop_oneof![
        Just(String::new()),
        (0u64..40).prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        Just("18446744073709551615".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("000012".to_owned()),
        Just("+3".to_owned()),
        Just("1 2".to_owned()),
    ];
    let unit = prop::sample::select(vec![
        "bytes", "BYTES", "Bytes", " bytes ", "items", "", "byte",
    ]);
    let sep = prop::sample::select(vec!["-", " - ", "--", "", "\t-"]);
    let tail = prop::sample::select(vec!["", ",", ",0-1", " ", "-"]);
    let structured = (unit, number.clone(), sep, number, tail)
        .prop_map(|(u, a, s, b, t)| format!("{u}={a}{s}{b}{t}").into_bytes());
    prop_oneof![
        4 => structured,
        1 => prop::collection::vec(any::<u8>(), 0..24),
        1 => edgy(16).prop_map(String::into_bytes),
    ]
}

fn size() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        0u64..50,
        Just(u64::MAX),
        Just(u64::MAX - 1),
        any::<u64>()
    ]
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn generated_names_accepted_and_round_trip(s in valid_name()) {
        let parsed = Name::parse(&s);
        prop_assert_eq!(parsed.is_some(), s.len() <= MAX_NAME_LEN);
        if let Some(n) = parsed {
            prop_assert_eq!(n.as_str(), s.as_str());
            prop_assert_eq!(n.to_string(), s);
        }
    }

    #[test]
    fn names_match_oracle(s in prop_oneof![edgy(24), name_like(12)]) {
        prop_assert_eq!(Name::parse(&s).is_some(), oracle_name(&s), "{:?}", s);
    }

    #[test]
    fn long_names_match_oracle(s in "[a-z0-9._/-]{200,300}") {
        prop_assert_eq!(Name::parse(&s).is_some(), oracle_name(&s), "{:?}", s);
    }

    #[test]
    fn tags_match_oracle(s in prop_oneof![edgy(12), "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,140}"]) {
        let parsed = Tag::parse(&s);
        prop_assert_eq!(parsed.is_some(), oracle_tag(&s), "{:?}", s);
        if let Some(t) = parsed {
            prop_assert!(t.as_str().len() <= MAX_TAG_LEN);
            prop_assert_eq!(t.as_str(), s.as_str());
        }
    }

    #[test]
    fn digests_match_oracle(s in prop_oneof![
        edgy(20),
        name_like(8).prop_map(|a| format!("{}:abc", a.replace(['/', '_'], "+"))),
        "[a-z0-9+._-]{1,12}:[a-zA-Z0-9=_-]{1,8}",
        hex(64).prop_map(|h| format!("sha256:{h}")),
        hex(63).prop_map(|h| format!("sha256:{h}")),
        hex(128).prop_map(|h| format!("sha512:{h}")),
        hex(96).prop_map(|h| format!("sha384:{h}")),
        "sha(256|512):[0-9a-fA-F]{64,128}",
    ]) {
        let got = match Digest::parse(&s) {
            Ok(_) => OracleDigest::Ok,
            Err(DigestError::Invalid) => OracleDigest::Invalid,
            Err(DigestError::Unsupported) => OracleDigest::Unsupported,
        };
        prop_assert_eq!(got, oracle_digest(&s), "{:?}", s);
    }

    #[test]
    fn digests_round_trip_and_paths(h256 in hex(64), h512 in hex(128), other in hex(64)) {
        for (s, alg) in [(format!("sha256:{h256}"), Algorithm::Sha256), (format!("sha512:{h512}"), Algorithm::Sha512)] {
            let d = Digest::parse(&s).expect("valid digest");
            prop_assert_eq!(d.algorithm(), alg);
            prop_assert_eq!(d.to_string(), s.clone());
            let path = d.storage_path();
            prop_assert!(!path.contains(".."));
            prop_assert!(!path.starts_with('/'));
            prop_assert_eq!(path, format!("blobs/{}/{}/{}", alg.as_str(), &d.hex()[..2], d.hex()));
        }
        // Injective: different digests, different paths.
        let a = Digest::parse(&format!("sha256:{h256}")).expect("valid");
        let b = Digest::parse(&format!("sha256:{other}")).expect("valid");
        prop_assert_eq!(a.storage_path() == b.storage_path(), a == b);
    }

    #[test]
    fn references_follow_the_colon_rule(s in prop_oneof![edgy(16), hex(64).prop_map(|h| format!("sha256:{h}"))]) {
        let expected = if s.contains(':') {
            match oracle_digest(&s) {
                OracleDigest::Ok => None,
                OracleDigest::Invalid => Some(ReferenceError::InvalidDigest),
                OracleDigest::Unsupported => Some(ReferenceError::UnsupportedDigest),
            }
        } else if oracle_tag(&s) {
            None
        } else {
            Some(ReferenceError::InvalidTag)
        };
        let got = Reference::parse(&s);
        prop_assert_eq!(got.as_ref().err().copied(), expected, "{:?}", s);
        if let Ok(r) = got {
            prop_assert_eq!(r.to_string(), s);
        }
    }

    #[test]
    fn classify_valid_manifest_paths(name in valid_name(), tag in "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,20}") {
        prop_assume!(name.len() <= MAX_NAME_LEN);
        let got = classify(&format!("/v2/{name}/manifests/{tag}"));
        let want = RegistryRequest::Manifest {
            name: Name::parse(&name).expect("valid"),
            reference: Reference::parse(&tag).expect("valid"),
        };
        prop_assert_eq!(got, Ok(Classified::Registry(want)));
    }

    #[test]
    fn classify_never_panics_and_names_are_valid(s in prop_oneof![
        edgy(40).prop_map(|s| format!("/v2/{s}")),
        edgy(40),
        (valid_name(), prop::sample::select(vec!["manifests", "blobs", "tags", "referrers", "blobs/uploads"]), edgy(10))
            .prop_map(|(n, m, r)| format!("/v2/{n}/{m}/{r}")),
    ]) {
        if let Ok(Classified::Registry(r)) = classify(&s)
            && let Some(n) = r.name()
        {
            prop_assert!(oracle_name(n.as_str()), "{:?} -> {:?}", s, n);
        }
        if s.split('/').any(|seg| seg == "." || seg == "..") || s.contains('\0') || !s.is_ascii() {
            prop_assert!(classify(&s).is_err(), "{:?}", s);
        }
    }

    #[test]
    fn range_matches_oracle(h in range_header(), size in size()) {
        let got = decide(Some(&h), size);
        prop_assert_eq!(got, oracle_range(&h, size), "{:?} on {}", String::from_utf8_lossy(&h), size);
        if let RangeDecision::Partial { start, end } = got {
            prop_assert!(start <= end && end < size);
        }
    }
}
