//! The per-migration walk for sqlx and diesel: every migration with a down
//! is judged in isolation, at its own level, on a judge copy.
//!
//! The judge copy starts as a file copy of the scratch database taken just
//! before the plan ran. Going up the plan, migration *i* is applied (its
//! schema dumped: the state after *i*); if it has a down, the down runs (the
//! schema must be the state before *i*), then the up again (the state after
//! *i* once more). The copy is then back where the next migration starts,
//! so no verdict depends on another migration's down: a lost trigger of
//! *i* cannot be blamed on *i − 1*, and the walk goes on after a difference.
//!
//! A down that fails inside its transaction leaves the copy as it was. A
//! down that leaves a difference, fails half-way outside a transaction, or
//! whose up does not apply again, leaves the copy somewhere else: then the
//! judge copy is rebuilt at the level of the next migration — dropped,
//! cloned again from the untouched pre-plan copy (`pristine`), and the ups
//! below applied once more — rather than marking every migration above
//! `not_checked`. Walking down from the top instead (as the tools revert)
//! would need a copy at every lower level after each such down; walking up
//! needs one rebuild per broken down, and none for a good history. The
//! pristine copy is kept aside only when more than one down is judged (the
//! only case a rebuild can be needed); with one, the walk runs on it.
//!
//! Cost: per judged down an up, the down, the up again and three
//! `pg_dump --schema-only` — as many as the former walk down and up again,
//! which stopped at the first difference. `bench/downs.py` measures it on
//! 200 generated migrations (`bench/RESULTS-downs.md`: about 0.7 s per down
//! on a loaded 2-core machine, a few seconds per rebuild).
//!
//! A down run on the copy may lose data an up put there (a column dropped
//! and added again is empty): an up that then fails on the judge copy,
//! though it applied in the measured run, is retried once on a rebuilt copy
//! (plain ups only) before the migrations above are marked not checked.

use sqlx::PgConnection;

use super::{Comparison, Reversal, compare, not_checked, schema};
use crate::conn_url::ConnUrl;
use crate::migrations::executor::{Direction, Executor, Retry};
use crate::migrations::{Down, Migration, Source};
use crate::pg::tools::Tool;
use crate::rehearsal::runner::{self, MigrationResult};
use crate::shadow::Shadow;

/// Lines of a diff kept in a verdict.
const DIFF_LINES: usize = 60;

/// The databases the walk works on, on the shadow server.
pub struct Copies<'a> {
    pub shadow: &'a mut Shadow,
    /// A file copy of the scratch database taken just before the plan ran.
    /// The caller drops it; the walk never writes it when it clones a judge
    /// copy from it.
    pub pristine: &'a str,
    /// The name for the judge copy; the walk drops it before returning.
    pub judge: &'a str,
    /// The snapshot the copies come from (recorded with each database made).
    pub snapshot_id: &'a str,
}

/// Judges every migration with a down (see the module doc) and fills each
/// result's `reversible`; `s_up` is the schema of the measured apply.
pub async fn walk(
    source: &Source<'_>,
    target: &crate::config::Target,
    copies: Option<Copies<'_>>,
    tool: &Tool,
    plan: &[Migration],
    results: &mut [MigrationResult],
    s_up: &str,
) {
    for (m, r) in plan.iter().zip(results.iter_mut()) {
        r.reversible = match &m.down {
            Down::Missing => Some(Reversal::NotReversible { reason: "it has no down migration".into() }),
            Down::Empty { path } => Some(Reversal::NotReversible {
                reason: format!("{} is empty (zero bytes: diesel refuses to run it)", path.display()),
            }),
            _ => None,
        };
    }
    let downs = plan.iter().filter(|m| m.down.is_reversible()).count();
    if downs == 0 {
        return;
    }
    let Some(copies) = copies else {
        not_checked(results, "no reference copy of the database could be made");
        return;
    };
    let mut judge = match Judge::open(copies, target, source, downs > 1).await {
        Ok(j) => j,
        Err(e) => {
            not_checked(results, &format!("the judge copy could not be made: {e}"));
            return;
        }
    };
    let walked = judge.run(tool, plan, results, s_up).await;
    judge.close().await;
    if let Err(e) = walked {
        not_checked(results, &e);
    }
}

