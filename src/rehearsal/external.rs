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
use super::runner::{Failure, LockHeld, MigrationResult, Status};
use crate::config::Target;
use crate::migrations::command as cmd;
use crate::migrations::payload::{Payload, PayloadError};
use crate::migrations::{Migration, Source};
use crate::pg::tools::Tool;
use crate::pg::url::ConnUrl;
use crate::pg::{self, PgError};

/// A Payload project's `migrate`, measured.
pub async fn payload(
    source: &Source<'_>,
    url: &ConnUrl,
    plan: &[Migration],
    pre: &Catalog,
) -> Result<(Vec<MigrationResult>, bool), RehearsalError> {
    let project = project(source);
    let expected: Vec<String> = plan.iter().map(|m| m.name.clone()).collect();
    let mut results: Vec<MigrationResult> = plan.iter().map(MigrationResult::new).collect();
    if plan.is_empty() {
        return Ok((results, true));
    }
    let (mut conn, sampler, wal0) = observe(url).await?;
    let run = project.migrate(url, "pgrehearse-payload", &expected).await;
    let ok = match run {
        Ok(run) => {
            for r in results.iter_mut() {
                let done = run.migrated.iter().find(|x| x.name == r.name);
                r.status = Status::Applied;
                r.ok = true;
                if let Some(d) = done {
                    r.duration_ms = d.duration_ms;
                    let (from, to) = window(d.started_at, d.finished_at, d.duration_ms);
                    r.locks = locks(&sampler, pre, from, to);
                }
            }
            true
        }
        Err(PayloadError::Failed { migration, output_tail, status, .. }) => {
            let failing = migration.clone().unwrap_or_default();
            let mut seen_failing = false;
            for r in results.iter_mut() {
                if r.name == failing || (migration.is_none() && !seen_failing) {
                    seen_failing = true;
                    r.status = Status::Failed;
                    r.error = Some(Failure::of_file(
                        r.file.clone(),
                        format!("payload migrate failed ({status}); its output ends with:\n{output_tail}"),
                    ));
                } else if !seen_failing {
                    r.status = Status::Applied;
                    r.ok = true;
                }
            }
            false
        }
        Err(e) => return Err(e.into()),
    };
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
    let apply = source.config.apply.clone().unwrap_or_default();
    let start = Instant::now();
    let run = run_command(source, &apply, url).await;
    let end = Instant::now();
    let r = &mut results[0];
    r.duration_ms = (end - start).as_millis() as u64;
    r.locks = locks(&sampler, pre, start, end);
    let ok = run.is_ok();
    match run {
        Ok(()) => {
            r.status = Status::Applied;
            r.ok = true;
        }
        Err(message) => {
            r.status = Status::Failed;
            r.error = Some(Failure::of_file(apply.clone(), message));
        }
    }
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
            let project = project(source);
            project.migrate_down(url, "pgrehearse-payload", &names).await.map(|_| ()).map_err(|e| e.to_string())
        }
        _ => match &source.config.down {
            None => {
                for r in results.iter_mut() {
                    r.reversible = Some(Reversal::NotReversible { reason: "no `down` command is configured".into() });
                }
                return true;
            }
            Some(down) => run_command(source, down, url).await,
        },
    };
    let verdict = match down {
        Err(e) => Reversal::Failed { reason: format!("the down failed: {e}"), diff: None },
        Ok(()) => match schema(tool, url, &table).await {
            Err(e) => Reversal::NotChecked { reason: e },
            Ok(after_down) => match diff(s0, &after_down, 60) {
                Some(d) => Reversal::Failed {
                    reason: "after the down the schema differs from before the plan".into(),
                    diff: Some(d),
                },
                None => again(source, url, tool, &names, s_up).await,
            },
        },
    };
    let ok = !verdict.is_failure();
    for r in results.iter_mut() {
        r.reversible = Some(verdict.clone());
    }
    ok
}

/// Applies the plan again after its down and compares with the first apply.
async fn again(source: &Source<'_>, url: &ConnUrl, tool: &Tool, names: &[String], s_up: &str) -> Reversal {
    let ran = match source.kind() {
        crate::config::MigrationKind::Payload => {
            project(source).migrate(url, "pgrehearse-payload", names).await.map(|_| ()).map_err(|e| e.to_string())
        }
        _ => run_command(source, source.config.apply.as_deref().unwrap_or_default(), url).await,
    };
    if let Err(e) = ran {
        return Reversal::Failed { reason: format!("applying the plan again after its down failed: {e}"), diff: None };
    }
    match schema(tool, url, &source.table()).await {
        Err(e) => Reversal::NotChecked { reason: e },
        Ok(again) => match diff(s_up, &again, 60) {
            None => Reversal::Reversible,
            Some(d) => Reversal::Failed {
                reason: "applying the plan again after its down gave a different schema".into(),
                diff: Some(d),
            },
        },
    }
}

/// The target's Payload project, with its timeouts for the CLI's sessions.
pub fn project(source: &Source<'_>) -> Payload {
    Payload {
        project_dir: source.config.dir.clone().unwrap_or_default(),
        timeout: source.config.timeout,
        table: source.table(),
        pg_options: Some(pg_options(source.target)),
    }
}

/// The target's timeouts as `PGOPTIONS` for external tools' sessions.
pub fn pg_options(target: &Target) -> String {
    let mut o = format!("-c lock_timeout={}", target.lock_timeout.as_millis());
    if let Some(st) = target.statement_timeout {
        o.push_str(&format!(" -c statement_timeout={}", st.as_millis()));
    }
    o
}

/// Runs one of a `command` source's commands on the scratch copy with the
/// target's timeouts; the error is a sentence with the end of its output.
async fn run_command(source: &Source<'_>, command: &str, url: &ConnUrl) -> Result<(), String> {
    let options = pg_options(source.target);
    match cmd::run(command, source.config, url, "pgrehearse-command", source.config.timeout, Some(&options)).await {
        Ok(r) if r.success => Ok(()),
        Ok(r) => Err(format!("`{command}` failed ({}): {}", r.status, pg::tools::tail(&r.output, 2000))),
        Err(e) => Err(format!("cannot start `{command}`: {e}")),
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

/// The sampling window of a migration: from its `Migrating:` line (or its
/// reported duration before `Migrated:`) to a little after `Migrated:`, when
/// its row insert and commit end its transaction.
fn window(started: Option<Instant>, finished: Instant, duration_ms: u64) -> (Instant, Instant) {
    let slack = Duration::from_millis(100);
    let from = started
        .or_else(|| finished.checked_sub(Duration::from_millis(duration_ms)))
        .and_then(|t| t.checked_sub(slack))
        .unwrap_or(finished);
    (from, finished + slack)
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
