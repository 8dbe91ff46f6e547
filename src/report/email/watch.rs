//! The alert of a performance watch that found queries slower after a
//! release: which release, which queries (id and normalized first line),
//! their mean time and shared buffers per call before and after.

use super::Mail;
use super::html::{Cell, Page, Tone};
use crate::watch::Watched;

/// The alert for `w` (whose `slower` is not empty).
pub fn watch_alert(w: &Watched) -> Mail {
    let n = w.slower.len();
    let queries = if n == 1 { "1 query".to_string() } else { format!("{n} queries") };
    let lead = format!(
        "After release {} of target {}, {queries} got slower by {}x or more (mean time per call, before the release \
         and in the watch period after it{}).",
        w.release_id,
        w.target,
        w.slower_ratio,
        w.after_to.map_or(String::new(), |t| format!(", until {}", t.format("%Y-%m-%d %H:%M:%S UTC")))
    );
    let next = format!(
        "Next: look at each query's plan on live (EXPLAIN), and at what the release changed: pgrehearse --target {} \
         releases {}",
        w.target, w.release_id
    );
    let mut text = format!("{lead}\n\n");
    for c in &w.slower {
        text.push_str(&format!(
            "- query {}: {:.3} ms -> {:.3} ms ({:.1}x), shared buffers/call {:.1} -> {:.1}, {} calls after\n  {}\n",
            c.queryid,
            c.mean_ms_before,
            c.mean_ms_after,
            c.ratio,
            c.shared_blks_per_call_before,
            c.shared_blks_per_call_after,
            c.calls_after,
            c.query
        ));
    }
    text.push_str(&format!("\n{next}\n"));
    let mut p = Page::new(&format!("Queries slower after release {}", w.release_id), "ALERT", Tone::Bad);
    p.para(&lead, Tone::Plain);
    let rows: Vec<Vec<Cell>> = w
        .slower
        .iter()
        .map(|c| {
            vec![
                Cell::mono(c.queryid.clone()),
                Cell::mono(c.query.clone()),
                Cell::new(format!("{:.3} ms", c.mean_ms_before)),
                Cell::tone(format!("{:.3} ms", c.mean_ms_after), Tone::Bad),
                Cell::new(format!("{:.1}x", c.ratio)),
                Cell::new(format!("{:.1} → {:.1}", c.shared_blks_per_call_before, c.shared_blks_per_call_after)),
            ]
        })
        .collect();
    p.table(&["query id", "query", "before", "after", "ratio", "buffers/call"], &rows);
    p.para(&next, Tone::Plain);
    Mail {
        subject: format!("ALERT {}: {queries} slower after release {}", w.target, w.release_id),
        text,
        html: p.finish(&super::render::footer()),
    }
}
