//! One job of the daemon for one target — snapshot (then retention),
//! verify, rehearse, release — run through the job runner as the CLI's
//! commands are (it finishes an interrupted release first and reports the
//! outcome by mail and metrics), then recorded in the job metrics.

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::{Shared, events};
use crate::config::Config;
use crate::error_class::Classify;
use crate::jobs;
use crate::state::Outcome;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Job {
    Snapshot,
    Verify,
    Rehearse,
    /// A rehearsal because the migration source changed (or its pending
    /// plan was never rehearsed): skipped when, by the time it runs, the
    /// plan already has a rehearsal — the run before may have read the new
    /// files already. Scheduled rehearsals always run (the data changes).
    RehearseChanged,
    Release,
    /// The performance watches of the target's releases whose period ended.
    Watch,
}

impl Job {
    pub fn name(self) -> &'static str {
        match self {
            Job::Snapshot => "snapshot",
            Job::Verify => "verify",
            Job::Rehearse | Job::RehearseChanged => "rehearse",
            Job::Release => "release",
            Job::Watch => "watch",
        }
    }
}

/// Memory a heavy job wants free before it starts (pg_restore, pg_dump and
/// the compression pipeline; staging space is checked by the job itself,
/// against the snapshot's size).
const MIN_AVAILABLE_MEMORY: u64 = 128 << 20;

/// Why the host cannot take `job` now, if it cannot.
fn host_short(job: Job) -> Option<String> {
    use sysinfo::{MemoryRefreshKind, RefreshKind, System};
    if matches!(job, Job::Release | Job::Watch) {
        // A release's own preflight decides (staging space for its restore);
        // a watch reads one view.
        return None;
    }
    let sys = System::new_with_specifics(RefreshKind::nothing().with_memory(MemoryRefreshKind::nothing().with_ram()));
    let available = sys.available_memory();
    (sys.total_memory() > 0 && available < MIN_AVAILABLE_MEMORY).then(|| {
        format!(
            "only {} MiB of memory available (at least {} MiB wanted); free memory or move the job",
            available >> 20,
            MIN_AVAILABLE_MEMORY >> 20
        )
    })
}

/// How a job ended, for metrics and the scheduler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    Ok,
    /// Ran and found problems (drill or rehearsal exit 2), or a release
    /// that failed and was recovered.
    Problems,
    /// A release refused by preflight: kind of refusal.
    Refused(String),
    /// Failed: the error's bounded kind and its message.
    Error {
        kind: &'static str,
        message: String,
    },
    /// Not started: the host is short of resources (why).
    Skipped(String),
    Cancelled,
}

impl Ended {
    pub(super) fn label(&self) -> &'static str {
        match self {
            Ended::Ok => "ok",
            Ended::Problems => "problems",
            Ended::Refused(_) => "refused",
            Ended::Error { .. } => "error",
            Ended::Skipped(_) => "skipped",
            Ended::Cancelled => "cancelled",
        }
    }

    /// The metrics' `error_kind`: what refused or failed the job, from a
    /// bounded set (`none` when nothing did).
    pub(super) fn error_kind(&self) -> &str {
        match self {
            Ended::Ok | Ended::Problems | Ended::Cancelled => "none",
            Ended::Refused(kind) => kind,
            Ended::Error { kind, .. } => kind,
            Ended::Skipped(_) => "host_short_of_memory",
        }
    }

    /// A failure of the daemon itself rather than of the job's work.
    fn internal(kind: &'static str, message: impl std::fmt::Display) -> Ended {
        Ended::Error { kind, message: message.to_string() }
    }
}

/// At start-up, finishes every target's release that a crash interrupted
/// (logged; retried before the target's next job if it fails), with the
/// stores of a job environment built for it.
pub async fn recover_at_start(
    shared: &Shared,
    config: &Arc<Config>,
    cancel: &CancellationToken,
) -> Result<(), crate::state::StateError> {
    let reporter = jobs::Reporter::daemon(config, shared.metrics.clone(), shared.digest.clone());
    let env = jobs::Env::open(config.clone(), reporter, cancel.clone(), crate::progress::Mode::Logs).await?;
    for t in &config.targets {
        match jobs::recover_interrupted(&env, t).await {
            Ok(Some(r)) => {
                tracing::warn!(target = %t.name, release = %r.record.id, outcome = %r.record.outcome, "Finished a release that was interrupted.")
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(target = %t.name, error = %e, "Cannot finish an interrupted release; will retry before the target's next job.")
            }
        }
    }
    Ok(())
}

/// Runs `job` on a thread of its own (see [`jobs::on_thread`]), and waits
/// for it.
pub async fn run_on_thread(
    shared: Arc<Shared>,
    config: Arc<Config>,
    target: String,
    job: Job,
    cancel: CancellationToken,
) -> Ended {
    let name = format!("{}-{target}", job.name());
    match jobs::on_thread(name, move || run(shared, config, target, job, cancel)).await {
        Ok(ended) => ended,
        Err(jobs::ThreadError::Runtime(e)) => {
            tracing::error!(error = %e, "Cannot start a runtime for the job.");
            Ended::internal("runtime_failed", e)
        }
        Err(jobs::ThreadError::Panicked) => Ended::internal("job_panicked", "the job's thread panicked"),
    }
}

