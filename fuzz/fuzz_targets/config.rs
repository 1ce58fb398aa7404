#![no_main]
//! Fuzz target: see `dockerproxy_fuzz::settings::check_config` (in `src/settings.rs`) for the oracle.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| dockerproxy_fuzz::settings::check_config(data));
