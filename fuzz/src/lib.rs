//! Shared oracles for the fuzz targets. Each module is also compiled into the core's
//! `tests/fuzz_corpus_replay.rs` (by `#[path]`), so the committed corpora replay on stable.

pub mod auth;
pub mod grammar;
