#![no_main]
//! Fuzz target: see `dockerproxy_fuzz::verify::check_verifier` (in `src/verify.rs`) for the oracle.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| dockerproxy_fuzz::verify::check_verifier(data));
