//! Helpers for rehearsal tests (`pgrehearse rehearse`, `pgrehearse status`):
//!
//! - a [`Rig`]: a live cluster with the `app` database (owned by the `app`
//!   role, which pgrehearse connects as), a SECOND cluster as the shadow
//!   server, a local store, and a config whose target points at a migrations
//!   directory in the test's temp dir;
//! - migration fixtures written in the tools' own layouts (sqlx files,
//!   diesel directories with `metadata.toml`);
//! - sqlx's history written by hand exactly as sqlx writes it (the table,
//!   `success`, SHA-384 of the file bytes, `execution_time` in nanoseconds),
//!   with checksums computed here, independently of the code under test;
//! - independent observers of the live database: a `pg_locks` poller (a
//!   `psql` running `\watch 0.01`) and `pg_stat_database`'s write counters;
//! - accessors for the JSON report that panic with the whole report.

use super::cli::{Pgr, Run, local_store_toml, target_toml, toml_string};
use super::pg::Cluster;
use super::shadow::shadow_url;
use super::{run_ok, wait_for};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `app` role's password on every rig's live cluster.
pub const PASSWORD: &str = "rehearse-test-pw";

/// A live cluster + a shadow cluster + a pgrehearse working directory.
pub struct Rig {
    pub live: Cluster,
    pub shadow: Cluster,
    pub pgr: Pgr,
    /// The migrations directory the config points at (`<pgr dir>/migrations`).
    pub dir: PathBuf,
    kind: &'static str,
}

impl Rig {
    /// Starts both clusters (in parallel), creates `app` on live and runs
    /// `setup_sql` in it as the `app` role, then writes a config for a
    /// `kind` (`sqlx` or `diesel`) source in an empty migrations directory.
    pub fn start(kind: &'static str, setup_sql: &str) -> Rig {
        let t0 = Instant::now();
        let shadow = std::thread::spawn(Cluster::start);
        let live = Cluster::start();
        live.create_app_db("app", "app", PASSWORD);
        if !setup_sql.is_empty() {
            as_app(&live, "app", setup_sql);
        }
        let shadow = shadow.join().expect("shadow cluster start");
        let pgr = Pgr::new();
        let dir = pgr.dir().join("migrations");
        std::fs::create_dir_all(&dir).expect("create migrations dir");
        let rig = Rig { live, shadow, pgr, dir, kind };
        rig.configure("");
        eprintln!("rig ({kind}) ready in {:?}", t0.elapsed());
        rig
    }

    /// (Re)writes the config: local store, target `app` on live with the
    /// shadow and `migrations = { kind, dir }`, then `target_extra` lines
    /// (e.g. `seeds = [...]`, `lint = { deny = [...] }`).
    pub fn configure(&self, target_extra: &str) {
        let extra = format!(
            "shadow_url = {}\nrestore_jobs = 2\nmigrations = {{ kind = \"{}\", dir = {} }}\n{target_extra}",
            toml_string(&shadow_url(&self.shadow)),
            self.kind,
            toml_string(&self.dir.display().to_string())
        );
        self.pgr.write_config(&format!(
            "{}{}",
            local_store_toml(&self.pgr, ""),
            target_toml("app", &self.live.url("app", "app", PASSWORD), &extra)
        ));
    }

    /// The config text `configure` writes, with `target_extra` lines
    /// replacing its `migrations = …` line.
    pub fn pgr_config_with(&self, target_extra: &str) -> String {
        let extra =
            format!("shadow_url = {}\nrestore_jobs = 2\n{target_extra}", toml_string(&shadow_url(&self.shadow)));
        format!(
            "{}{}",
            local_store_toml(&self.pgr, ""),
            target_toml("app", &self.live.url("app", "app", PASSWORD), &extra)
        )
    }

    /// `snapshot --json`; returns the snapshot id.
    pub fn snapshot(&self) -> String {
        let t0 = Instant::now();
        let r = self.pgr.run_json(&["snapshot"]);
        r.ok();
        let id = r.json()["id"].as_str().expect("snapshot id").to_string();
        eprintln!("snapshot {id} in {:?}", t0.elapsed());
        id
    }

