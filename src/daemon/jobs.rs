//! One job of the daemon for one target — snapshot, verify, rehearse,
//! release — run through the same functions as the CLI commands, then
//! recorded in metrics and reported by email (an alert on every failure).

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::config::Config;
use crate::report::email;

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
}

impl Job {
    pub fn name(self) -> &'static str {
        match self {
            Job::Snapshot => "snapshot",
            Job::Verify => "verify",
            Job::Rehearse | Job::RehearseChanged => "rehearse",
            Job::Release => "release",
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
    if job == Job::Release {
        // A release's own preflight decides (staging space for its restore).
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
    Error,
    Cancelled,
}

impl Ended {
    fn label(&self) -> &'static str {
        match self {
            Ended::Ok => "ok",
            Ended::Problems => "problems",
            Ended::Refused(_) => "refused",
            Ended::Error => "error",
            Ended::Cancelled => "cancelled",
        }
    }
}

/// Runs `job` on a thread of its own with a single-threaded runtime, and
/// waits for it. (The domain functions are written for the CLI's
/// `block_on`; rustc cannot prove their deep async chains `Send` for a
/// multi-threaded `spawn` (rust-lang/rust#110338), and a job is one
/// long-running unit of work anyway.)
pub async fn run_on_thread(
    shared: Arc<Shared>,
    config: Arc<Config>,
    target: String,
    job: Job,
    cancel: CancellationToken,
) -> Ended {
    let span = tracing::Span::current();
    let handle = std::thread::Builder::new().name(format!("{}-{target}", job.name())).spawn(move || {
        let _entered = span.enter();
        match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt.block_on(run(shared, config, target, job, cancel)),
            Err(e) => {
                tracing::error!(error = %e, "Cannot start a runtime for the job.");
                Ended::Error
            }
        }
    });
    let Ok(handle) = handle else { return Ended::Error };
    tokio::task::spawn_blocking(move || handle.join().unwrap_or(Ended::Error)).await.unwrap_or(Ended::Error)
}

