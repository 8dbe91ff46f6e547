//! The job runner: the one way every edge (the CLI's commands, the
//! daemon's scheduled jobs, the API's approvals, the demo) runs an
//! operation on a target.
//!
//! An edge builds an [`Env`] once — the configuration, the state store
//! (opened here, dead snapshot runs reaped), the object store (opened on
//! first use, incomplete uploads swept), a clock, a [`Reporter`], a
//! cancellation token and the progress mode — and calls [`run`] for each
//! job. The operations open neither store: they are handed the ones of the
//! `Env`. An edge on a multi-threaded runtime runs a job [`on_thread`].
//! `run` finishes a release of the target that a crash interrupted
//! (before every job that acts on the target; `apply` does it itself and
//! reports it), opens the job's span (`run_id`, `target`, `job`), runs the
//! operation, applies the retention policy after a scheduled snapshot, and
//! hands the outcome to the reporter (mail and metrics in the daemon, mail
//! in the CLI).
//!
//! Every job that talks to PostgreSQL runs under the stall watchdog
//! (`pg::stall`): when a server it uses stops answering, the job is
//! stopped — told to cancel and given `stall_timeout` to clean up (kill
//! pg_dump, abort the upload), then dropped (its sessions close, its tools
//! are killed) — and fails with [`pg::stall::Stalled`]. A release is never
//! cancelled: it is dropped at once and recorded `interrupted`, as for a
//! crash, so the next command on the target finishes it from its journal
//! once the server answers again.
//!
//! Errors keep their domain type (the first cause in the chain), so the
//! edge classifies them as before.

mod error_chain;
mod reporter;
mod thread;

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Target};
use crate::pg::{self, ConnUrl};
use crate::snapshot::{self, Reason};
use crate::state::State;
use crate::store::{self, Store};
use crate::{drill, rehearsal, release, restore, status, watch};

#[cfg(test)]
pub use error_chain::DOMAIN_ERRORS;
pub use error_chain::{classified, error_kind};
pub use reporter::Reporter;
pub use thread::{ThreadError, on_thread};

/// Where "now" comes from (the system clock outside tests).
#[derive(Debug, Clone, Copy)]
pub struct Clock(fn() -> DateTime<Utc>);

impl Clock {
    pub fn system() -> Clock {
        Clock(Utc::now)
    }

    pub fn now(&self) -> DateTime<Utc> {
        (self.0)()
    }
}

/// What every job runs with; built once at the edge.
pub struct Env {
    pub config: Arc<Config>,
    pub state: State,
    store: OnceCell<Box<dyn Store>>,
    pub clock: Clock,
    pub reporter: Reporter,
    pub cancel: CancellationToken,
    /// How progress is shown (applied process-wide by [`run`]).
    pub progress: crate::progress::Mode,
}

impl Env {
    /// Opens the state store (reaping snapshot runs whose process died);
    /// the object store is opened on first use.
    pub async fn open(
        config: Arc<Config>,
        reporter: Reporter,
        cancel: CancellationToken,
        progress: crate::progress::Mode,
    ) -> Result<Env, crate::state::StateError> {
        let state = State::open(&config.state_dir).await?;
        for id in state.reap_dead_runs().await? {
            tracing::warn!(snapshot = %id, "A snapshot run died before finishing; marked failed.");
        }
        Ok(Env { config, state, store: OnceCell::new(), clock: Clock::system(), reporter, cancel, progress })
    }

    /// The object store, opened (and incomplete uploads of dead runs
    /// aborted) on first use.
    pub async fn store(&self) -> Result<&dyn Store, store::StoreError> {
        let s = self
            .store
            .get_or_try_init(|| async {
                let s = store::open(&self.config.store).await?;
                crate::snapshot::sweep::sweep(s.as_ref(), &self.state, self.config.store.abort_incomplete_after)
                    .await?;
                Ok::<_, store::StoreError>(s)
            })
            .await?;
        Ok(s.as_ref())
    }
}

