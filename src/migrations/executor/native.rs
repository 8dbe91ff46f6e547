//! The executor's loop for plans pgrehearse runs itself (sqlx, diesel): the
//! whole plan in one transaction, or file by file — a transactional file in
//! its own transaction, another statement by statement — each file's
//! statements followed by its history row, retried on lock waits (a lock
//! timeout, or a cancel by the release's lock-queue guard) as the [`Retry`]
//! policy says.

use std::time::Instant;

use sqlx::PgConnection;

use super::{Executor, Hooks, Run, StatementResult, Status, Step, describe, exec, failure, lock_wait};
use crate::migrations::{self, Change, Migration, split};
use crate::pg;

/// A file that failed: the sentence, the report's failure, and the error
/// (to tell a lock timeout).
struct Failed {
    text: String,
    failure: super::Failure,
    error: Option<sqlx::Error>,
}

impl Executor<'_> {
    /// The whole plan in one transaction; a lock timeout retries all of it.
    pub(super) async fn single<H: Hooks>(
        &self,
        conn: &mut PgConnection,
        plan: &[Migration],
        hooks: &mut H,
    ) -> Result<Run, H::Error> {
        let mut steps: Vec<Step> = plan.iter().map(|_| Step::default()).collect();
        let mut attempt = 0;
        'attempt: loop {
            for s in steps.iter_mut() {
                s.attempts = attempt + 1;
            }
            if let Err(e) = exec(conn, "BEGIN").await {
                let text = format!("BEGIN on {} failed: {e}", self.place);
                return Ok(Run { steps, failure: Some(text), partial: false });
            }
            for (i, m) in plan.iter().enumerate() {
                hooks.migration_started(conn, i, m, true).await?;
                let t = Instant::now();
                let ran = self.run_file(conn, i, m, true, &mut steps[i], hooks).await?;
                steps[i].duration_ms = t.elapsed().as_millis() as u64;
                if let Err(f) = ran {
                    let _ = exec(conn, "ROLLBACK").await;
                    hooks.transaction_ended(Instant::now());
                    let locked = f.error.as_ref().is_some_and(|e| lock_wait(e, &mut *hooks, i));
                    if locked && attempt < self.retry.retries {
                        let wait = self.retry.wait(attempt);
                        hooks.retrying(m, attempt, wait).await?;
                        tokio::time::sleep(wait).await;
                        attempt += 1;
                        continue 'attempt;
                    }
                    for s in steps.iter_mut().take(i) {
                        s.status = Status::RolledBack;
                    }
                    let text = if locked {
                        format!("{}; still locked after {} retries", f.text, self.retry.retries)
                    } else {
                        f.text.clone()
                    };
                    fail(&mut steps[i], f);
                    return Ok(Run { steps, failure: Some(text), partial: false });
                }
                steps[i].status = Status::Applied;
                hooks.migration_done(conn, i, m, false).await?;
            }
            let committed = exec(conn, "COMMIT").await;
            hooks.transaction_ended(Instant::now());
            if let Err(e) = committed {
                // A failed COMMIT is a rollback, unless the connection broke
                // while the server committed: the history decides (recovery).
                for s in steps.iter_mut() {
                    s.status = Status::RolledBack;
                }
                let partial = matches!(e, sqlx::Error::Io(_));
                let text = format!("COMMIT on {} failed: {e}", self.place);
                return Ok(Run { steps, failure: Some(text), partial });
            }
            return Ok(Run { steps, failure: None, partial: false });
        }
    }

    /// File by file: each transactional file in its own transaction
    /// (retried whole on a lock timeout), each non-transactional one
    /// statement by statement (a statement retried on a lock timeout, after
    /// dropping an invalid index its interrupted concurrent build left).
    pub(super) async fn per_migration<H: Hooks>(
        &self,
        conn: &mut PgConnection,
        plan: &[Migration],
        hooks: &mut H,
    ) -> Result<Run, H::Error> {
        let mut steps: Vec<Step> = plan.iter().map(|_| Step::default()).collect();
        for (i, m) in plan.iter().enumerate() {
            let t = Instant::now();
            let result = if m.transactional {
                self.transactional_file(conn, i, m, &mut steps[i], hooks).await?
            } else {
                self.statement_by_statement(conn, i, m, &mut steps[i], hooks).await?
            };
            steps[i].duration_ms = t.elapsed().as_millis() as u64;
            if let Err(f) = result {
                let text = f.text.clone();
                fail(&mut steps[i], f);
                // What committed before, or a non-transactional statement, is there.
                let partial = i > 0 || !m.transactional;
                return Ok(Run { steps, failure: Some(text), partial });
            }
            steps[i].status = Status::Applied;
            hooks.migration_done(conn, i, m, true).await?;
        }
        Ok(Run { steps, failure: None, partial: false })
    }

    async fn transactional_file<H: Hooks>(
        &self,
        conn: &mut PgConnection,
        i: usize,
        m: &Migration,
        step: &mut Step,
        hooks: &mut H,
    ) -> Result<Result<(), Failed>, H::Error> {
        loop {
            step.attempts += 1;
            if let Err(e) = exec(conn, "BEGIN").await {
                return Ok(Err(plain(m, format!("BEGIN on {} failed: {e}", self.place), e)));
            }
            hooks.migration_started(conn, i, m, true).await?;
            match self.run_file(conn, i, m, true, step, hooks).await? {
                Ok(()) => {
                    let committed = exec(conn, "COMMIT").await;
                    hooks.transaction_ended(Instant::now());
                    return Ok(
                        committed.map_err(|e| plain(m, format!("COMMIT of migration {} failed: {e}", m.version), e))
                    );
                }
                Err(f) => {
                    let _ = exec(conn, "ROLLBACK").await;
                    hooks.transaction_ended(Instant::now());
                    let locked = f.error.as_ref().is_some_and(|e| lock_wait(e, &mut *hooks, i));
                    if locked && step.attempts <= self.retry.retries {
                        let wait = self.retry.wait(step.attempts - 1);
                        hooks.retrying(m, step.attempts - 1, wait).await?;
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    return Ok(Err(f));
                }
            }
        }
    }

    async fn statement_by_statement<H: Hooks>(
        &self,
        conn: &mut PgConnection,
        i: usize,
        m: &Migration,
        step: &mut Step,
        hooks: &mut H,
    ) -> Result<Result<(), Failed>, H::Error> {
        let started = Instant::now();
        step.attempts = 1;
        hooks.migration_started(conn, i, m, false).await?;
        for (s, stmt) in split::split(&m.up_sql).iter().enumerate() {
            let mut tries = 0;
            loop {
                // Only a retry needs to know which invalid indexes were there.
                let invalid_before = if self.retry.retries > 0 {
                    crate::pg::invalid_indexes(conn).await.unwrap_or_default()
                } else {
                    Vec::new()
                };
                let t = Instant::now();
                let res = exec(conn, &stmt.sql).await;
                let took = t.elapsed();
                let waited = matches!(&res, Err(e) if lock_wait(e, &mut *hooks, i));
                match res {
                    Ok(()) => {
                        step.statements.push(statement(s, stmt, took));
                        hooks.statement_done(conn, i, s, false, t, took).await?;
                        break;
                    }
                    Err(_) if waited && tries < self.retry.retries => {
                        // An interrupted (timed out or cancelled) CREATE INDEX
                        // CONCURRENTLY leaves an invalid index behind.
                        for idx in crate::pg::invalid_indexes(conn).await.unwrap_or_default() {
                            if invalid_before.contains(&idx) {
                                continue;
                            }
                            let (schema, name) = idx.split_once('.').unwrap_or(("public", &idx));
                            let sql = format!(
                                "DROP INDEX CONCURRENTLY IF EXISTS {}.{}",
                                crate::pg::quote_ident(schema),
                                crate::pg::quote_ident(name)
                            );
                            if let Err(e) = exec(conn, &sql).await {
                                let text = format!("cannot drop the invalid index {idx} left by a lock timeout: {e}");
                                return Ok(Err(plain(m, text, e)));
                            }
                        }
                        let wait = self.retry.wait(tries);
                        hooks.retrying(m, tries, wait).await?;
                        tokio::time::sleep(wait).await;
                        tries += 1;
                        step.attempts += 1;
                    }
                    Err(e) => {
                        step.statements.push(statement(s, stmt, took));
                        return Ok(Err(Failed {
                            text: describe(m, stmt, &e),
                            failure: failure(m, s, stmt, &e),
                            error: Some(e),
                        }));
                    }
                }
            }
        }
        Ok(self.record(conn, m, started).await)
    }

    /// The statements of `m` and its history row, on `conn` as it is (in
    /// the caller's transaction, if any).
    async fn run_file<H: Hooks>(
        &self,
        conn: &mut PgConnection,
        i: usize,
        m: &Migration,
        in_tx: bool,
        step: &mut Step,
        hooks: &mut H,
    ) -> Result<Result<(), Failed>, H::Error> {
        let started = Instant::now();
        step.statements.clear();
        for (s, stmt) in split::split(&m.up_sql).iter().enumerate() {
            let t = Instant::now();
            let res = exec(conn, &stmt.sql).await;
            let took = t.elapsed();
            step.statements.push(statement(s, stmt, took));
            if let Err(e) = res {
                return Ok(Err(Failed {
                    text: describe(m, stmt, &e),
                    failure: failure(m, s, stmt, &e),
                    error: Some(e),
                }));
            }
            hooks.statement_done(conn, i, s, in_tx, t, took).await?;
        }
        Ok(self.record(conn, m, started).await)
    }

    async fn record(&self, conn: &mut PgConnection, m: &Migration, started: Instant) -> Result<(), Failed> {
        let table = self.table;
        migrations::record(conn, self.kind, table, m, Change::Applied(started.elapsed())).await.map_err(|e| Failed {
            text: format!("recording migration {} in {table} failed: {}", m.version, pg::explain(&e)),
            failure: super::Failure::of_error(
                m.path.display().to_string(),
                format!("recording the migration in {table} failed: {e}"),
                &e,
            ),
            error: Some(e),
        })
    }
}

fn statement(index: usize, stmt: &split::Statement, took: std::time::Duration) -> StatementResult {
    StatementResult { index, line: stmt.line, sql: super::excerpt(&stmt.sql), duration_ms: took.as_millis() as u64 }
}

/// A failure outside the file's statements (BEGIN, COMMIT, a cleanup).
fn plain(m: &Migration, text: String, e: sqlx::Error) -> Failed {
    let failure = super::Failure::of_error(m.path.display().to_string(), text.clone(), &e);
    let text = format!("{text}{}", pg::Diagnostic::of(&e).suffix());
    Failed { text, failure, error: Some(e) }
}

fn fail(step: &mut Step, f: Failed) {
    step.status = Status::Failed;
    step.error = Some(f.text);
    step.failure = Some(f.failure);
}
