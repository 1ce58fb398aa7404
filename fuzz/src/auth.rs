//! Oracles for the challenge and scope fuzz targets (SECURITY.md §4: "Challenge parser" and
//! "Token scope handling"). Each `check_*` takes the raw fuzz input and panics on a violated
//! property. Included by `#[path]` from `fuzz_targets/{challenge,scope}.rs` and from the core's
//! `tests/fuzz_corpus_replay.rs`.

use dockerproxy_core::challenge::{self, Challenge, MAX_CHALLENGE_LEN};
use dockerproxy_core::scope::{self, MAX_SCOPES, Scope, ScopeRules};

/// The realm the rewriter is given, as the exchange builds it from configuration.
pub const NEW_REALM: &str = "https://docker.example.com/v2/auth?ns=ghcr.io";

/// Parameters other than the realm, in order.
fn others(c: &Challenge) -> Vec<(String, String)> {
    c.params
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case("realm"))
        .cloned()
        .collect()
}

/// `challenge::parse` on arbitrary bytes (split into header lines at `\n`): never panics; what
/// parses serialises without CR/LF and re-parses to itself; the rewrite of a Bearer challenge
/// with a realm has exactly one realm, the new one, keeps every other parameter in order, is
/// idempotent and re-parses; any other challenge is left unchanged.
pub fn check_challenge(data: &[u8]) {
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let Ok(challenges) = challenge::parse(&lines) else {
        return;
    };
    // Allocation bounded by the input: every challenge and parameter consumed input bytes.
    let params: usize = challenges.iter().map(|c| 1 + c.params.len()).sum();
    assert!(
        params <= data.len(),
        "{params} items from {} bytes",
        data.len()
    );
    for c in &challenges {
        let header = c.to_header_value();
        assert!(!header.contains(['\r', '\n']), "{header:?}");
        assert!(
            header.len() <= 2 * MAX_CHALLENGE_LEN + 16,
            "{} bytes",
            header.len()
        );
        assert_eq!(
            challenge::parse(&[header.as_bytes()]).as_deref(),
            Ok(core::slice::from_ref(c)),
            "{header:?}"
        );

        let rewritten = challenge::rewrite(c, NEW_REALM);
        assert_eq!(
            challenge::rewrite(&rewritten, NEW_REALM),
            rewritten,
            "rewrite not idempotent"
        );
        let out = rewritten.to_header_value();
        assert!(!out.contains(['\r', '\n']), "{out:?}");
        let back = challenge::parse(&[out.as_bytes()]).unwrap_or_else(|e| panic!("{out:?}: {e:?}"));
        assert_eq!(back.len(), 1, "{out:?}");
        if c.is_bearer() && c.param("realm").is_some() {
            let realms: Vec<&str> = back[0]
                .params
                .iter()
                .filter(|(n, _)| n == "realm")
                .map(|(_, v)| v.as_str())
                .collect();
            assert_eq!(realms, [NEW_REALM], "{out:?}");
            assert_eq!(
                back[0].params.first().map(|(n, _)| n.as_str()),
                Some("realm")
            );
            assert_eq!(others(&back[0]), others(c), "{out:?}");
            assert_eq!(back[0].param("service"), c.param("service"));
        } else {
            assert_eq!(&rewritten, c);
        }
    }
}

