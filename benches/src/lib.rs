//! Benchmarks of dockerproxy: micro-benchmarks in `benches/core.rs`; the side-by-side load
//! harness in `src/bin/harness/` (see `benches/harness/README.md`), with its slow-link relay in
//! [`relay`].

pub mod relay;
