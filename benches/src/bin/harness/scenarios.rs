//! The six scenarios of issue 7. Each starts its contenders itself (restarting them where peak
//! memory is measured), alternates the contender order between rounds, and returns metrics
//! (one value per round per contender) and the target checks.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use dockerproxy_tests::content::{ALL_MANIFEST_TYPES, OCI_MANIFEST};

use crate::Bed;
use crate::contenders::{Contender, Kind, Opts, start};
use crate::load::{CurlResult, curl, curl_herd, wrk};
use crate::procs::loadavg;
use crate::report::{Check, Metric, Stats};

/// Scenario names, in run order.
pub(crate) const ALL: [&str; 6] = ["manifest", "blob1", "rss64", "cold50", "slow10", "tags"];

const ALL_KINDS: [Kind; 4] = [Kind::Ours, Kind::NginxCache, Kind::Dist, Kind::NginxStatic];
const CACHING: [Kind; 3] = [Kind::Ours, Kind::NginxCache, Kind::Dist];
const MIB: f64 = 1024.0 * 1024.0;
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

type Outcome = Result<(Vec<Metric>, Vec<Check>), String>;

/// Runs one scenario by name.
pub(crate) async fn run(name: &str, bed: &Bed) -> Outcome {
    match name {
        "manifest" => manifest(bed).await,
        "blob1" => blob1(bed).await,
        "rss64" => rss64(bed).await,
        "cold50" => cold50(bed).await,
        "slow10" => slow10(bed).await,
        "tags" => tags(bed).await,
        other => Err(format!("unknown scenario {other}")),
    }
}

/// Round `r`'s order: rotated by `r`, reversed on odd rounds.
fn order(r: usize, kinds: &[Kind]) -> Vec<Kind> {
    let mut v = kinds.to_vec();
    let n = v.len();
    v.rotate_left(r % n);
    if r % 2 == 1 {
        v.reverse();
    }
    v
}

static CACHE_SEQ: AtomicU32 = AtomicU32::new(0);

