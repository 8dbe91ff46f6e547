//! The plan: the ordered pending migrations on top of a database's applied
//! history, drift (history that no longer matches the files), and the plan
//! hash that identifies exactly what will run. Any edited file, added
//! migration or moved history changes the hash, so an approval of one plan
//! can never release another.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

use super::{Applied, Migration};
use crate::config::MigrationKind;

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub target: String,
    pub kind: MigrationKind,
    pub applied: Vec<Applied>,
    pub pending: Vec<Migration>,
    pub drift: Vec<Drift>,
    /// SHA-256 (hex) over target, kind, base history and the pending list.
    pub hash: String,
}

/// History that no longer matches the project's files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Drift {
    /// An applied migration whose file changed since it was applied.
    Changed {
        version: String,
        recorded: String,
        current: String,
        /// Set when the file differs from the applied one only in a way an
        /// editor or git makes (see [`Cosmetic`]).
        #[serde(skip_serializing_if = "Option::is_none")]
        only: Option<Cosmetic>,
    },
    /// An applied migration whose file is gone.
    Missing { version: String },
    /// A history row marked failed: the migration was partly applied.
    Failed { version: String },
    /// Rows written by a dev-mode schema push (Payload `batch = -1`).
    DevPush { name: String },
}

/// A change of a file's bytes that leaves its SQL alone but changes its
/// checksum (sqlx hashes the raw bytes: sqlx issue #2659).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cosmetic {
    /// CRLF where the applied file had LF, or the other way round.
    LineEndings,
    /// A UTF-8 BOM added or removed.
    Bom,
}

impl Cosmetic {
    /// What changed, when the file's text with that undone hashes to
    /// `recorded` (`digest` is the tool's checksum, hex).
    pub fn find(text: &str, recorded: &str, digest: impl Fn(&[u8]) -> String) -> Option<Cosmetic> {
        let lf = text.replace("\r\n", "\n");
        let crlf = lf.replace('\n', "\r\n");
        let (bare, bom) = match text.strip_prefix('\u{feff}') {
            Some(rest) => (rest.to_string(), text.to_string()),
            None => (text.to_string(), format!("\u{feff}{text}")),
        };
        let matches = |t: &str| t != text && digest(t.as_bytes()) == recorded;
        if matches(&lf) || matches(&crlf) {
            Some(Cosmetic::LineEndings)
        } else if matches(&bare) || matches(&bom) {
            Some(Cosmetic::Bom)
        } else {
            None
        }
    }
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Drift::Changed { version, recorded, current, only: Some(Cosmetic::LineEndings) } => write!(
                f,
                "migration {version} differs from the applied file only in its line endings (CRLF vs LF; checksum {} recorded, file now {}), which changes sqlx's checksum; check it out with the line endings it was applied with (e.g. `*.sql text eol=lf` in .gitattributes, or git's core.autocrlf)",
                short(recorded),
                short(current)
            ),
            Drift::Changed { version, recorded, current, only: Some(Cosmetic::Bom) } => write!(
                f,
                "migration {version} differs from the applied file only by a UTF-8 byte order mark (checksum {} recorded, file now {}); save it as it was applied (with or without the BOM)",
                short(recorded),
                short(current)
            ),
            Drift::Changed { version, recorded, current, only: None } => write!(
                f,
                "migration {version} was edited after it was applied (checksum {} recorded, file now {}); restore the file or add a new migration instead",
                short(recorded),
                short(current)
            ),
            Drift::Missing { version } => {
                write!(f, "migration {version} is applied but its file is gone; restore the file from version control")
            }
            Drift::Failed { version } => write!(
                f,
                "migration {version} is recorded as failed (partly applied, \"dirty\"); repair the database by hand, then fix or delete its history row"
            ),
            Drift::DevPush { name } => write!(
                f,
                "history row `{name}` has batch = -1: the schema was changed by Payload's dev-mode push, not by migrations; recreate the change as a migration and delete the row"
            ),
        }
    }
}

fn short(s: &str) -> &str {
    &s[..s.len().min(12)]
}

/// Builds the plan. `known` holds checksums recorded earlier (by pgrehearse)
/// for tools whose history table keeps none.
pub fn build(
    target: &str,
    kind: MigrationKind,
    files: Vec<Migration>,
    applied: Vec<Applied>,
    known: &HashMap<String, String>,
) -> Plan {
    let by_version: HashMap<&str, &Migration> = files.iter().map(|m| (m.version.as_str(), m)).collect();
    let mut drift = Vec::new();
    let mut done: HashSet<&str> = HashSet::new();
    for a in &applied {
        done.insert(a.version.as_str());
        if !a.ok {
            drift.push(match kind {
                MigrationKind::Payload => Drift::DevPush { name: a.name.clone() },
                _ => Drift::Failed { version: a.version.clone() },
            });
            continue;
        }
        match by_version.get(a.version.as_str()) {
            None if kind != MigrationKind::Command => drift.push(Drift::Missing { version: a.version.clone() }),
            None => {}
            Some(file) => {
                let recorded = a.checksum.as_ref().or_else(|| known.get(&a.version));
                if let Some(recorded) = recorded
                    && *recorded != file.checksum
                {
                    drift.push(Drift::Changed {
                        version: a.version.clone(),
                        recorded: recorded.clone(),
                        current: file.checksum.clone(),
                        only: cosmetic(kind, file, recorded),
                    });
                }
            }
        }
    }
    let pending: Vec<Migration> = files.iter().filter(|m| !done.contains(m.version.as_str())).cloned().collect();
    let hash = hash(target, kind, &applied, &pending);
    Plan { target: target.to_string(), kind, applied, pending, drift, hash }
}

