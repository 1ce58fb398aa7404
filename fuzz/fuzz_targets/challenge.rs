#![no_main]
//! Fuzz target: `WWW-Authenticate` parsing and rewriting; see `check_challenge` in `src/auth.rs`
//! for the oracle.

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../src/auth.rs"]
mod auth;

fuzz_target!(|data: &[u8]| auth::check_challenge(data));
