//! The write fence (`fence_writes = true`): while a release may still end in
//! a restore, other sessions cannot commit writes on live, so no write is
//! stranded in the failed database — the application's writes fail loudly
//! during the window instead (see [`Exposure`] for which plans fence).
//!
//! Mechanism: `ALTER DATABASE live SET default_transaction_read_only = on`
//! (every new session of every role starts read-only and a write fails with
//! SQLSTATE 25006, "cannot execute INSERT in a read-only transaction"), then
//! every session that started before that and is not pgrehearse's own is
//! ended (its open transaction rolls back; its client gets an error, never a
//! lost write), and the release waits until they are gone — all before the
//! pre-release snapshot. pgrehearse's own writing sessions set the setting
//! off for themselves (the executor's session, and `PGOPTIONS` for the
//! tools it runs). A database setting needs no extension, no superuser
//! (the database's owner may set it; `admin_url`'s role sees and ends the
//! sessions with `pg_monitor` and `pg_signal_backend`) and no change to the
//! application, and it is undone by one statement; its limit:
//! a client that turns read-only off itself, or a role with its own
//! `default_transaction_read_only` setting, is not fenced.
//!
//! The fence is journaled like every step: `fence_on` (before it goes up,
//! with the database's original value, to put back) and `fence_off` (after
//! it is down). It is lifted when the outcome is settled — applied, rolled
//! back, restored (on the restored live, which never inherits it, and on the
//! kept failed database), halted, aborted —, when the release returns an
//! error, and by crash recovery, which finds a `fence_on` without its
//! `fence_off`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use super::Ctx;
use super::journal::{Journal, Step};
use crate::pg::{self, ConnUrl, quote_ident};
use crate::state::{JournalEntry, ReleaseRow, StateError};
use crate::stranded::exposure::Exposure;

/// The database setting the fence turns on.
pub const SETTING: &str = "default_transaction_read_only";

/// How long the sessions that predate the fence may take to end; past it
/// the release stops before anything ran.
const END_SESSIONS_WITHIN: Duration = Duration::from_secs(10);

/// What `fence_on` journals: enough to put live back as it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Raised {
    /// The live database's name when the fence went up.
    pub database: String,
    /// Its own value of [`SETTING`] before the fence; `None`: it had none.
    pub original: Option<String>,
}

/// The fence this process put up and has not lifted yet: what lifts it
/// when the state store itself fails and the journal cannot be read.
#[derive(Debug, Default)]
pub struct Held(Mutex<Option<Raised>>);

impl Held {
    fn set(&self, r: Option<Raised>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = r;
    }

    fn get(&self) -> Option<Raised> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Whether the release fenced live, as `apply --json`, `releases ID`, the
/// record and the mail tell it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FenceUse {
    pub used: bool,
    /// When it went up and came down (RFC 3339); `until` is null while it
    /// is still up (a release left unfinished).
    pub from: Option<String>,
    pub until: Option<String>,
    /// Without a fence: whether writes could have been stranded and how to
    /// fence them, or why none was needed.
    pub note: Option<String>,
}

impl FenceUse {
    /// One line for the text output and the mail.
    pub fn sentence(&self) -> String {
        match (self.used, &self.from, &self.until) {
            (true, Some(from), Some(until)) => {
                format!("other sessions could not write on live from {from} until {until} (fence_writes = true)")
            }
            (true, from, None) => format!(
                "UP since {}: other sessions cannot write on live until the release is finished (the next pgrehearse command on this target finishes it and lifts the fence)",
                from.as_deref().unwrap_or("?")
            ),
            _ => format!("not used; {}", self.note.as_deref().unwrap_or("fence_writes is off")),
        }
    }
}

/// The fence of a release, read from its journal; `None` for a release
/// that never reached its pre-release snapshot (refused, nothing pending).
pub fn report(row: &ReleaseRow, journal: &[JournalEntry]) -> Option<FenceUse> {
    if let Some(on) = journal.iter().find(|e| e.step == Step::FenceOn) {
        let off = journal.iter().rev().find(|e| e.step == Step::FenceOff && e.seq > on.seq);
        return Some(FenceUse { used: true, from: Some(on.at.clone()), until: off.map(|e| e.at.clone()), note: None });
    }
    if !journal.iter().any(|e| e.step == Step::Snapshot) {
        return None;
    }
    let single = journal
        .iter()
        .find(|e| e.step == Step::Apply)
        .is_some_and(|e| e.detail.as_deref() == Some(crate::migrations::executor::Mode::SingleTransaction.as_str()));
    let exposure = if row.on_failure != "restore" {
        Exposure::NoRestore
    } else if single {
        Exposure::OneTransaction
    } else {
        Exposure::Unfenced
    };
    Some(FenceUse { used: false, from: None, until: None, note: exposure.note().map(str::to_string) })
}

