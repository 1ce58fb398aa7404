#![no_main]
//! Fuzz target: `WWW-Authenticate` parsing and rewriting; see `check_challenge` in `src/auth.rs`
//! for the oracle.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| dockerproxy_fuzz::auth::check_challenge(data));
