//! The `payload` migration source: a Payload CMS 3 project's migrations, run
//! by the project's own CLI (`node node_modules/payload/bin.js migrate`,
//! `migrate:down`) exactly as its developers run it. The CLI is never
//! trusted alone: before it runs, pgrehearse checks in SQL that the database
//! exists (Payload would silently create an empty one), that no dev-mode
//! push row (`batch = -1`) is there (Payload would then wait forever on a
//! yes/no prompt) and that what Payload would run is the plan; after it
//! exits 0, that every planned file got (or lost) its `payload_migrations`
//! row. Per-migration times come from its `Migrated:  <name> (<ms>ms)` lines
//! (pino-pretty on stdout, ANSI colours always on), stamped as they arrive.
//!
//! Facts this module relies on (Payload 3.90, `@payloadcms/db-postgres`):
//! files are the `*.ts`/`*.js` entries of the migration directory except
//! `index.*`, sorted by file name as JavaScript sorts strings (UTF-16 code
//! units), named by the file name up to its first `.`; `index.ts` only feeds
//! `prodMigrations`. Each file runs in its own transaction together with its
//! row insert (a batch is not atomic); the reported ms cover `up()` only,
//! not the row insert and commit. `migrate:down` rolls back the highest
//! batch, newest name first, each file in its own transaction. A failing
//! file is rolled back, logged as `Error running migration <name> <message>.`
//! and the process exits 1. The CLI loads `.env` files from its working
//! directory and above without overriding variables that are set and
//! non-empty, so `PAYLOAD_DROP_DATABASE` is set to `false` rather than
//! removed (a removed or empty one would be filled in from `.env`).
//!
//! The CLI gets the URL without its password (in `DATABASE_URI`,
//! `DATABASE_URL` and `POSTGRES_URL`) and the password in `PGPASSWORD`:
//! node-postgres (pg 8, under `@payloadcms/db-postgres` and drizzle) parses
//! a connection string without a password to an empty one and then takes
//! `PGPASSWORD` (`connection-parameters.js`, `val('password', …)`). A
//! `payload.config` that takes the URL apart itself and passes
//! `password: new URL(…).password` to the pool would pass an empty one; it
//! should read `process.env.PGPASSWORD` (or pass the connection string).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection};

use super::tool::{Exit, Password, ToolProcess};
use crate::pg::{self, ConnUrl, PgError};
use output::{Progress, strip_ansi};

mod error;
pub(super) mod output;

pub use error::PayloadError;

/// Payload's history table when the adapter sets no `schemaName`.
pub const DEFAULT_TABLE: &str = "payload_migrations";

/// How much of the CLI's output errors and reports carry.
const TAIL_BYTES: usize = 4000;

/// One migration file as Payload sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadFile {
    /// The file name up to its first `.`: what Payload stores in `name`.
    pub name: String,
    pub path: PathBuf,
    /// SHA-256 hex of the file's bytes.
    pub checksum: String,
}

/// The directory Payload reads migrations from, given either that directory
/// itself or the project directory (the one with `package.json`). For a
/// project directory this is Payload's own default when the config sets no
/// `migrationDir`: `src/migrations`, `dist/migrations`, `migrations`,
/// whichever exists first (`src/migrations` when only `src/` exists). When
/// the config's `migrationDir` points elsewhere, configure that directory.
pub fn migration_dir(dir: &Path) -> PathBuf {
    if !dir.join("package.json").is_file() {
        return dir.to_path_buf();
    }
    for sub in ["src/migrations", "dist/migrations", "migrations"] {
        if dir.join(sub).exists() {
            return dir.join(sub);
        }
    }
    if dir.join("src").exists() { dir.join("src/migrations") } else { dir.join("migrations") }
}

