//! The duration and boolean grammars of go-docker-proxy's environment (COMPAT.md §3.1, §3.2).

use core::time::Duration;

/// Why a duration did not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DurationError(pub String);

/// Parses form A (Go duration: `0`, `1h30m`, `0.5s`, units ns us µs μs ms s m h, optional `+`)
/// or form B (one `number suffix` with `d` `w` `M` `y`). Negative values, mixed forms and unknown
/// suffixes are errors.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let _ = s;
    todo!()
}

/// Formats like Go's `time.Duration.String()`: `24h0m0s`, `1m30s`, `1.5s`, `0s`.
pub fn format_go_duration(d: Duration) -> String {
    let _ = d;
    todo!()
}

/// A boolean environment value: `Ok(true/false)` for `true`/`false` in any case or empty (false);
/// `Err(())` for anything else (the caller treats it as false and warns).
#[allow(clippy::result_unit_err)]
pub fn parse_bool(s: &str) -> Result<bool, ()> {
    let _ = s;
    todo!()
}

/// Parses a size with units B, KB/MB/GB/TB (1000-based) and KiB/MiB/GiB/TiB (1024-based).
pub fn parse_size(s: &str) -> Result<u64, DurationError> {
    let _ = s;
    todo!()
}
