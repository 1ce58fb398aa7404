//! Shared oracles for the fuzz targets. Each module is also compiled into the core's
//! `tests/fuzz_corpus_replay.rs` (by `#[path]`), so the committed corpora replay on stable.

pub mod address;
pub mod auth;
pub mod exchange;
pub mod grammar;
pub mod input;
pub mod routing;
pub mod settings;
pub mod tokens;
pub mod verify;