/// Migration files of the project, in the order Payload runs them: the
/// directory listing sorted as JavaScript's `Array.prototype.sort` sorts
/// strings (by UTF-16 code units, on the whole file name), keeping `*.ts`
/// and `*.js` except `index.ts`/`index.js`. `dir` is the migration
/// directory or the project directory (see [`migration_dir`]).
pub fn files(dir: &Path) -> Result<Vec<PayloadFile>, PayloadError> {
    let dir = migration_dir(dir);
    let entries = std::fs::read_dir(&dir).map_err(|source| PayloadError::Dir { dir: dir.clone(), source })?;
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| PayloadError::Dir { dir: dir.clone(), source })?;
        let path = entry.path();
        let Some(file_name) = entry.file_name().to_str().map(str::to_string) else {
            return Err(PayloadError::Layout { path, problem: "the file name is not valid UTF-8; rename it".into() });
        };
        let is_script = file_name.ends_with(".ts") || file_name.ends_with(".js");
        if !is_script || file_name == "index.ts" || file_name == "index.js" {
            continue;
        }
        if !path.is_file() {
            return Err(PayloadError::Layout {
                path,
                problem: "is not a file, but Payload would load it as a migration; rename or move it".into(),
            });
        }
        found.push((file_name, path));
    }
    found.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
    let mut out: Vec<PayloadFile> = Vec::with_capacity(found.len());
    for (file_name, path) in found {
        let name = file_name.split('.').next().unwrap_or_default().to_string();
        if let Some(first) = out.iter().find(|f| f.name == name) {
            return Err(PayloadError::DuplicateName { name, first: first.path.clone(), second: path });
        }
        let bytes = std::fs::read(&path).map_err(|source| PayloadError::File { path: path.clone(), source })?;
        out.push(PayloadFile { name, checksum: hex::encode(Sha256::digest(&bytes)), path });
    }
    Ok(out)
}

/// One row of `payload_migrations`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRow {
    pub name: String,
    /// The run that applied it (1, 2, …); -1 for the row Payload's dev-mode
    /// schema push writes (`name = 'dev'`).
    pub batch: i32,
}

/// Rows of `payload_migrations` (empty when the table does not exist), in
/// id order (insertion order; `created_at, id` when ids are not numbers, as
/// with `idType: 'uuid'`). `table` may be schema-qualified.
pub async fn history(conn: &mut PgConnection, table: &str) -> Result<Vec<HistoryRow>, PayloadError> {
    let sql_err = |source| PayloadError::Sql { table: table.to_string(), source };
    let regclass: Option<String> =
        sqlx::query_scalar("SELECT to_regclass($1)::text").bind(table).fetch_one(&mut *conn).await.map_err(sql_err)?;
    let Some(regclass) = regclass else { return Ok(Vec::new()) };
    let numeric_id: bool = sqlx::query_scalar(
        "SELECT coalesce(bool_or(atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype, 'numeric'::regtype)), false) \
         FROM pg_attribute WHERE attrelid = $1::regclass AND attname = 'id' AND NOT attisdropped",
    )
    .bind(&regclass)
    .fetch_one(&mut *conn)
    .await
    .map_err(sql_err)?;
    let order = if numeric_id { "id" } else { "created_at, id" };
    // `batch` is `numeric` in Payload's schema; `name` is nullable.
    let sql = format!("SELECT coalesce(name, '')::text, coalesce(batch, 0)::int4 FROM {regclass} ORDER BY {order}");
    let rows: Vec<(String, i32)> = sqlx::query_as(&sql).fetch_all(&mut *conn).await.map_err(sql_err)?;
    Ok(rows.into_iter().map(|(name, batch)| HistoryRow { name, batch }).collect())
}

/// A Payload project and how to run its CLI.
#[derive(Debug, Clone)]
pub struct Payload {
    /// The project directory (with `package.json`), or its migration
    /// directory: the CLI runs in the nearest directory at or above it that
    /// has a `package.json`, with the nearest `node_modules/payload/bin.js`.
    pub project_dir: PathBuf,
    /// Hard limit for one CLI run; its whole process group is killed then.
    pub timeout: Duration,
    /// The history table, possibly schema-qualified.
    pub table: String,
    /// Session settings for the CLI's connections, as libpq's `PGOPTIONS`
    /// (node-postgres reads it): the target's `lock_timeout` and
    /// `statement_timeout`, so Payload runs with them as a release will.
    pub pg_options: Option<String>,
}

