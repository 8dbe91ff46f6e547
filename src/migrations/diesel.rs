//! The `diesel` source: one directory per migration, `<version>_<name>/` with
//! `up.sql`, `down.sql` and an optional `metadata.toml`
//! (`run_in_transaction = false`), and the `__diesel_schema_migrations` table.
//! Diesel's order is its own: the version is the directory name up to the
//! first `_` with hyphens removed, sorted as text — so `2024-01-02-000000_a`
//! and `20240101120000_b` run in version order, not name order. A `down.sql`
//! of zero bytes is diesel's way of saying "not reversible" (diesel refuses
//! to run it); one of only comments is a no-op down, which diesel runs.

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha256};
use sqlx::{PgConnection, Row};

use super::{Applied, Down, Migration, SourceError, read_text};

pub const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS {table} (
    version VARCHAR(50) PRIMARY KEY NOT NULL,
    run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
)";

/// Diesel's version of a migration directory name.
pub fn version_of(dir_name: &str) -> String {
    dir_name.split('_').next().unwrap_or(dir_name).replace('-', "")
}

pub fn files(dir: &Path) -> Result<Vec<Migration>, SourceError> {
    let entries = std::fs::read_dir(dir).map_err(|source| SourceError::Dir { dir: dir.to_path_buf(), source })?;
    let mut by_version: BTreeMap<String, Migration> = BTreeMap::new();
    for entry in entries {
        let entry = entry.map_err(|source| SourceError::Dir { dir: dir.to_path_buf(), source })?;
        let path = entry.path();
        let Some(dir_name) = path.file_name().and_then(|f| f.to_str()).map(str::to_string) else {
            if path.is_dir() {
                return Err(SourceError::Layout {
                    path,
                    problem: "the directory name is not valid UTF-8; rename it".into(),
                });
            }
            continue;
        };
        if dir_name.starts_with('.') || !path.is_dir() {
            continue;
        }
        let up_path = path.join("up.sql");
        if !up_path.is_file() {
            return Err(SourceError::Layout { path, problem: "a diesel migration directory needs an up.sql".into() });
        }
        let version = version_of(&dir_name);
        let up = read_text(&up_path)?;
        let transactional = run_in_transaction(&path.join("metadata.toml"))?;
        let down_path = path.join("down.sql");
        let down = if !down_path.is_file() {
            Down::Missing
        } else {
            let sql = read_text(&down_path)?;
            Down::of_file(down_path, sql, transactional)
        };
        let name = dir_name.split_once('_').map(|(_, n)| n.to_string()).unwrap_or_default();
        let migration = Migration {
            version: version.clone(),
            name,
            path: path.clone(),
            checksum: hex::encode(Sha256::digest(up.as_bytes())),
            up_sql: up,
            transactional,
            down,
        };
        if let Some(first) = by_version.insert(version.clone(), migration) {
            return Err(SourceError::DuplicateVersion { version, first: first.path, second: path });
        }
    }
    Ok(by_version.into_values().collect())
}

/// `metadata.toml`'s `run_in_transaction` (default true).
fn run_in_transaction(path: &Path) -> Result<bool, SourceError> {
    if !path.is_file() {
        return Ok(true);
    }
    let text = read_text(path)?;
    let value: toml::Value = toml::from_str(&text)
        .map_err(|e| SourceError::Layout { path: path.to_path_buf(), problem: format!("invalid TOML: {e}") })?;
    match value.get("run_in_transaction") {
        None => Ok(true),
        Some(toml::Value::Boolean(b)) => Ok(*b),
        Some(other) => Err(SourceError::Layout {
            path: path.to_path_buf(),
            problem: format!("run_in_transaction must be true or false, not {other}"),
        }),
    }
}

pub async fn history(conn: &mut PgConnection, table: &str) -> Result<Vec<Applied>, sqlx::Error> {
    let Some(regclass) = super::plan::regclass(conn, table).await? else { return Ok(Vec::new()) };
    let rows = sqlx::query(&format!("SELECT version::text AS v, run_on::text AS at FROM {regclass} ORDER BY version"))
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Applied {
                version: r.try_get("v")?,
                name: String::new(),
                checksum: None,
                ok: true,
                applied_at: r.try_get("at")?,
                execution_ms: None,
            })
        })
        .collect()
}

pub async fn record_applied(conn: &mut PgConnection, table: &str, m: &Migration) -> Result<(), sqlx::Error> {
    sqlx::query(&CREATE_TABLE.replace("{table}", table)).execute(&mut *conn).await?;
    sqlx::query(&format!("INSERT INTO {table} (version) VALUES ($1)")).bind(&m.version).execute(&mut *conn).await?;
    Ok(())
}

pub async fn record_reverted(conn: &mut PgConnection, table: &str, m: &Migration) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("DELETE FROM {table} WHERE version = $1")).bind(&m.version).execute(&mut *conn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_drops_hyphens_and_name() {
        assert_eq!(version_of("2024-01-02-000000_create_users"), "20240102000000");
        assert_eq!(version_of("20240101120000_add_index"), "20240101120000");
        assert_eq!(version_of("00000000000000_diesel_initial_setup"), "00000000000000");
    }

    #[test]
    fn order_is_by_version_not_by_name() {
        let dir = tempfile::tempdir().unwrap();
        for (name, up, down, meta) in [
            ("2024-01-02-000000_second", "SELECT 2;", "SELECT 2;", None),
            ("20240101120000_first", "SELECT 1;", "", Some("run_in_transaction = false\n")),
            ("20240103000000_third", "SELECT 3;", "-- This file should undo anything in `up.sql`\n", None),
        ] {
            let d = dir.path().join(name);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("up.sql"), up).unwrap();
            std::fs::write(d.join("down.sql"), down).unwrap();
            if let Some(meta) = meta {
                std::fs::write(d.join("metadata.toml"), meta).unwrap();
            }
        }
        let files = files(dir.path()).unwrap();
        let versions: Vec<_> = files.iter().map(|m| m.version.as_str()).collect();
        assert_eq!(versions, ["20240101120000", "20240102000000", "20240103000000"]);
        assert!(!files[0].transactional);
        assert!(matches!(files[0].down, Down::Empty { .. }), "a zero-byte down.sql is not reversible");
        assert!(files[1].transactional);
        assert!(matches!(files[1].down, Down::Sql { .. }));
        assert!(!files[1].down.is_noop());
        // diesel's generated down.sql: a no-op down, run like any other.
        assert!(files[2].down.is_reversible() && files[2].down.is_noop(), "{:?}", files[2].down);
    }
}
