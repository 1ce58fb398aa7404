//! `Range` on a blob of known size (SECURITY.md §2.4 Range, COMPAT.md §8.4).

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
    let _ = (header, size);
    todo!()
}

/// `bytes start-end/size` for a partial answer.
pub fn content_range(start: u64, end: u64, size: u64) -> String {
    format!("bytes {start}-{end}/{size}")
}
