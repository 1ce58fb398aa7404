#![no_main]
//! Fuzz target: see `dockerproxy_fuzz::address::check_address` (in `src/address.rs`) for the oracle.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| dockerproxy_fuzz::address::check_address(data));