    /// `--json rehearse <args>`; the whole output goes to the test log.
    pub fn rehearse(&self, args: &[&str]) -> Run {
        let mut all = vec!["rehearse"];
        all.extend_from_slice(args);
        let t0 = Instant::now();
        let r = self.pgr.run_json(&all);
        eprintln!(
            "rehearse {args:?}: exit {} in {:?}\n--- stdout:\n{}\n--- stderr (tail):\n{}",
            r.code,
            t0.elapsed(),
            r.stdout,
            tail(&r.stderr, 3000)
        );
        r
    }

    /// `--json status`.
    pub fn status(&self) -> Run {
        let r = self.pgr.run_json(&["status"]);
        eprintln!("status: exit {}\n{}", r.code, r.stdout);
        r
    }

    /// Writes a sqlx migration (see [`sqlx_migration`]) into the rig's dir.
    pub fn sqlx(&self, version: &str, name: &str, up: &str, down: Option<&str>) -> PathBuf {
        sqlx_migration(&self.dir, version, name, up, down)
    }

    /// Writes a diesel migration (see [`diesel_migration`]) into the rig's dir.
    pub fn diesel(&self, dir_name: &str, up: &str, down: Option<&str>, metadata: Option<&str>) -> PathBuf {
        diesel_migration(&self.dir, dir_name, up, down, metadata)
    }
}

/// The last `n` bytes of a text (on a char boundary), for logs.
pub fn tail(s: &str, n: usize) -> &str {
    let mut at = s.len().saturating_sub(n);
    while !s.is_char_boundary(at) {
        at += 1;
    }
    &s[at..]
}

/// Runs SQL in `db` as the `app` role (so `app`, which pgrehearse connects
/// as, owns what it creates).
pub fn as_app(c: &Cluster, db: &str, sql: &str) -> String {
    c.psql(db, &format!("SET ROLE app;\n{sql}\n;RESET ROLE;"))
}

/// Writes `<version>_<name>.up.sql` (and `.down.sql` when `down` is given);
/// returns the up file's path.
pub fn sqlx_migration(dir: &Path, version: &str, name: &str, up: &str, down: Option<&str>) -> PathBuf {
    let up_path = dir.join(format!("{version}_{name}.up.sql"));
    std::fs::write(&up_path, up).expect("write up migration");
    if let Some(down) = down {
        std::fs::write(dir.join(format!("{version}_{name}.down.sql")), down).expect("write down migration");
    }
    up_path
}

/// Writes a diesel migration directory `<dir_name>/` with `up.sql`, an
/// optional `down.sql` and an optional `metadata.toml`; returns its path.
pub fn diesel_migration(dir: &Path, dir_name: &str, up: &str, down: Option<&str>, metadata: Option<&str>) -> PathBuf {
    let d = dir.join(dir_name);
    std::fs::create_dir_all(&d).expect("create diesel migration dir");
    std::fs::write(d.join("up.sql"), up).expect("write up.sql");
    if let Some(down) = down {
        std::fs::write(d.join("down.sql"), down).expect("write down.sql");
    }
    if let Some(meta) = metadata {
        std::fs::write(d.join("metadata.toml"), meta).expect("write metadata.toml");
    }
    d
}

/// Hex SHA-384 of a file's bytes: the checksum sqlx stores (computed by the
/// test, independent of the code under test).
pub fn sha384_hex(path: &Path) -> String {
    use sha2::{Digest, Sha384};
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {path:?}: {e}"));
    hex::encode(Sha384::digest(&bytes))
}

/// sqlx's description of a migration: the file name's part after the
/// version, with underscores as spaces.
pub fn sqlx_description(name: &str) -> String {
    name.replace('_', " ")
}

/// `_sqlx_migrations` exactly as sqlx (0.7/0.8, PostgreSQL) creates it.
pub const SQLX_TABLE: &str = "CREATE TABLE IF NOT EXISTS _sqlx_migrations (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    installed_on TIMESTAMPTZ NOT NULL DEFAULT now(),
    success BOOLEAN NOT NULL,
    checksum BYTEA NOT NULL,
    execution_time BIGINT NOT NULL
)";

/// Writes one history row as sqlx does (as `app`): the row is inserted with
/// `execution_time = -1`, then updated with the elapsed nanoseconds.
pub fn sqlx_record(c: &Cluster, db: &str, version: &str, name: &str, checksum_hex: &str, nanos: i64, success: bool) {
    as_app(
        c,
        db,
        &format!(
            "{SQLX_TABLE};
             INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
             VALUES ({version}, '{}', {success}, decode('{checksum_hex}', 'hex'), -1);
             UPDATE _sqlx_migrations SET execution_time = {nanos} WHERE version = {version};",
            sqlx_description(name).replace('\'', "''")
        ),
    );
}

