#![no_main]
//! Fuzz target: see `dockerproxy_fuzz::exchange::check_exchange` (in `src/exchange.rs`) for the oracle.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| dockerproxy_fuzz::exchange::check_exchange(data));
