//! Benchmarks of dockerproxy: micro-benchmarks in `benches/core.rs`.
