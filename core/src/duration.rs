//! The duration, boolean and size grammars of the configuration (COMPAT.md §3.1, §3.2, §3.3).
//!
//! Pure string parsing and formatting; the callers decide what an error means (a default plus
//! a warning for environment values, a startup error for the configuration file).

use core::time::Duration;

/// Why a duration did not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DurationError(pub String);

impl core::fmt::Display for DurationError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DurationError {}

const NANOS_PER_SEC: u128 = 1_000_000_000;
const NANOS_PER_HOUR: u128 = 3600 * NANOS_PER_SEC;
const NANOS_PER_DAY: u128 = 24 * NANOS_PER_HOUR;

/// The largest duration accepted: Go's `time.Duration` maximum (about 292 years).
const MAX_NANOS: u128 = i64::MAX as u128;

/// Digits kept from a fraction; more cannot change a nanosecond count of a supported unit.
const MAX_FRACTION_DIGITS: usize = 18;

/// Parses form A (Go duration: `0`, `1h30m`, `0.5s`, units ns us µs μs ms s m h, optional `+`)
/// or form B (one `number suffix` with `d` `w` `M` `y`). Negative values, mixed forms and unknown
/// suffixes are errors.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(DurationError("empty duration".to_owned()));
    }
    let nanos = match parse_go(t) {
        Some(n) => n,
        None => parse_day_based(t).ok_or_else(|| {
            DurationError(format!(
                "{t:?} is not a duration (examples: 90m, 1h30m, 0.5s, 1d, 2w, 6M, 1y)"
            ))
        })?,
    };
    if nanos > MAX_NANOS {
        return Err(DurationError(format!("{t:?} is too large")));
    }
    Ok(from_nanos(nanos))
}

fn from_nanos(n: u128) -> Duration {
    // n ≤ MAX_NANOS, so the seconds fit in u64 and the remainder in u32.
    let secs = u64::try_from(n / NANOS_PER_SEC).unwrap_or(u64::MAX);
    let sub = u32::try_from(n % NANOS_PER_SEC).unwrap_or(0);
    Duration::new(secs, sub)
}

/// A decimal `int[.frac]` split off the front of `s`: (integer digits, fraction digits, rest).
fn split_number(s: &str) -> (&str, &str, &str) {
    let int_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (int, rest) = s.split_at(int_end);
    if let Some(after_dot) = rest.strip_prefix('.') {
        let frac_end = after_dot
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(after_dot.len());
        let (frac, rest) = after_dot.split_at(frac_end);
        (int, frac, rest)
    } else {
        (int, "", rest)
    }
}

/// `int.frac × unit` in nanoseconds, `None` on overflow.
fn scale(int: &str, frac: &str, unit: u128) -> Option<u128> {
    let mut whole: u128 = 0;
    for b in int.bytes() {
        whole = whole.checked_mul(10)?.checked_add(u128::from(b - b'0'))?;
        if whole > MAX_NANOS {
            return None;
        }
    }
    let mut total = whole.checked_mul(unit)?;
    let frac = &frac[..frac.len().min(MAX_FRACTION_DIGITS)];
    if !frac.is_empty() {
        let mut f: u128 = 0;
        let mut denom: u128 = 1;
        for b in frac.bytes() {
            f = f * 10 + u128::from(b - b'0');
            denom *= 10;
        }
        // f < 10^18 and unit ≤ 365 days in ns (< 2^55): the product fits in u128.
        total = total.checked_add(f.checked_mul(unit)? / denom)?;
    }
    Some(total)
}

fn go_unit(u: &str) -> Option<u128> {
    Some(match u {
        "ns" => 1,
        "us" | "µs" | "μs" => 1_000,
        "ms" => 1_000_000,
        "s" => NANOS_PER_SEC,
        "m" => 60 * NANOS_PER_SEC,
        "h" => NANOS_PER_HOUR,
        _ => return None,
    })
}

/// Form A. `None` when `s` is not a Go duration.
fn parse_go(s: &str) -> Option<u128> {
    if s == "0" {
        return Some(0);
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let (int, frac, after) = split_number(rest);
        let had_dot = after.len() + int.len() + frac.len() < rest.len();
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        if had_dot && frac.is_empty() {
            return None;
        }
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        let unit = go_unit(unit)?;
        total = total.checked_add(scale(int, frac, unit)?)?;
        if total > MAX_NANOS {
            return None;
        }
        rest = next;
    }
    Some(total)
}

