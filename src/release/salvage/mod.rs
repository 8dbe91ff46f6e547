//! `pgrehearse salvage RELEASE_ID [-o FILE] [--apply]`: puts the writes a
//! restore stranded back into live.
//!
//! A release that ended `restored` keeps the failed database
//! (`<db>_failed_<release>`), and in it the list of the rows other sessions
//! inserted, updated or deleted on live between the pre-release snapshot
//! and the swap (see [`crate::stranded`]). Salvage reads that list and the
//! rows themselves from the kept database, checks each against live, and
//! writes SQL that puts them into live in one transaction (`script.rs`):
//! inserts with `ON CONFLICT DO NOTHING`, updates and deletes by primary key,
//! each guarded by the row's digest as the restore left it. A row with a
//! value in a column live no longer has is refused; an update or delete of
//! a row live changed since the restore is a conflict: both are skipped and
//! listed, never forced. Tables without an exact list are named, and their
//! differing rows exported as data for a person.
//!
//! `--apply` runs the same statements against live under the target's
//! heavy-job lock, in one transaction, counts what each did, and journals
//! the salvage in the release's record (`releases ID` shows it).

mod error;
mod list;
mod script;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sqlx::Connection;
use sqlx::postgres::PgConnection;

use crate::config::Target;
use crate::pg::lock::HeavyLock;
use crate::pg::{self, ConnUrl, PgError};
use crate::state::{Outcome, State, Step};
use crate::stranded::Op;
pub use error::SalvageError;
use list::{Decision, Listed};
use script::Statement;

/// What `salvage` is asked to do.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Write the SQL to this file (must not exist); stdout otherwise.
    pub output: Option<PathBuf>,
    /// Run it against live.
    pub apply: bool,
}

/// What `salvage --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Salvage {
    pub release_id: String,
    /// The database the stranded rows are kept in.
    pub kept_in: String,
    /// Live's database.
    pub database: String,
    /// Whether the rows were written to live (`--apply`); otherwise the
    /// counts are what the SQL would do.
    pub applied: bool,
    pub output: Option<PathBuf>,
    pub tables: Vec<TableSalvage>,
    pub skipped: Vec<Skipped>,
    pub unknown: Vec<Unknown>,
    /// The SQL, when neither `-o` nor `--apply` was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
}

impl Salvage {
    /// Whether a person must look: rows were skipped, or tables could not
    /// be salvaged by key.
    pub fn needs_a_person(&self) -> bool {
        !self.skipped.is_empty() || !self.unknown.is_empty()
    }
}

/// Per table: rows put into live (or to be), and rows live already held as
/// the kept database does.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TableSalvage {
    pub table: String,
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    pub already_present: u64,
}

/// A stranded row salvage did not put into live.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub table: String,
    pub op: Op,
    /// The row's primary key.
    pub key: serde_json::Value,
    pub reason: SkipReason,
    pub detail: String,
}

/// Why a row was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// Live changed (or deleted, or holds another) row with this key since the restore.
    Conflict,
    /// A value in a column live no longer has (or live lacks a key column).
    ColumnsMissing,
    /// Live no longer has the table.
    TableMissing,
    /// The kept database does not hold the row as its list says.
    ListStale,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Conflict => "conflict",
            SkipReason::ColumnsMissing => "columns_missing",
            SkipReason::TableMissing => "table_missing",
            SkipReason::ListStale => "list_stale",
        }
    }
}

/// A table whose stranded writes are not listed by key: named, with how
/// many whole rows differ between the kept database and live.
#[derive(Debug, Clone, Serialize)]
pub struct Unknown {
    pub table: String,
    pub reason: String,
    pub rows_only_in_kept: Option<u64>,
    pub rows_only_in_live: Option<u64>,
}

/// One salvage run as the release's journal records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SalvageRun {
    #[serde(default)]
    pub at: String,
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    pub skipped: u64,
}

impl SalvageRun {
    /// The runs recorded in a release's journal, oldest first.
    pub fn from_journal(journal: &[crate::state::JournalEntry]) -> Vec<SalvageRun> {
        journal
            .iter()
            .filter(|e| e.step == Step::Salvaged)
            .filter_map(|e| {
                let mut run: SalvageRun = serde_json::from_str(e.detail.as_deref()?).ok()?;
                run.at = e.at.clone();
                Some(run)
            })
            .collect()
    }
}

