//! Prometheus metrics (COMPAT.md §2 `/metrics`), rendered by hand in text format 0.0.4.
//!
//! Labels never hold a repository, tag, digest, credential or client address: only registry
//! names from the configuration, fixed kinds, normalised methods and status codes, so the
//! number of series stays bounded whatever clients send. The cache families read the store's
//! statistics at render time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::store::StoreStats;

/// Upper bounds (seconds) of the `upstream_response_seconds` buckets.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Clone, Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Debug, Default)]
struct Inner {
    requests: BTreeMap<(String, &'static str, &'static str, u16), u64>,
    cache_requests: BTreeMap<(String, &'static str, &'static str), u64>,
    upstream_requests: BTreeMap<(String, String), u64>,
    upstream_seconds: BTreeMap<String, Histogram>,
    ratelimit_remaining: BTreeMap<String, f64>,
    redirects: BTreeMap<String, u64>,
    stale_served: BTreeMap<String, u64>,
    integrity_failures: BTreeMap<(String, &'static str), u64>,
    fetch_cap_rejected: BTreeMap<String, u64>,
}

/// The process's metrics registry.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    bytes_from_upstream: AtomicU64,
    bytes_from_cache: AtomicU64,
}

/// Where response bytes came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Streamed from an upstream.
    Upstream,
    /// Read from the cache store.
    Cache,
    /// Generated locally (not counted in `bytes_sent_total`).
    Local,
}

