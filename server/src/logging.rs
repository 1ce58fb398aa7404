//! Logging: the tracing subscriber set-up and the one access-log line per request.
//!
//! Redaction (SECURITY.md §2.17): the access line carries the path without its query, the host
//! escaped and capped, and the client only as a short keyed hash. Header values are never logged,
//! so `Authorization`, cookies and tokens cannot appear; CR and LF in request text are escaped so
//! they cannot forge lines.
//!
//! Cost (issue 7): with the plain-text subscriber of [`init`] (the default), the access line is
//! formatted straight into a reused per-thread buffer and written with one `write` to stdout, in
//! the subscriber's own layout; tracing is asked only whether the line is enabled (so `RUST_LOG`
//! still filters it). With JSON logs, or under any other subscriber (tests), it is an ordinary
//! tracing event with one field per fact.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::Method;
use tracing_subscriber::EnvFilter;

use crate::metrics::Source;
use crate::state::ServerState;

/// Caps of the logged request text.
const MAX_HOST: usize = 256;
const MAX_PATH: usize = 1024;
/// A per-thread line buffer larger than this is not kept between lines.
const KEEP_BUFFER: usize = 16 * 1024;

/// The access line is written directly (set by [`init`] for the plain-text subscriber).
static DIRECT: AtomicBool = AtomicBool::new(false);

/// Installs the global subscriber: `debug` level with `DEBUG=true`, else `info`; `RUST_LOG`
/// overrides both. JSON lines when `json`. A second call is a no-op (tests start many servers).
pub fn init(debug: bool, json: bool) {
    let default = if debug {
        "debug,hyper=info,h2=info,rustls=info"
    } else {
        "info"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colours only on a terminal: container logs stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi);
    let installed = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    if installed.is_ok() && !json {
        DIRECT.store(true, Ordering::Relaxed);
    }
}

/// Escapes control characters, quotes and non-ASCII, and caps the length, so request text is
/// safe on one log line.
pub fn sanitize(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max) + 3);
    push_sanitized(&mut out, s, max);
    out
}

/// Appends `s` escaped like [`sanitize`] (at most `max` bytes of escaped text, then `…`).
fn push_sanitized(out: &mut String, s: &str, max: usize) {
    // Fast path: printable ASCII without quotes or backslashes escapes to itself (a fold
    // without early exit, which the compiler vectorises).
    let plain = s.bytes().fold(true, |ok, b| {
        ok & (0x20..0x7f).contains(&b) & (b != b'"') & (b != b'\'') & (b != b'\\')
    });
    if plain {
        if s.len() > max {
            out.push_str(&s[..max]);
            out.push('…');
        } else {
            out.push_str(s);
        }
        return;
    }
    let base = out.len();
    for c in s.escape_debug() {
        if out.len() - base >= max {
            out.push('…');
            break;
        }
        out.push(c);
    }
}

/// The request-target without its query string.
pub fn path_only(target: &str) -> &str {
    target.split_once('?').map_or(target, |(p, _)| p)
}

/// What happened to a response body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Still streaming (or dropped by the client before the end when logged).
    Pending,
    /// The whole body was produced.
    Complete,
    /// The body was aborted (upstream failure, idle timeout, integrity failure).
    Aborted(String),
}

/// Per-request facts, logged and counted once when the response body is dropped.
pub struct RequestLog {
    state: Arc<ServerState>,
    method: Method,
    /// Raw request text, escaped and capped only when the line is written.
    host: String,
    path: String,
    peer: Option<IpAddr>,
    start: Instant,
    /// Response status.
    pub status: u16,
    /// Registry label (`none` for local answers).
    pub registry: String,
    /// Request kind label (ping, auth, manifest, blob, other).
    pub kind: &'static str,
    /// `X-Cache` value, if any.
    pub x_cache: Option<&'static str>,
    /// Where the body bytes come from.
    pub source: Source,
    bytes: u64,
    outcome: Outcome,
}