/// Runs `job` for `target` with `config`, records it, reports it.
async fn run(shared: Arc<Shared>, config: Arc<Config>, target: String, job: Job, cancel: CancellationToken) -> Ended {
    let Some(t) = config.targets.iter().find(|t| t.name == target) else { return Ended::Error };
    let m = &shared.metrics;
    let mailer = email::Mailer::new(config.email.clone(), m.clone());
    let t0 = Instant::now();
    tracing::info!(target = %target, job = job.name(), "Job started.");
    if let Some(reason) = host_short(job) {
        tracing::warn!(target = %target, job = job.name(), reason = %reason, "Job skipped: the host is short of resources.");
        mailer.send(email::alert(&target, job.name(), &reason)).await;
        m.add(
            "pgrehearse_job_runs_total",
            "Jobs run by the daemon, by outcome.",
            &[("job", job.name()), ("target", target.as_str()), ("outcome", "skipped")],
            1.0,
        );
        return Ended::Error;
    }
    if job == Job::RehearseChanged && !plan_unrehearsed(&config, t).await {
        tracing::info!(target = %target, "The plan as it is now was rehearsed already: no new rehearsal.");
        return Ended::Ok;
    }
    let ended = match job {
        Job::Snapshot => match crate::snapshot::take(&config, t, crate::snapshot::Reason::Scheduled, &cancel).await {
            Ok(o) => {
                let l = [("target", target.as_str())];
                m.set(
                    "pgrehearse_snapshot_bytes",
                    "Bytes of the latest snapshot, stored (compressed).",
                    &l,
                    o.bytes_stored as f64,
                );
                m.set(
                    "pgrehearse_snapshot_raw_bytes",
                    "Bytes pg_dump wrote for the latest snapshot.",
                    &l,
                    o.bytes_raw as f64,
                );
                m.set(
                    "pgrehearse_snapshot_duration_seconds",
                    "Duration of the latest snapshot.",
                    &l,
                    o.duration_ms as f64 / 1000.0,
                );
                Ended::Ok
            }
            Err(crate::snapshot::SnapshotError::Cancelled) => Ended::Cancelled,
            Err(e) => fail(&mailer, &target, job, &e.to_string()).await,
        },
        Job::Verify => {
            let verify = crate::drill::verify(&config, t, "latest", false, false);
            let r = tokio::select! { r = verify => Some(r), _ = cancel.cancelled() => None };
            match r {
                None => Ended::Cancelled,
                Some(Ok(report)) => {
                    let l = [("target", target.as_str())];
                    if let Some(ms) = report.restore_duration_ms {
                        m.set(
                            "pgrehearse_restore_duration_seconds",
                            "Restore time (RTO) measured by the latest drill.",
                            &l,
                            ms as f64 / 1000.0,
                        );
                    }
                    m.set(
                        "pgrehearse_drill_ok",
                        "1 when the latest restore drill passed.",
                        &l,
                        if report.ok { 1.0 } else { 0.0 },
                    );
                    mailer.send(email::drill(&report)).await;
                    if report.ok { Ended::Ok } else { Ended::Problems }
                }
                Some(Err(e)) => fail(&mailer, &target, job, &e.to_string()).await,
            }
        }
        Job::Rehearse | Job::RehearseChanged => {
            let opts =
                crate::rehearsal::Options { snapshot: crate::rehearsal::Choice::Latest, keep: false, reverse: true };
            match crate::rehearsal::rehearse(&config, t, &opts, &cancel).await {
                Ok(report) => {
                    let l = [("target", target.as_str())];
                    m.set(
                        "pgrehearse_rehearsal_ok",
                        "1 when the latest rehearsal passed.",
                        &l,
                        if report.ok { 1.0 } else { 0.0 },
                    );
                    for r in &report.migrations {
                        let ml = [("target", target.as_str()), ("version", r.version.as_str())];
                        m.set(
                            "pgrehearse_rehearsal_migration_duration_seconds",
                            "Duration of each migration in the latest rehearsal.",
                            &ml,
                            r.duration_ms as f64 / 1000.0,
                        );
                        let lock = r.locks.iter().map(|l| l.held_ms).max().unwrap_or(0);
                        m.set(
                            "pgrehearse_rehearsal_migration_lock_seconds",
                            "Longest lock held by each migration in the latest rehearsal.",
                            &ml,
                            lock as f64 / 1000.0,
                        );
                    }
                    mailer.send(email::rehearsal(&report)).await;
                    if report.ok { Ended::Ok } else { Ended::Problems }
                }
                Err(crate::rehearsal::RehearsalError::Cancelled) => Ended::Cancelled,
                Err(e) => fail(&mailer, &target, job, &e.to_string()).await,
            }
        }
        // Never cancelled: a release finishes or recovers.
        Job::Release => match crate::release::apply(&config, t).await {
            Ok(rel) => {
                let outcome = rel.record.outcome.clone();
                m.add(
                    "pgrehearse_release_outcomes_total",
                    "Releases by outcome.",
                    &[("target", target.as_str()), ("outcome", outcome.as_str())],
                    1.0,
                );
                match outcome.as_str() {
                    "refused" => Ended::Refused(rel.record.error_kind.clone().unwrap_or_default()),
                    "nothing_pending" => Ended::Ok,
                    o => {
                        mailer.send(email::release(&rel)).await;
                        if o == "applied" {
                            Ended::Ok
                        } else {
                            mailer
                                .send(email::alert(&target, "release", rel.record.reason.as_deref().unwrap_or(o)))
                                .await;
                            Ended::Problems
                        }
                    }
                }
            }
            Err(e) => fail(&mailer, &target, job, &e.to_string()).await,
        },
    };
    let secs = t0.elapsed().as_secs_f64();
    let l = [("job", job.name()), ("target", target.as_str())];
    m.add(
        "pgrehearse_job_runs_total",
        "Jobs run by the daemon, by outcome.",
        &[("job", job.name()), ("target", target.as_str()), ("outcome", ended.label())],
        1.0,
    );
    m.set("pgrehearse_job_duration_seconds", "Duration of each job's latest run.", &l, secs);
    if ended == Ended::Ok {
        let now = chrono::Utc::now().timestamp() as f64;
        m.set("pgrehearse_last_success_timestamp_seconds", "When each job last succeeded (Unix time).", &l, now);
    }
    tracing::info!(target = %target, job = job.name(), outcome = ended.label(), elapsed_ms = (secs * 1000.0) as u64, "Job finished.");
    ended
}

/// Whether the target's pending plan (as the files and live's history
/// are now) has no rehearsal yet; `true` when that cannot be read, so the
/// rehearsal runs and reports the problem itself.
async fn plan_unrehearsed(config: &Config, t: &crate::config::Target) -> bool {
    match crate::state::State::open(&config.state_dir).await {
        Ok(state) => super::unrehearsed(&state, t).await.unwrap_or(true),
        Err(_) => true,
    }
}

async fn fail(mailer: &email::Mailer, target: &str, job: Job, error: &str) -> Ended {
    tracing::error!(target = %target, job = job.name(), error = %error, "Job failed.");
    mailer.send(email::alert(target, job.name(), error)).await;
    Ended::Error
}
