//! What a migration does to the database, measured from the outside: the
//! relations before and after (a changed `relfilenode` is a rewrite; sizes
//! give the deltas), WAL generated, and a lock sampler — an observer
//! connection that reads `pg_locks` every 20 ms for statements whose locks
//! cannot be read from their own session (statements outside a transaction
//! such as `CREATE INDEX CONCURRENTLY`, and external runners like Payload).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::{Connection, PgConnection, Row};
use tokio_util::sync::CancellationToken;

use crate::conn_url::ConnUrl;
use crate::pg::{self, PgError};

/// How often the sampler reads `pg_locks` (the design asks for ≤ 50 ms).
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(20);

/// First OID of user objects: locks below it are on system catalogs.
const FIRST_NORMAL_OID: i64 = 16384;

#[derive(Debug, Clone, PartialEq)]
pub struct Relation {
    pub oid: i64,
    pub schema: String,
    pub name: String,
    /// `pg_class.relkind`: r table, p partitioned, m matview, i index.
    pub kind: char,
    pub filenode: i64,
    /// Table: heap + indexes + TOAST (`pg_total_relation_size`); index: its size.
    pub bytes: i64,
    /// `reltuples` (an estimate, fresh after the restore's ANALYZE).
    pub rows: f64,
}

impl Relation {
    pub fn qualified(&self) -> String {
        if self.schema == "public" { self.name.clone() } else { format!("{}.{}", self.schema, self.name) }
    }

    pub fn is_table(&self) -> bool {
        matches!(self.kind, 'r' | 'p' | 'm')
    }
}

/// The user relations of a database at one moment, by OID.
#[derive(Debug, Clone, Default)]
pub struct Catalog(pub HashMap<i64, Relation>);

impl Catalog {
    /// Reads the catalog through `conn` (inside its transaction, if any, so
    /// uncommitted changes of that transaction are seen).
    pub async fn capture(conn: &mut PgConnection) -> Result<Catalog, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT c.oid::int8 AS oid, n.nspname::text AS schema, c.relname::text AS name, c.relkind::text AS kind,
                    c.relfilenode::int8 AS filenode, c.reltuples::float8 AS rows,
                    CASE WHEN c.relkind = 'i' THEN pg_relation_size(c.oid) ELSE pg_total_relation_size(c.oid) END AS bytes
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p', 'm', 'i')
                AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'",
        )
        .fetch_all(&mut *conn)
        .await?;
        let mut map = HashMap::with_capacity(rows.len());
        for r in rows {
            let kind: String = r.try_get("kind")?;
            let rel = Relation {
                oid: r.try_get("oid")?,
                schema: r.try_get("schema")?,
                name: r.try_get("name")?,
                kind: kind.chars().next().unwrap_or('r'),
                filenode: r.try_get("filenode")?,
                bytes: r.try_get("bytes")?,
                rows: r.try_get::<f64, _>("rows")?.max(0.0),
            };
            map.insert(rel.oid, rel);
        }
        Ok(Catalog(map))
    }

    pub fn get(&self, oid: i64) -> Option<&Relation> {
        self.0.get(&oid)
    }

    pub fn by_name(&self, name: &str) -> Option<&Relation> {
        let (schema, rel) = match name.split_once('.') {
            Some((s, r)) => (s, r),
            None => ("public", name),
        };
        self.0.values().find(|r| r.is_table() && r.name == rel && r.schema == schema)
    }
}