impl core::fmt::Debug for RequestLog {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RequestLog")
            .field("method", &self.method)
            .field("path", &sanitize(&self.path, MAX_PATH))
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl RequestLog {
    /// Starts the record of a request.
    pub fn new(
        state: Arc<ServerState>,
        method: Method,
        host: &str,
        target: &str,
        peer: Option<IpAddr>,
    ) -> Self {
        Self {
            state,
            method,
            host: host.to_owned(),
            path: path_only(target).to_owned(),
            peer,
            start: Instant::now(),
            status: 0,
            registry: "none".to_owned(),
            kind: "other",
            x_cache: None,
            source: Source::Local,
            bytes: 0,
            outcome: Outcome::Pending,
        }
    }

    /// The server state (for metrics).
    pub fn state(&self) -> &ServerState {
        &self.state
    }

    /// Counts body bytes sent.
    pub fn add_bytes(&mut self, n: usize) {
        let n = n as u64;
        self.bytes = self.bytes.saturating_add(n);
        self.state.metrics.bytes_sent(self.source, n);
    }

    /// Records the end of the body.
    pub fn set_outcome(&mut self, outcome: Outcome) {
        if self.outcome == Outcome::Pending {
            self.outcome = outcome;
        }
    }

    fn outcome_str(&self) -> &str {
        match &self.outcome {
            Outcome::Pending if self.bytes == 0 => "ok",
            Outcome::Pending => "client-gone",
            Outcome::Complete => "ok",
            Outcome::Aborted(reason) => reason.as_str(),
        }
    }

    fn duration_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Formats the line as the plain-text subscriber would (timestamp, level, message, fields).
    fn write_line(&self, out: &mut String, now: SystemTime, date: &mut (u64, String)) {
        push_timestamp(out, now, date);
        out.push_str("  INFO request method=");
        out.push_str(self.method.as_str());
        out.push_str(" host=");
        push_sanitized(out, &self.host, MAX_HOST);
        out.push_str(" path=");
        push_sanitized(out, &self.path, MAX_PATH);
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            " status={} bytes={} duration_ms={} x_cache=\"{}\" registry=",
            self.status,
            self.bytes,
            self.duration_ms(),
            self.x_cache.unwrap_or("-"),
        );
        push_sanitized(out, &self.registry, MAX_HOST);
        out.push_str(" client=");
        out.push_str(&self.state.client_tag(self.peer));
        out.push_str(" outcome=");
        match self.outcome_str() {
            o @ ("ok" | "client-gone") => {
                out.push('"');
                out.push_str(o);
                out.push('"');
            }
            // Abort reasons may quote upstream text: escaped like any Debug string.
            o => {
                let _ = write!(out, "{o:?}");
            }
        }
        out.push('\n');
    }
}

thread_local! {
    /// The reused line buffer, and the formatted date of the last second seen.
    static LINE: RefCell<(String, (u64, String))> =
        const { RefCell::new((String::new(), (u64::MAX, String::new()))) };
}

/// Appends `now` as RFC 3339 UTC with microseconds (`2026-11-29T12:34:56.123456Z`), the format
/// of the subscriber's default timer. The date part is formatted once per second per thread.
fn push_timestamp(out: &mut String, now: SystemTime, date: &mut (u64, String)) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    if date.0 != secs {
        date.1.clear();
        let _ = write!(date.1, "{}", Civil::from_unix(secs));
        date.0 = secs;
    }
    out.push_str(&date.1);
    let _ = write!(out, ".{:06}Z", since.subsec_micros());
}

/// A UTC date and time of day, from Unix seconds (proleptic Gregorian calendar).
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    secs_of_day: u64,
}

impl Civil {
    fn from_unix(secs: u64) -> Self {
        let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
        let secs_of_day = secs % 86_400;
        // Days since 1970-01-01 to a civil date (H. Hinnant's `civil_from_days`).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
        let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
        let year = yoe + era * 400 + i64::from(month <= 2);
        Self {
            year,
            month,
            day,
            secs_of_day,
        }
    }
}

