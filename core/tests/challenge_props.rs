//! Property tests of the `WWW-Authenticate` parser and rewriter (SECURITY.md §4, "Challenge
//! parser"): round trip, single-line and multi-line agreement, case-insensitive names, rewrite
//! idempotence with exactly one realm and no CR/LF, and no panic on any input.

use dockerproxy_core::challenge::{Challenge, parse, rewrite};
use proptest::prelude::*;

const NEW_REALM: &str = "https://docker.example.com/v2/auth";

fn scheme() -> impl Strategy<Value = String> {
    "[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]{0,10}"
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("realm".to_owned()),
        Just("service".to_owned()),
        Just("scope".to_owned()),
        Just("error".to_owned()),
        "[a-z0-9!#$%&'*+.^_`|~-]{1,12}",
    ]
}

/// Any printable value, HTAB included (quoted-strings allow it).
fn value() -> impl Strategy<Value = String> {
    "[\t -~]{0,24}"
}

fn challenge() -> impl Strategy<Value = Challenge> {
    (scheme(), prop::collection::vec((name(), value()), 0..6)).prop_map(|(scheme, raw)| {
        let mut params: Vec<(String, String)> = Vec::new();
        for (n, v) in raw {
            if !params.iter().any(|(m, _)| *m == n) {
                params.push((n, v));
            }
        }
        Challenge { scheme, params }
    })
}

fn bearer_with_realm() -> impl Strategy<Value = Challenge> {
    (challenge(), value(), 0usize..6).prop_map(|(mut c, realm, at)| {
        c.scheme = "Bearer".to_owned();
        c.params.retain(|(n, _)| n != "realm");
        c.params
            .insert(at.min(c.params.len()), ("realm".to_owned(), realm));
        c
    })
}

/// Bytes biased towards the grammar's punctuation, to reach deep parser states.
fn grammar_soup() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            Just(b' '),
            Just(b'\t'),
            Just(b','),
            Just(b'='),
            Just(b'"'),
            Just(b'\\'),
            Just(b'/'),
            Just(b'a'),
            Just(b'B'),
            Just(b'\r'),
            any::<u8>(),
        ],
        0..64,
    )
}

proptest! {
    #[test]
    fn parse_format_round_trip(c in challenge()) {
        let header = c.to_header_value();
        prop_assert!(!header.contains('\r') && !header.contains('\n'));
        prop_assert_eq!(parse(&[header.as_bytes()]).unwrap(), vec![c]);
    }

    #[test]
    fn single_line_and_multi_line_agree(cs in prop::collection::vec(challenge(), 1..5)) {
        let lines: Vec<String> = cs.iter().map(Challenge::to_header_value).collect();
        let line_refs: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
        let joined = lines.join(", ");
        let multi = parse(&line_refs).unwrap();
        let single = parse(&[joined.as_bytes()]).unwrap();
        prop_assert_eq!(&multi, &cs);
        prop_assert_eq!(single, multi);
    }

    #[test]
    fn names_are_case_insensitive(c in challenge()) {
        let mut upper = c.clone();
        for (n, _) in &mut upper.params {
            n.make_ascii_uppercase();
        }
        prop_assert_eq!(parse(&[upper.to_header_value().as_bytes()]).unwrap(), vec![c]);
    }

    #[test]
    fn rewrite_idempotent_one_realm(c in bearer_with_realm()) {
        let once = rewrite(&c, NEW_REALM);
        prop_assert_eq!(&rewrite(&once, NEW_REALM), &once);
        let header = once.to_header_value();
        prop_assert!(!header.contains('\r') && !header.contains('\n'));
        let prefix = format!("{} realm=\"{NEW_REALM}\"", c.scheme);
        prop_assert!(header.starts_with(&prefix), "{} does not start with {}", header, prefix);
        let back = parse(&[header.as_bytes()]).unwrap();
        prop_assert_eq!(back.len(), 1);
        prop_assert_eq!(back[0].params.iter().filter(|(n, _)| n == "realm").count(), 1);
        prop_assert_eq!(back[0].param("realm"), Some(NEW_REALM));
        // Every other parameter kept, in order.
        let others = |x: &Challenge| x.params.iter().filter(|(n, _)| n != "realm").cloned().collect::<Vec<_>>();
        prop_assert_eq!(others(&back[0]), others(&c));
    }

    #[test]
    fn rewrite_leaves_non_bearer(c in challenge()) {
        prop_assume!(!c.is_bearer());
        prop_assert_eq!(rewrite(&c, NEW_REALM), c);
    }

    #[test]
    fn never_panics_on_bytes(a in any::<Vec<u8>>(), b in grammar_soup()) {
        for input in [&a, &b] {
            if let Ok(cs) = parse(&[input.as_slice()]) {
                // Whatever parses serialises to something that parses back the same.
                for c in cs {
                    let header = c.to_header_value();
                    prop_assert_eq!(parse(&[header.as_bytes()]).unwrap(), vec![c]);
                }
            }
        }
    }
}
