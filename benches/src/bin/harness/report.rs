//! Results: per-round values per contender, per-round ratios ours/peer (median, min, max), the
//! target checks, a Markdown table and one JSON line.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::contenders::Kind;

/// One measured quantity of a scenario, one value per round per contender.
#[derive(Debug, Clone)]
pub(crate) struct Metric {
    /// Scenario label.
    pub(crate) scenario: String,
    /// What is measured.
    pub(crate) name: String,
    /// Unit.
    pub(crate) unit: String,
    /// Whether ratios are meaningful (rates, times, sizes; not counts that may be 0).
    pub(crate) ratio: bool,
    /// Per-round values.
    pub(crate) values: BTreeMap<Kind, Vec<f64>>,
}

impl Metric {
    /// An empty metric.
    pub(crate) fn new(scenario: &str, name: &str, unit: &str, ratio: bool) -> Self {
        Self {
            scenario: scenario.to_owned(),
            name: name.to_owned(),
            unit: unit.to_owned(),
            ratio,
            values: BTreeMap::new(),
        }
    }

    /// Adds one round's value.
    pub(crate) fn push(&mut self, kind: Kind, v: f64) {
        self.values.entry(kind).or_default().push(v);
    }

    /// Median, min, max of a contender's values.
    pub(crate) fn stats(&self, kind: Kind) -> Option<Stats> {
        Stats::of(self.values.get(&kind)?)
    }

    /// Per-round ratio ours / peer.
    pub(crate) fn ratio_to(&self, peer: Kind) -> Option<Stats> {
        let ours = self.values.get(&Kind::Ours)?;
        let theirs = self.values.get(&peer)?;
        let r: Vec<f64> = ours
            .iter()
            .zip(theirs)
            .filter(|(_, t)| **t != 0.0)
            .map(|(o, t)| o / t)
            .collect();
        Stats::of(&r)
    }
}

/// Median and range.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stats {
    /// Median.
    pub(crate) median: f64,
    /// Minimum.
    pub(crate) min: f64,
    /// Maximum.
    pub(crate) max: f64,
}

impl Stats {
    /// Of a non-empty slice.
    pub(crate) fn of(v: &[f64]) -> Option<Self> {
        if v.is_empty() {
            return None;
        }
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Some(Self {
            median,
            min: s[0],
            max: s[n - 1],
        })
    }
}

/// A target of issue 7, evaluated.
#[derive(Debug, Clone)]
pub(crate) struct Check {
    /// Scenario.
    pub(crate) scenario: String,
    /// Target text.
    pub(crate) target: String,
    /// What was measured.
    pub(crate) measured: String,
    /// Whether it is met.
    pub(crate) met: bool,
}

fn num(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".to_owned()
    } else if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn cell(s: Option<Stats>, ratio: bool) -> String {
    match s {
        None => "–".to_owned(),
        Some(s) if s.min == s.max => {
            format!("{}{}", num(s.median), if ratio { "×" } else { "" })
        }
        Some(s) => format!(
            "{}{} ({}–{})",
            num(s.median),
            if ratio { "×" } else { "" },
            num(s.min),
            num(s.max)
        ),
    }
}

const PEERS: [Kind; 3] = [Kind::NginxCache, Kind::Dist, Kind::NginxStatic];

/// The Markdown tables: absolute values per contender, ratios, then the target checks.
pub(crate) fn markdown(metrics: &[Metric], checks: &[Check]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| scenario | metric | dockerproxy | nginx proxy_cache | distribution proxy | nginx static | ours / nginx-cache | ours / distribution | ours / nginx-static |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for m in metrics {
        let mut row = format!(
            "| {} | {} ({}) | {}",
            m.scenario,
            m.name,
            m.unit,
            cell(m.stats(Kind::Ours), false)
        );
        for p in PEERS {
            let _ = write!(row, " | {}", cell(m.stats(p), false));
        }
        for p in PEERS {
            let r = if m.ratio { m.ratio_to(p) } else { None };
            let _ = write!(row, " | {}", cell(r, true));
        }
        let _ = writeln!(out, "{row} |");
    }
    let _ = writeln!(
        out,
        "\n| scenario | target | measured | met |\n|---|---|---|---|"
    );
    for c in checks {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            c.scenario,
            c.target,
            c.measured,
            if c.met { "yes" } else { "**no**" }
        );
    }
    out
}

/// One JSON line with everything.
pub(crate) fn json_line(meta: serde_json::Value, metrics: &[Metric], checks: &[Check]) -> String {
    let stats = |s: Option<Stats>| {
        s.map_or(
            serde_json::Value::Null,
            |s| serde_json::json!({"median": s.median, "min": s.min, "max": s.max}),
        )
    };
    let ms: Vec<_> = metrics
        .iter()
        .map(|m| {
            let values: serde_json::Map<String, serde_json::Value> = m
                .values
                .iter()
                .map(|(k, v)| (k.name().to_owned(), serde_json::json!(v)))
                .collect();
            let ratios: serde_json::Map<String, serde_json::Value> = PEERS
                .iter()
                .filter(|_| m.ratio)
                .map(|p| (p.name().to_owned(), stats(m.ratio_to(*p))))
                .collect();
            serde_json::json!({
                "scenario": m.scenario, "metric": m.name, "unit": m.unit,
                "values": values, "ratio_ours_over": ratios,
            })
        })
        .collect();
    let cs: Vec<_> = checks
        .iter()
        .map(|c| {
            serde_json::json!({"scenario": c.scenario, "target": c.target,
                               "measured": c.measured, "met": c.met})
        })
        .collect();
    serde_json::json!({"meta": meta, "metrics": ms, "checks": cs}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_per_round() {
        let mut m = Metric::new("s", "rps", "req/s", true);
        for (o, p) in [(80.0, 100.0), (90.0, 100.0), (120.0, 100.0)] {
            m.push(Kind::Ours, o);
            m.push(Kind::NginxCache, p);
        }
        let r = m.ratio_to(Kind::NginxCache).expect("ratio");
        assert!((r.median - 0.9).abs() < 1e-9);
        assert!((r.min - 0.8).abs() < 1e-9);
        assert!((r.max - 1.2).abs() < 1e-9);
        assert!(m.ratio_to(Kind::Dist).is_none());
    }

    #[test]
    fn median_of_even_count() {
        let s = Stats::of(&[4.0, 1.0, 3.0, 2.0]).expect("stats");
        assert!((s.median - 2.5).abs() < 1e-9);
    }
}