/// The fence the journal shows up and not lifted since, if any.
fn up(journal: &[JournalEntry]) -> Option<Raised> {
    let on = journal.iter().rev().find(|e| e.step == Step::FenceOn)?;
    if journal.iter().any(|e| e.step == Step::FenceOff && e.seq > on.seq) {
        return None;
    }
    serde_json::from_str(on.detail.as_deref()?).ok()
}

/// Whether the journal shows a fence up: the restore then keeps it out of
/// the database it builds ([`crate::restore::carry_over`]).
pub fn is_up(journal: &[JournalEntry]) -> bool {
    up(journal).is_some()
}

/// Puts the fence up on live: journals `fence_on` with the original value,
/// sets [`SETTING`], ends the sessions that predate it. `Ok(Err(why))` when
/// it could not (the fence is lifted again; nothing ran on live).
pub async fn raise(cx: &Ctx<'_>, journal: &Journal) -> Result<Result<(), String>, StateError> {
    let live = cx.target.live_url.database();
    let admin_url = cx.target.admin().with_database("postgres");
    let mut admin = match pg::connect(&admin_url, "pgrehearse-fence").await {
        Ok(c) => c,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let original = match original(&mut admin, &live).await {
        Ok(o) => o,
        Err(e) => return Ok(Err(query_failed(&admin_url, e))),
    };
    let raised = Raised { database: live.clone(), original };
    journal.step(Step::FenceOn, Some(&serde_json::to_string(&raised).expect("serializes"))).await?;
    cx.fence.set(Some(raised));
    if let Err(e) = fence_up(&mut admin, &admin_url, &live).await {
        tracing::error!(error = %e, "The write fence could not be put up; lifting it.");
        lift(cx, journal).await;
        return Ok(Err(e));
    }
    tracing::info!(database = %live, "Write fence up: other sessions on live cannot commit writes until the release's outcome is settled.");
    Ok(Ok(()))
}

async fn original(admin: &mut PgConnection, live: &str) -> Result<Option<String>, sqlx::Error> {
    let v: Option<Option<String>> = sqlx::query_scalar(
        "SELECT (SELECT substr(c, length($2) + 2) FROM unnest(s.setconfig) c WHERE c LIKE $2 || '=%') \
         FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase \
         WHERE d.datname = $1 AND s.setrole = 0",
    )
    .bind(live)
    .bind(SETTING)
    .fetch_optional(&mut *admin)
    .await?;
    Ok(v.flatten())
}

fn query_failed(url: &ConnUrl, e: sqlx::Error) -> String {
    pg::PgError::Query { url: url.redacted(), source: e }.to_string()
}

async fn fence_up(admin: &mut PgConnection, url: &ConnUrl, live: &str) -> Result<(), String> {
    // pg_stat_activity hides other roles' sessions' details (backend_start
    // among them) from a role without pg_read_all_stats: it could not tell
    // which sessions to end, and would miss them silently.
    let sees_all: bool = sqlx::query_scalar("SELECT pg_has_role('pg_read_all_stats', 'USAGE')")
        .fetch_one(&mut *admin)
        .await
        .map_err(|e| query_failed(url, e))?;
    if !sees_all {
        return Err(
            "admin_url's role cannot see other roles' sessions on live, which the write fence must end: grant it pg_monitor (or pg_read_all_stats) and pg_signal_backend".into(),
        );
    }
    let sql = format!("ALTER DATABASE {} SET {SETTING} = on", quote_ident(live));
    sqlx::raw_sql(&sql).execute(&mut *admin).await.map_err(|e| query_failed(url, e))?;
    // A session that started after this reads the setting when it starts:
    // it is fenced. One that started before may not be: it is ended.
    let fenced_at: String = sqlx::query_scalar("SELECT clock_timestamp()::text")
        .fetch_one(&mut *admin)
        .await
        .map_err(|e| query_failed(url, e))?;
    let t0 = Instant::now();
    loop {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend' \
             AND backend_start < $2::timestamptz AND coalesce(application_name, '') NOT LIKE 'pgrehearse%'",
        )
        .bind(live)
        .bind(&fenced_at)
        .fetch_one(&mut *admin)
        .await
        .map_err(|e| {
            format!(
                "{}; ending live's sessions for the write fence needs a role with pg_signal_backend (a superuser for superusers' sessions) in admin_url",
                query_failed(url, e)
            )
        })?;
        if n == 0 {
            return Ok(());
        }
        if t0.elapsed() >= END_SESSIONS_WITHIN {
            return Err(format!(
                "{n} session(s) on live that started before the write fence did not end within {} s; they could still commit writes the restore would strand",
                END_SESSIONS_WITHIN.as_secs()
            ));
        }
        tracing::info!(sessions = n, "Ending live's sessions that started before the write fence.");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Lifts the fence this release put up, if the journal (or, when the state
/// store cannot be read, this process's memory) shows it up: the original
/// value goes back on the live database and on the failed database a
/// restore kept, then `fence_off` is journaled. Never fails the release:
/// what could not be lifted is logged with the statement that lifts it, and
/// returned as a warning for the record.
pub async fn lift(cx: &Ctx<'_>, journal: &Journal) -> Option<String> {
    let (raised, kept) = match cx.state.journal(journal.release()).await {
        Ok(steps) => {
            let kept = steps.iter().rev().find(|e| e.step == Step::Swap).and_then(|e| e.detail.clone());
            (up(&steps), kept)
        }
        Err(e) => {
            tracing::warn!(error = %e, "Cannot read the release's journal; lifting the write fence this process put up.");
            (cx.fence.get(), None)
        }
    };
    let raised = raised?;
    let mut databases = vec![cx.target.live_url.database()];
    databases.extend(kept);
    match put_back(cx, &raised, &databases).await {
        Ok(()) => {
            cx.fence.set(None);
            tracing::info!(databases = ?databases, "Write fence lifted: live takes writes again.");
            if let Err(e) = journal.step(Step::FenceOff, Some(&databases.join(", "))).await {
                tracing::warn!(error = %e, "Cannot journal that the write fence was lifted; recovery will lift it again (harmless).");
            }
            None
        }
        Err(e) => {
            let how = put_back_sql(&raised, &cx.target.live_url.database());
            tracing::error!(error = %e, lift = %how, "The write fence on live could not be lifted: the application cannot write until it is.");
            Some(format!("the write fence on live could not be lifted ({e}); lift it with: {how}"))
        }
    }
}

/// The statement that puts `database`'s original setting back.
fn put_back_sql(raised: &Raised, database: &str) -> String {
    match &raised.original {
        None => format!("ALTER DATABASE {} RESET {SETTING}", quote_ident(database)),
        Some(v) => format!("ALTER DATABASE {} SET {SETTING} = '{}'", quote_ident(database), v.replace('\'', "''")),
    }
}

async fn put_back(cx: &Ctx<'_>, raised: &Raised, databases: &[String]) -> Result<(), String> {
    let admin_url = cx.target.admin().with_database("postgres");
    let mut admin = pg::connect(&admin_url, "pgrehearse-fence").await.map_err(|e| e.to_string())?;
    for db in databases {
        if crate::restore::database_exists(&mut admin, &admin_url, db).await.map_err(|e| e.to_string())? {
            sqlx::raw_sql(&put_back_sql(raised, db))
                .execute(&mut admin)
                .await
                .map_err(|e| query_failed(&admin_url, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: i64, step: Step, detail: Option<&str>) -> JournalEntry {
        JournalEntry { seq, step, detail: detail.map(str::to_string), at: format!("t{seq}") }
    }

    #[test]
    fn a_fence_is_up_until_its_fence_off() {
        let on = r#"{"database":"app","original":null}"#;
        let mut j = vec![entry(1, Step::FenceOn, Some(on)), entry(2, Step::Snapshot, None)];
        assert_eq!(up(&j), Some(Raised { database: "app".into(), original: None }));
        j.push(entry(3, Step::FenceOff, Some("app")));
        assert_eq!(up(&j), None);
        assert!(!is_up(&j));
    }

    #[test]
    fn the_original_value_is_put_back_or_reset() {
        let r = Raised { database: "app".into(), original: Some("o'n".into()) };
        assert_eq!(put_back_sql(&r, "app"), "ALTER DATABASE \"app\" SET default_transaction_read_only = 'o''n'");
        let r = Raised { database: "app".into(), original: None };
        assert_eq!(
            put_back_sql(&r, "app_failed_x"),
            "ALTER DATABASE \"app_failed_x\" RESET default_transaction_read_only"
        );
    }
}