/// One migration the CLI reported as done.
#[derive(Debug, Clone)]
pub struct Migrated {
    pub name: String,
    /// Payload's own measure: the file's `up()` (or `down()`), without the
    /// row insert and commit that follow it.
    pub duration_ms: u64,
    /// When its `Migrating: <name>` line arrived, if it did.
    pub started_at: Option<Instant>,
    /// When its `Migrated:` line arrived. Its transaction (and locks) ends a
    /// few ms later, after the row insert and commit.
    pub finished_at: Instant,
}

/// A finished CLI run.
#[derive(Debug, Clone)]
pub struct PayloadRun {
    /// In the order they ran.
    pub migrated: Vec<Migrated>,
    /// Wall time of the whole CLI run (about 2 s of it is Node loading the
    /// TypeScript config).
    pub duration_ms: u64,
    /// The end of its output, ANSI colours removed, password redacted.
    pub output_tail: String,
}

/// Where and how the CLI runs.
struct Layout {
    /// The working directory: nearest `package.json` at or above the project dir.
    root: PathBuf,
    /// `node_modules/payload/bin.js`, as Node would resolve it from `root`.
    bin: PathBuf,
    migration_dir: PathBuf,
}

impl Payload {
    fn table(&self) -> &str {
        if self.table.is_empty() { DEFAULT_TABLE } else { &self.table }
    }

    fn layout(&self) -> Result<Layout, PayloadError> {
        let dir = std::fs::canonicalize(&self.project_dir)
            .map_err(|source| PayloadError::Dir { dir: self.project_dir.clone(), source })?;
        let root = dir
            .ancestors()
            .find(|d| d.join("package.json").is_file())
            .ok_or_else(|| PayloadError::NoProject { dir: dir.clone() })?
            .to_path_buf();
        let bin = root
            .ancestors()
            .map(|d| d.join("node_modules/payload/bin.js"))
            .find(|b| b.is_file())
            .ok_or_else(|| PayloadError::NotInstalled { dir: root.clone() })?;
        Ok(Layout { migration_dir: migration_dir(&dir), root, bin })
    }

    /// `payload migrate` against the database at `url`. Refuses first if the
    /// database does not exist, a dev-push row (batch = -1) exists, or the
    /// files Payload would run are not `expected`; runs the CLI with
    /// DATABASE_URI=url without its password, PGPASSWORD, stdin closed, PAYLOAD_DROP_DATABASE=false,
    /// PGAPPNAME=app_name, its own process group killed on timeout; parses
    /// per-migration times from its output; after exit 0 confirms in SQL
    /// that each of `expected` (file names) has its row.
    pub async fn migrate(
        &self,
        url: &ConnUrl,
        app_name: &str,
        expected: &[String],
    ) -> Result<PayloadRun, PayloadError> {
        let layout = self.layout()?;
        let table = self.table();
        let before = self.preflight(url).await?;
        let applied: BTreeSet<&str> = before.iter().filter(|r| r.batch != -1).map(|r| r.name.as_str()).collect();
        let would_run: Vec<String> = files(&layout.migration_dir)?
            .into_iter()
            .map(|f| f.name)
            .filter(|n| !applied.contains(n.as_str()))
            .collect();
        if !same_names(&would_run, expected) {
            return Err(PayloadError::PlanMismatch { would_run, expected: expected.to_vec() });
        }
        let run = self.run(&layout, "migrate", url, app_name).await?;
        let after = self.rows(url).await?;
        let missing: Vec<String> =
            expected.iter().filter(|n| !after.iter().any(|r| &r.name == *n && r.batch != -1)).cloned().collect();
        if !missing.is_empty() {
            return Err(PayloadError::NotRecorded { table: table.to_string(), missing, output_tail: run.output_tail });
        }
        tracing::info!("payload migrate applied {} migration(s) in {} ms", run.migrated.len(), run.duration_ms);
        Ok(run)
    }

