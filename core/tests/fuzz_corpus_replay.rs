//! Replays the committed cargo-fuzz corpora (`fuzz/corpus/<target>/`) on stable, with the same
//! oracles the fuzz targets use (`fuzz/src/*.rs`, included by path). One function per target;
//! each fails if its corpus is missing or empty, so a moved corpus cannot pass silently.

// Reading the corpus files is the point of this test; the core's no-I/O rule is for its library.
#![allow(clippy::disallowed_methods)]

use std::path::PathBuf;

#[allow(dead_code, unreachable_pub)]
#[path = "../../fuzz/src/grammar.rs"]
mod grammar;

/// Every file of `fuzz/corpus/<target>/`, as bytes.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("corpus entry").path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            out.push((path, bytes));
        }
    }
    assert!(!out.is_empty(), "empty corpus {}", dir.display());
    out.sort();
    out
}

/// Runs `check` on every input of `target`, naming the file that failed.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let inputs = corpus(target);
    for (path, bytes) in &inputs {
        if std::panic::catch_unwind(|| check(bytes)).is_err() {
            panic!("fuzz corpus input {} fails its oracle", path.display());
        }
    }
    inputs.len()
}

#[test]
fn replay_classify() {
    assert!(replay("classify", grammar::check_classify) >= 5);
}

#[test]
fn replay_reference() {
    assert!(replay("reference", grammar::check_reference) >= 5);
}

#[test]
fn replay_range() {
    assert!(replay("range", grammar::check_range) >= 5);
}

#[allow(dead_code, unreachable_pub)]
#[path = "../../fuzz/src/auth.rs"]
mod auth;

#[test]
fn replay_challenge() {
    assert!(replay("challenge", auth::check_challenge) >= 10);
}

#[test]
fn replay_scope() {
    assert!(replay("scope", auth::check_scope) >= 10);
}

// Targets added for issue 8: route, token_response, address_policy, verifier, config, exchange.
// `input` and `routing` are shared by the others and referenced as `crate::input`/`crate::routing`.

#[allow(dead_code, unreachable_pub)]
#[path = "../../fuzz/src/input.rs"]
mod input;

#[allow(dead_code, unreachable_pub)]
#[path = "../../fuzz/src/routing.rs"]
mod routing;

#[allow(dead_code, unreachable_pub)]
#[path = "../../fuzz/src/tokens.rs"]
mod tokens;

#[allow(dead_code, unreachable_pub)]
#[path = "../../fuzz/src/address.rs"]
mod address;

#[allow(dead_code, unreachable_pub)]
#[path = "../../fuzz/src/verify.rs"]
mod verify;

#[allow(dead_code, unreachable_pub)]
#[path = "../../fuzz/src/settings.rs"]
mod settings;

#[allow(dead_code, unreachable_pub)]
#[path = "../../fuzz/src/exchange.rs"]
mod exchange;

#[test]
fn replay_route() {
    assert!(replay("route", routing::check_route) >= 10);
}

#[test]
fn replay_token_response() {
    assert!(replay("token_response", tokens::check_token_response) >= 10);
}

#[test]
fn replay_address_policy() {
    assert!(replay("address_policy", address::check_address) >= 10);
}

#[test]
fn replay_verifier() {
    assert!(replay("verifier", verify::check_verifier) >= 10);
}

#[test]
fn replay_config() {
    assert!(replay("config", settings::check_config) >= 10);
}

#[test]
fn replay_exchange() {
    assert!(replay("exchange", exchange::check_exchange) >= 10);
}