/// One operation on one target.
#[derive(Debug, Clone)]
pub enum Job {
    /// Take a snapshot; `then_prune` applies the retention policy after it
    /// (the daemon's scheduled snapshots).
    Snapshot {
        reason: Reason,
        then_prune: bool,
    },
    Snapshots,
    Download {
        snapshot: String,
        output: PathBuf,
        identity: Option<PathBuf>,
    },
    Verify {
        snapshot: String,
        full: bool,
        keep: bool,
    },
    RestoreAs {
        snapshot: String,
        name: String,
    },
    ReplaceLive {
        snapshot: String,
        yes: bool,
    },
    Status,
    Rehearse(rehearsal::Options),
    Approve {
        plan: String,
        by: Option<String>,
        note: Option<String>,
    },
    /// Release the approved plan (signals do not interrupt it).
    Apply,
    Releases {
        id: Option<String>,
    },
    /// The performance watch of a release: waits for the end of its
    /// period, compares, keeps and reports the result.
    Watch {
        release: String,
    },
    Prune {
        dry_run: bool,
    },
    /// Put a restored release's stranded writes back (`--apply`) or write them as SQL.
    Salvage {
        release: String,
        options: release::salvage::Options,
    },
}

impl Job {
    /// The job's name in logs, metrics and mail.
    pub fn name(&self) -> &'static str {
        match self {
            Job::Snapshot { .. } => "snapshot",
            Job::Snapshots => "snapshots",
            Job::Download { .. } => "download",
            Job::Verify { .. } => "verify",
            Job::RestoreAs { .. } | Job::ReplaceLive { .. } => "restore",
            Job::Status => "status",
            Job::Rehearse(_) => "rehearse",
            Job::Approve { .. } => "approve",
            Job::Apply => "release",
            Job::Releases { .. } => "releases",
            Job::Watch { .. } => "watch",
            Job::Prune { .. } => "prune",
            Job::Salvage { .. } => "salvage",
        }
    }

    /// Whether an interrupted release is finished before this job: not
    /// for reading the catalog or the release records (they must show an
    /// interrupted release as it is), nor for `apply`, which finishes it
    /// itself and reports it.
    fn recovers_first(&self) -> bool {
        !matches!(self, Job::Apply | Job::Releases { .. } | Job::Snapshots | Job::Download { .. })
    }

    /// The PostgreSQL servers the job works on, which the stall watchdog
    /// watches (none for the jobs that read only the stores).
    fn servers(&self, target: &Target) -> Vec<ConnUrl> {
        let live = || target.live_url.clone();
        let shadow = || target.shadow_url.clone().into_iter();
        match self {
            Job::Snapshot { .. } | Job::Status | Job::Apply | Job::Salvage { .. } | Job::Watch { .. } => vec![live()],
            Job::RestoreAs { .. } | Job::ReplaceLive { .. } => vec![target.admin().with_database("postgres")],
            Job::Verify { .. } => shadow().collect(),
            Job::Rehearse(_) => std::iter::once(live()).chain(shadow()).collect(),
            Job::Snapshots | Job::Download { .. } | Job::Approve { .. } | Job::Releases { .. } | Job::Prune { .. } => {
                Vec::new()
            }
        }
    }
}

/// What a job produced.
#[derive(Debug)]
pub enum Done {
    Snapshot(snapshot::Outcome),
    Snapshots(Vec<snapshot::catalog::Listed>),
    Downloaded(snapshot::catalog::Downloaded),
    Verified(drill::Report),
    Restored(restore::Restored),
    Status(Box<status::Status>),
    Rehearsed(Box<rehearsal::Report>),
    Approved(release::approval::Approved),
    Released(Box<release::Release>),
    Releases(Vec<release::Release>),
    Watched(Box<watch::Watched>),
    Pruned(snapshot::catalog::PruneOutcome),
    Salvaged(Box<release::salvage::Salvage>),
}