/// Form B. `None` when `s` is not exactly one `number suffix`.
fn parse_day_based(s: &str) -> Option<u128> {
    let (int, frac, suffix) = split_number(s);
    if int.is_empty() {
        return None;
    }
    if frac.is_empty() && int.len() + suffix.len() < s.len() {
        return None; // "1.d"
    }
    let unit = match suffix {
        "d" => NANOS_PER_DAY,
        "w" => 7 * NANOS_PER_DAY,
        "M" => 30 * NANOS_PER_DAY,
        "y" => 365 * NANOS_PER_DAY,
        _ => return None,
    };
    scale(int, frac, unit)
}

/// Formats like Go's `time.Duration.String()`: `24h0m0s`, `1m30s`, `1.5s`, `0s`.
pub fn format_go_duration(d: Duration) -> String {
    let n = d.as_nanos();
    if n == 0 {
        return "0s".to_owned();
    }
    if n < 1_000 {
        return format!("{n}ns");
    }
    if n < 1_000_000 {
        return format!("{}µs", fixed(n, 3));
    }
    if n < NANOS_PER_SEC {
        return format!("{}ms", fixed(n, 6));
    }
    let secs_part = fixed(n % (60 * NANOS_PER_SEC), 9);
    let total_min = n / (60 * NANOS_PER_SEC);
    if total_min == 0 {
        return format!("{secs_part}s");
    }
    let hours = total_min / 60;
    let mins = total_min % 60;
    if hours == 0 {
        format!("{mins}m{secs_part}s")
    } else {
        format!("{hours}h{mins}m{secs_part}s")
    }
}

/// `v / 10^prec` with the fraction's trailing zeros (and a bare dot) removed.
fn fixed(v: u128, prec: u32) -> String {
    let p = 10u128.pow(prec);
    let int = v / p;
    let frac = v % p;
    if frac == 0 {
        return int.to_string();
    }
    let digits = format!("{frac:0width$}", width = prec as usize);
    format!("{int}.{}", digits.trim_end_matches('0'))
}

/// A boolean environment value: `Ok(true/false)` for `true`/`false` in any case or empty (false);
/// `Err(())` for anything else (the caller treats it as false and warns).
#[allow(clippy::result_unit_err)]
pub fn parse_bool(s: &str) -> Result<bool, ()> {
    let t = s.trim();
    if t.is_empty() || t.eq_ignore_ascii_case("false") {
        Ok(false)
    } else if t.eq_ignore_ascii_case("true") {
        Ok(true)
    } else {
        Err(())
    }
}

