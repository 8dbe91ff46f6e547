//! Runs migrations on a scratch database exactly as live will run them and
//! measures each one. Native sources (sqlx, diesel) are run statement by
//! statement on one session: in a transaction, the locks each statement took
//! are read from the session's own `pg_locks` right after it (exact, and a
//! lock is held from that statement until commit); outside a transaction
//! (`-- no-transaction`, `run_in_transaction = false`) the sampler watches
//! the session, because such statements release their locks before they
//! return. The history table is written as the tool writes it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::PgConnection;

use super::observer::{self, Catalog, Rewrite, Sampler, SizeDelta};
use super::probes::{self, Blocking, Held, Probed, Probes, Ran};
use super::queries::Trail;
use crate::config::MigrationKind;
use crate::conn_url::ConnUrl;
use crate::migrations::Migration;
use crate::migrations::executor::{Executor, Hooks, Mode, Retry};
pub use crate::migrations::executor::{Failure, StatementResult, Status, excerpt, session};
use crate::pg::PgError;

/// What one migration did, as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationResult {
    pub version: String,
    pub name: String,
    pub file: String,
    pub transactional: bool,
    pub status: Status,
    pub ok: bool,
    pub duration_ms: u64,
    pub statements: Vec<StatementResult>,
    pub locks: Vec<LockHeld>,
    /// Set (to the sampler's interval) when this migration's locks were
    /// sampled — its statements ran outside a transaction, or an external
    /// tool ran it —: then `locks` is what the sampler saw, and an empty list
    /// means none observed at that resolution, not none taken. Null when
    /// they were read exactly from the session (or it did not run).
    pub locks_sampled_every_ms: Option<u64>,
    pub rewrites: Vec<Rewrite>,
    pub size_deltas: Vec<SizeDelta>,
    pub wal_bytes: Option<u64>,
    /// What the application would have waited for while it ran, per table
    /// it names (see `probes`); empty when probes were off or did not run.
    pub blocking: Vec<Blocking>,
    pub error: Option<Failure>,
    /// Filled by the reversibility check.
    pub reversible: Option<super::reversibility::Reversal>,
}

/// Marks the migrations of a measured run whose locks the sampler read:
/// every one that ran, for an external tool; those outside a transaction,
/// for a native plan.
pub fn mark_sampled(results: &mut [MigrationResult], mode: Mode) {
    let every = observer::SAMPLE_INTERVAL.as_millis() as u64;
    for r in results.iter_mut().filter(|r| r.status != Status::NotRun) {
        if !mode.is_native() || !r.transactional {
            r.locks_sampled_every_ms = Some(every);
        }
    }
}

/// A lock on a relation that existed before the plan (locks on relations the
/// plan creates block nobody).
#[derive(Debug, Clone, Serialize)]
pub struct LockHeld {
    pub relation: String,
    pub mode: String,
    pub held_ms: u64,
    /// The statement (index into `statements`) that took it.
    pub statement: Option<usize>,
    /// True when seen by the sampler (every `SAMPLE_INTERVAL`), false when read
    /// exactly from the session.
    pub sampled: bool,
    /// Set when an earlier migration of the same transaction took the lock:
    /// it was held all through this one too (`held_ms` is the whole hold).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub taken_by: Option<String>,
}

impl MigrationResult {
    pub fn new(m: &Migration) -> MigrationResult {
        MigrationResult {
            version: m.version.clone(),
            name: m.name.clone(),
            file: m.path.display().to_string(),
            transactional: m.transactional,
            status: Status::NotRun,
            ok: false,
            duration_ms: 0,
            statements: Vec::new(),
            locks: Vec::new(),
            locks_sampled_every_ms: None,
            rewrites: Vec::new(),
            size_deltas: Vec::new(),
            wal_bytes: None,
            blocking: Vec::new(),
            error: None,
            reversible: None,
        }
    }