/// Applies a sqlx up file to `db` the way `sqlx migrate run` would: the
/// file's SQL in one transaction (psql `-1 -f`, as `app`), then its history
/// row with the file's SHA-384 and the measured time.
pub fn sqlx_apply(c: &Cluster, db: &str, up_path: &Path, version: &str, name: &str) {
    let t0 = Instant::now();
    run_ok(
        c.client("psql")
            .args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-1", "-d", db, "-c", "SET ROLE app", "-f"])
            .arg(up_path),
    );
    let nanos = t0.elapsed().as_nanos() as i64;
    sqlx_record(c, db, version, name, &sha384_hex(up_path), nanos.max(1), true);
}

/// Whether a table exists in `db` (any schema on the search path).
pub fn table_exists(c: &Cluster, db: &str, table: &str) -> bool {
    c.psql(db, &format!("SELECT to_regclass('{table}') IS NOT NULL")) == "t"
}

/// Rows of a query as `|`-separated lines.
pub fn rows(c: &Cluster, db: &str, sql: &str) -> Vec<String> {
    c.psql(db, sql).lines().filter(|l| !l.is_empty()).map(str::to_string).collect()
}

/// The write counters of `db`'s user tables (`pg_stat_user_tables`, summed):
/// `inserted,updated,deleted`. Not `pg_stat_database`, which also counts
/// catalog rows, and autovacuum's ANALYZE writes those (`pg_statistic`) at
/// any time. Waits until no other backend is connected to `db` and the
/// counters are stable (a backend flushes its statistics while it exits).
pub fn write_counters(c: &Cluster, db: &str) -> String {
    wait_for(&format!("no other sessions on {db}"), Duration::from_secs(20), Duration::from_millis(20), || {
        let n = c.psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND pid <> pg_backend_pid()"),
        );
        (n == "0").then_some(())
    });
    let read = || {
        c.psql(
            db,
            "SELECT pg_stat_force_next_flush(); SELECT coalesce(sum(n_tup_ins), 0) || ',' || coalesce(sum(n_tup_upd), 0)
               || ',' || coalesce(sum(n_tup_del), 0) FROM pg_stat_user_tables",
        )
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
    };
    let mut last = read();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(150));
        let now = read();
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("write counters of {db} do not settle (last {last})");
}

/// One relation lock the poller saw.
#[derive(Debug, Clone)]
pub struct SeenLock {
    pub pid: i32,
    pub relation: String,
    pub oid: i64,
    pub mode: String,
    pub application: String,
    pub backend_type: String,
}

impl SeenLock {
    /// A user relation (not a system catalog: OIDs below 16384 are
    /// PostgreSQL's own objects, locked by every query's catalog lookups).
    pub fn on_user_relation(&self) -> bool {
        self.oid >= 16384
    }
}

/// A `psql` on `db` that reads `pg_locks` every 10 ms (`\watch 0.01`) and
/// keeps every relation lock of the database held by another backend, plus
/// a tick per poll (to prove it kept polling).
pub struct LockPoller {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl LockPoller {
    pub fn start(c: &Cluster, db: &str) -> LockPoller {
        let mut child = c
            .client("psql")
            .args(["-XAtq", "-d", db])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn psql lock poller");
        let query = "SELECT 'tick' UNION ALL \
             SELECT format('lock|%s|%s|%s|%s|%s|%s', l.pid, l.relation::regclass, l.relation::int8, l.mode, \
                           coalesce(a.application_name, ''), coalesce(a.backend_type, '')) \
               FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
              WHERE l.locktype = 'relation' AND l.pid <> pg_backend_pid() \
                AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             \\watch 0.01\n";
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(query.as_bytes()).expect("write poller query");
        drop(stdin);
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let poller = LockPoller { child, lines, reader: Some(reader) };
        wait_for("the lock poller's first poll", Duration::from_secs(10), Duration::from_millis(5), || {
            (poller.ticks() > 0).then_some(())
        });
        poller
    }