const APP: &str = "pgrehearse-salvage";

/// `pgrehearse salvage`: see the module doc.
pub async fn salvage(state: &State, target: &Target, id: &str, opts: &Options) -> Result<Salvage, SalvageError> {
    let rec = state
        .release(id)
        .await?
        .filter(|r| r.target == target.name)
        .ok_or_else(|| SalvageError::UnknownRelease { target: target.name.clone(), id: id.into() })?;
    if rec.outcome != Outcome::Restored {
        return Err(SalvageError::NotRestored { id: rec.id, outcome: rec.outcome });
    }
    let kept_in = rec.failed_database.clone().unwrap_or_default();
    if let Some(path) = opts.output.as_ref().filter(|p| p.exists()) {
        return Err(SalvageError::OutputExists { path: path.clone() });
    }
    let admin = target.admin();
    let maintenance = admin.with_database("postgres");
    let mut server = pg::connect(&maintenance, APP).await?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(&kept_in)
        .fetch_one(&mut server)
        .await
        .map_err(list::query_err(&maintenance))?;
    let _ = server.close().await;
    if kept_in.is_empty() || !exists {
        return Err(SalvageError::KeptGone { id: rec.id, database: kept_in });
    }
    let kept_url = admin.with_database(&kept_in);
    let mut kept = pg::connect(&kept_url, APP).await?;
    if !list::has_list(&mut kept, &kept_url).await? {
        return Err(SalvageError::NoList { database: kept_in });
    }
    let lock = match opts.apply {
        true => Some(HeavyLock::for_target(admin, &target.name, "salvage").await?),
        false => None,
    };
    let live_url = &target.live_url;
    let mut live = pg::connect(live_url, APP).await?;
    let export = !opts.apply || opts.output.is_some();
    let mut s = Salvage {
        release_id: rec.id.clone(),
        kept_in,
        database: live_url.database(),
        applied: opts.apply,
        output: opts.output.clone(),
        tables: Vec::new(),
        skipped: Vec::new(),
        unknown: Vec::new(),
        sql: None,
    };
    let result = if opts.apply {
        let mut tx = live.begin().await.map_err(list::query_err(live_url))?;
        let planned = plan(&mut kept, &kept_url, &mut tx, live_url, export, &mut s).await;
        match planned {
            Ok((statements, rows)) => {
                prepare(&mut tx, live_url, target).await?;
                run(&mut tx, &statements, &mut s).await?;
                tx.commit().await.map_err(list::query_err(live_url))?;
                Ok((statements, rows))
            }
            Err(e) => Err(e),
        }
    } else {
        plan(&mut kept, &kept_url, &mut live, live_url, export, &mut s).await
    };
    if let Some(lock) = lock {
        lock.release().await;
    }
    let (statements, unknown_rows) = result?;
    if export {
        let text = script::file(&s, &statements, &unknown_rows);
        match &opts.output {
            Some(path) => write_new(path, &text)?,
            None => s.sql = Some(text),
        }
    }
    if opts.apply {
        record(state, &s).await?;
    }
    Ok(s)
}

