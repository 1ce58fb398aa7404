//! Time as a value. The core never reads a clock: every wrapper passes the current time in.

use core::ops::{Add, Sub};
use core::time::Duration;

/// Milliseconds since the Unix epoch, supplied by the caller.
///
/// Wall-clock time is used (not a monotonic counter) because token responses carry `issued_at`
/// as a wall-clock instant. Wrappers map their own clocks onto it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// Builds a timestamp from milliseconds since the Unix epoch.
    pub const fn from_millis(ms: u64) -> Self {
        Self(ms)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Time elapsed since `earlier`, zero if `earlier` is in the future.
    pub fn saturating_since(self, earlier: Self) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl Timestamp {
    /// RFC 3339 UTC with whole seconds (`2026-11-29T12:00:00Z`), as `/health`, `/stats` and token
    /// responses print it.
    pub fn to_rfc3339(self) -> String {
        let secs = self.0 / 1000;
        let (y, m, d) = civil_from_days(secs / 86_400);
        let rem = secs % 86_400;
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's
/// `civil_from_days`), restricted to non-negative days so every intermediate value is unsigned.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + u64::from(m <= 2), m, d)
}

impl Add<Duration> for Timestamp {
    type Output = Self;
    fn add(self, rhs: Duration) -> Self {
        Self(
            self.0
                .saturating_add(u64::try_from(rhs.as_millis()).unwrap_or(u64::MAX)),
        )
    }
}

impl Sub<Duration> for Timestamp {
    type Output = Self;
    fn sub(self, rhs: Duration) -> Self {
        Self(
            self.0
                .saturating_sub(u64::try_from(rhs.as_millis()).unwrap_or(u64::MAX)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_of_known_instants() {
        let f = |ms| Timestamp::from_millis(ms).to_rfc3339();
        assert_eq!(f(0), "1970-01-01T00:00:00Z");
        assert_eq!(f(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(f(1_700_000_000_999), "2023-11-14T22:13:20Z");
        assert_eq!(f(1_795_953_418_000), "2026-11-29T11:56:58Z");
        assert_eq!(f(4_102_444_799_000), "2099-12-31T23:59:59Z");
    }
}
