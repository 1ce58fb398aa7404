//! Logging: the tracing subscriber set-up and the one access-log line per request.
//!
//! Redaction (SECURITY.md §2.17): the access line carries the path without its query, the host
//! escaped and capped, and the client only as a short keyed hash. Header values are never logged,
//! so `Authorization`, cookies and tokens cannot appear; CR and LF in request text are escaped so
//! they cannot forge lines.

use std::sync::Arc;
use std::time::Instant;

use http::Method;
use tracing_subscriber::EnvFilter;

use crate::metrics::Source;
use crate::state::ServerState;

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
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Escapes control characters, quotes and non-ASCII, and caps the length, so request text is
/// safe on one log line.
pub fn sanitize(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.escape_debug() {
        if out.len() >= max {
            out.push('…');
            break;
        }
        out.push(c);
    }
    out
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
    host: String,
    path: String,
    client: String,
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
            .field("path", &self.path)
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
        peer: Option<std::net::IpAddr>,
    ) -> Self {
        let client = state.client_tag(peer);
        Self {
            state,
            method,
            host: sanitize(host, 256),
            path: sanitize(path_only(target), 1024),
            client,
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
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        self.state
            .metrics
            .request(&self.registry, self.kind, &self.method, self.status);
        let outcome = match &self.outcome {
            Outcome::Pending if self.bytes == 0 => "ok",
            Outcome::Pending => "client-gone",
            Outcome::Complete => "ok",
            Outcome::Aborted(reason) => reason.as_str(),
        };
        tracing::info!(
            method = %self.method,
            host = %self.host,
            path = %self.path,
            status = self.status,
            bytes = self.bytes,
            duration_ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX),
            x_cache = self.x_cache.unwrap_or("-"),
            registry = %self.registry,
            client = %self.client,
            outcome,
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
    fn path_only_drops_query() {
        assert_eq!(
            path_only("/v2/x/blobs/sha256:1?X-Amz-Signature=secret"),
            "/v2/x/blobs/sha256:1"
        );
        assert_eq!(path_only("/health"), "/health");
    }
}