    /// Polls done so far.
    pub fn ticks(&self) -> usize {
        self.lines.lock().unwrap().iter().filter(|l| *l == "tick").count()
    }

    /// Locks seen so far.
    pub fn seen(&self) -> Vec<SeenLock> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| {
                let f: Vec<&str> = l.strip_prefix("lock|")?.splitn(6, '|').collect();
                Some(SeenLock {
                    pid: f.first()?.parse().ok()?,
                    relation: f.get(1)?.to_string(),
                    oid: f.get(2)?.parse().ok()?,
                    mode: f.get(3)?.to_string(),
                    application: f.get(4)?.to_string(),
                    backend_type: f.get(5)?.to_string(),
                })
            })
            .collect()
    }

    /// Stops the poller; returns `(polls, locks seen)`.
    pub fn stop(mut self) -> (usize, Vec<SeenLock>) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        (self.ticks(), self.seen())
    }
}

impl Drop for LockPoller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `psql` with `\timing on` running `setup` (untimed) then `timed` in `db`;
/// returns the milliseconds psql reported for `timed`.
pub fn psql_timing(c: &Cluster, db: &str, setup: &str, timed: &str) -> f64 {
    let script = format!("{setup}\n\\timing on\n{timed}\n\\timing off\n");
    let mut child = c
        .client("psql")
        .args(["-XAq", "-v", "ON_ERROR_STOP=1", "-d", db])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn psql");
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "psql \\timing failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    // "Time: 734.512 ms" or "Time: 1234.5 ms (00:01.234)".
    let line = stdout.lines().rev().find(|l| l.starts_with("Time: ")).unwrap_or_else(|| panic!("no Time: in {stdout}"));
    line["Time: ".len()..].split_whitespace().next().unwrap().parse().expect("psql timing value")
}

/// The report's entry for migration `version`.
pub fn migration<'a>(report: &'a Value, version: &str) -> &'a Value {
    report["migrations"]
        .as_array()
        .unwrap_or_else(|| panic!("report has no migrations[]: {report:#}"))
        .iter()
        .find(|m| m["version"] == version)
        .unwrap_or_else(|| panic!("migration {version} is not in the report: {report:#}"))
}

/// The versions in `migrations[]`, in report order.
pub fn versions(report: &Value) -> Vec<String> {
    report["migrations"]
        .as_array()
        .unwrap_or_else(|| panic!("report has no migrations[]: {report:#}"))
        .iter()
        .map(|m| m["version"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The locks a migration reported on `relation` (schema `public` omitted or not).
pub fn locks_on<'a>(m: &'a Value, relation: &str) -> Vec<&'a Value> {
    m["locks"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|l| {
                    let r = l["relation"].as_str().unwrap_or_default();
                    r == relation || r.strip_prefix("public.") == Some(relation)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The relations a migration reported as rewritten tables.
pub fn rewritten_tables(m: &Value) -> Vec<String> {
    m["rewrites"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|r| r["kind"] == "table")
                .map(|r| r["relation"].as_str().unwrap_or_default().trim_start_matches("public.").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Lint findings of one rule.
pub fn findings<'a>(report: &'a Value, rule: &str) -> Vec<&'a Value> {
    report["lint"].as_array().map(|a| a.iter().filter(|f| f["rule"] == rule).collect()).unwrap_or_default()
}

/// `problems[]` joined, lower-cased, for "mentions" checks.
pub fn problems_text(report: &Value) -> String {
    report["problems"].to_string().to_lowercase()
}

/// The schema of `db` (`pg_dump --schema-only`, noise removed) and its user
/// tables with row counts: what "live unchanged" compares.
pub fn fingerprint(c: &Cluster, db: &str) -> String {
    let tables = super::data::tables(c, db);
    let mut out = super::data::schema_dump(c, db);
    for (s, t) in tables {
        out.push_str(&format!("\n{s}.{t}: {}", super::data::table_digest(c, db, &s, &t)));
    }
    out
}

/// The scratch database a kept rehearsal left, checked to exist on the shadow.
pub fn kept_db(rig: &Rig, report: &Value) -> String {
    let db = report["database"].as_str().unwrap_or_else(|| panic!("no database in {report:#}")).to_string();
    assert_eq!(report["kept"], true, "report does not say kept: {report:#}");
    assert!(super::shadow::db_exists(&rig.shadow, &db), "kept database {db} is not on the shadow");
    db
}