/// The judge copy and its session.
struct Judge<'a, 's> {
    copies: Copies<'a>,
    source: &'a Source<'s>,
    target: &'a crate::config::Target,
    table: String,
    /// The database written: the judge clone, or the pristine copy itself.
    db: String,
    url: ConnUrl,
    conn: PgConnection,
    cloned: bool,
}

impl<'a, 's> Judge<'a, 's> {
    async fn open(
        copies: Copies<'a>,
        target: &'a crate::config::Target,
        source: &'a Source<'s>,
        clone: bool,
    ) -> Result<Judge<'a, 's>, String> {
        let db = if clone {
            copies
                .shadow
                .clone_db(copies.judge, copies.pristine, copies.snapshot_id)
                .await
                .map_err(|e| e.to_string())?;
            copies.judge.to_string()
        } else {
            copies.pristine.to_string()
        };
        let url = copies.shadow.url_for(&db);
        let conn = match runner::session(&url, target, "pgrehearse-reference").await {
            Ok(c) => c,
            Err(e) => {
                if clone {
                    drop_quietly(copies.shadow, &db).await;
                }
                return Err(e.to_string());
            }
        };
        Ok(Judge { table: source.table(), copies, source, target, db, url, conn, cloned: clone })
    }

    async fn schema(&self, tool: &Tool) -> Result<String, String> {
        schema(tool, &self.url, &self.table).await
    }

    async fn script(&mut self, m: &Migration, direction: Direction) -> Result<(), String> {
        // No retries: see `migrations::executor`.
        let exec =
            Executor { kind: self.source.kind(), table: &self.table, retry: Retry::NONE, place: "the reference copy" };
        exec.script(&mut self.conn, m, direction).await.map(|_| ())
    }

    /// Goes up the plan, judging each down at its level. Errors are reasons
    /// for the migrations not judged yet.
    async fn run(
        &mut self,
        tool: &Tool,
        plan: &[Migration],
        results: &mut [MigrationResult],
        s_up: &str,
    ) -> Result<(), String> {
        let last = plan.iter().rposition(|m| m.down.is_reversible()).unwrap_or(0);
        // states[i]: the schema before migration i.
        let mut states = vec![self.schema(tool).await?];
        // A down ran since the copy was built: its data may differ from the
        // measured run's.
        let mut dirty = false;
        for (i, m) in plan.iter().enumerate().take(last + 1) {
            if let Err(e) = self.script(m, Direction::Up).await {
                if !(dirty && self.cloned) {
                    return Err(format!("migration {} did not apply on the reference copy: {e}", m.version));
                }
                tracing::info!(version = %m.version, error = %e, "An up failed on the judge copy after downs ran on it; rebuilding it with plain ups.");
                self.rebuild(plan, i).await?;
                dirty = false;
                self.script(m, Direction::Up)
                    .await
                    .map_err(|e| format!("migration {} did not apply on a rebuilt reference copy: {e}", m.version))?;
            }
            states.push(self.schema(tool).await?);
            if !m.down.is_reversible() {
                continue;
            }
            let (verdict, back) = self.judge(tool, m, &states[i], &states[i + 1]).await?;
            tracing::debug!(version = %m.version, ?verdict, back, "Down judged.");
            results[i].reversible = Some(verdict);
            dirty = true;
            if !back && i < last {
                self.rebuild(plan, i + 1).await?;
                dirty = false;
            }
        }
        if states.len() == plan.len() + 1
            && let Some(d) = super::diff(&states[plan.len()], s_up, DIFF_LINES)
        {
            tracing::warn!(diff = %d, "The plan applied step by step gave another schema than the measured apply.");
        }
        Ok(())
    }

