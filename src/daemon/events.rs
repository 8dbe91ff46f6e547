//! The end of a daemon job as one event: it writes the log line and updates
//! the job metrics in one place, so their names and labels are written once
//! and a log line and its counter cannot disagree (vector's internal
//! events). Labels are bounded: `error_kind` comes from
//! [`crate::error_class::Classify::kind`] or a refusal's kind, never from
//! an error's text.

use std::time::Duration;

use super::jobs::{Ended, Job};
use crate::metrics::Metrics;

/// A job ended (or was skipped): its log line; `pgrehearse_job_runs_total`
/// by outcome and `error_kind`; and, for a job that ran, its duration and,
/// if it succeeded, the time of that success.
pub fn job_finished(m: &Metrics, job: Job, target: &str, ended: &Ended, elapsed: Duration) {
    let (outcome, error_kind) = (ended.label(), ended.error_kind());
    let elapsed_ms = elapsed.as_millis() as u64;
    let name = job.name();
    // A failure's ERROR line, with its message, is the reporter's (it also
    // mails the alert); this line closes every run with its bounded labels.
    match ended {
        Ended::Skipped(reason) => {
            tracing::warn!(target = %target, job = name, reason = %reason, "Job skipped: the host is short of resources.")
        }
        Ended::Ok | Ended::Problems | Ended::Refused(_) | Ended::Error { .. } | Ended::Cancelled => {
            tracing::info!(target = %target, job = name, outcome, error_kind, elapsed_ms, "Job finished.")
        }
    }
    m.add(
        "pgrehearse_job_runs_total",
        "Jobs run by the daemon, by outcome and error kind.",
        &[("job", name), ("target", target), ("outcome", outcome), ("error_kind", error_kind)],
        1.0,
    );
    if matches!(ended, Ended::Skipped(_)) {
        return;
    }
    let l = [("job", name), ("target", target)];
    m.set("pgrehearse_job_duration_seconds", "Duration of each job's latest run.", &l, elapsed.as_secs_f64());
    if *ended == Ended::Ok {
        let now = chrono::Utc::now().timestamp() as f64;
        m.set("pgrehearse_last_success_timestamp_seconds", "When each job last succeeded (Unix time).", &l, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_job_is_counted_with_its_error_kind() {
        let m = Metrics::new();
        let failed = Ended::Error { kind: "store_unavailable", message: "the store is unreachable".into() };
        job_finished(&m, Job::Snapshot, "app", &failed, Duration::from_millis(1500));
        job_finished(&m, Job::Snapshot, "app", &Ended::Ok, Duration::from_millis(900));
        let runs = |outcome, kind| {
            m.get(
                "pgrehearse_job_runs_total",
                &[("error_kind", kind), ("job", "snapshot"), ("outcome", outcome), ("target", "app")],
            )
        };
        assert_eq!(runs("error", "store_unavailable"), Some(1.0));
        assert_eq!(runs("ok", "none"), Some(1.0));
        assert_eq!(m.get("pgrehearse_job_duration_seconds", &[("job", "snapshot"), ("target", "app")]), Some(0.9));
    }

    #[test]
    fn a_skipped_job_is_counted_but_has_no_duration() {
        let m = Metrics::new();
        job_finished(&m, Job::Verify, "app", &Ended::Skipped("only 1 MiB".into()), Duration::ZERO);
        let labels =
            [("error_kind", "host_short_of_memory"), ("job", "verify"), ("outcome", "skipped"), ("target", "app")];
        assert_eq!(m.get("pgrehearse_job_runs_total", &labels), Some(1.0));
        assert_eq!(m.get("pgrehearse_job_duration_seconds", &[("job", "verify"), ("target", "app")]), None);
    }
}
