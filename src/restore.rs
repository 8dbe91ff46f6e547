//! Disaster recovery: `pgrehearse restore ID --as DBNAME` restores a snapshot
//! into a new database on the live server; `--replace-live --yes` then swaps
//! it in place of the live database by renaming, keeping the old one as
//! `<db>_replaced_<timestamp>` (never dropped: nothing is lost). The restored
//! copy is checked against the manifest before anything is swapped, and the
//! live database's owner, settings and grants are carried over so that
//! clients connect as before.

use std::time::Instant;

use chrono::Utc;
use serde::Serialize;
use sqlx::Executor;
use sqlx::postgres::PgConnection;

use crate::config::{Config, Target};
use crate::error_class::{Class, Classify};
use crate::pg::lock::HeavyLock;
use crate::pg::tools::ToolError;
use crate::pg::{self, ConnUrl, PgError, quote_ident};
use crate::shadow::load::{self, LoadError};
use crate::snapshot::catalog;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
#[allow(clippy::large_enum_variant)]
pub enum RestoreError {
    #[error("database `{name}` already exists on the live server; choose another name for --as")]
    Exists { name: String },
    #[error("`{name}` is not a usable database name (1–63 characters)")]
    BadName { name: String },
    #[error("restore of snapshot {id} into `{db}` found problems, live was not touched: {problems}")]
    Problems { id: String, db: String, problems: String },
    #[error(
        "--replace-live needs --yes. It would: restore snapshot {id} into `{new}`, check it against the manifest, disconnect every client of `{live}`, rename `{live}` to `{old}` (kept, never dropped) and `{new}` to `{live}`, carrying over owner, settings and grants"
    )]
    NeedsYes { id: String, live: String, new: String, old: String },
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Tool(#[from] ToolError),
}

impl Classify for RestoreError {
    fn class(&self) -> Class {
        match self {
            RestoreError::Exists { .. } | RestoreError::BadName { .. } => Class::Usage,
            RestoreError::Problems { .. } => Class::Problems,
            RestoreError::NeedsYes { .. } => Class::Refused,
            RestoreError::Load(e) => e.class(),
            RestoreError::Pg(e) => e.class(),
            RestoreError::Tool(e) => e.class(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            RestoreError::Exists { .. } => "database_exists",
            RestoreError::BadName { .. } => "bad_database_name",
            RestoreError::Problems { .. } => "restore_problems",
            RestoreError::NeedsYes { .. } => "needs_yes",
            RestoreError::Load(e) => e.kind(),
            RestoreError::Pg(e) => e.kind(),
            RestoreError::Tool(e) => e.kind(),
        }
    }
}

/// What `pgrehearse restore --json` prints.
#[derive(Debug, Serialize)]
pub struct Restored {
    pub snapshot_id: String,
    pub database: String,
    pub duration_ms: u64,
    pub tables_checked: usize,
    /// With `--replace-live`: where the previous live database was kept.
    pub replaced: Option<String>,
}

/// Restores snapshot `id` from `store` into the new database `name` on the
/// live server.
pub async fn restore_as(
    config: &Config,
    store: &dyn Store,
    target: &Target,
    id: &str,
    name: &str,
) -> Result<Restored, RestoreError> {
    if name.is_empty() || name.len() > 63 {
        return Err(RestoreError::BadName { name: name.into() });
    }
    let m = catalog::resolve(store, &target.name, id).await.map_err(LoadError::from)?;
    let admin_url = target.admin().with_database("postgres");
    let mut admin = pg::connect(&admin_url, "pgrehearse-restore").await?;
    if database_exists(&mut admin, &admin_url, name).await? {
        return Err(RestoreError::Exists { name: name.into() });
    }
    let staging = config.staging_dir();
    std::fs::create_dir_all(&staging).map_err(|source| LoadError::Staging { dir: staging.clone(), source })?;
    load::check_space(&staging, &m, config.store.staging_reserve)?;
    let file = load::staging_file(&staging, target, &m);
    let _staged = load::Staged(file.clone());
    let t0 = Instant::now();
    let fetched = catalog::fetch(config, store, &m, None, &file, false).await;
    if let Err(e) = fetched {
        return Err(LoadError::from(e).into());
    }
    let restored = async {
        exec(&mut admin, &admin_url, &format!("CREATE DATABASE {}", quote_ident(name))).await?;
        let url = target.admin().with_database(name);
        load::pg_restore(config, target, &m, &url, &file, &[]).await?;
        load::analyze(&url).await?;
        let (tables, problems) = load::check(&url, &m).await?;
        if !problems.is_empty() {
            return Err(RestoreError::Problems { id: m.id.clone(), db: name.into(), problems: problems.join("; ") });
        }
        Ok(tables)
    }
    .await;
    let _ = std::fs::remove_file(&file);
    let tables_checked = match restored {
        Ok(n) => n,
        Err(e) => {
            // Incomplete or failed its checks: it is ours and useless.
            let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name));
            if let Err(drop_err) = exec(&mut admin, &admin_url, &sql).await {
                tracing::warn!(database = name, error = %drop_err, "Could not drop the failed restore's database.");
            }
            return Err(e);
        }
    };
    let duration_ms = t0.elapsed().as_millis() as u64;
    tracing::info!(snapshot = %m.id, database = name, duration_ms, "Snapshot restored and checked.");
    Ok(Restored { snapshot_id: m.id, database: name.into(), duration_ms, tables_checked, replaced: None })
}