/// A normalised method label (arbitrary client methods would make unbounded series).
pub fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain counters behind: still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a finished client request.
    pub fn request(&self, registry: &str, kind: &'static str, method: &http::Method, code: u16) {
        *self
            .lock()
            .requests
            .entry((registry.to_owned(), kind, method_label(method), code))
            .or_default() += 1;
    }

    /// Counts a cache decision (`hit`, `miss`, `bypass`).
    pub fn cache_request(&self, registry: &str, kind: &'static str, result: &'static str) {
        *self
            .lock()
            .cache_requests
            .entry((registry.to_owned(), kind, result))
            .or_default() += 1;
    }

    /// Adds bytes sent to clients.
    pub fn bytes_sent(&self, source: Source, n: u64) {
        match source {
            Source::Upstream => self.bytes_from_upstream.fetch_add(n, Ordering::Relaxed),
            Source::Cache => self.bytes_from_cache.fetch_add(n, Ordering::Relaxed),
            Source::Local => 0,
        };
    }

    /// Counts an upstream response head (`code` is the status, or `error` / `timeout`), with the
    /// time it took, and remembers the last `RateLimit-Remaining` seen.
    pub fn upstream(
        &self,
        registry: &str,
        code: &str,
        elapsed: Duration,
        ratelimit_remaining: Option<f64>,
    ) {
        let mut inner = self.lock();
        *inner
            .upstream_requests
            .entry((registry.to_owned(), code.to_owned()))
            .or_default() += 1;
        let h = inner
            .upstream_seconds
            .entry(registry.to_owned())
            .or_default();
        let secs = elapsed.as_secs_f64();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
        if let Some(v) = ratelimit_remaining {
            inner.ratelimit_remaining.insert(registry.to_owned(), v);
        }
    }

    /// Counts a followed redirect hop.
    pub fn redirect_followed(&self, registry: &str) {
        *self
            .lock()
            .redirects
            .entry(registry.to_owned())
            .or_default() += 1;
    }

    /// Counts a stale answer served on an upstream failure.
    pub fn stale_served(&self, registry: &str) {
        *self
            .lock()
            .stale_served
            .entry(registry.to_owned())
            .or_default() += 1;
    }

    /// Counts a digest or length mismatch.
    pub fn integrity_failure(&self, registry: &str, kind: &'static str) {
        *self
            .lock()
            .integrity_failures
            .entry((registry.to_owned(), kind))
            .or_default() += 1;
    }

    /// Counts a request refused with `503` because no upstream fetch slot freed in time
    /// (`limits.max_upstream_fetches`, SECURITY.md §2.14).
    pub fn fetch_cap_rejected(&self, registry: &str) {
        *self
            .lock()
            .fetch_cap_rejected
            .entry(registry.to_owned())
            .or_default() += 1;
    }

    /// Renders every family in Prometheus text format 0.0.4.
    pub fn render(&self, store: &StoreStats) -> String {
        let inner = self.lock();
        let mut out = String::with_capacity(4096);
        family(
            &mut out,
            "requests_total",
            "counter",
            "Client requests by registry, kind, method and status.",
        );
        for ((registry, kind, method, code), v) in &inner.requests {
            let code = code.to_string();
            sample(
                &mut out,
                "requests_total",
                &[
                    ("registry", registry),
                    ("kind", kind),
                    ("method", method),
                    ("code", &code),
                ],
                *v,
            );
        }
        family(
            &mut out,
            "cache_requests_total",
            "counter",
            "Cache decisions by registry, kind and result.",
        );
        for ((registry, kind, result), v) in &inner.cache_requests {
            sample(
                &mut out,
                "cache_requests_total",
                &[("registry", registry), ("kind", kind), ("result", result)],
                *v,
            );
        }
        family(
            &mut out,
            "bytes_sent_total",
            "counter",
            "Response body bytes sent to clients by source.",
        );
        sample(
            &mut out,
            "bytes_sent_total",
            &[("source", "cache")],
            self.bytes_from_cache.load(Ordering::Relaxed),
        );
        sample(
            &mut out,
            "bytes_sent_total",
            &[("source", "upstream")],
            self.bytes_from_upstream.load(Ordering::Relaxed),
        );
        family(
            &mut out,
            "cache_size_bytes",
            "gauge",
            "Bytes held by the cache store.",
        );
        sample(
            &mut out,
            "cache_size_bytes",
            &[("kind", "blob")],
            store.blob.size_bytes,
        );
        sample(
            &mut out,
            "cache_size_bytes",
            &[("kind", "manifest")],
            store.manifest.size_bytes,
        );
        family(
            &mut out,
            "cache_objects",
            "gauge",
            "Objects held by the cache store.",
        );
        sample(
            &mut out,
            "cache_objects",
            &[("kind", "blob")],
            store.blob.count,
        );
        sample(
            &mut out,
            "cache_objects",
            &[("kind", "manifest")],
            store.manifest.count,
        );
        family(
            &mut out,
            "cache_evictions_total",
            "counter",
            "Objects evicted from the cache store.",
        );
        sample(
            &mut out,
            "cache_evictions_total",
            &[("kind", "blob")],
            store.blob.evictions,
        );
        sample(
            &mut out,
            "cache_evictions_total",
            &[("kind", "manifest")],
            store.manifest.evictions,
        );
        family(
            &mut out,
            "upstream_requests_total",
            "counter",
            "Upstream requests by registry and status (or error, timeout).",
        );
        for ((registry, code), v) in &inner.upstream_requests {
            sample(
                &mut out,
                "upstream_requests_total",
                &[("registry", registry), ("code", code)],
                *v,
            );
        }
        family(
            &mut out,
            "upstream_response_seconds",
            "histogram",
            "Time to upstream response headers.",
        );
        for (registry, h) in &inner.upstream_seconds {
            for (bound, count) in BUCKETS.iter().zip(h.counts.iter()) {
                let le = bound.to_string();
                sample(
                    &mut out,
                    "upstream_response_seconds_bucket",
                    &[("registry", registry), ("le", &le)],
                    *count,
                );
            }
            sample(
                &mut out,
                "upstream_response_seconds_bucket",
                &[("registry", registry), ("le", "+Inf")],
                h.count,
            );
            let _ = writeln!(
                out,
                "dockerproxy_upstream_response_seconds_sum{{registry=\"{}\"}} {}",
                escape(registry),
                h.sum
            );
            sample(
                &mut out,
                "upstream_response_seconds_count",
                &[("registry", registry)],
                h.count,
            );
        }
        family(
            &mut out,
            "upstream_ratelimit_remaining",
            "gauge",
            "Last RateLimit-Remaining value seen per registry.",
        );
        for (registry, v) in &inner.ratelimit_remaining {
            let _ = writeln!(
                out,
                "dockerproxy_upstream_ratelimit_remaining{{registry=\"{}\"}} {v}",
                escape(registry)
            );
        }
        family(
            &mut out,
            "coalesced_requests_total",
            "counter",
            "Requests that joined an upstream fetch in flight.",
        );
        if store.deduplicated > 0 {
            sample(
                &mut out,
                "coalesced_requests_total",
                &[("kind", "blob")],
                store.deduplicated,
            );
        }
        family(
            &mut out,
            "redirects_followed_total",
            "counter",
            "Upstream redirects followed server-side.",
        );
        for (registry, v) in &inner.redirects {
            sample(
                &mut out,
                "redirects_followed_total",
                &[("registry", registry)],
                *v,
            );
        }
        family(
            &mut out,
            "stale_served_total",
            "counter",
            "Stale tags served on a transient upstream failure.",
        );
        for (registry, v) in &inner.stale_served {
            sample(
                &mut out,
                "stale_served_total",
                &[("registry", registry)],
                *v,
            );
        }
        family(
            &mut out,
            "integrity_failures_total",
            "counter",
            "Digest or length mismatches detected.",
        );
        for ((registry, kind), v) in &inner.integrity_failures {
            sample(
                &mut out,
                "integrity_failures_total",
                &[("registry", registry), ("kind", kind)],
                *v,
            );
        }
        family(
            &mut out,
            "upstream_fetch_rejected_total",
            "counter",
            "Requests answered 503 because the upstream fetch cap stayed full.",
        );
        for (registry, v) in &inner.fetch_cap_rejected {
            sample(
                &mut out,
                "upstream_fetch_rejected_total",
                &[("registry", registry)],
                *v,
            );
        }
        out
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP dockerproxy_{name} {help}");
    let _ = writeln!(out, "# TYPE dockerproxy_{name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: u64) {
    let _ = write!(out, "dockerproxy_{name}");
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape(v));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Escapes a label value (backslash, double quote, newline).
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_has_every_required_family() {
        let m = Metrics::default();
        let text = m.render(&StoreStats::default());
        for fam in [
            "requests_total",
            "cache_requests_total",
            "bytes_sent_total",
            "cache_size_bytes",
            "cache_objects",
            "cache_evictions_total",
            "upstream_requests_total",
            "upstream_response_seconds",
            "upstream_ratelimit_remaining",
            "coalesced_requests_total",
            "redirects_followed_total",
            "stale_served_total",
            "integrity_failures_total",
            "upstream_fetch_rejected_total",
        ] {
            assert!(
                text.contains(&format!("# TYPE dockerproxy_{fam} ")),
                "missing {fam}"
            );
        }
    }

    #[test]
    fn counters_histogram_and_gauge_render() {
        let m = Metrics::default();
        m.request("docker.io", "blob", &http::Method::GET, 200);
        m.request("docker.io", "blob", &http::Method::GET, 200);
        m.request(
            "docker.io",
            "blob",
            &http::Method::from_bytes(b"BREW").unwrap(),
            405,
        );
        m.upstream("docker.io", "200", Duration::from_millis(30), Some(97.0));
        m.bytes_sent(Source::Upstream, 1234);
        m.integrity_failure("ghcr.io", "blob");
        let text = m.render(&StoreStats::default());
        assert!(text.contains("dockerproxy_requests_total{registry=\"docker.io\",kind=\"blob\",method=\"GET\",code=\"200\"} 2\n"), "{text}");
        assert!(
            text.contains("method=\"other\",code=\"405\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("dockerproxy_upstream_response_seconds_bucket{registry=\"docker.io\",le=\"0.025\"} 0\n"), "{text}");
        assert!(text.contains("dockerproxy_upstream_response_seconds_bucket{registry=\"docker.io\",le=\"0.05\"} 1\n"), "{text}");
        assert!(
            text.contains(
                "dockerproxy_upstream_response_seconds_count{registry=\"docker.io\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("dockerproxy_upstream_ratelimit_remaining{registry=\"docker.io\"} 97\n"),
            "{text}"
        );
        assert!(
            text.contains("dockerproxy_bytes_sent_total{source=\"upstream\"} 1234\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "dockerproxy_integrity_failures_total{registry=\"ghcr.io\",kind=\"blob\"} 1\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