/// A relation rewritten (new `relfilenode`) between two catalogs.
#[derive(Debug, Clone, Serialize)]
pub struct Rewrite {
    pub relation: String,
    /// `table` or `index`.
    pub kind: &'static str,
    pub bytes_before: i64,
    pub bytes_after: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SizeDelta {
    pub relation: String,
    pub bytes_before: i64,
    pub bytes_after: i64,
    pub delta: i64,
}

/// Rewrites and size changes from `before` to `after` (new and dropped
/// relations included in the deltas).
pub fn compare(before: &Catalog, after: &Catalog) -> (Vec<Rewrite>, Vec<SizeDelta>) {
    let mut rewrites = Vec::new();
    let mut deltas = Vec::new();
    for (oid, b) in &before.0 {
        match after.get(*oid) {
            Some(a) => {
                if a.filenode != b.filenode && a.filenode != 0 {
                    rewrites.push(Rewrite {
                        relation: a.qualified(),
                        kind: if a.is_table() { "table" } else { "index" },
                        bytes_before: b.bytes,
                        bytes_after: a.bytes,
                    });
                }
                if a.bytes != b.bytes && a.is_table() {
                    deltas.push(SizeDelta {
                        relation: a.qualified(),
                        bytes_before: b.bytes,
                        bytes_after: a.bytes,
                        delta: a.bytes - b.bytes,
                    });
                }
            }
            None => match reborn(b, before, after) {
                // Dropped and recreated under the same name (an index that
                // `ALTER COLUMN … TYPE` rebuilds gets a new OID): a rebuild.
                Some(a) => {
                    rewrites.push(Rewrite {
                        relation: a.qualified(),
                        kind: if a.is_table() { "table" } else { "index" },
                        bytes_before: b.bytes,
                        bytes_after: a.bytes,
                    });
                    if a.is_table() && a.bytes != b.bytes {
                        deltas.push(SizeDelta {
                            relation: a.qualified(),
                            bytes_before: b.bytes,
                            bytes_after: a.bytes,
                            delta: a.bytes - b.bytes,
                        });
                    }
                }
                None if b.is_table() => deltas.push(SizeDelta {
                    relation: b.qualified(),
                    bytes_before: b.bytes,
                    bytes_after: 0,
                    delta: -b.bytes,
                }),
                None => {}
            },
        }
    }
    for (oid, a) in &after.0 {
        let replaces_one = || {
            before
                .0
                .values()
                .any(|b| !after.0.contains_key(&b.oid) && reborn(b, before, after).is_some_and(|r| r.oid == a.oid))
        };
        if !before.0.contains_key(oid) && a.is_table() && !replaces_one() {
            deltas.push(SizeDelta { relation: a.qualified(), bytes_before: 0, bytes_after: a.bytes, delta: a.bytes });
        }
    }
    rewrites.sort_by_key(|r| std::cmp::Reverse(r.bytes_before));
    deltas.sort_by_key(|d| std::cmp::Reverse(d.delta.abs()));
    (rewrites, deltas)
}

/// The relation of `after` with the same schema, name and kind as `b` (gone
/// from `after` by OID), when `before` had no such other relation.
fn reborn<'a>(b: &Relation, before: &Catalog, after: &'a Catalog) -> Option<&'a Relation> {
    let same = |r: &&Relation| r.schema == b.schema && r.name == b.name && r.kind == b.kind;
    after.0.values().find(|r| same(r) && !before.0.contains_key(&r.oid))
}

/// The current WAL insert position, in bytes.
pub async fn wal_position(conn: &mut PgConnection) -> Result<u64, sqlx::Error> {
    let lsn: String = sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text").fetch_one(&mut *conn).await?;
    Ok(parse_lsn(&lsn))
}

fn parse_lsn(lsn: &str) -> u64 {
    let (hi, lo) = lsn.split_once('/').unwrap_or(("0", "0"));
    (u64::from_str_radix(hi, 16).unwrap_or(0) << 32) | u64::from_str_radix(lo, 16).unwrap_or(0)
}

/// A lock one client backend held, as seen by the sampler.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    pub pid: i32,
    pub oid: i64,
    pub mode: String,
}