/// Restores snapshot `id` from `store` next to the live database and swaps
/// it in.
pub async fn replace_live(
    config: &Config,
    store: &dyn Store,
    target: &Target,
    id: &str,
    yes: bool,
) -> Result<Restored, RestoreError> {
    let live = target.live_url.database();
    let stamp = Utc::now().format("%Y%m%d%H%M%S").to_string();
    let new = truncate(&format!("{live}_restoring_{stamp}"));
    let old = truncate(&format!("{live}_replaced_{stamp}"));
    if !yes {
        let m = catalog::resolve(store, &target.name, id).await.map_err(LoadError::from)?;
        return Err(RestoreError::NeedsYes { id: m.id, live, new, old });
    }
    // Held through the swap: it lives in the maintenance database, not live.
    let lock = HeavyLock::for_target(target.admin(), &target.name, "restore").await.map_err(LoadError::from)?;
    let mut restored = restore_as(config, store, target, id, &new).await?;
    let admin_url = target.admin().with_database("postgres");
    let mut admin = pg::connect(&admin_url, "pgrehearse-restore").await?;
    carry_over(&mut admin, &admin_url, &live, &new, &[]).await?;
    // No stranded-writes comparison here: the snapshot may be of any age,
    // and everything written since it is kept in `old`.
    swap(&mut admin, &admin_url, &live, &new, &old, async |_: &str| {}, async |_: &str, _: &str| {}).await?;
    lock.release().await;
    tracing::warn!(database = %live, kept_as = %old, snapshot = %restored.snapshot_id, "Live database replaced by the restored snapshot; the previous one is kept.");
    restored.database = live;
    restored.replaced = Some(old);
    Ok(restored)
}

pub(crate) fn truncate(name: &str) -> String {
    let mut s = name.to_string();
    s.truncate(63);
    s
}

pub(crate) async fn exec(conn: &mut PgConnection, url: &ConnUrl, sql: &str) -> Result<(), PgError> {
    conn.execute(sql).await.map_err(|source| PgError::Query { url: url.redacted(), source })?;
    Ok(())
}

pub(crate) async fn database_exists(conn: &mut PgConnection, url: &ConnUrl, name: &str) -> Result<bool, PgError> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_one(&mut *conn)
        .await
        .map_err(|source| PgError::Query { url: url.redacted(), source })?;
    Ok(n > 0)
}

