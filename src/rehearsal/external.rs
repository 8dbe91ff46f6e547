//! External runners (Payload's CLI, configured commands) observed from the
//! outside: the sampler watches every client session on the scratch copy
//! for locks while the tool runs, and the catalog before and after gives
//! rewrites and size deltas. Per-migration attribution uses the tool's own
//! timings (Payload prints one line per migration, timestamped as it
//! arrives); what cannot be attributed goes to the plan's last migration
//! and the report says so.

use std::time::{Duration, Instant};

use sqlx::PgConnection;

use super::RehearsalError;
use super::observer::{self, Catalog, Sampler};
use super::reversibility::{Reversal, diff, schema};
use super::runner::{LockHeld, MigrationResult, Status};
use crate::conn_url::ConnUrl;
use crate::migrations::executor::external;
use crate::migrations::payload::PayloadError;
use crate::migrations::{Migration, Source};
use crate::pg::tools::Tool;
use crate::pg::{self, PgError};

/// A Payload project's `migrate`, measured: each migration's locks are
/// what the sampler saw while Payload said it ran it.
pub async fn payload(
    source: &Source<'_>,
    url: &ConnUrl,
    plan: &[Migration],
    pre: &Catalog,
) -> Result<(Vec<MigrationResult>, bool), RehearsalError> {
    if plan.is_empty() {
        return Ok((Vec::new(), true));
    }
    let (mut conn, sampler, wal0) = observe(url).await?;
    let (run, error) = external::payload(source, url, "pgrehearse-payload", plan).await;
    match error {
        None | Some(PayloadError::Failed { .. }) => {}
        // A refusal or a timeout is the rehearsal's error, not a migration's.
        Some(e) => {
            sampler.stop().await;
            return Err(e.into());
        }
    }
    let ok = run.ok();
    let slack = Duration::from_millis(100);
    let mut results: Vec<MigrationResult> = plan
        .iter()
        .zip(run.steps)
        .map(|(m, step)| {
            let mut r = MigrationResult::new(m);
            r.status = step.status;
            r.ok = step.status == Status::Applied;
            r.duration_ms = step.duration_ms;
            r.error = step.failure;
            if let Some((from, to)) = step.ran {
                // Its row insert and commit end its transaction a little after `Migrated:`.
                r.locks = locks(&sampler, pre, from.checked_sub(slack).unwrap_or(from), to + slack);
            }
            r
        })
        .collect();
    finish(&mut conn, sampler, pre, &mut results, wal0).await?;
    Ok((results, ok))
}

/// A `command` source's `apply`, measured as one step.
pub async fn command(
    source: &Source<'_>,
    url: &ConnUrl,
    plan: &[Migration],
    pre: &Catalog,
) -> Result<(Vec<MigrationResult>, bool), RehearsalError> {
    let Some(first) = plan.first() else { return Ok((Vec::new(), true)) };
    // The tool applies everything at once: one step, named after what it applies.
    let mut step = first.clone();
    if plan.len() > 1 {
        step.version = "apply".into();
        step.name = plan.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ");
    }
    let mut results = vec![MigrationResult::new(&step)];
    let (mut conn, sampler, wal0) = observe(url).await?;
    let run = external::command(source, url, "pgrehearse-command", std::slice::from_ref(&step)).await;
    let ok = run.ok();
    let done = run.steps.into_iter().next().unwrap_or_default();
    let r = &mut results[0];
    r.duration_ms = done.duration_ms;
    if let Some((start, end)) = done.ran {
        r.locks = locks(&sampler, pre, start, end);
    }
    r.status = done.status;
    r.ok = done.status == Status::Applied;
    r.error = done.failure;
    finish(&mut conn, sampler, pre, &mut results, wal0).await?;
    Ok((results, ok))
}