/// Parses a size with units B, KB/MB/GB/TB (1000-based) and KiB/MiB/GiB/TiB (1024-based).
///
/// A plain number is bytes; units are case-insensitive and may follow a space; a fraction
/// (`1.5GiB`) is rounded down to whole bytes.
pub fn parse_size(s: &str) -> Result<u64, DurationError> {
    let t = s.trim();
    let bad = || DurationError(format!("{t:?} is not a size (examples: 0, 500MB, 10GiB)"));
    let (int, frac, unit) = split_number(t);
    if int.is_empty() {
        return Err(bad());
    }
    if frac.is_empty() && int.len() + unit.len() < t.len() {
        return Err(bad());
    }
    let mult: u128 = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    let v = scale(int, frac, mult).ok_or_else(bad)?;
    u64::try_from(v).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Duration {
        parse_duration(s).unwrap()
    }

    #[test]
    fn form_a() {
        assert_eq!(d("0"), Duration::ZERO);
        assert_eq!(d("24h"), Duration::from_secs(86_400));
        assert_eq!(d("90m"), Duration::from_secs(5_400));
        assert_eq!(d("1h30m"), Duration::from_secs(5_400));
        assert_eq!(d("0.5s"), Duration::from_millis(500));
        assert_eq!(d(".5s"), Duration::from_millis(500));
        assert_eq!(d("+10m"), Duration::from_secs(600));
        assert_eq!(d("1ms"), Duration::from_millis(1));
        assert_eq!(d("3µs"), Duration::from_micros(3));
        assert_eq!(d("3μs"), Duration::from_micros(3));
        assert_eq!(d("3us"), Duration::from_micros(3));
        assert_eq!(d("7ns"), Duration::from_nanos(7));
        assert_eq!(d(" 5s "), Duration::from_secs(5));
        assert_eq!(d("1h0.5m"), Duration::from_secs(3_630));
    }

    #[test]
    fn form_b() {
        assert_eq!(d("1d"), Duration::from_secs(86_400));
        assert_eq!(d("1.5d"), Duration::from_secs(36 * 3600));
        assert_eq!(d("2w"), Duration::from_secs(14 * 86_400));
        assert_eq!(d("6M"), Duration::from_secs(180 * 86_400));
        assert_eq!(d("1y"), Duration::from_secs(365 * 86_400));
    }

    #[test]
    fn invalid() {
        for s in [
            "",
            " ",
            "1d12h",
            "1D",
            "-5m",
            "1",
            "5",
            "m",
            "1.s",
            "1.d",
            "+",
            "1h-5m",
            "1x",
            "1 h",
            "+1d",
            ".5d",
            "300y",
            "99999999999999999999h",
            "1e3s",
            "0x10s",
        ] {
            assert!(parse_duration(s).is_err(), "{s:?} must be refused");
        }
    }

    #[test]
    fn format() {
        let f = |s: u64| format_go_duration(Duration::from_secs(s));
        assert_eq!(f(0), "0s");
        assert_eq!(f(86_400), "24h0m0s");
        assert_eq!(f(365 * 86_400), "8760h0m0s");
        assert_eq!(f(600), "10m0s");
        assert_eq!(f(90), "1m30s");
        assert_eq!(f(5), "5s");
        assert_eq!(format_go_duration(Duration::from_millis(1_500)), "1.5s");
        assert_eq!(
            format_go_duration(Duration::from_millis(94_084_512)),
            "26h8m4.512s"
        );
        assert_eq!(format_go_duration(Duration::from_micros(1_500)), "1.5ms");
        assert_eq!(format_go_duration(Duration::from_nanos(1_500)), "1.5µs");
        assert_eq!(format_go_duration(Duration::from_nanos(999)), "999ns");
        assert_eq!(
            format_go_duration(Duration::from_nanos(3_600_000_000_001)),
            "1h0m0.000000001s"
        );
    }

    #[test]
    fn format_parse_round_trip() {
        for n in [
            1u64,
            999,
            1_000,
            1_500,
            999_999,
            1_000_000,
            123_456_789,
            1_000_000_000,
            3_723_000_000_007,
        ] {
            let dur = Duration::from_nanos(n);
            assert_eq!(d(&format_go_duration(dur)), dur, "{n}");
        }
    }

    #[test]
    fn booleans() {
        assert_eq!(parse_bool("true"), Ok(true));
        assert_eq!(parse_bool("TRUE"), Ok(true));
        assert_eq!(parse_bool("True"), Ok(true));
        assert_eq!(parse_bool("false"), Ok(false));
        assert_eq!(parse_bool("FaLsE"), Ok(false));
        assert_eq!(parse_bool(""), Ok(false));
        assert_eq!(parse_bool("1"), Err(()));
        assert_eq!(parse_bool("yes"), Err(()));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1234"), Ok(1234));
        assert_eq!(parse_size("10GiB"), Ok(10 * 1024 * 1024 * 1024));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert_eq!(parse_size("2 KiB"), Ok(2048));
        assert_eq!(parse_size("1.5KiB"), Ok(1536));
        assert_eq!(parse_size("7B"), Ok(7));
        assert_eq!(parse_size("1tb"), Ok(1_000_000_000_000));
        assert_eq!(parse_size("3TiB"), Ok(3 << 40));
        for s in [
            "",
            "GiB",
            "-1",
            "10XB",
            "1.GiB",
            "99999999999999999999",
            "20000000TiB",
        ] {
            assert!(parse_size(s).is_err(), "{s:?} must be refused");
        }
    }
}
