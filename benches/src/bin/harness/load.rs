//! Load tools, pinned to the load core: `wrk` for request rates and latency, `curl` for
//! downloads (one, sequential, or N at once) with first-byte and total times.

use std::time::Duration;

use tokio::process::Command;

/// Core for load tools.
pub(crate) const LOAD_CORE: &str = "1";

/// What one `wrk` run measured.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct WrkResult {
    /// Requests per second.
    pub(crate) rps: f64,
    /// 99th percentile latency, ms.
    pub(crate) p99_ms: f64,
    /// 50th percentile latency, ms.
    pub(crate) p50_ms: f64,
    /// Non-2xx/3xx responses plus socket errors.
    pub(crate) errors: u64,
}

/// `wrk -t1 -cN -dS --latency` with one `Accept` header.
pub(crate) async fn wrk(
    url: &str,
    connections: u32,
    seconds: u32,
    accept: &str,
) -> Result<WrkResult, String> {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", LOAD_CORE, "wrk", "-t1"])
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .args(["--latency", "--timeout", "10s", "-H"])
        .arg(format!("Accept: {accept}"))
        .arg(url)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(u64::from(seconds) + 30), cmd.output())
        .await
        .map_err(|_| "wrk timed out".to_owned())?
        .map_err(|e| format!("wrk: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    parse_wrk(&text).ok_or_else(|| format!("cannot parse wrk output:\n{text}"))
}

fn parse_latency_ms(v: &str) -> Option<f64> {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

fn parse_wrk(text: &str) -> Option<WrkResult> {
    let mut r = WrkResult::default();
    let mut have_rps = false;
    for line in text.lines() {
        let t = line.trim();
        let mut words = t.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Requests/sec:"), Some(v)) => {
                r.rps = v.parse().ok()?;
                have_rps = true;
            }
            (Some("99%"), Some(v)) => r.p99_ms = parse_latency_ms(v)?,
            (Some("50%"), Some(v)) => r.p50_ms = parse_latency_ms(v)?,
            (Some("Non-2xx"), _) => {
                r.errors += t
                    .rsplit(' ')
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
            }
            (Some("Socket"), _) => {
                // "Socket errors: connect 0, read 0, write 0, timeout 0"
                r.errors += t
                    .split(',')
                    .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    have_rps.then_some(r)
}

/// What one curl download measured.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CurlResult {
    /// HTTP status (0 on transport failure).
    pub(crate) code: u16,
    /// Body bytes received.
    pub(crate) size: u64,
    /// Seconds to the first byte.
    pub(crate) ttfb: f64,
    /// Seconds in total.
    pub(crate) total: f64,
}

/// Builds one curl command (`-o /dev/null`, `-w` timings) with extra headers and a time limit.
fn curl_cmd(url: &str, headers: &[String], max_secs: u64, head: bool) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", LOAD_CORE, "curl", "-s", "-o", "/dev/null"])
        .args(["--max-time", &max_secs.to_string()])
        .args([
            "-w",
            "%{http_code} %{size_download} %{time_starttransfer} %{time_total}",
        ]);
    if head {
        cmd.arg("-I");
    }
    for h in headers {
        cmd.arg("-H").arg(h);
    }
    cmd.arg(url).kill_on_drop(true);
    cmd
}

fn parse_curl(text: &str) -> CurlResult {
    let mut w = text.split_whitespace();
    let mut next = || w.next().unwrap_or("0");
    CurlResult {
        code: next().parse().unwrap_or(0),
        size: next().parse().unwrap_or(0),
        ttfb: next().parse().unwrap_or(0.0),
        total: next().parse().unwrap_or(0.0),
    }
}

/// One GET (or HEAD) with curl.
pub(crate) async fn curl(
    url: &str,
    headers: &[String],
    max_secs: u64,
    head: bool,
) -> Result<CurlResult, String> {
    let out = tokio::time::timeout(
        Duration::from_secs(max_secs + 10),
        curl_cmd(url, headers, max_secs, head).output(),
    )
    .await
    .map_err(|_| "curl timed out".to_owned())?
    .map_err(|e| format!("curl: {e}"))?;
    Ok(parse_curl(&String::from_utf8_lossy(&out.stdout)))
}

/// `n` GETs started at once; returns when all are done.
pub(crate) async fn curl_herd(
    url: &str,
    headers: &[String],
    n: usize,
    max_secs: u64,
) -> Result<Vec<CurlResult>, String> {
    let mut children = Vec::with_capacity(n);
    for _ in 0..n {
        let child = curl_cmd(url, headers, max_secs, false)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("curl: {e}"))?;
        children.push(child);
    }
    let waits = children.into_iter().map(|c| c.wait_with_output());
    let outs = tokio::time::timeout(Duration::from_secs(max_secs + 15), futures_join_all(waits))
        .await
        .map_err(|_| "curl herd timed out".to_owned())?;
    outs.into_iter()
        .map(|o| {
            o.map(|o| parse_curl(&String::from_utf8_lossy(&o.stdout)))
                .map_err(|e| format!("curl: {e}"))
        })
        .collect()
}

/// Awaits every future (spawned as tasks so they progress together), in order.
async fn futures_join_all<F>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let text = "Running 5s test @ http://127.0.0.1:1/v2/\n  1 threads and 64 connections\n\
  Latency Distribution\n     50%  412.00us\n     75%  500.00us\n     90%  0.90ms\n     99%    1.25ms\n\
  500000 requests in 5.00s, 100.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n\
  Non-2xx or 3xx responses: 7\nRequests/sec: 100000.50\nTransfer/sec:     20.00MB\n";
        let r = parse_wrk(text).expect("parse");
        assert!((r.rps - 100_000.5).abs() < 1e-6);
        assert!((r.p99_ms - 1.25).abs() < 1e-9);
        assert!((r.p50_ms - 0.412).abs() < 1e-9);
        assert_eq!(r.errors, 10);
    }

    #[test]
    fn parses_curl_line() {
        let r = parse_curl("200 268435456 0.000512 0.105000");
        assert_eq!(r.code, 200);
        assert_eq!(r.size, 268_435_456);
        assert!((r.ttfb - 0.000512).abs() < 1e-12);
    }
}