/// Runs `job` on `target` in `env`: finishes an interrupted release first
/// (see [`Job`]), runs the operation in the job's span, and reports the
/// outcome through `env.reporter`.
pub async fn run(env: &Env, target: &Target, job: Job) -> anyhow::Result<Done> {
    let run_id = snapshot::new_id(env.clock.now());
    let span = tracing::info_span!("job", run_id = %run_id, target = %target.name, job = job.name());
    tracing::Instrument::instrument(run_in_span(env, target, job), span).await
}

async fn run_in_span(env: &Env, target: &Target, job: Job) -> anyhow::Result<Done> {
    crate::progress::set_mode(env.progress);
    pg::stall::set_timeout(env.config.stall_timeout);
    let name = job.name();
    if job.recovers_first()
        && let Some(r) = recover_interrupted(env, target).await?
    {
        tracing::warn!(release = %r.record.id, outcome = %r.record.outcome, "Finished a release that was interrupted.");
        env.reporter.report(env, &target.name, "recovery", &Ok(Done::Released(Box::new(r)))).await;
    }
    let then_prune = matches!(job, Job::Snapshot { then_prune: true, .. });
    let result = watched(env, target, job).await;
    env.reporter.report(env, &target.name, name, &result).await;
    if then_prune && result.is_ok() {
        prune_after_snapshot(env, target).await;
    }
    result
}

/// Finishes a release of `target` that a crash interrupted, if there is one
/// (see [`release::recover_interrupted`]), with the stores of `env`; the
/// object store is opened only when there is one to finish.
pub async fn recover_interrupted(
    env: &Env,
    target: &Target,
) -> Result<Option<release::Release>, release::ReleaseError> {
    release::recover_interrupted(&env.config, &env.state, async || env.store().await, target).await
}

/// The retention policy after a scheduled snapshot, with the same rules as
/// `pgrehearse prune` (never while the latest run failed; the newest,
/// pinned and last verified snapshots are always kept). A failure is
/// alerted; the snapshot stands.
async fn prune_after_snapshot(env: &Env, target: &Target) {
    let pruned = async {
        let store = env.store().await.map_err(snapshot::catalog::CatalogError::from)?;
        snapshot::catalog::prune(&env.state, store, target, false).await
    };
    match pruned.await {
        Ok(p) => {
            tracing::info!(deleted = p.deleted.len(), kept = p.kept.len(), "Retention applied after the snapshot.")
        }
        Err(e) => {
            let e = anyhow::Error::from(e);
            tracing::error!(error = %e, "Cannot apply the retention policy after the snapshot.");
            env.reporter.report(env, &target.name, "prune", &Err(e)).await;
        }
    }
}

/// [`operate`] under the stall watchdog (see the module doc).
async fn watched(env: &Env, target: &Target, job: Job) -> anyhow::Result<Done> {
    let servers = job.servers(target);
    if servers.is_empty() {
        return operate(env, target, job, &env.cancel).await;
    }
    let (name, is_release) = (job.name(), matches!(job, Job::Apply));
    let limit = env.config.stall_timeout;
    let stop = env.cancel.child_token();
    let op = operate(env, target, job, &stop);
    tokio::pin!(op);
    let stalled = tokio::select! {
        r = &mut op => return r,
        s = pg::stall::watch(&servers, limit, name) => s,
    };
    if !is_release {
        stop.cancel();
        match tokio::time::timeout(limit, &mut op).await {
            // It finished before it saw the cancellation: the server came back.
            Ok(Ok(done)) => return Ok(done),
            Ok(Err(_)) => {}
            Err(_) => tracing::warn!(
                "The stalled job did not stop within stall_timeout; dropped (its sessions close, its tools are killed)."
            ),
        }
    }
    drop(op);
    if is_release {
        release::suspend_stalled(&env.state, target, &stalled.to_string()).await;
    }
    Err(stalled.into())
}