/// Reversibility for external tools: Payload's `migrate:down` (the whole
/// batch) or the configured `down` command, compared with the schema
/// before the plan, then the plan applied again and compared with the first
/// apply. The verdict covers the whole batch.
pub async fn reverse(
    source: &Source<'_>,
    url: &ConnUrl,
    tool: &Tool,
    plan: &[Migration],
    results: &mut [MigrationResult],
    s0: &str,
    s_up: &str,
) -> bool {
    let table = source.table();
    let names: Vec<String> = plan.iter().map(|m| m.name.clone()).collect();
    let down: Result<(), String> = match source.kind() {
        crate::config::MigrationKind::Payload => {
            let project = external::project(source);
            project.migrate_down(url, "pgrehearse-payload", &names).await.map(|_| ()).map_err(|e| e.to_string())
        }
        _ => match &source.config.down {
            None => {
                for r in results.iter_mut() {
                    r.reversible = Some(Reversal::NotReversible { reason: "no `down` command is configured".into() });
                }
                return true;
            }
            Some(down) => external::command_step(source, down, url, "pgrehearse-command").await,
        },
    };
    let verdict = match down {
        Err(e) => Reversal::Failed { reason: format!("the down failed: {e}") },
        Ok(()) => match schema(tool, url, &table).await {
            Err(e) => Reversal::NotChecked { reason: e },
            Ok(after_down) => match diff(s0, &after_down, 60) {
                Some(d) => Reversal::Differs {
                    reason: "after the down the schema differs from before the plan".into(),
                    diff: d,
                },
                None => again(source, url, tool, &names, s_up).await,
            },
        },
    };
    let ok = !verdict.is_problem(false);
    for r in results.iter_mut() {
        r.reversible = Some(verdict.clone());
    }
    ok
}

/// Applies the plan again after its down and compares with the first apply.
async fn again(source: &Source<'_>, url: &ConnUrl, tool: &Tool, names: &[String], s_up: &str) -> Reversal {
    let ran = match source.kind() {
        crate::config::MigrationKind::Payload => external::project(source)
            .migrate(url, "pgrehearse-payload", names)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        _ => {
            let apply = source.config.apply.as_deref().unwrap_or_default();
            external::command_step(source, apply, url, "pgrehearse-command").await
        }
    };
    if let Err(e) = ran {
        return Reversal::Failed { reason: format!("applying the plan again after its down failed: {e}") };
    }
    match schema(tool, url, &source.table()).await {
        Err(e) => Reversal::NotChecked { reason: e },
        Ok(again) => match diff(s_up, &again, 60) {
            None => Reversal::Reversible,
            Some(d) => Reversal::Differs {
                reason: "applying the plan again after its down gave a different schema".into(),
                diff: d,
            },
        },
    }
}

/// An observer session (catalog, WAL) and the lock sampler.
async fn observe(url: &ConnUrl) -> Result<(PgConnection, Sampler, u64), RehearsalError> {
    let mut conn = pg::connect(url, "pgrehearse-measure").await?;
    let wal0 =
        observer::wal_position(&mut conn).await.map_err(|source| PgError::Query { url: url.redacted(), source })?;
    let sampler = Sampler::start(url).await?;
    Ok((conn, sampler, wal0))
}

/// Stops the sampler and attributes rewrites and size deltas: to the
/// migration that held ACCESS EXCLUSIVE on the relation, else to the last
/// one that ran.
async fn finish(
    conn: &mut PgConnection,
    sampler: Sampler,
    pre: &Catalog,
    results: &mut [MigrationResult],
    wal0: u64,
) -> Result<(), PgError> {
    sampler.stop().await;
    let q = |source| PgError::Query { url: String::from("scratch copy"), source };
    let after = Catalog::capture(conn).await.map_err(q)?;
    let wal = observer::wal_position(conn).await.map_err(q)?.saturating_sub(wal0);
    let (rewrites, deltas) = observer::compare(pre, &after);
    let last = results.iter().rposition(|r| r.status != Status::NotRun).unwrap_or(0);
    let owner = |rel: &str, results: &[MigrationResult]| {
        results
            .iter()
            .position(|r| r.locks.iter().any(|l| l.relation == rel && l.mode == "AccessExclusiveLock"))
            .unwrap_or(last)
    };
    for rw in rewrites {
        let i = owner(&rw.relation, results);
        results[i].rewrites.push(rw);
    }
    for d in deltas {
        let i = owner(&d.relation, results);
        results[i].size_deltas.push(d);
    }
    if results.len() == 1 {
        results[0].wal_bytes = Some(wal);
    } else if let Some(r) = results.get_mut(last) {
        // Only the whole run's WAL is known; shown on the last migration.
        r.wal_bytes = Some(wal);
    }
    Ok(())
}

fn locks(sampler: &Sampler, pre: &Catalog, from: Instant, to: Instant) -> Vec<LockHeld> {
    sampler
        .held(from, to, None)
        .into_iter()
        .filter_map(|l| {
            let rel = pre.get(l.oid).filter(|r| r.is_table())?;
            Some(LockHeld {
                relation: rel.qualified(),
                held_ms: l.held_ms(),
                mode: l.mode,
                statement: None,
                sampled: true,
                taken_by: None,
            })
        })
        .collect()
}
