//! Lint of dangerous operations, weighted by what the rehearsal measured on
//! real data. The statement tells what kind of danger it is (`migrations::classify`); the
//! shadow's table sizes and the measured locks, durations, rewrites and
//! the probes' waits (`blocking`) say how bad it is here. A finding names the statement, the lock, the table's
//! size and the measured effect. Findings are warnings unless the target's
//! `lint.deny` lists the rule; `lint.allow` silences one.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::observer::{Catalog, human_mode, strength};
use super::runner::{LockHeld, MigrationResult};
use crate::config::LintConfig;
use crate::format::{human_bytes, secs};
use crate::lint_rule::{LintRule, Severity};
use crate::migrations::classify::{self, ConstraintKind, Op};
use crate::migrations::{Migration, split};

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub rule: LintRule,
    /// `warning`, or `error` when the rule is denied.
    pub severity: Severity,
    pub migration: String,
    pub statement: Option<usize>,
    pub line: Option<usize>,
    pub sql: Option<String>,
    pub relation: Option<String>,
    pub lock: Option<String>,
    pub table_bytes: Option<i64>,
    pub table_rows: Option<i64>,
    /// What the rehearsal measured, in words.
    pub effect: Option<String>,
    pub message: String,
}

/// Lints a plan with its measurements. `lock_timeout_ms` is what the
/// release will set (0 = none).
pub fn lint(
    plan: &[Migration],
    results: &[MigrationResult],
    pre: &Catalog,
    lock_timeout_ms: u128,
    config: &LintConfig,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut validated_not_null: HashSet<(String, String)> = HashSet::new();
    let mut pending_checks: HashMap<String, (String, String)> = HashMap::new();
    for (m, r) in plan.iter().zip(results) {
        let mut cx = Cx { m, r, pre, out: Vec::new() };
        let statements = statements_of(m);
        let sets_lock_timeout = statements.iter().any(|s| {
            classify::classify(&s.sql).iter().any(|o| matches!(o, Op::SetLockTimeout { value } if !is_zero(value)))
        });
        for (i, stmt) in statements.iter().enumerate() {
            let index = (!m.up_sql.is_empty()).then_some(i);
            for op in classify::classify(&stmt.sql) {
                let at = At { index, line: Some(stmt.line), sql: &stmt.sql };
                match op {
                    Op::CreateIndex { table, concurrently: false, .. } => {
                        if let Some(size) = cx.size(&table).filter(|s| s.rows > 0) {
                            let effect = cx.lock_effect(index, &table);
                            cx.push(LintRule::IndexNotConcurrent, &at, &table, Some("SHARE"), Some(size), effect.clone(), format!(
                                "CREATE INDEX on `{table}` ({}) without CONCURRENTLY blocks writes to it for the whole build{}; use CREATE INDEX CONCURRENTLY in a migration that runs outside a transaction",
                                size.describe(), effect.map(|e| format!(" ({e})")).unwrap_or_default()));
                        }
                    }
                    Op::AddColumn { table, column, default, volatile_default: true, .. } => {
                        let default = default
                            .map_or("a value per row (serial, identity or generated column)".to_string(), |d| {
                                format!("`{d}`")
                            });
                        if let Some(size) = cx.size(&table).filter(|s| s.rows > 0) {
                            let effect = cx.rewrite_effect(index, &table);
                            let what = effect.clone().unwrap_or_else(|| {
                                format!("rewrites `{table}` ({}) under ACCESS EXCLUSIVE", size.describe())
                            });
                            cx.push(LintRule::VolatileDefault, &at, &table, Some("ACCESS EXCLUSIVE"), Some(size), effect, format!(
                                "ADD COLUMN `{column}` with the volatile default {default} {what}; add the column without a default, backfill in batches, then set the default"));
                        }
                    }
                    Op::AlterColumnType { table, column, new_type } => {
                        if let (Some(size), Some(effect)) = (cx.size(&table), cx.rewrite_effect(index, &table))
                            && cx.rewritten(&table)
                        {
                            cx.push(LintRule::TypeChangeRewrite, &at, &table, Some("ACCESS EXCLUSIVE"), Some(size), Some(effect.clone()), format!(
                                "ALTER COLUMN `{column}` TYPE {new_type} {effect}; reads and writes of `{table}` wait meanwhile. Add a new column, backfill it in batches and switch over instead"));
                        }
                    }
                    Op::SetNotNull { table, column } => {
                        if validated_not_null.contains(&(table.clone(), column.clone())) {
                            continue;
                        }
                        if let Some(size) = cx.size(&table).filter(|s| s.rows > 0) {
                            let effect = cx.lock_effect(index, &table);
                            cx.push(LintRule::SetNotNull, &at, &table, Some("ACCESS EXCLUSIVE"), Some(size), effect.clone(), format!(
                                "SET NOT NULL on `{table}.{column}` scans `{table}` ({}) under ACCESS EXCLUSIVE{}; first add CHECK ({column} IS NOT NULL) NOT VALID, VALIDATE CONSTRAINT it, then SET NOT NULL (PostgreSQL then skips the scan)",
                                size.describe(), effect.map(|e| format!(" ({e})")).unwrap_or_default()));
                        }
                    }
                    Op::AddConstraint { table, name, kind, not_valid, check_not_null_of, .. } => {
                        if let Some(col) = check_not_null_of {
                            if not_valid {
                                if let Some(n) = &name {
                                    pending_checks.insert(n.clone(), (table.clone(), col));
                                }
                            } else {
                                validated_not_null.insert((table.clone(), col));
                            }
                        }
                        let validates =
                            matches!(kind, ConstraintKind::ForeignKey | ConstraintKind::Check) && !not_valid;
                        if let Some(size) = cx.size(&table).filter(|s| validates && s.rows > 0) {
                            let what = if kind == ConstraintKind::ForeignKey { "FOREIGN KEY" } else { "CHECK" };
                            let lock = if kind == ConstraintKind::ForeignKey {
                                "SHARE ROW EXCLUSIVE"
                            } else {
                                "ACCESS EXCLUSIVE"
                            };
                            let effect = cx.lock_effect(index, &table);
                            cx.push(LintRule::ConstraintValidated, &at, &table, Some(lock), Some(size), effect.clone(), format!(
                                "ADD {what} on `{table}` checks all {} rows under {lock}{}; add it NOT VALID, then VALIDATE CONSTRAINT in a later migration (that takes only SHARE UPDATE EXCLUSIVE)",
                                size.rows, effect.map(|e| format!(" ({e})")).unwrap_or_default()));
                        }
                    }
                    Op::ValidateConstraint { name, .. } => {
                        if let Some(tc) = pending_checks.remove(&name) {
                            validated_not_null.insert(tc);
                        }
                    }
                    // Dropping what the plan itself created loses nothing.
                    Op::DropColumn { table, column } if cx.size(&table).is_some() => {
                        let size = cx.size(&table);
                        cx.push(LintRule::DropColumn, &at, &table, Some("ACCESS EXCLUSIVE"), size, None, format!(
                            "DROP COLUMN `{table}.{column}` destroys its data{}; application code still reading it fails — deploy code that no longer uses it first",
                            size.map(|s| format!(" in {} rows", s.rows)).unwrap_or_default()));
                    }
                    Op::DropTable { tables } => {
                        let existing: Vec<String> = tables.into_iter().filter(|t| cx.size(t).is_some()).collect();
                        for table in existing {
                            let size = cx.size(&table);
                            cx.push(LintRule::DropTable, &at, &table, Some("ACCESS EXCLUSIVE"), size, None, format!(
                                "DROP TABLE `{table}` destroys its data{}; make sure a verified snapshot exists and no code uses it",
                                size.map(|s| format!(" ({})", s.describe())).unwrap_or_default()));
                        }
                    }
                    Op::RenameTable { table, to } if cx.size(&table).is_some() => {
                        cx.push(LintRule::Rename, &at, &table, Some("ACCESS EXCLUSIVE"), None, None, format!(
                            "RENAME `{table}` TO `{to}`: running application code that uses the old name fails until new code is deployed; consider a view with the old name during the switch"));
                    }
                    Op::RenameColumn { table, from, to } if cx.size(&table).is_some() => {
                        cx.push(LintRule::Rename, &at, &table, Some("ACCESS EXCLUSIVE"), None, None, format!(
                            "RENAME COLUMN `{table}.{from}` TO `{to}`: running application code that uses the old name fails until new code is deployed; add the new column and migrate in steps instead"));
                    }
                    _ => {}
                }
            }
        }
        if lock_timeout_ms == 0 && !sets_lock_timeout {
            let exclusive =
                r.locks.iter().find(|l| l.mode == "AccessExclusiveLock" && pre.by_name(&l.relation).is_some());
            if let Some(l) = exclusive {
                let at = At { index: l.statement, line: None, sql: "" };
                cx.push(LintRule::MissingLockTimeout, &at, &l.relation.clone(), Some("ACCESS EXCLUSIVE"), cx.size(&l.relation), None, format!(
                    "takes ACCESS EXCLUSIVE on `{}` with no lock_timeout: if a long query holds a lock on it, this migration waits and every query behind it waits too; set `lock_timeout` for the target or SET lock_timeout in the migration",
                    l.relation));
            }
        }
        // Rewrites the statements do not explain (external runners, DO blocks…).
        let explained: HashSet<String> = cx.out.iter().filter_map(|f| f.relation.clone()).collect();
        for rw in r.rewrites.iter().filter(|rw| rw.kind == "table" && !explained.contains(&rw.relation)) {
            let Some(size) = cx.size(&rw.relation).filter(|s| s.rows > 0) else { continue };
            let effect = cx.rewrite_effect(None, &rw.relation);
            let at = At { index: None, line: None, sql: "" };
            let message = effect.clone().unwrap_or_else(|| format!("rewrites `{}` ({})", rw.relation, size.describe()));
            cx.push(
                LintRule::TableRewrite,
                &at,
                &rw.relation.clone(),
                Some("ACCESS EXCLUSIVE"),
                Some(size),
                effect,
                message,
            );
        }
        // Waits the probes measured that no finding above explains (a LOCK
        // TABLE, a long transaction, a statement the classifier does not know).
        let explained: HashSet<String> = cx.out.iter().filter_map(|f| f.relation.clone()).collect();
        for b in r.blocking.iter().filter(|b| b.reads_blocked_ms.max(b.writes_blocked_ms) >= BLOCKS_TRAFFIC_MS) {
            if explained.iter().any(|e| same(e, &b.relation)) {
                continue;
            }
            let sql = b.statement.clone().unwrap_or_default();
            let index = r.statements.iter().find(|s| s.sql == sql).map(|s| s.index);
            let line = r.statements.iter().find(|s| s.sql == sql).map(|s| s.line);
            let at = At { index, line, sql: &sql };
            let size = cx.size(&b.relation);
            let by = if sql.is_empty() { String::new() } else { format!(" behind `{sql}`") };
            cx.push(LintRule::BlocksTraffic, &at, &b.relation.clone(), None, size, None, format!(
                "the application's traffic to `{}` would queue{by} on live; shorten what holds the lock, or move it to a quieter window",
                b.relation));
        }
        out.append(&mut cx.out);
    }
    out.retain(|f| !config.allow.contains(&f.rule));
    for f in &mut out {
        if config.deny.contains(&f.rule) {
            f.severity = Severity::Error;
        }
    }
    out
}