    /// The verdict on `m`'s down, run at the level after `m` (`after`), and
    /// whether the copy is back at that level.
    async fn judge(
        &mut self,
        tool: &Tool,
        m: &Migration,
        before: &str,
        after: &str,
    ) -> Result<(Reversal, bool), String> {
        if let Err(e) = self.script(m, Direction::Down).await {
            // In a transaction the failed down changed nothing; outside one
            // it may have stopped half-way.
            let back = self.schema(tool).await? == after;
            return Ok((Reversal::Failed { reason: format!("its down failed: {e}") }, back));
        }
        let down = compare(before, &self.schema(tool).await?, DIFF_LINES);
        let again = self.script(m, Direction::Up).await;
        // Where the copy is now: after a failed up, possibly still at `after`
        // (a no-op down, and an up that refuses to run twice).
        let now = self.schema(tool).await?;
        let back = now == after;
        let again = again.map(|()| compare(after, &now, DIFF_LINES));
        let verdict = match (down, again) {
            (Comparison::Differs(diff), _) => Reversal::Differs {
                reason: if m.down.is_noop() {
                    "its down holds only comments (a no-op, as diesel and sqlx run it), but the migration changed the schema (`-` before the migration, `+` after its down)".into()
                } else {
                    "after its down the schema differs from before the migration (`-` before the migration, `+` after its down)".into()
                },
                diff,
            },
            (_, Err(e)) => Reversal::Failed { reason: format!("its down ran, but applying the migration again after it failed: {e}") },
            (_, Ok(Comparison::Differs(diff))) => Reversal::Differs {
                reason: "applied again after its down, it gives another schema than the first time (`-` first apply, `+` applied again)".into(),
                diff,
            },
            (Comparison::ColumnOrderOnly(diff), _) | (_, Ok(Comparison::ColumnOrderOnly(diff))) => {
                Reversal::ColumnOrderOnly { diff }
            }
            (Comparison::Same, Ok(Comparison::Same)) => Reversal::Reversible,
        };
        Ok((verdict, back))
    }

    /// Makes the judge copy anew at `level` (migrations `0..level` applied):
    /// dropped, cloned from the pristine copy, the ups applied once more.
    async fn rebuild(&mut self, plan: &[Migration], level: usize) -> Result<(), String> {
        if !self.cloned {
            return Err("the reference copy could not be rebuilt".into());
        }
        let t0 = std::time::Instant::now();
        let shadow = &mut *self.copies.shadow;
        shadow.drop_db(&self.db).await.map_err(|e| format!("cannot drop the judge copy to rebuild it: {e}"))?;
        shadow
            .clone_db(&self.db, self.copies.pristine, self.copies.snapshot_id)
            .await
            .map_err(|e| format!("cannot rebuild the judge copy: {e}"))?;
        self.conn = runner::session(&self.url, self.target, "pgrehearse-reference").await.map_err(|e| e.to_string())?;
        for m in &plan[..level] {
            self.script(m, Direction::Up)
                .await
                .map_err(|e| format!("migration {} did not apply on the rebuilt reference copy: {e}", m.version))?;
        }
        tracing::info!(
            level,
            elapsed_ms = t0.elapsed().as_millis() as u64,
            "Judge copy rebuilt after a down that did not revert."
        );
        Ok(())
    }

    /// Drops the judge clone (the pristine copy is the caller's).
    async fn close(self) {
        if self.cloned {
            use sqlx::Connection;
            let _ = self.conn.close().await;
            drop_quietly(self.copies.shadow, &self.db).await;
        }
    }
}

async fn drop_quietly(shadow: &mut Shadow, db: &str) {
    if let Err(e) = shadow.drop_db(db).await {
        tracing::warn!(database = %db, error = %e, "Cannot drop the judge copy; the next rehearsal drops it.");
    }
}