/// Owner, database-level settings (also per role) and grants of `from`,
/// applied to `to`, except the database-level settings named in
/// `keep_out` (a release's write fence: the restored database must not
/// inherit it).
pub(crate) async fn carry_over(
    conn: &mut PgConnection,
    url: &ConnUrl,
    from: &str,
    to: &str,
    keep_out: &[&str],
) -> Result<(), PgError> {
    let q = |source| PgError::Query { url: url.redacted(), source };
    let owner: String = sqlx::query_scalar("SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = $1")
        .bind(from)
        .fetch_one(&mut *conn)
        .await
        .map_err(q)?;
    exec(conn, url, &format!("ALTER DATABASE {} OWNER TO {}", quote_ident(to), quote_ident(&owner))).await?;
    // Settings: ALTER DATABASE … SET and ALTER ROLE … IN DATABASE … SET.
    let settings: Vec<(Option<String>, String)> = sqlx::query_as(
        "SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole)::text END, unnest(s.setconfig) \
         FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = $1",
    )
    .bind(from)
    .fetch_all(&mut *conn)
    .await
    .map_err(q)?;
    for (role, kv) in settings {
        let Some((k, v)) = kv.split_once('=') else { continue };
        if role.is_none() && keep_out.contains(&k) {
            continue;
        }
        let set = format!("SET {} = {}", quote_ident(k), setting_value(k, v));
        let sql = match role {
            None => format!("ALTER DATABASE {} {set}", quote_ident(to)),
            Some(r) => format!("ALTER ROLE {} IN DATABASE {} {set}", quote_ident(&r), quote_ident(to)),
        };
        exec(conn, url, &sql).await?;
    }
    // Grants: the ACL as GRANT statements (grantee 0 is PUBLIC).
    let grants: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)::text) END, a.privilege_type, a.is_grantable \
         FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = $1",
    )
    .bind(from)
    .fetch_all(&mut *conn)
    .await
    .map_err(q)?;
    if !grants.is_empty() {
        exec(conn, url, &format!("REVOKE ALL ON DATABASE {} FROM PUBLIC", quote_ident(to))).await?;
    }
    for (grantee, privilege, grantable) in grants {
        let option = if grantable { " WITH GRANT OPTION" } else { "" };
        exec(conn, url, &format!("GRANT {privilege} ON DATABASE {} TO {grantee}{option}", quote_ident(to))).await?;
    }
    let limit: i32 = sqlx::query_scalar("SELECT datconnlimit FROM pg_database WHERE datname = $1")
        .bind(from)
        .fetch_one(&mut *conn)
        .await
        .map_err(q)?;
    exec(conn, url, &format!("ALTER DATABASE {} CONNECTION LIMIT {limit}", quote_ident(to))).await?;
    Ok(())
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A stored setting as SQL. List-valued settings are stored as
/// `a, "b c"` and must be given back as separate items (as pg_dumpall does),
/// or `search_path` would become one schema named "a, b c".
fn setting_value(name: &str, value: &str) -> String {
    const LISTS: [&str; 5] = [
        "search_path",
        "temp_tablespaces",
        "local_preload_libraries",
        "session_preload_libraries",
        "shared_preload_libraries",
    ];
    if !LISTS.contains(&name.to_ascii_lowercase().as_str()) {
        return quote_literal(value);
    }
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => items.push(std::mem::take(&mut cur).trim().to_string()),
            c => cur.push(c),
        }
    }
    items.push(cur.trim().to_string());
    items.iter().map(|i| quote_literal(i)).collect::<Vec<_>>().join(", ")
}