    /// The strongest lock per relation, strongest first.
    pub fn strongest_locks(&self) -> Vec<&LockHeld> {
        let mut best: Vec<&LockHeld> = Vec::new();
        for l in &self.locks {
            match best.iter_mut().find(|b| b.relation == l.relation) {
                Some(b) if observer::strength(&l.mode) > observer::strength(&b.mode) => *b = l,
                Some(_) => {}
                None => best.push(l),
            }
        }
        best.sort_by_key(|l| std::cmp::Reverse((observer::strength(&l.mode), l.held_ms)));
        best
    }
}

/// The rehearsal's hooks into the executor: the locks each statement took
/// (its session's own `pg_locks` inside a transaction, the sampler
/// outside one), the WAL and the catalog (rewrites, sizes) after each
/// migration, and the probes' waits (`probes`). With `on = false` (a
/// catch-up replay) it measures nothing.
struct Measure<'a> {
    url: &'a ConnUrl,
    pre: &'a Catalog,
    on: bool,
    sampler: Option<Sampler>,
    pid: i32,
    versions: Vec<String>,
    /// Migrations that started, so a lock of the plan's transaction is
    /// also listed on every later one that ran while it was held.
    started: Vec<bool>,
    /// Locks taken in the open transaction: (oid, mode, taken at, migration, statement).
    open: Vec<(i64, String, Instant, usize, usize)>,
    /// When these hooks measured inside the plan's open transaction (its
    /// own locks, the WAL, the catalog, the queries' plans). Live's release
    /// does not spend that time, so it is taken out of the held times of
    /// the transaction's locks and of the probes' waits, which would
    /// otherwise grow with every measurement of every later migration.
    measuring: Vec<(Instant, Instant)>,
    seen: HashSet<(i64, String)>,
    before: Catalog,
    wal0: Option<u64>,
    locks: Vec<Vec<LockHeld>>,
    rewrites: Vec<Vec<Rewrite>>,
    size_deltas: Vec<Vec<SizeDelta>>,
    wal_bytes: Vec<Option<u64>>,
    /// The tables each migration names, probed while the plan runs (empty
    /// when probes are off).
    named: Vec<Vec<Probed>>,
    probes: Option<Probes>,
    /// The plan's locks and statements, to blame each wait on one.
    held: Vec<Held>,
    ran: Vec<Ran>,
    /// The queries explained after each migration (see `queries`).
    trail: Option<&'a mut Trail>,
}

impl Measure<'_> {
    fn q(&self) -> impl Fn(sqlx::Error) -> PgError + use<> {
        let url = self.url.redacted();
        move |source| PgError::Query { url: url.clone(), source }
    }
}