/// Reads `pg_locks` of the observed database every [`SAMPLE_INTERVAL`] from
/// its own connection until stopped. Only granted relation locks of client
/// backends other than the observer itself are kept.
pub struct Sampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    pub async fn start(url: &ConnUrl) -> Result<Sampler, PgError> {
        let mut conn = pg::connect(url, "pgrehearse-observer").await?;
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (s, st) = (samples.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = st.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let at = Instant::now();
                let rows = sqlx::query(
                    "SELECT l.pid, l.relation::int8 AS oid, l.mode
                       FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                      WHERE l.locktype = 'relation' AND l.granted
                        AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                        AND l.pid <> pg_backend_pid() AND a.backend_type = 'client backend'
                        AND l.relation::int8 >= $1",
                )
                .bind(FIRST_NORMAL_OID)
                .fetch_all(&mut conn)
                .await;
                let Ok(rows) = rows else { break };
                let mut out = s.lock().expect("sampler mutex");
                for r in rows {
                    let (Ok(pid), Ok(oid), Ok(mode)) = (r.try_get("pid"), r.try_get("oid"), r.try_get("mode")) else {
                        continue;
                    };
                    out.push(Sample { at, pid, oid, mode });
                }
            }
            let _ = conn.close().await;
        });
        Ok(Sampler { samples, stop, task })
    }

    /// Locks seen between `from` and `to` (of `pid`, when given), merged into
    /// held intervals.
    pub fn held(&self, from: Instant, to: Instant, pid: Option<i32>) -> Vec<SampledLock> {
        let samples = self.samples.lock().expect("sampler mutex");
        merge(samples.iter().filter(|s| s.at >= from && s.at <= to && pid.is_none_or(|p| s.pid == p)))
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// One lock as the sampler saw it: first and last sighting.
#[derive(Debug, Clone)]
pub struct SampledLock {
    pub oid: i64,
    pub mode: String,
    pub first: Instant,
    pub last: Instant,
}

impl SampledLock {
    /// Held time: between the sightings plus one interval (the resolution).
    pub fn held_ms(&self) -> u64 {
        (self.last - self.first + SAMPLE_INTERVAL).as_millis() as u64
    }
}

fn merge<'a>(samples: impl Iterator<Item = &'a Sample>) -> Vec<SampledLock> {
    let mut by: HashMap<(i64, String), SampledLock> = HashMap::new();
    for s in samples {
        by.entry((s.oid, s.mode.clone()))
            .and_modify(|l| {
                l.first = l.first.min(s.at);
                l.last = l.last.max(s.at);
            })
            .or_insert_with(|| SampledLock { oid: s.oid, mode: s.mode.clone(), first: s.at, last: s.at });
    }
    let mut out: Vec<_> = by.into_values().collect();
    out.sort_by_key(|l| l.first);
    out
}

/// The relation locks the session behind `conn` holds right now (inside its
/// transaction: what its statements took so far).
pub async fn own_locks(conn: &mut PgConnection) -> Result<Vec<(i64, String)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT relation::int8 AS oid, mode FROM pg_locks
          WHERE pid = pg_backend_pid() AND locktype = 'relation' AND granted AND relation::int8 >= $1",
    )
    .bind(FIRST_NORMAL_OID)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(|r| Ok((r.try_get("oid")?, r.try_get("mode")?))).collect()
}

/// Lock modes from weakest to strongest, as PostgreSQL names them in `pg_locks`.
pub const MODES: [&str; 8] = [
    "AccessShareLock",
    "RowShareLock",
    "RowExclusiveLock",
    "ShareUpdateExclusiveLock",
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
];

pub fn strength(mode: &str) -> usize {
    MODES.iter().position(|m| *m == mode).unwrap_or(0)
}

/// `AccessExclusiveLock` → `ACCESS EXCLUSIVE`.
pub fn human_mode(mode: &str) -> String {
    let base = mode.strip_suffix("Lock").unwrap_or(mode);
    let mut out = String::new();
    for (i, c) in base.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push(' ');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(oid: i64, name: &str, kind: char, filenode: i64, bytes: i64) -> Relation {
        Relation { oid, schema: "public".into(), name: name.into(), kind, filenode, bytes, rows: 0.0 }
    }

    #[test]
    fn rewrites_by_filenode_and_rebuilt_indexes_by_name() {
        let before = Catalog(
            [rel(1, "orders", 'r', 10, 100), rel(2, "orders_pkey", 'i', 11, 20), rel(3, "orders_c_idx", 'i', 12, 20)]
                .into_iter()
                .map(|r| (r.oid, r))
                .collect(),
        );
        let after = Catalog(
            [
                rel(1, "orders", 'r', 20, 150),
                rel(2, "orders_pkey", 'i', 11, 20),
                rel(9, "orders_c_idx", 'i', 21, 30),
                rel(10, "notes", 'r', 22, 8),
            ]
            .into_iter()
            .map(|r| (r.oid, r))
            .collect(),
        );
        let (rewrites, deltas) = compare(&before, &after);
        let names: Vec<(&str, &str)> = rewrites.iter().map(|r| (r.relation.as_str(), r.kind)).collect();
        assert_eq!(names, [("orders", "table"), ("orders_c_idx", "index")]);
        let d: Vec<(&str, i64)> = deltas.iter().map(|d| (d.relation.as_str(), d.delta)).collect();
        assert_eq!(d, [("orders", 50), ("notes", 8)]);
    }

    #[test]
    fn lsn_and_modes() {
        assert_eq!(parse_lsn("1/0000000A"), (1 << 32) + 10);
        assert_eq!(human_mode("AccessExclusiveLock"), "ACCESS EXCLUSIVE");
        assert_eq!(human_mode("ShareLock"), "SHARE");
        assert!(strength("AccessExclusiveLock") > strength("ShareLock"));
    }
}