/// Closes live to new sessions, disconnects its clients, and renames:
/// `live` → `old`, then `new` → `live`. Resumable: when a crash stopped an
/// earlier swap between the two renames (`live` gone, `old` and `new`
/// there) it finishes it, and when both were done it only reopens `old`.
/// `between` is called with `old` between the two renames (a release
/// journals that state there); `offline` with `old` and `new` once the
/// sequences are carried forward, just before `new` takes the live name —
/// live is offline then, so nothing written into `old` escapes a comparison
/// made there (a release finds its stranded writes). It must not fail the
/// swap. A swap resumed after both renames were done calls neither.
pub(crate) async fn swap(
    conn: &mut PgConnection,
    url: &ConnUrl,
    live: &str,
    new: &str,
    old: &str,
    between: impl AsyncFnOnce(&str),
    offline: impl AsyncFnOnce(&str, &str),
) -> Result<(), PgError> {
    let (has_live, has_new, has_old) = (
        database_exists(conn, url, live).await?,
        database_exists(conn, url, new).await?,
        database_exists(conn, url, old).await?,
    );
    if has_live && has_new {
        exec(conn, url, &format!("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false", quote_ident(live))).await?;
        let terminate = sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        );
        terminate
            .bind(live)
            .execute(&mut *conn)
            .await
            .map_err(|source| PgError::Query { url: url.redacted(), source })?;
        // Terminated sessions take a moment to exit; renaming waits for them.
        let mut first = rename(conn, url, live, old).await;
        for _ in 0..100 {
            if first.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            first = rename(conn, url, live, old).await;
        }
        if let Err(e) = first {
            exec(conn, url, &format!("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true", quote_ident(live))).await?;
            return Err(e);
        }
        between(old).await;
        finish_swap(conn, url, live, new, old, offline).await?;
    } else if !has_live && has_new && has_old {
        tracing::warn!(database = live, "Finishing a swap interrupted between its renames.");
        finish_swap(conn, url, live, new, old, offline).await?;
    } else if !(has_live && has_old) {
        return Err(PgError::Query {
            url: url.redacted(),
            source: sqlx::Error::Protocol(format!(
                "cannot swap `{new}` in for `{live}`: expected both (or `{old}` and `{new}`), found live {has_live}, new {has_new}, old {has_old}"
            )),
        });
    }
    // The kept database stays open for inspection.
    exec(conn, url, &format!("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true", quote_ident(old))).await?;
    exec(conn, url, &format!("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true", quote_ident(live))).await
}

/// The swap's second step: sets the sequences of `new` past those of `old`
/// (see `pg::sequences`: rows the application wrote to `old` after the
/// snapshot keep their ids, and the restored database never hands them out
/// again), then renames `new` to `live`. `old` was closed to connections for
/// the swap; it is opened for the read (the application does not know its
/// name). `offline` runs after the sequences, before the rename.
async fn second_rename(
    conn: &mut PgConnection,
    url: &ConnUrl,
    live: &str,
    new: &str,
    old: &str,
    offline: impl AsyncFnOnce(&str, &str),
) -> Result<(), PgError> {
    exec(conn, url, &format!("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true", quote_ident(old))).await?;
    let moved = crate::pg::sequences::carry_forward(url, old, new).await?;
    for m in &moved {
        tracing::info!(sequence = %m.sequence, restored = ?m.from, now = m.to, "Set a restored sequence past the ids the replaced database handed out.");
    }
    offline(old, new).await;
    rename(conn, url, new, live).await
}

/// [`second_rename`], and on its error `old` put back as live: the name is
/// never left without a database, and a restored database that could hand
/// out ids twice never takes it.
async fn finish_swap(
    conn: &mut PgConnection,
    url: &ConnUrl,
    live: &str,
    new: &str,
    old: &str,
    offline: impl AsyncFnOnce(&str, &str),
) -> Result<(), PgError> {
    if let Err(e) = second_rename(conn, url, live, new, old, offline).await {
        rename(conn, url, old, live).await?;
        exec(conn, url, &format!("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true", quote_ident(live))).await?;
        return Err(e);
    }
    Ok(())
}

pub(crate) async fn rename(conn: &mut PgConnection, url: &ConnUrl, from: &str, to: &str) -> Result<(), PgError> {
    exec(conn, url, &format!("ALTER DATABASE {} RENAME TO {}", quote_ident(from), quote_ident(to))).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_settings_are_given_back_item_by_item() {
        assert_eq!(setting_value("search_path", "extra, public"), "'extra', 'public'");
        assert_eq!(setting_value("search_path", "\"a b\", \"$user\""), "'a b', '$user'");
        assert_eq!(setting_value("work_mem", "7MB"), "'7MB'");
        assert_eq!(setting_value("application_name", "has space, comma"), "'has space, comma'");
    }
}
