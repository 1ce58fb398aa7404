#![no_main]
//! Fuzz target: see `dockerproxy_fuzz::tokens::check_token_response` (in `src/tokens.rs`) for the oracle.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| dockerproxy_fuzz::tokens::check_token_response(data));
