//! Prometheus metrics: a small registry of counters and gauges with bounded
//! labels, rendered in the text exposition format for `GET /metrics`.
//! Names follow STYLE.md (`pgrehearse_<noun>_<unit>`, counters end in
//! `_total`). Written by hand: the set is small and fixed, every value is
//! set from one place, and the exposition format is a few lines of text —
//! a metrics framework would add global state for no gain.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// One metric family: its help text, type and samples by label set.
#[derive(Debug)]
struct Family {
    help: &'static str,
    kind: Kind,
    samples: BTreeMap<Vec<(&'static str, String)>, f64>,
}

/// The registry. Cheap to share behind an `Arc`; every method locks briefly.
#[derive(Debug, Default)]
pub struct Metrics {
    families: Mutex<BTreeMap<&'static str, Family>>,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Label sets are kept sorted by name, so that one series has one key.
    fn key(labels: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        let mut key: Vec<(&'static str, String)> = labels.iter().map(|(k, v)| (*k, v.to_string())).collect();
        key.sort();
        key
    }

    fn with(&self, name: &'static str, help: &'static str, kind: Kind, f: impl FnOnce(&mut Family)) {
        let mut g = self.families.lock().unwrap_or_else(|e| e.into_inner());
        let fam = g.entry(name).or_insert_with(|| Family { help, kind, samples: BTreeMap::new() });
        f(fam);
    }

    /// Sets a gauge.
    pub fn set(&self, name: &'static str, help: &'static str, labels: &[(&'static str, &str)], value: f64) {
        let key = Metrics::key(labels);
        self.with(name, help, Kind::Gauge, |f| {
            f.samples.insert(key, value);
        });
    }

    /// Adds to a counter (created at 0).
    pub fn add(&self, name: &'static str, help: &'static str, labels: &[(&'static str, &str)], by: f64) {
        let key = Metrics::key(labels);
        self.with(name, help, Kind::Counter, |f| {
            *f.samples.entry(key).or_insert(0.0) += by;
        });
    }

    /// Makes a counter exist at 0 (so that it is exported before its first event).
    pub fn declare_counter(&self, name: &'static str, help: &'static str, labels: &[(&'static str, &str)]) {
        self.add(name, help, labels, 0.0);
    }

    /// A sample's current value.
    #[cfg(test)]
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let g = self.families.lock().unwrap_or_else(|e| e.into_inner());
        let fam = g.get(name)?;
        fam.samples
            .iter()
            .find(|(k, _)| k.len() == labels.len() && k.iter().zip(labels).all(|((a, b), (c, d))| a == c && b == d))
            .map(|(_, v)| *v)
    }

    /// The text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let g = self.families.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        for (name, fam) in g.iter() {
            let kind = match fam.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let _ = writeln!(out, "# HELP {name} {}", fam.help);
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in &fam.samples {
                out.push_str(name);
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
                let _ = writeln!(out, " {}", number(*value));
            }
        }
        out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let m = Metrics::new();
        m.add("pgrehearse_jobs_total", "Jobs run.", &[("job", "snapshot"), ("outcome", "ok")], 1.0);
        m.add("pgrehearse_jobs_total", "Jobs run.", &[("outcome", "ok"), ("job", "snapshot")], 1.0);
        m.set("pgrehearse_snapshot_bytes", "Stored bytes.", &[("target", "a\"b")], 1.5);
        let text = m.render();
        assert!(
            text.contains(
                "# TYPE pgrehearse_jobs_total counter\npgrehearse_jobs_total{job=\"snapshot\",outcome=\"ok\"} 2\n"
            ),
            "{text}"
        );
        assert!(text.contains("pgrehearse_snapshot_bytes{target=\"a\\\"b\"} 1.5\n"), "{text}");
        assert_eq!(m.get("pgrehearse_jobs_total", &[("job", "snapshot"), ("outcome", "ok")]), Some(2.0));
    }
}
