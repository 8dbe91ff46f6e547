//! Numbers for people: byte counts (`1.5 MiB`) and durations (`850 ms`,
//! `2.3 s`), the same in the CLI, reports, mails and the status page. A leaf.

/// `1536` → `1.5 KiB` (binary units; below 1 KiB, exact bytes).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

/// Milliseconds for people: `850 ms`, `2.3 s`.
pub fn secs(ms: u64) -> String {
    if ms < 1000 { format!("{ms} ms") } else { format!("{:.1} s", ms as f64 / 1000.0) }
}