/// The scope functions on arbitrary input. The first byte picks the rules (bit 0: Docker Hub,
/// bit 1: `allow_push`); the rest is a space-separated scope list and, as bytes, a POST form.
/// Never panics; scopes round-trip through [`Scope`]; without `allow_push` a repository scope
/// comes out with actions exactly `pull` (or none when it had none); other types and unparsable
/// scopes are unchanged; the form keeps at most one `service` (the upstream's), no `ns`, and
/// pull-only repository scopes.
pub fn check_scope(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let rules = ScopeRules {
        registry_names: &["docker.io", "registry-1.docker.io", "ghcr.io"],
        docker_hub: flags & 1 != 0,
        allow_push: flags & 2 != 0,
    };

    let form = scope::transform_form(rest, Some("svc"), &rules);
    if rest.len() <= scope::MAX_FORM_LEN {
        let out = form.unwrap_or_else(|e| panic!("{e:?}"));
        let fields = decode_form(&out);
        let services: Vec<&str> = fields
            .iter()
            .filter(|(k, _)| k == "service")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(services, ["svc"]);
        assert!(!fields.iter().any(|(k, _)| k == "ns"));
        let scopes = fields
            .iter()
            .filter(|(k, _)| k == "scope")
            .flat_map(|(_, v)| v.split_ascii_whitespace());
        let mut count = 0;
        for s in scopes {
            count += 1;
            check_pull_only(s, &rules);
        }
        assert!(count <= MAX_SCOPES);
    }

    let Ok(text) = core::str::from_utf8(rest) else {
        return;
    };
    let scopes = scope::split_scopes([text]);
    assert!(scopes.len() <= MAX_SCOPES);
    for s in &scopes {
        if let Some(parsed) = Scope::parse(s) {
            assert_eq!(parsed.to_string(), *s, "round trip");
        }
        let out = scope::transform(s, &rules);
        match Scope::parse(s) {
            Some(p) if p.is_repository() => {
                let q = Scope::parse(&out).unwrap_or_else(|| panic!("{s:?} -> {out:?}"));
                assert_eq!(q.kind, p.kind);
                if !rules.allow_push {
                    let want: &[&str] = if p.actions.is_empty() { &[] } else { &["pull"] };
                    assert_eq!(q.actions, want, "{s:?} -> {out:?}");
                } else {
                    assert_eq!(q.actions, p.actions);
                }
                if rules.docker_hub && !q.name.is_empty() {
                    assert!(q.name.contains('/'), "{s:?} -> {out:?}");
                }
            }
            _ => assert_eq!(out, *s),
        }
    }
    let is_registry = |r: &str| rules.registry_names.contains(&r);
    if let Some(prefix) = scope::registry_prefix(&scopes, is_registry) {
        assert!(is_registry(prefix));
    }
    for (k, _) in scope::passthrough_params(text) {
        assert!(!matches!(k.as_str(), "scope" | "service" | "ns"));
    }
}

/// A transformed repository scope grants no more than `pull` (unless `allow_push`).
fn check_pull_only(s: &str, rules: &ScopeRules<'_>) {
    if rules.allow_push {
        return;
    }
    if let Some(p) = Scope::parse(s).filter(Scope::is_repository) {
        assert!(p.actions.is_empty() || p.actions == ["pull"], "{s:?}");
    }
}

/// Decodes an `x-www-form-urlencoded` body (`+` is a space, `%XX` a byte; lenient like browsers),
/// written here because the fuzz crate depends on nothing but the core and libFuzzer.
fn decode_form(form: &[u8]) -> Vec<(String, String)> {
    fn decode(part: &[u8]) -> String {
        let hex = |b: u8| char::from(b).to_digit(16);
        let mut out = Vec::with_capacity(part.len());
        let mut i = 0;
        while let Some(&b) = part.get(i) {
            match (
                b,
                part.get(i + 1).copied().and_then(hex),
                part.get(i + 2).copied().and_then(hex),
            ) {
                (b'%', Some(h), Some(l)) => {
                    out.extend(u8::try_from(h * 16 + l));
                    i += 3;
                }
                (b'+', _, _) => {
                    out.push(b' ');
                    i += 1;
                }
                _ => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    form.split(|&b| b == b'&')
        .filter(|f| !f.is_empty())
        .map(|f| {
            let (k, v) = match f.iter().position(|&b| b == b'=') {
                Some(at) => (&f[..at], &f[at + 1..]),
                None => (f, &f[f.len()..]),
            };
            (decode(k), decode(v))
        })
        .collect()
}
