//! The `sqlx` source (also pgrehearse's native format): files named
//! `<version>_<name>.up.sql` / `.down.sql` (or `<version>_<name>.sql`, which has
//! no down) and the `_sqlx_migrations` table, kept exactly as sqlx keeps it —
//! SHA-384 checksum of the file bytes, `success`, `execution_time` in
//! nanoseconds — so a sqlx application sees the same state afterwards.

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha384};
use sqlx::{PgConnection, Row};

use super::{Applied, Down, Migration, SourceError, read_text, split};

/// The table as sqlx creates it.
pub const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS {table} (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    installed_on TIMESTAMPTZ NOT NULL DEFAULT now(),
    success BOOLEAN NOT NULL,
    checksum BYTEA NOT NULL,
    execution_time BIGINT NOT NULL
)";

pub fn files(dir: &Path) -> Result<Vec<Migration>, SourceError> {
    let entries = std::fs::read_dir(dir).map_err(|source| SourceError::Dir { dir: dir.to_path_buf(), source })?;
    let mut ups: BTreeMap<i64, Migration> = BTreeMap::new();
    let mut downs: BTreeMap<i64, std::path::PathBuf> = BTreeMap::new();
    for entry in entries {
        let entry = entry.map_err(|source| SourceError::Dir { dir: dir.to_path_buf(), source })?;
        let path = entry.path();
        let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
            // sqlx would run it under a lossy name; skipping it would drop a migration.
            if path.extension().is_some_and(|e| e == "sql") {
                return Err(SourceError::Layout {
                    path,
                    problem: "the file name is not valid UTF-8; rename it".into(),
                });
            }
            continue;
        };
        if file.starts_with('.') || !file.ends_with(".sql") || !path.is_file() {
            continue;
        }
        let (stem, is_down) = if let Some(s) = file.strip_suffix(".down.sql") {
            (s, true)
        } else if let Some(s) = file.strip_suffix(".up.sql") {
            (s, false)
        } else {
            (file.strip_suffix(".sql").unwrap_or(file), false)
        };
        let Some((version, name)) = stem.split_once('_') else {
            return Err(SourceError::Layout {
                path,
                problem: "a sqlx migration is named `<version>_<name>.up.sql` (or `.down.sql`, or `.sql`)".into(),
            });
        };
        let version: i64 = version.parse().map_err(|_| SourceError::Layout {
            path: path.clone(),
            problem: format!("`{version}` is not a version number; sqlx versions are integers such as 20240101120000"),
        })?;
        if is_down {
            downs.insert(version, path);
            continue;
        }
        let sql = read_text(&path)?;
        refuse_hidden_directive(&path, &sql)?;
        let migration = Migration {
            version: version.to_string(),
            // sqlx's description: the name with underscores as spaces.
            name: name.replace('_', " "),
            checksum: hex::encode(Sha384::digest(sql.as_bytes())),
            transactional: !split::no_transaction(&sql),
            up_sql: sql,
            path: path.clone(),
            down: Down::Missing,
        };
        if let Some(first) = ups.insert(version, migration) {
            return Err(SourceError::DuplicateVersion {
                version: version.to_string(),
                first: first.path,
                second: path,
            });
        }
    }
    for (version, path) in downs {
        let Some(m) = ups.get_mut(&version) else {
            return Err(SourceError::Layout { path, problem: "a down migration without its up migration".into() });
        };
        let sql = read_text(&path)?;
        refuse_hidden_directive(&path, &sql)?;
        // Zero bytes: not reversible; only comments (sqlx's generated
        // `-- Add down migration script here`): a no-op down sqlx runs.
        let transactional = !split::no_transaction(&sql);
        m.down = Down::of_file(path, sql, transactional);
    }
    Ok(ups.into_values().collect())
}

/// A BOM before `-- no-transaction` hides the directive from sqlx, which
/// then runs the file in a transaction (where `CREATE INDEX CONCURRENTLY`
/// fails, and other statements lock differently than written): refused, as
/// the author meant the directive.
fn refuse_hidden_directive(path: &Path, sql: &str) -> Result<(), SourceError> {
    if sql.strip_prefix('\u{feff}').is_some_and(split::no_transaction) {
        return Err(SourceError::Layout {
            path: path.to_path_buf(),
            problem: "starts with a UTF-8 BOM before `-- no-transaction`, so sqlx does not see the directive and \
                      would run the file in a transaction; save the file as UTF-8 without a BOM"
                .into(),
        });
    }
    Ok(())
}

pub async fn history(conn: &mut PgConnection, table: &str) -> Result<Vec<Applied>, sqlx::Error> {
    let Some(regclass) = super::plan::regclass(conn, table).await? else { return Ok(Vec::new()) };
    let rows = sqlx::query(&format!(
        "SELECT version, description, success, checksum, execution_time, installed_on::text AS at
           FROM {regclass} ORDER BY version"
    ))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            let nanos: i64 = r.try_get("execution_time")?;
            Ok(Applied {
                version: r.try_get::<i64, _>("version")?.to_string(),
                name: r.try_get("description")?,
                checksum: Some(hex::encode(r.try_get::<Vec<u8>, _>("checksum")?)),
                ok: r.try_get("success")?,
                applied_at: r.try_get("at")?,
                execution_ms: (nanos >= 0).then_some(nanos / 1_000_000),
            })
        })
        .collect()
}

/// Records an applied migration as sqlx does (its row, in the migration's
/// transaction when it has one).
pub async fn record_applied(
    conn: &mut PgConnection,
    table: &str,
    m: &Migration,
    elapsed: std::time::Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(&CREATE_TABLE.replace("{table}", table)).execute(&mut *conn).await?;
    let checksum = hex::decode(&m.checksum).unwrap_or_default();
    sqlx::query(&format!(
        "INSERT INTO {table} (version, description, success, checksum, execution_time) VALUES ($1, $2, TRUE, $3, $4)"
    ))
    .bind(m.version.parse::<i64>().unwrap_or_default())
    .bind(&m.name)
    .bind(checksum)
    .bind(elapsed.as_nanos() as i64)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Removes a reverted migration's row, as `sqlx migrate revert` does.
pub async fn record_reverted(conn: &mut PgConnection, table: &str, m: &Migration) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("DELETE FROM {table} WHERE version = $1"))
        .bind(m.version.parse::<i64>().unwrap_or_default())
        .execute(&mut *conn)
        .await?;
    Ok(())
}