/// Reads the list and every stranded row, decides each against live, and
/// returns the statements in the order they run (and the kept-only rows of
/// the tables without an exact list, when `export`).
async fn plan(
    kept: &mut PgConnection,
    kept_url: &ConnUrl,
    live: &mut PgConnection,
    live_url: &ConnUrl,
    export: bool,
    s: &mut Salvage,
) -> Result<(Vec<Statement>, Vec<(String, Vec<String>)>), SalvageError> {
    let mut statements = Vec::new();
    let mut unknown_rows = Vec::new();
    let mut counts: BTreeMap<String, TableSalvage> = BTreeMap::new();
    for t in list::tables(kept, kept_url).await? {
        let kept_rel = list::resolve(kept, kept_url, &t.relation).await?;
        let keys = match &kept_rel {
            Some(_) => list::key_columns(kept, kept_url, &t.relation).await?,
            None => Vec::new(),
        };
        let why_unknown = match (&t.unknown_reason, &kept_rel) {
            (Some(r), _) => Some(r.clone()),
            (None, None) => Some("the table is gone from the kept database".into()),
            (None, Some(_)) if keys.is_empty() => Some("the table has no primary key in the kept database".into()),
            _ => None,
        };
        let live_rel = list::resolve(live, live_url, &t.relation).await?;
        let cols_lit = list::array_literal(kept, kept_url, &t.columns).await?;
        if let Some(reason) = why_unknown {
            let (u, rows) =
                unknown(kept, kept_url, live, live_url, &t, reason, (&kept_rel, &live_rel), &cols_lit, export).await?;
            s.unknown.push(u);
            unknown_rows.push((t.relation.clone(), rows));
            continue;
        }
        let kept_rel = kept_rel.expect("known tables are in the kept database");
        let writable = match &live_rel {
            Some(rel) => list::writable_columns(live, live_url, rel).await?,
            None => Default::default(),
        };
        let common: Vec<String> = t.columns.iter().filter(|c| writable.contains(*c)).cloned().collect();
        let common_lit = list::array_literal(kept, kept_url, &common).await?;
        let rows = list::stranded_rows(kept, kept_url, &t, &kept_rel, &keys, &common).await?;
        if rows.is_empty() {
            continue;
        }
        let entry = counts
            .entry(t.relation.clone())
            .or_insert_with(|| TableSalvage { table: t.relation.clone(), ..TableSalvage::default() });
        let skip_all = |reason: SkipReason, detail: &str, s: &mut Salvage| {
            for r in &rows {
                s.skipped.push(Skipped {
                    table: t.relation.clone(),
                    op: r.op,
                    key: r.key.clone(),
                    reason,
                    detail: detail.into(),
                });
            }
        };
        let Some(live_rel) = live_rel else {
            skip_all(SkipReason::TableMissing, "live has no such table any more", s);
            continue;
        };
        let lacking: Vec<&String> = keys.iter().filter(|k| !writable.contains(*k)).collect();
        if !lacking.is_empty() {
            let detail = format!(
                "live's table has no key column {}",
                lacking.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
            );
            skip_all(SkipReason::ColumnsMissing, &detail, s);
            continue;
        }
        let in_live = list::live_digests(live, live_url, &live_rel, &keys, (&cols_lit, &common_lit), &rows).await?;
        for (row, live_row) in rows.iter().zip(in_live) {
            match list::decide(row, live_row.as_ref(), &writable) {
                Decision::Apply => {
                    count(entry, row.op, 1);
                    statements.push(script::statement(&t.relation, &live_rel, &keys, &cols_lit, &writable, row));
                }
                Decision::Already => entry.already_present += 1,
                Decision::Skip(reason, detail) => s.skipped.push(Skipped {
                    table: t.relation.clone(),
                    op: row.op,
                    key: row.key.clone(),
                    reason,
                    detail,
                }),
            }
        }
    }
    script::sort(&mut statements);
    s.tables = counts.into_values().collect();
    Ok((statements, unknown_rows))
}

fn count(t: &mut TableSalvage, op: Op, n: u64) {
    match op {
        Op::Insert => t.inserted += n,
        Op::Update => t.updated += n,
        Op::Delete => t.deleted += n,
    }
}

