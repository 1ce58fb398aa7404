//! RFC 3339 UTC timestamps with whole seconds (`2024-05-01T12:34:56Z`), as `/health` and
//! `/stats` print them. Pure integer arithmetic on the proleptic Gregorian calendar.

/// Formats milliseconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (sub-seconds dropped).
pub fn format_utc(ms_since_epoch: u64) -> String {
    let secs = ms_since_epoch / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day). Howard Hinnant's `civil_from_days`, restricted
/// to non-negative day counts so every intermediate value is unsigned and small.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_and_known_dates() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_700_000_000_999), "2023-11-14T22:13:20Z");
        assert_eq!(format_utc(4_102_444_799_000), "2099-12-31T23:59:59Z");
    }
}
