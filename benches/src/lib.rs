//! Benchmarks of dockerproxy: micro-benchmarks in `benches/`, the load harness in `harness/`.