/// A table without an exact list: how many whole rows differ (when both
/// databases hold it), and the kept-only rows as JSON when `export`.
#[allow(clippy::too_many_arguments)]
async fn unknown(
    kept: &mut PgConnection,
    kept_url: &ConnUrl,
    live: &mut PgConnection,
    live_url: &ConnUrl,
    t: &Listed,
    reason: String,
    (kept_rel, live_rel): (&Option<String>, &Option<String>),
    cols_lit: &str,
    export: bool,
) -> Result<(Unknown, Vec<String>), SalvageError> {
    let mut u = Unknown { table: t.relation.clone(), reason, rows_only_in_kept: None, rows_only_in_live: None };
    let (Some(kept_rel), Some(live_rel)) = (kept_rel, live_rel) else { return Ok((u, Vec::new())) };
    if t.columns.is_empty() {
        return Ok((u, Vec::new()));
    }
    let in_kept = list::digest_counts(kept, kept_url, kept_rel, cols_lit).await?;
    let in_live = list::digest_counts(live, live_url, live_rel, cols_lit).await?;
    let excess = |a: &std::collections::HashMap<String, i64>, b: &std::collections::HashMap<String, i64>| {
        a.iter()
            .filter_map(|(d, n)| (n > b.get(d).unwrap_or(&0)).then(|| (d.clone(), (n - b.get(d).unwrap_or(&0)) as u64)))
            .collect::<Vec<_>>()
    };
    let only_kept = excess(&in_kept, &in_live);
    u.rows_only_in_kept = Some(only_kept.iter().map(|(_, n)| n).sum());
    u.rows_only_in_live = Some(excess(&in_live, &in_kept).iter().map(|(_, n)| n).sum());
    let rows = match export && !only_kept.is_empty() {
        true => {
            let digests: Vec<String> = only_kept.into_iter().map(|(d, _)| d).collect();
            list::rows_with_digests(kept, kept_url, kept_rel, &t.columns, cols_lit, &digests).await?
        }
        false => Vec::new(),
    };
    Ok((u, rows))
}

/// The transaction's settings: live's lock timeout, deferred constraints.
async fn prepare(tx: &mut PgConnection, url: &ConnUrl, target: &Target) -> Result<(), SalvageError> {
    let ms = target.lock_timeout.as_millis();
    for sql in [format!("SET LOCAL lock_timeout = '{ms}ms'"), "SET CONSTRAINTS ALL DEFERRED".to_string()] {
        sqlx::query(&sql).execute(&mut *tx).await.map_err(list::query_err(url))?;
    }
    Ok(())
}

/// Runs the statements in `tx`, counting what each did; a statement that
/// did nothing found live's row changed since it was checked.
async fn run(tx: &mut PgConnection, statements: &[Statement], s: &mut Salvage) -> Result<(), SalvageError> {
    for t in &mut s.tables {
        (t.inserted, t.updated, t.deleted) = (0, 0, 0);
    }
    for st in statements {
        let done = sqlx::query(&st.sql).execute(&mut *tx).await.map_err(|source| SalvageError::Apply {
            table: st.table.clone(),
            op: st.op.as_str(),
            source: PgError::Query { url: st.table.clone(), source },
        })?;
        if done.rows_affected() == 0 {
            s.skipped.push(Skipped {
                table: st.table.clone(),
                op: st.op,
                key: st.key.clone(),
                reason: SkipReason::Conflict,
                detail: "live's row changed while salvaging, or another unique constraint refused it".into(),
            });
        } else if let Some(t) = s.tables.iter_mut().find(|t| t.table == st.table) {
            count(t, st.op, done.rows_affected());
        }
    }
    Ok(())
}

fn write_new(path: &std::path::Path, text: &str) -> Result<(), SalvageError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| SalvageError::Output { path: path.to_path_buf(), source };
    // The application's rows: readable by the owner only.
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create_new(true).mode(0o600);
    let mut f = open.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => SalvageError::OutputExists { path: path.to_path_buf() },
        _ => err(e),
    })?;
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(err)
}

/// Journals an applied salvage in the release's record (counts only: no
/// data reaches the state store).
async fn record(state: &State, s: &Salvage) -> Result<(), SalvageError> {
    let sum = |f: fn(&TableSalvage) -> u64| s.tables.iter().map(f).sum::<u64>();
    let run = SalvageRun {
        at: String::new(),
        inserted: sum(|t| t.inserted),
        updated: sum(|t| t.updated),
        deleted: sum(|t| t.deleted),
        skipped: s.skipped.len() as u64,
    };
    let detail = serde_json::json!({
        "inserted": run.inserted, "updated": run.updated, "deleted": run.deleted, "skipped": run.skipped,
    });
    state.journal_append(&s.release_id, Step::Salvaged, Some(&detail.to_string())).await?;
    Ok(())
}

#[cfg(test)]
mod tests;