/// Runs `job` for `target` with `config` through the job runner (which
/// reports it: mail, domain metrics), and records the run in the job
/// metrics.
async fn run(shared: Arc<Shared>, config: Arc<Config>, target: String, job: Job, cancel: CancellationToken) -> Ended {
    let Some(t) = config.targets.iter().find(|t| t.name == target) else {
        return Ended::internal("unknown_target", format!("no target named `{target}`"));
    };
    let m = &shared.metrics;
    let t0 = Instant::now();
    tracing::info!(target = %target, job = job.name(), "Job started.");
    let reporter = jobs::Reporter::daemon(&config, m.clone(), shared.digest.clone());
    if let Some(reason) = host_short(job) {
        reporter.alert(&target, job.name(), &reason).await;
        return finish(m, &target, job, Ended::Skipped(reason), t0);
    }
    let env = match jobs::Env::open(config.clone(), reporter, cancel, crate::progress::Mode::Logs).await {
        Ok(env) => env,
        Err(e) => {
            let reporter = jobs::Reporter::daemon(&config, m.clone(), shared.digest.clone());
            tracing::error!(target = %target, job = job.name(), error = %e, "Job failed.");
            reporter.alert(&target, job.name(), &e.to_string()).await;
            return finish(m, &target, job, Ended::Error { kind: e.kind(), message: e.to_string() }, t0);
        }
    };
    if job == Job::RehearseChanged && !plan_unrehearsed(&env.state, t).await {
        tracing::info!(target = %target, "The plan as it is now was rehearsed already: no new rehearsal.");
        return Ended::Ok;
    }
    if job == Job::Watch {
        return finish(m, &target, job, run_watches(&env, t).await, t0);
    }
    let work = match job {
        Job::Snapshot => jobs::Job::Snapshot { reason: crate::snapshot::Reason::Scheduled, then_prune: true },
        Job::Verify => jobs::Job::Verify { snapshot: "latest".into(), full: false, keep: false },
        Job::Rehearse | Job::RehearseChanged => jobs::Job::Rehearse(crate::rehearsal::Options {
            snapshot: crate::rehearsal::Choice::Latest,
            keep: false,
            reverse: true,
        }),
        Job::Release => jobs::Job::Apply,
        Job::Watch => unreachable!("run above"),
    };
    let ended = match jobs::run(&env, t, work).await {
        Ok(jobs::Done::Verified(r)) if !r.ok => Ended::Problems,
        Ok(jobs::Done::Rehearsed(r)) if !r.ok => Ended::Problems,
        Ok(jobs::Done::Released(rel)) => match rel.record.outcome {
            Outcome::Refused => Ended::Refused(rel.record.error_kind.map(|k| k.to_string()).unwrap_or_default()),
            Outcome::Applied | Outcome::NothingPending => Ended::Ok,
            _ => Ended::Problems,
        },
        Ok(_) => Ended::Ok,
        Err(e) if jobs::is_cancelled(&e) => Ended::Cancelled,
        Err(e) => Ended::Error { kind: jobs::error_kind(&e), message: e.to_string() },
    };
    finish(m, &target, job, ended, t0)
}

/// Runs every watch of `t` whose period ended (each through the job
/// runner, which reports it); problems when one found slower queries.
async fn run_watches(env: &jobs::Env, t: &crate::config::Target) -> Ended {
    let due = match env.state.watches_due(&t.name, chrono::Utc::now()).await {
        Ok(due) => due,
        Err(e) => return Ended::Error { kind: e.kind(), message: e.to_string() },
    };
    let mut ended = Ended::Ok;
    for id in due {
        match jobs::run(env, t, jobs::Job::Watch { release: id }).await {
            Ok(jobs::Done::Watched(w)) if !w.slower.is_empty() => ended = Ended::Problems,
            Ok(_) => {}
            Err(e) if jobs::is_cancelled(&e) => return Ended::Cancelled,
            Err(e) => return Ended::Error { kind: jobs::error_kind(&e), message: e.to_string() },
        }
    }
    ended
}

/// Records a finished run in the job metrics and the log.
fn finish(m: &crate::metrics::Metrics, target: &str, job: Job, ended: Ended, t0: Instant) -> Ended {
    events::job_finished(m, job, target, &ended, t0.elapsed());
    ended
}

/// Whether the target's pending plan (as the files and live's history
/// are now) has no rehearsal yet; `true` when that cannot be read, so the
/// rehearsal runs and reports the problem itself.
async fn plan_unrehearsed(state: &crate::state::State, t: &crate::config::Target) -> bool {
    super::unrehearsed(state, t).await.unwrap_or(true)
}
