//! The README as tests read it: its text and its metrics table, so every
//! documented metric can be checked against the daemon run that exports it
//! (most by `readme.rs`'s daemon, the performance watch's by
//! `release_watch.rs`, whose daemon is the one that watches a release).

use std::collections::{BTreeMap, BTreeSet};

/// A metric's type and label names.
pub type Shape = (String, BTreeSet<String>);

pub fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md")
}

/// The README's metrics table: name → (type, label names).
pub fn documented_metrics() -> BTreeMap<String, Shape> {
    let text = readme();
    let section = text.split("\n### Metrics\n").nth(1).expect("### Metrics section").split("\n#").next().unwrap();
    section
        .lines()
        .filter_map(|l| l.strip_prefix("| `pgrehearse_"))
        .map(|row| {
            let cols: Vec<&str> = row.split('|').map(str::trim).collect();
            let name = format!("pgrehearse_{}", cols[0].trim_end_matches('`'));
            let kind = cols.get(1).copied().unwrap_or_default().to_string();
            let labels = cols.get(2).copied().unwrap_or_default().split(['`', ',', ' ']).filter(|w| !w.is_empty());
            (name, (kind, labels.map(str::to_string).collect()))
        })
        .collect()
}

/// A `/metrics` body: name → (type, label names of its samples).
pub fn exported_metrics(body: &str) -> BTreeMap<String, Shape> {
    let mut out: BTreeMap<String, Shape> = BTreeMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            out.entry(name.to_string()).or_default().0 = kind.to_string();
        } else if !line.starts_with('#') && !line.is_empty() {
            let name = line.split(['{', ' ']).next().unwrap();
            let labels = line
                .split_once('{')
                .map(|(_, l)| l.split('}').next().unwrap_or_default())
                .unwrap_or_default()
                .split(',')
                .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.to_string()));
            out.entry(name.to_string()).or_default().1.extend(labels);
        }
    }
    out
}

/// The performance watch's metrics: exported only by a daemon that watched
/// a release, so `release_watch.rs` checks their rows.
pub fn is_watch_metric(name: &str) -> bool {
    name.starts_with("pgrehearse_watch_")
}