/// [`Cosmetic::find`] with the source's checksum: SHA-384 for sqlx, SHA-256
/// of the up SQL for diesel; nothing for external tools (no text here).
fn cosmetic(kind: MigrationKind, file: &Migration, recorded: &str) -> Option<Cosmetic> {
    use sha2::Sha384;
    match kind {
        _ if file.up_sql.is_empty() => None,
        MigrationKind::Sqlx => Cosmetic::find(&file.up_sql, recorded, |b| hex::encode(Sha384::digest(b))),
        MigrationKind::Diesel => Cosmetic::find(&file.up_sql, recorded, |b| hex::encode(Sha256::digest(b))),
        _ => None,
    }
}

fn hash(target: &str, kind: MigrationKind, applied: &[Applied], pending: &[Migration]) -> String {
    let mut h = Sha256::new();
    h.update(format!("pgrehearse plan v1\ntarget {target}\nkind {kind:?}\n"));
    for a in applied {
        h.update(format!("applied {} {}\n", a.version, a.ok));
    }
    for m in pending {
        h.update(format!("pending {} {} {} {}\n", m.version, m.checksum, m.transactional, m.down.is_reversible()));
    }
    hex::encode(h.finalize())
}

impl Plan {
    /// Versions applied (and not failed), as the manifest records them.
    pub fn applied_versions(&self) -> Vec<String> {
        self.applied.iter().filter(|a| a.ok).map(|a| a.version.clone()).collect()
    }
}

/// `to_regclass(table)`: the quoted name when the table exists.
pub async fn regclass(conn: &mut PgConnection, table: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT to_regclass($1)::text").bind(table).fetch_one(&mut *conn).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrations::Down;

    fn file(v: &str, sum: &str) -> Migration {
        Migration {
            version: v.into(),
            name: format!("m{v}"),
            path: format!("{v}.up.sql").into(),
            up_sql: String::new(),
            checksum: sum.into(),
            transactional: true,
            down: Down::Missing,
        }
    }

    fn row(v: &str, sum: Option<&str>, ok: bool) -> Applied {
        Applied {
            version: v.into(),
            name: String::new(),
            checksum: sum.map(str::to_string),
            ok,
            applied_at: None,
            execution_ms: None,
        }
    }

    #[test]
    fn pending_drift_and_hash() {
        let files = vec![file("1", "a"), file("2", "b"), file("3", "c")];
        let plan = build("app", MigrationKind::Sqlx, files.clone(), vec![row("1", Some("a"), true)], &HashMap::new());
        assert_eq!(plan.pending.iter().map(|m| m.version.as_str()).collect::<Vec<_>>(), ["2", "3"]);
        assert!(plan.drift.is_empty());

        // An edited pending file changes the hash.
        let mut edited = files.clone();
        edited[2].checksum = "c2".into();
        let other = build("app", MigrationKind::Sqlx, edited, vec![row("1", Some("a"), true)], &HashMap::new());
        assert_ne!(plan.hash, other.hash);

        // An edited applied file is drift; so are failed rows and missing files.
        let drifted = build(
            "app",
            MigrationKind::Sqlx,
            files,
            vec![row("1", Some("x"), true), row("2", Some("b"), false), row("9", Some("z"), true)],
            &HashMap::new(),
        );
        assert_eq!(
            drifted.drift,
            vec![
                Drift::Changed { version: "1".into(), recorded: "x".into(), current: "a".into(), only: None },
                Drift::Failed { version: "2".into() },
                Drift::Missing { version: "9".into() },
            ]
        );
    }

    #[test]
    fn known_checksums_detect_edits_for_tools_without_them() {
        let known = HashMap::from([("1".to_string(), "old".to_string())]);
        let plan = build("app", MigrationKind::Diesel, vec![file("1", "new")], vec![row("1", None, true)], &known);
        assert!(matches!(plan.drift[0], Drift::Changed { .. }));
    }

    #[test]
    fn line_endings_and_bom_are_told_apart_from_edits() {
        use sha2::Sha384;
        let sum = |t: &str| hex::encode(Sha384::digest(t.as_bytes()));
        let applied = "CREATE TABLE t (\n  id int\n);\n";
        let mut f = file("1", "");
        for (now, only) in [
            ("CREATE TABLE t (\r\n  id int\r\n);\r\n", Some(Cosmetic::LineEndings)),
            ("\u{feff}CREATE TABLE t (\n  id int\n);\n", Some(Cosmetic::Bom)),
            ("CREATE TABLE t (\n  id bigint\n);\n", None),
        ] {
            f.up_sql = now.into();
            f.checksum = sum(now);
            let plan = build(
                "app",
                MigrationKind::Sqlx,
                vec![f.clone()],
                vec![row("1", Some(&sum(applied)), true)],
                &HashMap::new(),
            );
            match &plan.drift[..] {
                [d @ Drift::Changed { only: o, .. }] => {
                    assert_eq!(*o, only, "{now:?}");
                    let text = d.to_string();
                    assert!(text.contains(if only.is_some() { "only" } else { "was edited" }), "{text}");
                }
                other => panic!("{now:?}: {other:?}"),
            }
        }
        // And the other way round: applied with CRLF, now LF.
        f.up_sql = applied.into();
        f.checksum = sum(applied);
        let crlf = sum(&applied.replace('\n', "\r\n"));
        let plan = build("app", MigrationKind::Sqlx, vec![f], vec![row("1", Some(&crlf), true)], &HashMap::new());
        assert!(
            matches!(plan.drift[..], [Drift::Changed { only: Some(Cosmetic::LineEndings), .. }]),
            "{:?}",
            plan.drift
        );
    }
}