/// The operation itself, with the state store and the object store of
/// `env` (the object store opened only by the jobs that use it); `cancel`
/// stops the operations that can be stopped.
async fn operate(env: &Env, target: &Target, job: Job, cancel: &CancellationToken) -> anyhow::Result<Done> {
    let config = env.config.as_ref();
    let state = &env.state;
    Ok(match job {
        Job::Snapshot { reason, .. } => {
            let store = env.store().await?;
            Done::Snapshot(snapshot::take(config, state, store, target, reason, cancel).await?)
        }
        Job::Snapshots => {
            let store = env.store().await?;
            Done::Snapshots(snapshot::catalog::list(store, target).await?)
        }
        Job::Download { snapshot, output, identity } => {
            let store = env.store().await?;
            Done::Downloaded(
                snapshot::catalog::download(config, store, target, &snapshot, &output, identity.as_deref()).await?,
            )
        }
        Job::Verify { snapshot, full, keep } => {
            let store = env.store().await?;
            let verify = drill::verify(config, state, store, target, &snapshot, full, keep);
            tokio::select! {
                r = verify => Done::Verified(r?),
                _ = cancel.cancelled() => return Err(Cancelled.into()),
            }
        }
        Job::RestoreAs { snapshot, name } => {
            let store = env.store().await?;
            Done::Restored(restore::restore_as(config, store, target, &snapshot, &name).await?)
        }
        Job::ReplaceLive { snapshot, yes } => {
            let store = env.store().await?;
            Done::Restored(restore::replace_live(config, store, target, &snapshot, yes).await?)
        }
        Job::Status => {
            let store = env.store().await.map_err(snapshot::SnapshotError::from).map_err(status::StatusError::from)?;
            Done::Status(Box::new(status::status(&env.state, store, target).await?))
        }
        Job::Rehearse(opts) => {
            let store = env.store().await?;
            Done::Rehearsed(Box::new(rehearsal::rehearse(config, state, store, target, &opts, cancel).await?))
        }
        Job::Approve { plan, by, note } => {
            // Stopped by the token (the API's deadline) before it is recorded, nothing is approved.
            let approving = release::approval::approve(state, target, &plan, by.as_deref(), note.as_deref());
            tokio::select! {
                r = approving => Done::Approved(r?),
                _ = cancel.cancelled() => return Err(Cancelled.into()),
            }
        }
        // Never cancelled: a release finishes or recovers.
        Job::Apply => {
            let store = env.store().await?;
            Done::Released(Box::new(release::apply(config, state, store, target).await?))
        }
        Job::Releases { id } => Done::Releases(release::list(&env.state, target, id.as_deref()).await?),
        Job::Watch { release } => tokio::select! {
            r = watch::run(state, target, &release) => Done::Watched(Box::new(r?)),
            _ = cancel.cancelled() => return Err(Cancelled.into()),
        },
        Job::Prune { dry_run } => {
            let store = env.store().await.map_err(snapshot::catalog::CatalogError::from)?;
            Done::Pruned(snapshot::catalog::prune(&env.state, store, target, dry_run).await?)
        }
        Job::Salvage { release: id, options } => {
            Done::Salvaged(Box::new(release::salvage::salvage(state, target, &id, &options).await?))
        }
    })
}

/// A job stopped by its cancellation token (daemon shutdown, SIGINT) before
/// it finished; what it did is cleaned up by the operation itself.
#[derive(Debug, thiserror::Error)]
#[error("the job was cancelled before it finished; run it again")]
pub struct Cancelled;

/// Whether `e` is a cancellation (of any operation), not a failure.
pub fn is_cancelled(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<Cancelled>()
            || matches!(c.downcast_ref::<snapshot::SnapshotError>(), Some(snapshot::SnapshotError::Cancelled))
            || matches!(c.downcast_ref::<rehearsal::RehearsalError>(), Some(rehearsal::RehearsalError::Cancelled))
    })
}