impl Hooks for Measure<'_> {
    type Error = PgError;

    async fn plan_started(&mut self, conn: &mut PgConnection, mode: Mode) -> Result<(), PgError> {
        if !self.on {
            return Ok(());
        }
        let q = self.q();
        if mode != Mode::SingleTransaction {
            self.sampler = Some(Sampler::start(self.url).await?);
        }
        self.pid = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *conn).await.map_err(&q)?;
        self.before = Catalog::capture(conn).await.map_err(&q)?;
        let tables: Vec<Probed> = self.named.iter().flatten().cloned().collect();
        if !tables.is_empty() {
            // Without probes the plan is still measured; the report then
            // has no `blocking` (not zeros).
            match Probes::start(self.url, &tables).await {
                Ok(p) => self.probes = Some(p),
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot start the probes; the plan runs without them.");
                    self.named.clear();
                }
            }
        }
        Ok(())
    }

    async fn migration_started(
        &mut self,
        conn: &mut PgConnection,
        i: usize,
        _m: &Migration,
        in_tx: bool,
    ) -> Result<(), PgError> {
        self.started[i] = true;
        if !self.on {
            return Ok(());
        }
        let t0 = Instant::now();
        let q = self.q();
        if in_tx {
            // What the session holds already (measurement reads) is not the migration's.
            self.seen.extend(observer::own_locks(conn).await.map_err(&q)?);
        }
        self.wal0 = Some(observer::wal_position(conn).await.map_err(&q)?);
        if in_tx {
            self.measuring.push((t0, Instant::now()));
        }
        Ok(())
    }

    async fn statement_done(
        &mut self,
        conn: &mut PgConnection,
        i: usize,
        s: usize,
        in_tx: bool,
        at: Instant,
        took: Duration,
    ) -> Result<(), PgError> {
        if !self.on {
            return Ok(());
        }
        self.ran.push(Ran { migration: i, statement: s, from: at, to: at + took });
        if in_tx {
            let t0 = Instant::now();
            for lock in observer::own_locks(conn).await.map_err(self.q())? {
                if self.seen.insert(lock.clone()) {
                    self.open.push((lock.0, lock.1, at, i, s));
                }
            }
            self.measuring.push((t0, Instant::now()));
        } else if let Some(sampler) = &self.sampler {
            for l in sampler.held(at, Instant::now() + observer::SAMPLE_INTERVAL, Some(self.pid)) {
                let (oid, mode) = (l.oid, l.mode.clone());
                self.held.push(Held { oid, mode, from: at, to: at + took, migration: i, statement: s });
                if let Some(rel) = self.pre.get(l.oid).filter(|r| r.is_table()) {
                    self.locks[i].push(LockHeld {
                        relation: rel.qualified(),
                        held_ms: l.held_ms().min(took.as_millis() as u64 + 1),
                        mode: l.mode,
                        statement: Some(s),
                        sampled: true,
                        taken_by: None,
                    });
                }
            }
        }
        Ok(())
    }

    /// Locks of a transaction end at its commit (or rollback): their held
    /// time runs from the statement that took them until `end`. In a plan
    /// run as one transaction, a lock taken by one migration is also listed
    /// on every later migration that ran while it was held (PostgreSQL does
    /// not show a lock taken again, so this is the only way to see it there).
    fn transaction_ended(&mut self, end: Instant) {
        self.seen.clear();
        for (oid, mode, at, mig, stmt) in std::mem::take(&mut self.open) {
            self.held.push(Held { oid, mode: mode.clone(), from: at, to: end, migration: mig, statement: stmt });
            let Some(rel) = self.pre.get(oid).filter(|r| r.is_table()) else { continue };
            let lock = LockHeld {
                relation: rel.qualified(),
                mode,
                held_ms: (end - at).saturating_sub(measuring_within(&self.measuring, at, end)).as_millis() as u64,
                statement: Some(stmt),
                sampled: false,
                taken_by: None,
            };
            let taker = self.versions[mig].clone();
            for later in mig + 1..self.locks.len() {
                if self.started[later] {
                    self.locks[later].push(LockHeld { statement: None, taken_by: Some(taker.clone()), ..lock.clone() });
                }
            }
            self.locks[mig].push(lock);
        }
    }

    async fn migration_done(
        &mut self,
        conn: &mut PgConnection,
        i: usize,
        _m: &Migration,
        committed: bool,
    ) -> Result<(), PgError> {
        if !self.on {
            return Ok(());
        }
        let t0 = Instant::now();
        let q = self.q();
        if let Some(w0) = self.wal0 {
            self.wal_bytes[i] = Some(observer::wal_position(conn).await.map_err(&q)?.saturating_sub(w0));
        }
        let after = Catalog::capture(conn).await.map_err(&q)?;
        let (rewrites, deltas) = observer::compare(&self.before, &after);
        self.rewrites[i] = rewrites;
        self.size_deltas[i] = deltas;
        self.before = after;
        if let Some(trail) = self.trail.as_deref_mut() {
            trail.after_migration(conn, i, !committed).await;
        }
        if !committed {
            self.measuring.push((t0, Instant::now()));
        }
        Ok(())
    }
}

/// How much of `from..to` the measurement `spans` (disjoint) cover.
fn measuring_within(spans: &[(Instant, Instant)], from: Instant, to: Instant) -> Duration {
    spans.iter().map(|&(a, b)| b.min(to).saturating_duration_since(a.max(from))).sum()
}