impl core::fmt::Display for Civil {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let s = self.secs_of_day;
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            self.year,
            self.month,
            self.day,
            s / 3_600,
            s / 60 % 60,
            s % 60
        )
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        self.state
            .metrics
            .request(&self.registry, self.kind, &self.method, self.status);
        if !tracing::enabled!(tracing::Level::INFO) {
            return;
        }
        if DIRECT.load(Ordering::Relaxed) {
            let now = SystemTime::now();
            LINE.with(|cell| {
                let Ok(mut cell) = cell.try_borrow_mut() else {
                    return;
                };
                let (line, date) = &mut *cell;
                line.clear();
                self.write_line(line, now, date);
                // One write per line, like the subscriber's own writer; a failed write to
                // stdout has nowhere to be reported.
                let _ = std::io::stdout().lock().write_all(line.as_bytes());
                if line.capacity() > KEEP_BUFFER {
                    *line = String::new();
                }
            });
            return;
        }
        tracing::info!(
            method = %self.method,
            host = %sanitize(&self.host, MAX_HOST),
            path = %sanitize(&self.path, MAX_PATH),
            status = self.status,
            bytes = self.bytes,
            duration_ms = self.duration_ms(),
            x_cache = self.x_cache.unwrap_or("-"),
            registry = %sanitize(&self.registry, MAX_HOST),
            client = %self.state.client_tag(self.peer),
            outcome = self.outcome_str(),
            "request"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_escapes_crlf_and_caps() {
        assert_eq!(sanitize("a\r\nb", 100), "a\\r\\nb");
        assert_eq!(sanitize("abcdef", 3), "abc…");
    }

    #[test]
    fn sanitize_fast_path_agrees_with_escape_debug() {
        for (s, max) in [
            ("abcdef", 6),
            ("abcdef", 7),
            ("abcdef", 0),
            ("a\"b", 10),
            ("a'b\\c", 10),
            ("é\u{7f}x", 2),
            ("tab\there", 4),
            ("/v2/library/busybox/manifests/sha256:0123", 1024),
        ] {
            let mut slow = String::new();
            for c in s.escape_debug() {
                if slow.len() >= max {
                    slow.push('…');
                    break;
                }
                slow.push(c);
            }
            assert_eq!(sanitize(s, max), slow, "{s:?} capped at {max}");
        }
    }

    #[test]
    fn civil_dates_and_times() {
        let f = |secs| Civil::from_unix(secs).to_string();
        assert_eq!(f(0), "1970-01-01T00:00:00");
        assert_eq!(f(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(f(951_955_199), "2000-03-01T23:59:59");
        assert_eq!(f(1_709_251_199), "2024-02-29T23:59:59");
        assert_eq!(f(4_107_542_400), "2100-03-01T00:00:00");
        assert_eq!(f(1_798_761_599), "2026-12-31T23:59:59");
    }

    #[test]
    fn timestamp_has_micros_and_is_cached_per_second() {
        let mut date = (u64::MAX, String::new());
        let mut out = String::new();
        let t = UNIX_EPOCH + std::time::Duration::from_micros(1_709_251_199_000_042);
        push_timestamp(&mut out, t, &mut date);
        assert_eq!(out, "2024-02-29T23:59:59.000042Z");
        assert_eq!(date.0, 1_709_251_199);
        out.clear();
        push_timestamp(&mut out, t + std::time::Duration::from_millis(1), &mut date);
        assert_eq!(out, "2024-02-29T23:59:59.001042Z");
        out.clear();
        push_timestamp(&mut out, t + std::time::Duration::from_secs(1), &mut date);
        assert_eq!(out, "2024-03-01T00:00:00.000042Z");
    }

    #[test]
    fn path_only_drops_query() {
        assert_eq!(
            path_only("/v2/x/blobs/sha256:1?X-Amz-Signature=secret"),
            "/v2/x/blobs/sha256:1"
        );
        assert_eq!(path_only("/health"), "/health");
    }
}