/// A new, empty cache directory.
fn fresh_cache(bed: &Bed, kind: Kind) -> PathBuf {
    let n = CACHE_SEQ.fetch_add(1, Ordering::Relaxed);
    let dir = bed.env.work.join(format!("cache-{}-{n}", kind.name()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn opts(bed: &Bed, cache_dir: PathBuf, slow: bool, ttl: u64) -> Opts {
    Opts {
        upstream: if slow {
            bed.relay.addr()
        } else {
            bed.upstream_addr()
        },
        manifest_ttl_secs: ttl,
        cache_dir,
    }
}

fn stop_and_clean(mut c: Contender, cache: &PathBuf) {
    c.server.stop();
    let _ = std::fs::remove_dir_all(cache);
}

fn blob_url(bed: &Bed, c: &Contender) -> String {
    format!("{}/v2/{}/blobs/{}", c.base, bed.repo, bed.blob_digest)
}

fn blob_path(bed: &Bed) -> String {
    format!("/v2/{}/blobs/{}", bed.repo, bed.blob_digest)
}

fn accept_all() -> Vec<String> {
    ALL_MANIFEST_TYPES
        .iter()
        .map(|t| format!("Accept: {t}"))
        .collect()
}

/// Upstream access-log entries so far.
fn upstream_log(bed: &Bed) -> Vec<(String, String)> {
    bed.upstream.upstream_requests()
}

/// Waits until the upstream log stops growing (300 ms without a new entry; at most 15 s).
async fn settle(bed: &Bed) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = upstream_log(bed).len();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = upstream_log(bed).len();
        if now == last || Instant::now() > deadline {
            return;
        }
        last = now;
    }
}

fn count(
    log: &[(String, String)],
    from: usize,
    method: &str,
    pred: impl Fn(&str) -> bool,
) -> usize {
    log.iter()
        .skip(from)
        .filter(|(m, p)| m == method && pred(p))
        .count()
}

fn check_ok(what: &str, kind: Kind, results: &[CurlResult], size: u64) -> Result<usize, String> {
    let bad = results
        .iter()
        .filter(|r| r.code != 200 || r.size != size)
        .count();
    if bad == results.len() {
        return Err(format!(
            "{what}: {}: every download failed (first: {:?})",
            kind.name(),
            results.first()
        ));
    }
    if bad > 0 {
        eprintln!(
            "  warning: {what}: {}: {bad} of {} downloads failed",
            kind.name(),
            results.len()
        );
    }
    Ok(bad)
}

fn med(m: &Metric, k: Kind) -> Option<Stats> {
    m.stats(k)
}

fn fmt_stats(s: Option<Stats>, unit: &str) -> String {
    s.map_or("–".to_owned(), |s| {
        format!("{:.3}{unit} (range {:.3}–{:.3})", s.median, s.min, s.max)
    })
}

// ---------------------------------------------------------------- manifest

async fn manifest(bed: &Bed) -> Outcome {
    let sc = "manifest hit, wrk -c64";
    let mut running = Vec::new();
    for kind in ALL_KINDS {
        let cache = fresh_cache(bed, kind);
        let c = start(kind, &bed.env, &opts(bed, cache, false, 600)).await?;
        running.push(c);
    }
    let digest_path = format!("/v2/{}/manifests/{}", bed.repo, bed.manifest.digest);
    let tag_path = format!("/v2/{}/manifests/{}", bed.repo, bed.tag);
    let accept = [format!("Accept: {OCI_MANIFEST}")];
    for c in &running {
        for p in [&digest_path, &tag_path] {
            let r = curl(&format!("{}{p}", c.base), &accept, 10, false).await?;
            if r.code != 200 || r.size != bed.manifest.size() {
                return Err(format!("{} warm-up {p}: {r:?}", c.kind.name()));
            }
        }
    }
    settle(bed).await;
    let mut rps = [
        Metric::new(sc, "by digest", "req/s", true),
        Metric::new(sc, "by tag", "req/s", true),
    ];
    let mut p99 = [
        Metric::new(sc, "by digest p99", "ms", true),
        Metric::new(sc, "by tag p99", "ms", true),
    ];
    let mut cpu = Metric::new(sc, "server CPU per request (digest)", "µs", true);
    let mut up = Metric::new(sc, "upstream requests during the tag run", "count", false);
    for r in 0..bed.args.rounds {
        for kind in order(r, &ALL_KINDS) {
            let Some(c) = running.iter().find(|c| c.kind == kind) else {
                continue;
            };
            for (i, path) in [&digest_path, &tag_path].into_iter().enumerate() {
                let before = upstream_log(bed).len();
                let cpu0 = c.server.cpu_seconds();
                let w = wrk(
                    &format!("{}{path}", c.base),
                    64,
                    bed.args.wrk_secs,
                    OCI_MANIFEST,
                )
                .await?;
                let cpu1 = c.server.cpu_seconds();
                if w.errors > 0 {
                    eprintln!("  warning: {} {path}: {} errors", kind.name(), w.errors);
                }
                rps[i].push(kind, w.rps);
                p99[i].push(kind, w.p99_ms);
                if i == 0 {
                    let reqs = w.rps * f64::from(bed.args.wrk_secs);
                    cpu.push(kind, (cpu1 - cpu0) * 1e6 / reqs.max(1.0));
                } else {
                    settle(bed).await;
                    up.push(kind, (upstream_log(bed).len() - before) as f64);
                }
                eprintln!(
                    "  round {r} {:<13} {:<6} {:>9.0} req/s p50 {:.2} ms p99 {:.2} ms (load {})",
                    kind.name(),
                    if i == 0 { "digest" } else { "tag" },
                    w.rps,
                    w.p50_ms,
                    w.p99_ms,
                    loadavg()
                );
            }
        }
    }
    drop(running);
    let mut checks = Vec::new();
    for i in 0..2 {
        let ratio = rps[i].ratio_to(Kind::NginxCache);
        checks.push(Check {
            scenario: format!("manifest {}", rps[i].name),
            target: "≥ 0.8× nginx proxy_cache req/s".into(),
            measured: fmt_stats(ratio, "×"),
            met: ratio.is_some_and(|s| s.median >= 0.8),
        });
        let p = med(&p99[i], Kind::Ours);
        checks.push(Check {
            scenario: format!("manifest {}", rps[i].name),
            target: "p99 ≤ 3 ms".into(),
            measured: fmt_stats(p, " ms"),
            met: p.is_some_and(|s| s.median <= 3.0),
        });
    }
    let [r0, r1] = rps;
    let [p0, p1] = p99;
    Ok((vec![r0, p0, r1, p1, cpu, up], checks))
}

// ---------------------------------------------------------------- blob1

async fn blob1(bed: &Bed) -> Outcome {
    const N: usize = 8;
    let sc = "warm blob, 1 stream";
    let mut running = Vec::new();
    for kind in ALL_KINDS {
        let cache = fresh_cache(bed, kind);
        let c = start(kind, &bed.env, &opts(bed, cache, false, 600)).await?;
        let r = curl(&blob_url(bed, &c), &[], 120, false).await?;
        check_ok("blob1 warm-up", kind, &[r], bed.blob_size)?;
        running.push(c);
    }
    settle(bed).await;
    let mut thr = Metric::new(sc, "throughput", "GB/s", true);
    let mut cpu = Metric::new(sc, "server CPU per GiB", "s", true);
    let mut ttfb = Metric::new(sc, "first byte", "ms", true);
    for r in 0..bed.args.rounds {
        for kind in order(r, &ALL_KINDS) {
            let Some(c) = running.iter().find(|c| c.kind == kind) else {
                continue;
            };
            let url = blob_url(bed, c);
            let cpu0 = c.server.cpu_seconds();
            let mut results = Vec::new();
            for _ in 0..N {
                results.push(curl(&url, &[], 120, false).await?);
            }
            let cpu1 = c.server.cpu_seconds();
            check_ok("blob1", kind, &results, bed.blob_size)?;
            let bytes: f64 = results.iter().map(|r| r.size as f64).sum();
            let secs: f64 = results.iter().map(|r| r.total).sum();
            let t: Vec<f64> = results.iter().map(|r| r.ttfb * 1000.0).collect();
            let t = Stats::of(&t).map_or(0.0, |s| s.median);
            thr.push(kind, bytes / secs.max(1e-9) / 1e9);
            cpu.push(kind, (cpu1 - cpu0) / (bytes / GIB));
            ttfb.push(kind, t);
            eprintln!(
                "  round {r} {:<13} {:.2} GB/s, CPU {:.3} s/GiB, TTFB {t:.2} ms (load {})",
                kind.name(),
                bytes / secs.max(1e-9) / 1e9,
                (cpu1 - cpu0) / (bytes / GIB),
                loadavg()
            );
        }
    }
    drop(running);
    let ratio = thr.ratio_to(Kind::NginxCache);
    let c = med(&cpu, Kind::Ours);
    let checks = vec![
        Check {
            scenario: "warm blob, 1 stream".into(),
            target: "≥ 0.9× nginx proxy_cache throughput".into(),
            measured: fmt_stats(ratio, "×"),
            met: ratio.is_some_and(|s| s.median >= 0.9),
        },
        Check {
            scenario: "warm blob, 1 stream".into(),
            target: "server CPU ≤ 0.5 s/GiB".into(),
            measured: fmt_stats(c, " s/GiB"),
            met: c.is_some_and(|s| s.median <= 0.5),
        },
        Check {
            scenario: "warm blob, 1 stream".into(),
            target: "stretch: server CPU ≤ 0.2 s/GiB".into(),
            measured: fmt_stats(c, " s/GiB"),
            met: c.is_some_and(|s| s.median <= 0.2),
        },
    ];
    Ok((vec![thr, cpu, ttfb], checks))
}

// ---------------------------------------------------------------- rss64

async fn rss64(bed: &Bed) -> Outcome {
    const N: usize = 64;
    let sc = "64 parallel warm blobs";
    // One warm cache per caching contender, filled once, then reused by each restart.
    let mut caches = Vec::new();
    for kind in ALL_KINDS {
        let cache = fresh_cache(bed, kind);
        if kind != Kind::NginxStatic {
            let mut c = start(kind, &bed.env, &opts(bed, cache.clone(), false, 600)).await?;
            let r = curl(&blob_url(bed, &c), &[], 120, false).await?;
            check_ok("rss64 fill", kind, &[r], bed.blob_size)?;
            settle(bed).await;
            c.server.stop();
        }
        caches.push((kind, cache));
    }
    let mut peak = Metric::new(sc, "peak RSS (VmHWM)", "MiB", true);
    let mut idle = Metric::new(sc, "RSS after start", "MiB", true);
    let mut agg = Metric::new(sc, "aggregate throughput", "GB/s", true);
    let mut up = Metric::new(sc, "upstream requests", "count", false);
    for r in 0..bed.args.heavy_rounds {
        for kind in order(r, &ALL_KINDS) {
            let Some((_, cache)) = caches.iter().find(|(k, _)| *k == kind) else {
                continue;
            };
            let c = start(kind, &bed.env, &opts(bed, cache.clone(), false, 600)).await?;
            let idle_kib = c.server.vm_hwm_kib();
            let before = upstream_log(bed).len();
            let results = curl_herd(&blob_url(bed, &c), &[], N, 300).await?;
            let peak_kib = c.server.vm_hwm_kib();
            check_ok("rss64", kind, &results, bed.blob_size)?;
            let wall = results.iter().map(|r| r.total).fold(0.0, f64::max);
            let bytes: f64 = results.iter().map(|r| r.size as f64).sum();
            peak.push(kind, peak_kib as f64 * 1024.0 / MIB);
            idle.push(kind, idle_kib as f64 * 1024.0 / MIB);
            agg.push(kind, bytes / wall.max(1e-9) / 1e9);
            up.push(kind, (upstream_log(bed).len() - before) as f64);
            eprintln!(
                "  round {r} {:<13} peak {:.1} MiB (idle {:.1}), {:.2} GB/s (load {})",
                kind.name(),
                peak_kib as f64 / 1024.0,
                idle_kib as f64 / 1024.0,
                bytes / wall.max(1e-9) / 1e9,
                loadavg()
            );
            drop(c);
        }
    }
    for (_, cache) in &caches {
        let _ = std::fs::remove_dir_all(cache);
    }
    let p = peak.values.get(&Kind::Ours).and_then(|v| Stats::of(v));
    let checks = vec![Check {
        scenario: sc.into(),
        target: "peak RSS ≤ 64 MiB".into(),
        measured: fmt_stats(p, " MiB"),
        met: p.is_some_and(|s| s.max <= 64.0),
    }];
    Ok((vec![peak, idle, agg, up], checks))
}

// ---------------------------------------------------------------- cold50

async fn cold50(bed: &Bed) -> Outcome {
    const N: usize = 50;
    let sc = "50 concurrent cold pulls";
    let mut gets = Metric::new(sc, "upstream blob GETs", "count", false);
    let mut heads = Metric::new(sc, "upstream blob HEADs", "count", false);
    let mut slowest = Metric::new(sc, "slowest first byte", "s", true);
    let mut wall = Metric::new(sc, "all done", "s", true);
    let mut failed = Metric::new(sc, "failed downloads", "count", false);
    // Control: the same herd again once the blob is cached. Its slowest first byte is what the
    // load core (50 curl processes receiving at once) adds by itself.
    let mut control = Metric::new(
        sc,
        "slowest first byte, same herd warm (control)",
        "s",
        true,
    );
    let path = blob_path(bed);
    for r in 0..bed.args.heavy_rounds {
        for kind in order(r, &CACHING) {
            let cache = fresh_cache(bed, kind);
            let c = start(kind, &bed.env, &opts(bed, cache.clone(), false, 600)).await?;
            settle(bed).await;
            let from = upstream_log(bed).len();
            let results = curl_herd(&blob_url(bed, &c), &[], N, 300).await?;
            settle(bed).await;
            let log = upstream_log(bed);
            let g = count(&log, from, "GET", |p| p == path);
            let h = count(&log, from, "HEAD", |p| p == path);
            let bad = check_ok("cold50", kind, &results, bed.blob_size)?;
            let s = results.iter().map(|r| r.ttfb).fold(0.0, f64::max);
            let w = results.iter().map(|r| r.total).fold(0.0, f64::max);
            gets.push(kind, g as f64);
            heads.push(kind, h as f64);
            slowest.push(kind, s);
            wall.push(kind, w);
            failed.push(kind, bad as f64);
            let warm = curl_herd(&blob_url(bed, &c), &[], N, 300).await?;
            check_ok("cold50 control", kind, &warm, bed.blob_size)?;
            let ws = warm.iter().map(|r| r.ttfb).fold(0.0, f64::max);
            control.push(kind, ws);
            eprintln!(
                "  round {r} {:<13} {g} GETs {h} HEADs, slowest TTFB {s:.3} s (warm control {ws:.3} s), done {w:.2} s, {bad} failed (load {})",
                kind.name(),
                loadavg()
            );
            stop_and_clean(c, &cache);
        }
    }
    let g = gets.values.get(&Kind::Ours).cloned().unwrap_or_default();
    let s = med(&slowest, Kind::Ours);
    let checks = vec![
        Check {
            scenario: sc.into(),
            target: "exactly 1 upstream GET".into(),
            measured: format!("{g:?} per round"),
            met: !g.is_empty() && g.iter().all(|v| *v == 1.0),
        },
        Check {
            scenario: sc.into(),
            target: "slowest first byte ≤ 0.2 s".into(),
            measured: fmt_stats(s, " s"),
            met: s.is_some_and(|s| s.median <= 0.2),
        },
    ];
    Ok((vec![gets, heads, slowest, control, wall, failed], checks))
}

// ---------------------------------------------------------------- slow10

async fn slow10(bed: &Bed) -> Outcome {
    const N: usize = 10;
    let sc = "slow link 100 MB/s +20 ms";
    let mut one = Metric::new(sc, "1 client", "s", true);
    let mut ten = Metric::new(sc, "10 clients, last done", "s", true);
    let mut ratio = Metric::new(sc, "10 clients / 1 client", "×", true);
    let mut gets = Metric::new(sc, "upstream blob GETs (10 clients)", "count", false);
    let path = blob_path(bed);
    for r in 0..bed.args.heavy_rounds {
        for kind in order(r, &CACHING) {
            let cache = fresh_cache(bed, kind);
            let c = start(kind, &bed.env, &opts(bed, cache.clone(), true, 600)).await?;
            let single = curl(&blob_url(bed, &c), &[], 300, false).await?;
            check_ok("slow10 single", kind, &[single], bed.blob_size)?;
            stop_and_clean(c, &cache);
            settle(bed).await;

            let cache = fresh_cache(bed, kind);
            let c = start(kind, &bed.env, &opts(bed, cache.clone(), true, 600)).await?;
            settle(bed).await;
            let from = upstream_log(bed).len();
            let results = curl_herd(&blob_url(bed, &c), &[], N, 300).await?;
            settle(bed).await;
            check_ok("slow10", kind, &results, bed.blob_size)?;
            let g = count(&upstream_log(bed), from, "GET", |p| p == path);
            let w = results.iter().map(|r| r.total).fold(0.0, f64::max);
            one.push(kind, single.total);
            ten.push(kind, w);
            ratio.push(kind, w / single.total.max(1e-9));
            gets.push(kind, g as f64);
            eprintln!(
                "  round {r} {:<13} 1 client {:.2} s, 10 clients {w:.2} s ({:.2}×), {g} GETs (load {})",
                kind.name(),
                single.total,
                w / single.total.max(1e-9),
                loadavg()
            );
            stop_and_clean(c, &cache);
        }
    }
    let s = med(&ratio, Kind::Ours);
    let checks = vec![Check {
        scenario: sc.into(),
        target: "10 clients all done within 1.1× one client's time".into(),
        measured: fmt_stats(s, "×"),
        met: s.is_some_and(|s| s.median <= 1.1),
    }];
    Ok((vec![one, ten, ratio, gets], checks))
}

// ---------------------------------------------------------------- tags

async fn tags(bed: &Bed) -> Outcome {
    const TTL: u64 = 2;
    const PULLS: usize = 10;
    let sc = "tag pulls, TTL 2 s";
    let mut within = Metric::new(
        sc,
        "upstream requests within TTL (20 pulls)",
        "count",
        false,
    );
    let mut heads = Metric::new(
        sc,
        "after TTL: upstream manifest HEADs (20 pulls, 2 tags)",
        "count",
        false,
    );
    let mut gets = Metric::new(sc, "after TTL: upstream manifest GETs", "count", false);
    let mut other = Metric::new(sc, "after TTL: other upstream requests", "count", false);
    let accept = accept_all();
    let manifests = format!("/v2/{}/manifests/", bed.small_repo);
    for r in 0..bed.args.heavy_rounds {
        for kind in order(r, &CACHING) {
            let cache = fresh_cache(bed, kind);
            let c = start(kind, &bed.env, &opts(bed, cache.clone(), false, TTL)).await?;
            let url = |t: &str| format!("{}/v2/{}/manifests/{t}", c.base, bed.small_repo);
            let warmed = Instant::now();
            for t in &bed.small_tags {
                let res = curl(&url(t), &accept, 10, false).await?;
                if res.code != 200 {
                    return Err(format!("tags warm-up {}: {res:?}", kind.name()));
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let from = upstream_log(bed).len();
            for _ in 0..PULLS {
                for t in &bed.small_tags {
                    curl(&url(t), &accept, 10, false).await?;
                }
            }
            let inside = warmed.elapsed();
            tokio::time::sleep(Duration::from_millis(200)).await;
            let w = upstream_log(bed).len() - from;
            if inside >= Duration::from_secs(TTL) {
                eprintln!("  warning: pulls within TTL took {inside:?}");
            }
            // Past the TTL: half the pulls at once, half one after another.
            let wait = Duration::from_secs(TTL + 1).saturating_sub(warmed.elapsed());
            tokio::time::sleep(wait).await;
            let from = upstream_log(bed).len();
            let mut tasks = Vec::new();
            for _ in 0..PULLS / 2 {
                for t in &bed.small_tags {
                    let u = url(t);
                    let a = accept.clone();
                    tasks.push(tokio::spawn(async move { curl(&u, &a, 10, false).await }));
                }
            }
            for t in tasks {
                let _ = t.await;
            }
            for _ in 0..PULLS / 2 {
                for t in &bed.small_tags {
                    curl(&url(t), &accept, 10, false).await?;
                }
            }
            settle(bed).await;
            let log = upstream_log(bed);
            let h = count(&log, from, "HEAD", |p| p.starts_with(&manifests));
            let g = count(&log, from, "GET", |p| p.starts_with(&manifests));
            let o = log.len() - from - h - g;
            within.push(kind, w as f64);
            heads.push(kind, h as f64);
            gets.push(kind, g as f64);
            other.push(kind, o as f64);
            eprintln!(
                "  round {r} {:<13} within TTL {w} upstream; after: {h} HEAD {g} GET {o} other (load {})",
                kind.name(),
                loadavg()
            );
            stop_and_clean(c, &cache);
        }
    }
    let tags = bed.small_tags.len() as f64;
    let wv = within.values.get(&Kind::Ours).cloned().unwrap_or_default();
    let hv = heads.values.get(&Kind::Ours).cloned().unwrap_or_default();
    let gv = gets.values.get(&Kind::Ours).cloned().unwrap_or_default();
    let ov = other.values.get(&Kind::Ours).cloned().unwrap_or_default();
    let checks = vec![
        Check {
            scenario: sc.into(),
            target: "within TTL: 0 upstream requests".into(),
            measured: format!("{wv:?} per round"),
            met: !wv.is_empty() && wv.iter().all(|v| *v == 0.0),
        },
        Check {
            scenario: sc.into(),
            target: "after TTL: 1 HEAD per tag, no GET".into(),
            measured: format!("HEADs {hv:?}, GETs {gv:?}, other {ov:?} per round ({tags} tags)"),
            met: !hv.is_empty() && hv.iter().all(|v| *v == tags) && gv.iter().all(|v| *v == 0.0),
        },
    ];
    Ok((vec![within, heads, gets, other], checks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_alternates() {
        let k = [Kind::Ours, Kind::NginxCache, Kind::Dist];
        assert_eq!(order(0, &k), vec![Kind::Ours, Kind::NginxCache, Kind::Dist]);
        assert_eq!(order(1, &k), vec![Kind::Ours, Kind::Dist, Kind::NginxCache]);
        assert_eq!(order(2, &k), vec![Kind::Dist, Kind::Ours, Kind::NginxCache]);
    }
}