/// Runs a native plan on `conn` through the executor, exactly as the
/// release will (one transaction when every migration is transactional,
/// so a lock is held until the plan commits), without lock-timeout retries
/// (see `migrations::executor`). Measures when `measure`, with probes
/// (`probes`) when `probe`, explaining `trail`'s queries after each
/// migration when given. Returns one result per migration and whether the
/// whole plan applied.
#[allow(clippy::too_many_arguments)]
pub async fn run_native(
    conn: &mut PgConnection,
    url: &ConnUrl,
    kind: MigrationKind,
    table: &str,
    plan: &[Migration],
    pre: &Catalog,
    measure: bool,
    probe: bool,
    trail: Option<&mut Trail>,
) -> Result<(Vec<MigrationResult>, bool), PgError> {
    let n = plan.len();
    let named = if measure && probe {
        probes::tables(conn, plan).await.map_err(|source| PgError::Query { url: url.redacted(), source })?
    } else {
        Vec::new()
    };
    let mut hooks = Measure {
        url,
        pre,
        on: measure,
        sampler: None,
        pid: 0,
        versions: plan.iter().map(|m| m.version.clone()).collect(),
        started: vec![false; n],
        open: Vec::new(),
        measuring: Vec::new(),
        seen: HashSet::new(),
        before: Catalog::default(),
        wal0: None,
        locks: vec![Vec::new(); n],
        rewrites: vec![Vec::new(); n],
        size_deltas: vec![Vec::new(); n],
        wal_bytes: vec![None; n],
        named,
        probes: None,
        held: Vec::new(),
        ran: Vec::new(),
        trail,
    };
    let executor = Executor { kind, table, retry: Retry::NONE, place: "the scratch copy" };
    let ran = executor.run(conn, plan, &mut hooks).await;
    if let Some(s) = hooks.sampler.take() {
        s.stop().await;
    }
    let mut waits = match hooks.probes.take() {
        Some(p) => {
            // A table left out (past `MAX_TABLES`) is not reported as waiting 0.
            for list in &mut hooks.named {
                list.retain(|t| p.probed.contains(&t.oid));
            }
            p.stop().await
        }
        None => Vec::new(),
    };
    let run = ran?;
    for w in &mut waits {
        w.to -= measuring_within(&hooks.measuring, w.from, w.to);
    }
    let mut blocking = if hooks.named.is_empty() {
        vec![Vec::new(); n]
    } else {
        let sql = |mig: usize, stmt: usize| {
            let steps = run.steps.get(mig)?;
            steps.statements.iter().find(|s| s.index == stmt).map(|s| s.sql.clone())
        };
        probes::blocking(&hooks.named, &waits, &hooks.held, &hooks.ran, sql)
    };
    let ok = run.ok();
    let mut results = Vec::with_capacity(n);
    for (i, (m, step)) in plan.iter().zip(run.steps).enumerate() {
        let mut r = MigrationResult::new(m);
        r.status = step.status;
        // A migration rolled back with the plan's transaction ran fine itself.
        r.ok = matches!(step.status, Status::Applied | Status::RolledBack);
        r.duration_ms = step.duration_ms;
        r.statements = step.statements;
        r.error = step.failure.or_else(|| step.error.map(|e| Failure::of_file(r.file.clone(), e)));
        r.locks = std::mem::take(&mut hooks.locks[i]);
        r.rewrites = std::mem::take(&mut hooks.rewrites[i]);
        r.size_deltas = std::mem::take(&mut hooks.size_deltas[i]);
        r.wal_bytes = hooks.wal_bytes[i];
        if step.status != Status::NotRun {
            r.blocking = std::mem::take(&mut blocking[i]);
        }
        results.push(r);
    }
    Ok((results, ok))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measuring_within_counts_only_the_overlap() {
        let t = Instant::now();
        let at = |ms| t + Duration::from_millis(ms);
        let spans = [(at(10), at(20)), (at(30), at(60))];
        assert_eq!(measuring_within(&spans, at(0), at(100)), Duration::from_millis(40));
        assert_eq!(measuring_within(&spans, at(15), at(40)), Duration::from_millis(15));
        assert_eq!(measuring_within(&spans, at(60), at(70)), Duration::ZERO);
        assert_eq!(measuring_within(&[], at(0), at(100)), Duration::ZERO);
    }
}
