//! Retention: which snapshots a policy keeps. Pure logic, no I/O.
//!
//! Semantics (as restic and pgBackRest users know them): walk the snapshots
//! newest first; `keep_last` keeps the N newest; `keep_daily` keeps the newest
//! snapshot of each of the N most recent UTC days that have one; weekly by ISO
//! week, monthly by calendar month. A snapshot kept by any rule is kept, and
//! the newest snapshot is always kept whatever the policy says.

use std::collections::HashSet;

use chrono::{DateTime, Datelike, Utc};

use crate::config::Retention;

/// A snapshot as retention sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: String,
    pub at: DateTime<Utc>,
    /// Passed a restore drill.
    pub verified: bool,
    /// Pinned (e.g. by a release that may need it for recovery).
    pub pinned: bool,
}

/// What the policy decided for one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub id: String,
    pub keep: bool,
    /// The rules that keep it (`last`, `daily`, `weekly`, `monthly`, `newest`).
    pub reasons: Vec<&'static str>,
}

/// One periodic rule: how many periods to keep, and those taken so far
/// (a period is `(year, day of year | ISO week | month)`).
struct Bucket {
    limit: u32,
    name: &'static str,
    seen: HashSet<(i32, u32)>,
}

/// Applies `policy` to snapshots in any order; returns the decisions newest
/// first.
pub fn apply(policy: &Retention, snapshots: &[Candidate]) -> Vec<Decision> {
    let mut sorted: Vec<&Candidate> = snapshots.iter().collect();
    sorted.sort_by(|a, b| b.at.cmp(&a.at).then_with(|| b.id.cmp(&a.id)));
    let mut verified_kept = 0u32;

    let mut buckets = [
        Bucket { limit: policy.keep_daily, name: "daily", seen: HashSet::new() },
        Bucket { limit: policy.keep_weekly, name: "weekly", seen: HashSet::new() },
        Bucket { limit: policy.keep_monthly, name: "monthly", seen: HashSet::new() },
    ];

    sorted
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let at = &c.at;
            let mut reasons = Vec::new();
            if c.pinned {
                reasons.push("pinned");
            }
            if i == 0 {
                reasons.push("newest");
            }
            if (i as u32) < policy.keep_last {
                reasons.push("last");
            }
            let periods =
                [(at.year(), at.ordinal()), (at.iso_week().year(), at.iso_week().week()), (at.year(), at.month())];
            for (b, period) in buckets.iter_mut().zip(periods) {
                // The first (newest) snapshot seen in a period represents it,
                // while fewer than `limit` periods have been taken.
                if !b.seen.contains(&period) && (b.seen.len() as u32) < b.limit {
                    b.seen.insert(period);
                    reasons.push(b.name);
                }
            }
            // Never fewer than `keep_verified_min` snapshots that passed a
            // restore drill: the newest verified ones are kept for that.
            if c.verified {
                if !reasons.is_empty() {
                    verified_kept += 1;
                } else if verified_kept < policy.keep_verified_min {
                    reasons.push("verified");
                    verified_kept += 1;
                }
            }
            Decision { id: c.id.clone(), keep: !reasons.is_empty(), reasons }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn kept(policy: Retention, snaps: &[(&str, &str)]) -> Vec<String> {
        let v: Vec<Candidate> = snaps
            .iter()
            .map(|(i, t)| Candidate {
                id: i.to_string(),
                at: at(t),
                verified: i.starts_with('v'),
                pinned: i.starts_with('p'),
            })
            .collect();
        apply(&policy, &v).into_iter().filter(|d| d.keep).map(|d| d.id).collect()
    }

    #[test]
    fn verified_minimum_and_pins_survive_any_policy() {
        let p = Retention { keep_last: 1, keep_daily: 0, keep_weekly: 0, keep_monthly: 0, keep_verified_min: 1 };
        let snaps = [
            ("p-old", "2026-01-01T00:00:00Z"),
            ("v-older", "2026-11-01T00:00:00Z"),
            ("v-old", "2026-11-10T00:00:00Z"),
            ("x", "2026-11-20T00:00:00Z"),
            ("y", "2026-11-21T00:00:00Z"),
        ];
        // y: newest; v-old: the newest verified one; p-old: pinned.
        assert_eq!(kept(p, &snaps), vec!["y", "v-old", "p-old"]);
        // A verified snapshot kept by another rule counts toward the minimum.
        let p2 = Retention { keep_last: 2, ..p };
        assert_eq!(
            kept(p2, &[("v1", "2026-11-01T00:00:00Z"), ("v2", "2026-11-02T00:00:00Z"), ("z", "2026-11-03T00:00:00Z")]),
            vec!["z", "v2"]
        );
    }

    #[test]
    fn daily_keeps_newest_of_each_day() {
        let p = Retention { keep_last: 1, keep_daily: 2, keep_weekly: 0, keep_monthly: 0, keep_verified_min: 0 };
        let snaps = [
            ("a", "2026-11-20T03:00:00Z"),
            ("b", "2026-11-20T15:00:00Z"),
            ("c", "2026-11-21T03:00:00Z"),
            ("d", "2026-11-22T03:00:00Z"),
            ("e", "2026-11-22T09:00:00Z"),
        ];
        assert_eq!(kept(p, &snaps), vec!["e", "c"]);
    }

    #[test]
    fn newest_is_kept_even_with_an_empty_policy() {
        let p = Retention { keep_last: 0, keep_daily: 0, keep_weekly: 0, keep_monthly: 0, keep_verified_min: 0 };
        assert_eq!(kept(p, &[("x", "2026-01-01T00:00:00Z"), ("y", "2026-01-02T00:00:00Z")]), vec!["y"]);
    }

    #[test]
    fn weekly_and_monthly_use_iso_weeks_and_months() {
        let p = Retention { keep_last: 0, keep_daily: 0, keep_weekly: 2, keep_monthly: 3, keep_verified_min: 0 };
        let snaps = [
            ("m9", "2026-09-15T00:00:00Z"),
            ("m10", "2026-10-15T00:00:00Z"),
            ("w1", "2026-11-02T00:00:00Z"),  // Monday, ISO week 45
            ("w1b", "2026-11-08T00:00:00Z"), // Sunday, still week 45
            ("w2", "2026-11-09T00:00:00Z"),  // week 46
        ];
        // weekly: w2 (wk46), w1b (wk45); monthly: w2 (Nov), m10 (Oct), m9 (Sep).
        assert_eq!(kept(p, &snaps), vec!["w2", "w1b", "m10", "m9"]);
    }
}
