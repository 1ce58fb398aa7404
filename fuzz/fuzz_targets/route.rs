#![no_main]
//! Fuzz target: see `dockerproxy_fuzz::routing::check_route` (in `src/routing.rs`) for the oracle.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| dockerproxy_fuzz::routing::check_route(data));