    /// `payload migrate:down` (rolls back the latest batch), same rules:
    /// refuses unless the latest batch is exactly `expected_removed` and all
    /// its files are there; confirms the rows are gone.
    pub async fn migrate_down(
        &self,
        url: &ConnUrl,
        app_name: &str,
        expected_removed: &[String],
    ) -> Result<PayloadRun, PayloadError> {
        let layout = self.layout()?;
        let table = self.table();
        let before = self.preflight(url).await?;
        let batch = before.iter().filter(|r| r.batch != -1).map(|r| r.batch).max().unwrap_or(0);
        let would_remove: Vec<String> =
            before.iter().filter(|r| r.batch != -1 && r.batch == batch).map(|r| r.name.clone()).collect();
        if !same_names(&would_remove, expected_removed) {
            return Err(PayloadError::DownMismatch { batch, would_remove, expected: expected_removed.to_vec() });
        }
        let local = files(&layout.migration_dir)?;
        if let Some(name) = would_remove.iter().find(|n| !local.iter().any(|f| &f.name == *n)) {
            return Err(PayloadError::DownFileMissing { name: name.clone(), dir: layout.migration_dir });
        }
        let run = self.run(&layout, "migrate:down", url, app_name).await?;
        let after = self.rows(url).await?;
        let remaining: Vec<String> =
            expected_removed.iter().filter(|n| after.iter().any(|r| &r.name == *n && r.batch != -1)).cloned().collect();
        if !remaining.is_empty() {
            return Err(PayloadError::StillRecorded {
                table: table.to_string(),
                remaining,
                output_tail: run.output_tail,
            });
        }
        tracing::info!(
            "payload migrate:down rolled back {} migration(s) in {} ms",
            run.migrated.len(),
            run.duration_ms
        );
        Ok(run)
    }

    /// The database must exist and hold no dev-push row; returns its history.
    async fn preflight(&self, url: &ConnUrl) -> Result<Vec<HistoryRow>, PayloadError> {
        let rows = self.rows(url).await?;
        let count = rows.iter().filter(|r| r.batch == -1).count();
        if count > 0 {
            return Err(PayloadError::DevPushRows { table: self.table().to_string(), count });
        }
        Ok(rows)
    }

    /// The history through a short-lived session of our own.
    async fn rows(&self, url: &ConnUrl) -> Result<Vec<HistoryRow>, PayloadError> {
        let mut conn = match pg::connect(url, "pgrehearse-payload-check").await {
            Ok(c) => c,
            Err(PgError::Connect { source: sqlx::Error::Database(db), .. })
                if db.code().as_deref() == Some("3D000") =>
            {
                return Err(PayloadError::DatabaseMissing { database: url.database(), url: url.redacted() });
            }
            Err(e) => return Err(e.into()),
        };
        let rows = history(&mut conn, self.table()).await;
        let _ = conn.close().await;
        rows
    }