/// Shorter waits are not quoted in findings: a probe's round trip on a busy
/// copy, or a catalog change's instant of ACCESS EXCLUSIVE.
const WAIT_WORTH_TELLING_MS: u64 = 50;

/// Waits from this long up are a `blocks_traffic` finding.
const BLOCKS_TRAFFIC_MS: u64 = 1000;

fn is_zero(v: &str) -> bool {
    let v = v.trim_matches(|c| c == '\'' || c == '"').trim();
    v == "0" || v.eq_ignore_ascii_case("0ms") || v.eq_ignore_ascii_case("0s")
}

/// The SQL the linter reads: the file for native sources; for Payload, the
/// SQL inside its `sql\`…\`` templates.
fn statements_of(m: &Migration) -> Vec<split::Statement> {
    if !m.up_sql.is_empty() {
        return split::split(&m.up_sql);
    }
    let Ok(text) = std::fs::read_to_string(&m.path) else { return Vec::new() };
    // Only the `up` function: the `down` below it is not part of the plan.
    let from = text.find("function up").unwrap_or(0);
    let to = text[from..].find("function down").map_or(text.len(), |i| from + i);
    let mut out = Vec::new();
    for (start, _) in text[from..to].match_indices("sql`").map(|(i, s)| (from + i, s)) {
        let body = &text[start + 4..];
        if let Some(end) = body.find('`') {
            let line = text[..start].matches('\n').count() + 1;
            for mut s in split::split(&body[..end]) {
                s.line += line - 1;
                out.push(s);
            }
        }
    }
    out
}

