#![no_main]
//! Fuzz target: token scope transformation and the `/v2/auth` form; see `check_scope` in
//! `src/auth.rs` for the oracle.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| dockerproxy_fuzz::auth::check_scope(data));