    /// Runs `node <bin> <command>` and reads its output as it comes.
    async fn run(
        &self,
        layout: &Layout,
        command: &str,
        url: &ConnUrl,
        app_name: &str,
    ) -> Result<PayloadRun, PayloadError> {
        let child_url = child_url(url, app_name);
        tracing::info!(
            project = %layout.root.display(),
            database = %url.redacted(),
            "running payload {command}"
        );
        let program = "node";
        let mut tool = ToolProcess::new(program, self.timeout);
        tool.arg(&layout.bin)
            .arg(command)
            .current_dir(&layout.root)
            // The URL without its password, the password in PGPASSWORD:
            // node-postgres (under Payload's postgres adapter and drizzle)
            // reads PGPASSWORD when the connection string carries none.
            .database(url, app_name, Password::Env)
            // The template's variable; DATABASE_URL and POSTGRES_URL too, so a
            // config reading one of those (or a `.env` defining them) cannot
            // send Payload to another database.
            .env("DATABASE_URI", &child_url)
            .env("DATABASE_URL", &child_url)
            .env("POSTGRES_URL", &child_url)
            // Set, not removed: Payload fills unset or empty variables from
            // the project's `.env` files, which may say `true`.
            .env("PAYLOAD_DROP_DATABASE", "false")
            .merge_output();
        if let Some(options) = &self.pg_options {
            tool.env("PGOPTIONS", options);
        }
        let secrets = tool.secrets().clone();
        let progress = Arc::new(Mutex::new(Progress::default()));
        let seen = Arc::clone(&progress);
        let cmd_name = command.to_string();
        let ran = tool
            .run(move |_, line, at| {
                let line = secrets.redact(&strip_ansi(line));
                tracing::debug!(target: "pgrehearse::payload", "payload {cmd_name}: {}", line.trim_end());
                seen.lock().unwrap_or_else(|e| e.into_inner()).line(&line, at);
            })
            .await
            .map_err(|e| PayloadError::Spawn {
                program: program.to_string(),
                source: std::io::Error::other(e.message),
            })?;
        let status = match &ran.exit {
            Exit::Exited { success, status } => Some((*success, status.clone())),
            Exit::TimedOut { .. } => None,
        };
        let duration_ms = ran.duration.as_millis() as u64;
        let ended = Instant::now();
        let p = std::mem::take(&mut *progress.lock().unwrap_or_else(|e| e.into_inner()));
        let unfinished = p.unfinished(ended);
        let mut output_tail = pg::tools::tail(&p.tail, TAIL_BYTES);
        if output_tail.is_empty() {
            output_tail = "(nothing)".into();
        }
        let command = command.to_string();
        match status {
            None => Err(PayloadError::Timeout {
                command,
                after_secs: self.timeout.as_secs(),
                migration: p.running.map(|(n, _)| n),
                waiting_on_prompt: p.prompt,
                migrated: p.migrated,
                ran: unfinished,
                sessions_ended: end_sessions(url, app_name).await,
                output_tail,
            }),
            Some((false, status)) => Err(PayloadError::Failed {
                command,
                status,
                // The window is the running file's; an error line may name another.
                ran: unfinished
                    .filter(|_| p.failed.as_ref().is_none_or(|f| p.running.as_ref().is_some_and(|r| &r.0 == f))),
                migration: p.failed.or(p.running.map(|(n, _)| n)),
                migrated: p.migrated,
                output_tail,
            }),
            Some(_) => Ok(PayloadRun { migrated: p.migrated, duration_ms, output_tail }),
        }
    }
}

/// Terminates the server sessions a killed CLI left behind: PostgreSQL only
/// notices a dead client when it next writes to it, so a statement (and the
/// locks of its transaction) would otherwise run on to its end.
async fn end_sessions(url: &ConnUrl, app_name: &str) -> Option<u64> {
    let mut conn = pg::connect(url, "pgrehearse-payload-check").await.ok()?;
    let ended: Result<i64, _> = sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = $1 AND pid <> pg_backend_pid()",
    )
    .bind(app_name)
    .fetch_one(&mut conn)
    .await;
    let _ = conn.close().await;
    match ended {
        Ok(n) => Some(n.max(0) as u64),
        Err(e) => {
            tracing::warn!("cannot end the killed Payload CLI's sessions on {}: {e}", url.redacted());
            None
        }
    }
}

/// The URL the CLI gets: without any password (neither in the userinfo nor
/// as `?password=`; the CLI finds it in `PGPASSWORD`), with our
/// application_name (node-pg takes it from the URL; PGAPPNAME is set too).
fn child_url(url: &ConnUrl, app_name: &str) -> String {
    let Ok(mut u) = url::Url::parse(&url.without_password()) else { return url.without_password() };
    let kept: Vec<(String, String)> = u
        .query_pairs()
        .filter(|(k, _)| k != "application_name")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    u.query_pairs_mut().clear().extend_pairs(kept).append_pair("application_name", app_name);
    u.to_string()
}

fn same_names(a: &[String], b: &[String]) -> bool {
    let a: BTreeSet<&String> = a.iter().collect();
    let b: BTreeSet<&String> = b.iter().collect();
    a == b
}

#[cfg(test)]
mod tests;
