//! `Range` on a blob of known size (SECURITY.md §2.4 Range, COMPAT.md §8.4).
//!
//! Only a single `bytes` range is honoured: `bytes=a-b`, `bytes=a-` or `bytes=-n`. Anything
//! malformed, multi-range or in another unit is ignored (full 200). An end past the last byte is
//! clamped (TESTBED.md §7 gotcha 4); a start at or past the end, a zero-length suffix, or any
//! range on an empty body is unsatisfiable (416). Numbers that do not fit a `u64` are malformed.

/// What to answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeDecision {
    /// No, malformed or multi-range header: the full body, 200.
    Full,
    /// One satisfiable range: 206 with inclusive `start..=end`.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte, inclusive, clamped to `size - 1`.
        end: u64,
    },
    /// 416 with `Content-Range: bytes */size`.
    Unsatisfiable,
}

/// Decides a `Range` header value against `size`. Never overflows.
pub fn decide(header: Option<&[u8]>, size: u64) -> RangeDecision {
    let Some(spec) = header.and_then(parse) else {
        return RangeDecision::Full;
    };
    // `size - 1` below is safe: every branch that uses it has checked `size > 0`.
    match spec {
        Spec::FromTo(start, _) | Spec::From(start) if start >= size => RangeDecision::Unsatisfiable,
        Spec::FromTo(start, end) => RangeDecision::Partial {
            start,
            end: end.min(size - 1),
        },
        Spec::From(start) => RangeDecision::Partial {
            start,
            end: size - 1,
        },
        Spec::Suffix(n) if n == 0 || size == 0 => RangeDecision::Unsatisfiable,
        Spec::Suffix(n) => RangeDecision::Partial {
            start: size - n.min(size),
            end: size - 1,
        },
    }
}

/// One syntactically valid byte-range-spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Spec {
    /// `a-b` with `a <= b`.
    FromTo(u64, u64),
    /// `a-`.
    From(u64),
    /// `-n`.
    Suffix(u64),
}

/// Parses `bytes=<one range>`; `None` for anything to ignore.
fn parse(header: &[u8]) -> Option<Spec> {
    let header = core::str::from_utf8(header).ok()?;
    let (unit, set) = header.split_once('=')?;
    if !unit.trim_matches(is_ows).eq_ignore_ascii_case("bytes") || set.contains(',') {
        return None;
    }
    let (first, last) = set.split_once('-')?;
    let (first, last) = (first.trim_matches(is_ows), last.trim_matches(is_ows));
    match (first.is_empty(), last.is_empty()) {
        (true, true) => None,
        (true, false) => Some(Spec::Suffix(number(last)?)),
        (false, true) => Some(Spec::From(number(first)?)),
        (false, false) => {
            let (a, b) = (number(first)?, number(last)?);
            (a <= b).then_some(Spec::FromTo(a, b))
        }
    }
}

/// Optional whitespace (RFC 9110 OWS).
fn is_ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// A run of ASCII digits that fits a `u64` (no sign, no whitespace inside).
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `bytes start-end/size` for a partial answer.
pub fn content_range(start: u64, end: u64, size: u64) -> String {
    format!("bytes {start}-{end}/{size}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeDecision::{Full, Partial, Unsatisfiable};

    fn d(h: &str, size: u64) -> RangeDecision {
        decide(Some(h.as_bytes()), size)
    }

    #[test]
    fn absent_is_full() {
        assert_eq!(decide(None, 10), Full);
        assert_eq!(decide(None, 0), Full);
    }

    #[test]
    fn gotcha_4_clamp_and_416() {
        assert_eq!(d("bytes=6-11", 11), Partial { start: 6, end: 10 });
        assert_eq!(content_range(6, 10, 11), "bytes 6-10/11");
        assert_eq!(d("bytes=11-", 11), Unsatisfiable);
        assert_eq!(d("bytes=12-20", 11), Unsatisfiable);
    }

    #[test]
    fn forms() {
        assert_eq!(d("bytes=0-0", 5), Partial { start: 0, end: 0 });
        assert_eq!(d("bytes=2-", 5), Partial { start: 2, end: 4 });
        assert_eq!(d("bytes=-2", 5), Partial { start: 3, end: 4 });
        assert_eq!(d("bytes=-9", 5), Partial { start: 0, end: 4 });
        assert_eq!(d("bytes=-0", 5), Unsatisfiable);
        assert_eq!(d("BYTES = 1 - 3", 5), Partial { start: 1, end: 3 });
        assert_eq!(d(" bytes=\t1-3 ", 5), Partial { start: 1, end: 3 });
        assert_eq!(
            d("bytes=0-18446744073709551615", 5),
            Partial { start: 0, end: 4 }
        );
        assert_eq!(
            d("bytes=18446744073709551614-", u64::MAX),
            Partial {
                start: u64::MAX - 1,
                end: u64::MAX - 1
            }
        );
        assert_eq!(
            d("bytes=-18446744073709551615", u64::MAX),
            Partial {
                start: 0,
                end: u64::MAX - 1
            }
        );
    }

    #[test]
    fn empty_body() {
        assert_eq!(d("bytes=0-", 0), Unsatisfiable);
        assert_eq!(d("bytes=0-5", 0), Unsatisfiable);
        assert_eq!(d("bytes=-5", 0), Unsatisfiable);
        assert_eq!(d("bytes=5-1", 0), Full);
    }

    #[test]
    fn ignored() {
        for h in [
            "",
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=5-1",
            "bytes=0-1,3-4",
            "bytes=0-1,",
            "items=0-1",
            "bytes=a-1",
            "bytes=+1-2",
            "bytes=1-+2",
            "bytes=--1",
            "bytes=1-2-3",
            "bytes=1 2-3",
            "bytes=18446744073709551616-",
            "bytes=0-18446744073709551616",
            "bytes=-18446744073709551616",
            "bytes=\u{661}-2",
        ] {
            assert_eq!(d(h, 10), Full, "{h:?}");
        }
        assert_eq!(decide(Some(&[0xff, b'=', b'1', b'-']), 10), Full);
    }
}
