#![no_main]
//! Fuzz target: see `dockerproxy_fuzz::grammar::check_range` for the oracle.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| dockerproxy_fuzz::grammar::check_range(data));