#[derive(Clone, Copy)]
struct Size {
    bytes: i64,
    rows: i64,
}

impl Size {
    fn describe(&self) -> String {
        format!("{}, {} rows", human_bytes(self.bytes.max(0) as u64), self.rows)
    }
}

struct At<'a> {
    index: Option<usize>,
    line: Option<usize>,
    sql: &'a str,
}

struct Cx<'a> {
    m: &'a Migration,
    r: &'a MigrationResult,
    pre: &'a Catalog,
    out: Vec<Finding>,
}

impl Cx<'_> {
    /// Size before the plan; None for tables the plan creates.
    fn size(&self, table: &str) -> Option<Size> {
        self.pre.by_name(table).map(|r| Size { bytes: r.bytes, rows: r.rows.round() as i64 })
    }

    fn rewritten(&self, table: &str) -> bool {
        self.r.rewrites.iter().any(|rw| rw.kind == "table" && same(&rw.relation, table))
    }

    /// The strongest lock on `table` held while statement `index` ran (the
    /// whole migration when `None`) — not only the ones it took: PostgreSQL
    /// lists a lock once, so a statement that needs ACCESS EXCLUSIVE after an
    /// earlier one took it shows no new lock of that mode.
    fn strongest(&self, index: Option<usize>, table: &str) -> Option<&LockHeld> {
        self.r
            .locks
            .iter()
            .filter(|l| same(&l.relation, table) && index.is_none_or(|i| held_during(l, i)))
            .max_by_key(|l| (strength(&l.mode), l.held_ms))
    }

    /// What the probes measured on `table` during this migration: "reads of
    /// `orders` would wait 41 s, writes 41 s"; None when nothing waited
    /// [`WAIT_WORTH_TELLING_MS`] or more.
    fn waits(&self, table: &str) -> Option<String> {
        let b = self.r.blocking.iter().find(|b| same(&b.relation, table))?;
        let (r, w) = (b.reads_blocked_ms, b.writes_blocked_ms);
        match (r >= WAIT_WORTH_TELLING_MS, w >= WAIT_WORTH_TELLING_MS) {
            (false, false) => None,
            (true, false) => Some(format!("reads of `{}` would wait {}", b.relation, secs(r))),
            (false, true) => Some(format!("writes to `{}` would wait {}", b.relation, secs(w))),
            (true, true) => Some(format!("reads of `{}` would wait {}, writes {}", b.relation, secs(r), secs(w))),
        }
    }

    fn duration_ms(&self, index: Option<usize>) -> u64 {
        index.and_then(|i| self.r.statements.get(i)).map_or(self.r.duration_ms, |s| s.duration_ms)
    }

    /// "held SHARE on `orders` for 3.2 s (statement ran 3.1 s)".
    fn lock_effect(&self, index: Option<usize>, table: &str) -> Option<String> {
        let l = self.strongest(index, table)?;
        Some(format!(
            "measured: {} on `{}` held {} (statement ran {})",
            human_mode(&l.mode),
            l.relation,
            secs(l.held_ms),
            secs(self.duration_ms(index))
        ))
    }

    /// "rewrites `orders` (2.1 GB) under ACCESS EXCLUSIVE for 41 s".
    fn rewrite_effect(&self, index: Option<usize>, table: &str) -> Option<String> {
        let rw = self.r.rewrites.iter().find(|rw| rw.kind == "table" && same(&rw.relation, table))?;
        let held = self.strongest(index, table).map(|l| (human_mode(&l.mode), l.held_ms));
        let (mode, ms) = held.unwrap_or(("ACCESS EXCLUSIVE".into(), self.duration_ms(index)));
        Some(format!(
            "rewrites `{}` ({}) under {mode} for {}",
            rw.relation,
            human_bytes(rw.bytes_before.max(0) as u64),
            secs(ms)
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        rule: LintRule,
        at: &At,
        table: &str,
        lock: Option<&str>,
        size: Option<Size>,
        effect: Option<String>,
        message: String,
    ) {
        let (effect, message) = match self.waits(table) {
            Some(w) => (
                Some(effect.map_or_else(|| w.clone(), |e| format!("{e}; {w}"))),
                format!("{message}. Probes measured: {w}"),
            ),
            None => (effect, message),
        };
        self.out.push(Finding {
            rule,
            severity: Severity::Warning,
            migration: self.m.version.clone(),
            statement: at.index,
            line: at.line,
            sql: (!at.sql.is_empty()).then(|| super::runner::excerpt(at.sql)),
            relation: Some(table.to_string()),
            lock: lock.map(str::to_string),
            table_bytes: size.map(|s| s.bytes),
            table_rows: size.map(|s| s.rows),
            effect,
            message,
        });
    }
}

/// Whether `l` was held while statement `i` of its migration ran: taken by
/// it; taken by an earlier statement in the same transaction (exact locks
/// are held until commit; sampled ones were seen outside a transaction,
/// where a statement's locks end with it); or taken by an earlier migration
/// of the plan's transaction.
fn held_during(l: &LockHeld, i: usize) -> bool {
    l.taken_by.is_some() || l.statement.is_some_and(|s| s == i || (!l.sampled && s < i))
}

/// `public.orders` and `orders` name the same table.
fn same(a: &str, b: &str) -> bool {
    a.strip_prefix("public.").unwrap_or(a) == b.strip_prefix("public.").unwrap_or(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrations::Down;

    fn orders() -> Catalog {
        let rel = super::super::observer::Relation {
            oid: 16400,
            schema: "public".into(),
            name: "orders".into(),
            kind: 'r',
            filenode: 16400,
            bytes: 10 << 20,
            rows: 50_000.0,
        };
        Catalog([(rel.oid, rel)].into_iter().collect())
    }

    fn held(mode: &str, statement: usize, held_ms: u64, sampled: bool) -> LockHeld {
        LockHeld {
            relation: "orders".into(),
            mode: mode.into(),
            held_ms,
            statement: Some(statement),
            sampled,
            taken_by: None,
        }
    }

    #[test]
    fn a_type_change_names_the_strongest_lock_held_not_the_strongest_it_took() {
        let sql =
            "ALTER TABLE orders ADD COLUMN note text;\nALTER TABLE orders ALTER COLUMN amount TYPE numeric(14,2);";
        let m = Migration {
            version: "3".into(),
            name: "widen".into(),
            path: "3_widen.up.sql".into(),
            up_sql: sql.into(),
            checksum: String::new(),
            transactional: true,
            down: Down::Missing,
        };
        let mut r = MigrationResult::new(&m);
        // Statement 0 took ACCESS EXCLUSIVE (held until commit); statement 1
        // shows only the SHARE lock that was new to the session.
        r.locks = vec![held("AccessExclusiveLock", 0, 900, false), held("ShareLock", 1, 700, false)];
        r.rewrites = vec![super::super::observer::Rewrite {
            relation: "orders".into(),
            kind: "table",
            bytes_before: 10 << 20,
            bytes_after: 12 << 20,
        }];
        let findings = lint(&[m], &[r], &orders(), 3000, &LintConfig { deny: Vec::new(), allow: Vec::new() });
        let f = findings.iter().find(|f| f.rule == LintRule::TypeChangeRewrite).expect("a type-change finding");
        assert!(f.message.contains("rewrites `orders` (10.0 MiB) under ACCESS EXCLUSIVE for 900 ms"), "{}", f.message);
        assert!(!f.message.contains("under SHARE"), "{}", f.message);
    }

    #[test]
    fn a_sampled_lock_of_an_earlier_statement_was_not_held_during_a_later_one() {
        // Outside a transaction a statement's locks end with it.
        assert!(!held_during(&held("AccessExclusiveLock", 0, 20, true), 1));
        assert!(held_during(&held("AccessExclusiveLock", 0, 20, false), 1));
        assert!(held_during(&held("ShareLock", 1, 20, true), 1));
        assert!(!held_during(&held("ShareLock", 2, 20, false), 1), "a later statement's lock was not held yet");
    }

    #[test]
    fn payload_files_are_linted_on_their_up_function_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("20240101_000000_x.ts");
        std::fs::write(
            &path,
            "import { sql } from '@payloadcms/db-postgres'\n\
             export async function up({ db }) {\n  await db.execute(sql`\n   CREATE INDEX a_idx ON posts (a);`)\n}\n\
             export async function down({ db }) {\n  await db.execute(sql`DROP TABLE posts;`)\n}\n",
        )
        .unwrap();
        let m = Migration {
            version: "x".into(),
            name: "x".into(),
            path,
            up_sql: String::new(),
            checksum: String::new(),
            transactional: true,
            down: Down::Tool,
        };
        let stmts = statements_of(&m);
        assert_eq!(stmts.len(), 1, "{:?}", stmts.iter().map(|s| &s.sql).collect::<Vec<_>>());
        assert_eq!(stmts[0].sql, "CREATE INDEX a_idx ON posts (a)");
        assert_eq!(stmts[0].line, 4, "the line in the .ts file");
    }
}
