//! The endpoints the component renders itself when the core hands back
//! [`Action::Local`](dockerproxy_core::Action::Local) (COMPAT.md §2).
//!
//! An instance is often created for one request, so there is no process state to report:
//!
//! | endpoint | answer |
//! |---|---|
//! | `/health`, `/healthz` | `200` `{"status":"healthy","timestamp":…,"uptime":"0s","version":…,"runtime":"wasi"}` |
//! | `/readyz` | `200` `{"status":"ready"}` (the configuration loaded, or this code is not reached) |
//! | `/stats`, `/stats/cache`, `/metrics` | `404` OCI error: no cache and no metrics in the component |
//!
//! The core has already applied exposure (`stats`, `metrics` settings) and the method check
//! before it asks for a local endpoint; HEAD gets the same status and headers with no body.

use bytes::Bytes;
use dockerproxy_core::exchange::LocalEndpoint;
use dockerproxy_core::oci_error::{ErrorCode, OciError};
use http::{HeaderMap, HeaderValue, StatusCode, header};

/// A locally rendered answer.
#[derive(Clone, Debug)]
pub struct LocalResponse {
    /// Status.
    pub status: StatusCode,
    /// Headers (without framing headers).
    pub headers: HeaderMap,
    /// Body (not sent for HEAD).
    pub body: Bytes,
}

/// Renders `endpoint` at `now_ms` (milliseconds since the Unix epoch).
pub fn render(endpoint: LocalEndpoint, now_ms: u64) -> LocalResponse {
    match endpoint {
        LocalEndpoint::Health => json(format!(
            "{{\"status\":\"healthy\",\"timestamp\":\"{}\",\"uptime\":\"0s\",\"version\":\"{}\",\"runtime\":\"wasi\"}}\n",
            dockerproxy_core::Timestamp::from_millis(now_ms).to_rfc3339(),
            dockerproxy_core::VERSION,
        )),
        LocalEndpoint::Ready => json("{\"status\":\"ready\"}\n".to_owned()),
        LocalEndpoint::Stats | LocalEndpoint::StatsCache | LocalEndpoint::Metrics => {
            let e = OciError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::Unsupported,
                "not available in the WASI component",
            );
            LocalResponse {
                status: e.status,
                headers: e.headers(),
                body: e.body(),
            }
        }
    }
}

fn json(body: String) -> LocalResponse {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    LocalResponse {
        status: StatusCode::OK,
        headers,
        body: Bytes::from(body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_reports_status_version_and_time() {
        let r = render(LocalEndpoint::Health, 1_709_210_096_789);
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.headers[header::CONTENT_TYPE], "application/json");
        let body = std::str::from_utf8(&r.body).unwrap();
        assert!(
            body.starts_with("{\"status\":\"healthy\",\"timestamp\":\"2024-02-29T12:34:56Z\""),
            "{body}"
        );
        assert!(
            body.contains(&format!("\"version\":\"{}\"", dockerproxy_core::VERSION)),
            "{body}"
        );
    }

    #[test]
    fn ready_and_the_stateful_endpoints() {
        let r = render(LocalEndpoint::Ready, 0);
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(&r.body[..], b"{\"status\":\"ready\"}\n");
        for e in [
            LocalEndpoint::Stats,
            LocalEndpoint::StatsCache,
            LocalEndpoint::Metrics,
        ] {
            let r = render(e, 0);
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{e:?}");
            assert!(
                std::str::from_utf8(&r.body)
                    .unwrap()
                    .contains("UNSUPPORTED")
            );
        }
    }
}
