//! The endpoints the server renders itself (COMPAT.md §2): `/health`, `/healthz`, `/readyz`,
//! `/stats`, `/stats/cache` and `/metrics`. They need process state (uptime, readiness, store
//! statistics, metrics), which is why the core hands them back as
//! [`Action::Local`](dockerproxy_core::Action::Local).
//!
//! Health is a liveness check: it never depends on upstreams or disk.

use std::time::Duration;

use bytes::Bytes;
use dockerproxy_core::duration::format_go_duration;
use dockerproxy_core::exchange::LocalEndpoint;
use http::{HeaderMap, HeaderValue, StatusCode, header};

use crate::state::{self, ServerState};
use crate::store::{KindStats, StoreStats};

/// A locally rendered answer.
#[derive(Clone, Debug)]
pub struct LocalResponse {
    /// Status.
    pub status: StatusCode,
    /// Headers (framing added by hyper).
    pub headers: HeaderMap,
    /// Body (not sent for HEAD).
    pub body: Bytes,
}

/// Renders `endpoint`. Exposure (main/loopback/off) and the allowed methods were decided by the
/// core before it asked for the endpoint.
pub fn render(state: &ServerState, endpoint: LocalEndpoint) -> LocalResponse {
    match endpoint {
        LocalEndpoint::Health => json(StatusCode::OK, health_json(state)),
        LocalEndpoint::Ready => {
            if state.is_draining() {
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "{\"status\":\"not ready\",\"reason\":\"shutting down\"}\n".into(),
                )
            } else if let Some(reason) = &state.cache_disabled {
                json(
                    StatusCode::OK,
                    format!(
                        "{{\"status\":\"ready\",\"cache\":{}}}\n",
                        js(&format!("disabled: {reason}"))
                    ),
                )
            } else {
                json(StatusCode::OK, "{\"status\":\"ready\"}\n".into())
            }
        }
        LocalEndpoint::Stats => json(StatusCode::OK, stats_json(state, &state.store.stats())),
        LocalEndpoint::StatsCache => json(
            StatusCode::OK,
            stats_cache_json(state, &state.store.stats()),
        ),
        LocalEndpoint::Metrics => {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            let body = state.metrics.render(&state.store.stats());
            LocalResponse {
                status: StatusCode::OK,
                headers,
                body: Bytes::from(body),
            }
        }
    }
}

fn json(status: StatusCode, body: String) -> LocalResponse {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    LocalResponse {
        status,
        headers,
        body: Bytes::from(body),
    }
}

/// A JSON string literal.
fn js(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// Uptime as a Go duration string, rounded to milliseconds (`26h3m4.512s`).
fn uptime(state: &ServerState) -> String {
    let up = state.uptime();
    format_go_duration(Duration::from_millis(
        u64::try_from(up.as_millis()).unwrap_or(u64::MAX),
    ))
}

/// `{"status":"healthy","timestamp":…,"uptime":…,"version":…}` plus `\n`.
pub fn health_json(state: &ServerState) -> String {
    format!(
        "{{\"status\":\"healthy\",\"timestamp\":{},\"uptime\":{},\"version\":{}}}\n",
        js(&state::now().to_rfc3339()),
        js(&uptime(state)),
        js(dockerproxy_core::VERSION),
    )
}

fn kind_json(k: &KindStats) -> String {
    let hit_rate = if k.requests == 0 {
        "N/A".to_owned()
    } else {
        format!("{:.2}%", k.hits as f64 * 100.0 / k.requests as f64)
    };
    format!(
        "{{\"count\":{},\"requests\":{},\"hits\":{},\"misses\":{},\"hitRate\":{}}}",
        k.count,
        k.requests,
        k.hits,
        k.misses,
        js(&hit_rate)
    )
}

/// 1024-based size with two decimals (`1.50 GB`), `"<n> B"` below 1 KiB.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KB", "MB", "GB", "TB", "PB", "EB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS[unit])
}

/// The go-docker-proxy `"cache"` object.
fn cache_object(s: &StoreStats) -> String {
    let total = s.blob.size_bytes.saturating_add(s.manifest.size_bytes);
    let last_cleanup = match s.last_cleanup_ms {
        Some(ms) => dockerproxy_core::Timestamp::from_millis(ms).to_rfc3339(),
        None => "N/A".to_owned(),
    };
    let savings = if s.inflight_total == 0 {
        0.0
    } else {
        s.deduplicated as f64 * 100.0 / s.inflight_total as f64
    };
    let keys: Vec<String> = s.active_keys.iter().map(|k| js(k)).collect();
    format!(
        "{{\"blob\":{},\"manifest\":{},\"totalSize\":{total},\"totalSizeHuman\":{},\"deduplication\":{},\"lastCleanup\":{},\
         \"inflight\":{{\"totalRequests\":{},\"deduplicated\":{},\"savingsRate\":{},\"currentActive\":{},\"activeKeys\":[{}]}}}}",
        kind_json(&s.blob),
        kind_json(&s.manifest),
        js(&human_size(total)),
        s.deduplicated,
        js(&last_cleanup),
        s.inflight_total,
        s.deduplicated,
        serde_json::Value::from(savings),
        s.active_keys.len(),
        keys.join(","),
    )
}

/// `/stats`.
pub fn stats_json(state: &ServerState, s: &StoreStats) -> String {
    format!(
        "{{\"cache\":{},\"enabled\":{},\"uptime\":{}}}\n",
        cache_object(s),
        state.config.cache.enabled,
        js(&uptime(state))
    )
}

/// `/stats/cache`.
pub fn stats_cache_json(state: &ServerState, s: &StoreStats) -> String {
    let c = &state.config.cache;
    format!(
        "{{\"config\":{{\"directory\":{},\"manifestTTL\":{},\"blobTTL\":{},\"enabled\":{}}},\"stats\":{}}}\n",
        js(&c.dir),
        js(&format_go_duration(c.manifest_ttl)),
        js(&format_go_duration(c.blob_ttl)),
        c.enabled,
        cache_object(s)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1.00 KB");
        assert_eq!(human_size(1536 * 1024 * 1024), "1.50 GB");
        assert_eq!(human_size(u64::MAX), "16.00 EB");
    }

    #[test]
    fn kind_json_hit_rate() {
        assert_eq!(
            kind_json(&KindStats::default()),
            "{\"count\":0,\"requests\":0,\"hits\":0,\"misses\":0,\"hitRate\":\"N/A\"}"
        );
        let k = KindStats {
            requests: 3,
            hits: 1,
            misses: 2,
            ..KindStats::default()
        };
        assert!(kind_json(&k).ends_with("\"hitRate\":\"33.33%\"}"));
    }

    #[test]
    fn cache_object_is_valid_json_with_go_field_names() {
        let s = StoreStats {
            active_keys: vec!["docker.io/library/alpine:3\"x".into()],
            ..StoreStats::default()
        };
        let v: serde_json::Value = serde_json::from_str(&cache_object(&s)).unwrap();
        assert_eq!(v["totalSizeHuman"], "0 B");
        assert_eq!(v["lastCleanup"], "N/A");
        assert_eq!(v["inflight"]["currentActive"], 1);
        assert_eq!(
            v["inflight"]["activeKeys"][0],
            "docker.io/library/alpine:3\"x"
        );
        assert_eq!(v["blob"]["hitRate"], "N/A");
    }
}
