//! Disaster recovery (`pgrehearse restore`) on a real live cluster:
//!
//! - `restore ID --as NAME` makes a new database on the live server whose
//!   rows equal the source's; the same name again is refused (exit 64).
//! - `restore latest --replace-live` without `--yes` explains the plan and
//!   exits 75 without touching the cluster (pg_database and the server's own
//!   DDL log prove it).
//! - `restore latest --replace-live --yes` on a live database damaged after
//!   the snapshot: live equals the snapshot again, the damaged database is
//!   kept as `<db>_replaced_*`, owner, settings and grants are unchanged,
//!   clients connect with their passwords as before, and an idle client
//!   session was disconnected.
//!
//! Read-backs are independent: `psql` as the superuser and as the app's own
//! roles with their SCRAM passwords.

use crate::harness::cli::{Pgr, Run, local_store_toml, target_toml, toml_string};
use crate::harness::data;
use crate::harness::pg::Cluster;
use crate::harness::shadow::{assert_staging_empty, database_ddl_since, databases, log_ddl, log_mark};
use crate::harness::wait_for;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const PASSWORD: &str = "restore-test-pw";
const READER_PW: &str = "reader pw 'quoted'";

/// A live cluster with the app database (owner `app`, rich schema).
fn live_cluster(rows: u32) -> Cluster {
    let c = Cluster::start();
    c.create_app_db("app", "app", PASSWORD);
    data::create_rich_schema(&c, "app", "app", rows);
    c
}

/// Local store; target `app` with `live_url` as the app role and `admin_url`
/// as the live cluster's superuser.
fn pgr_for(live: &Cluster) -> Pgr {
    let pgr = Pgr::new();
    let admin = live.url("postgres", "postgres", "");
    let target = target_toml(
        "app",
        &live.url("app", "app", PASSWORD),
        &format!("admin_url = {}\nrestore_jobs = 2\n", toml_string(&admin)),
    );
    pgr.write_config(&format!("{}{target}", local_store_toml(&pgr, "")));
    pgr
}

fn snapshot(pgr: &Pgr) -> String {
    let r = pgr.run_json(&["snapshot"]);
    r.ok();
    r.json()["id"].as_str().expect("snapshot id").to_string()
}

fn restore(pgr: &Pgr, args: &[&str]) -> Run {
    let mut all = vec!["restore"];
    all.extend_from_slice(args);
    let r = pgr.run_json(&all);
    eprintln!("restore {args:?}: exit {}\nstdout:\n{}\nstderr:\n{}", r.code, r.stdout, r.stderr);
    r
}

/// `schema.table` → "count md5" of every base table of `db`.
fn digests(c: &Cluster, db: &str) -> Vec<(String, String)> {
    data::tables(c, db).into_iter().map(|(s, t)| (format!("{s}.{t}"), data::table_digest(c, db, &s, &t))).collect()
}

/// The whole of `pg_database` (and database-level settings) as text.
fn pg_database(c: &Cluster) -> String {
    c.psql(
        "postgres",
        "SELECT string_agg(concat_ws('|', d.datname, pg_get_userbyid(d.datdba), d.datacl::text, d.datallowconn,
                                     d.datconnlimit, d.datistemplate, s.setconfig::text), E'\\n' ORDER BY d.datname)
         FROM pg_database d LEFT JOIN pg_db_role_setting s ON s.setdatabase = d.oid AND s.setrole = 0",
    )
}

fn psql_bin() -> PathBuf {
    let out = crate::harness::run_ok(Command::new("pg_config").arg("--bindir"));
    PathBuf::from(out.trim()).join("psql")
}

/// `psql` as `user` with its password (SCRAM over the socket), as a client would.
fn psql_as(c: &Cluster, user: &str, password: &str, db: &str) -> Command {
    let mut cmd = Command::new(psql_bin());
    cmd.args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-d", &c.url(db, user, "")])
        .env("PGPASSWORD", password)
        .env_remove("PGSERVICE")
        .env_remove("PGPASSFILE");
    cmd
}

fn query_as(c: &Cluster, user: &str, password: &str, db: &str, sql: &str) -> Output {
    crate::harness::output(psql_as(c, user, password, db).args(["-c", sql]))
}

fn query_ok(c: &Cluster, user: &str, password: &str, db: &str, sql: &str) -> String {
    let out = query_as(c, user, password, db, sql);
    assert!(
        out.status.success(),
        "{user} on {db}: {sql}\nfailed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// An interactive `psql` of the app role, connected and idle.
fn idle_client(c: &Cluster) -> Child {
    let child = psql_as(c, "app", PASSWORD, "app")
        .env("PGAPPNAME", "pgr-idle-client")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn psql");
    wait_for("the idle client to connect", Duration::from_secs(30), Duration::from_millis(50), || {
        let n = c.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgr-idle-client' AND state = 'idle'",
        );
        (n == "1").then_some(())
    });
    child
}

#[test]
fn restore_as_creates_an_equal_database_and_refuses_an_existing_name() {
    let live = live_cluster(1500);
    let pgr = pgr_for(&live);
    let id = snapshot(&pgr);
    let source = digests(&live, "app");
    assert_eq!(source.len(), 3, "rich schema tables: {source:?}");

    let r = restore(&pgr, &[&id, "--as", "app_copy"]);
    r.ok();
    let v = r.json();
    assert_eq!(v["snapshot_id"], id.as_str(), "{v}");
    assert_eq!(v["database"], "app_copy", "{v}");
    assert!(v["duration_ms"].as_u64().is_some(), "duration_ms: {v}");
    assert_eq!(v["tables_checked"].as_u64(), Some(source.len() as u64), "tables_checked: {v}");
    assert_eq!(digests(&live, "app_copy"), source, "restored rows differ from the source");
    // The app role still owns its tables in the copy (it can work there).
    let owners = live.psql(
        "app_copy",
        "SELECT string_agg(DISTINCT pg_get_userbyid(relowner)::text, ',') FROM pg_class
         WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'S', 'v')",
    );
    assert_eq!(owners, "app", "owners of the restored relations");
    assert_staging_empty(&pgr, "after restore --as");

    let before = digests(&live, "app_copy");
    let again = restore(&pgr, &[&id, "--as", "app_copy"]);
    again.expect_code(64);
    let err = again.stderr.to_lowercase();
    assert!(err.contains("app_copy") && err.contains("exists"), "stderr does not say the database exists:\n{err}");
    assert_eq!(digests(&live, "app_copy"), before, "the existing database was changed by a refused restore");
    assert_staging_empty(&pgr, "after a refused restore --as");
}

#[test]
fn replace_live_without_yes_explains_and_changes_nothing() {
    let live = live_cluster(200);
    let pgr = pgr_for(&live);
    snapshot(&pgr);
    log_ddl(&live);
    let before = pg_database(&live);
    let mark = log_mark(&live);

    let r = restore(&pgr, &["latest", "--replace-live"]);
    r.expect_code(75);
    let text = format!("{}{}", r.stdout, r.stderr);
    for needle in ["--yes", "_replaced_", "app"] {
        assert!(text.contains(needle), "the plan does not mention {needle:?}:\n{text}");
    }
    assert_eq!(pg_database(&live), before, "pg_database changed without --yes");
    let ddl = database_ddl_since(&live, mark);
    assert!(ddl.is_empty(), "database DDL ran without --yes: {ddl:?}");
    assert!(databases(&live).iter().all(|d| !d.contains("_restoring_")), "{:?}", databases(&live));
    assert_staging_empty(&pgr, "after a refused --replace-live");
}

#[test]
fn replace_live_restores_the_snapshot_and_keeps_the_damaged_database() {
    let live = live_cluster(1500);
    live.psql(
        "postgres",
        &format!(
            "CREATE ROLE reader LOGIN PASSWORD '{}';
             CREATE ROLE outsider LOGIN PASSWORD 'outsider-pw';
             GRANT CONNECT ON DATABASE app TO reader;
             REVOKE CONNECT ON DATABASE app FROM PUBLIC;
             ALTER DATABASE app SET work_mem = '7MB';",
            READER_PW.replace('\'', "''")
        ),
    );
    live.psql("app", "GRANT SELECT ON customers TO reader");
    // Preconditions, so that "as before" means something.
    assert_eq!(query_ok(&live, "reader", READER_PW, "app", "SELECT count(*) FROM customers"), "1500");
    assert!(!query_as(&live, "outsider", "outsider-pw", "app", "SELECT 1").status.success(), "outsider got in");
    let owner_sql = "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'app'";
    let owner = live.psql("postgres", owner_sql);
    assert_eq!(owner, "app");

    let pgr = pgr_for(&live);
    let id = snapshot(&pgr);
    let snap = digests(&live, "app");

    // Damage after the snapshot.
    live.psql(
        "app",
        "DELETE FROM orders WHERE id % 2 = 0; UPDATE customers SET name = 'damaged' WHERE id < 10;
         DROP TABLE \"Odd Name\";",
    );
    let damaged = digests(&live, "app");
    assert_ne!(damaged, snap);
    let mut client = idle_client(&live);

    let r = restore(&pgr, &["latest", "--replace-live", "--yes"]);
    r.ok();
    let v = r.json();
    assert_eq!(v["snapshot_id"], id.as_str(), "{v}");
    assert_eq!(v["database"], "app", "{v}");
    assert!(v["duration_ms"].as_u64().is_some(), "duration_ms: {v}");
    assert_eq!(v["tables_checked"].as_u64(), Some(snap.len() as u64), "tables_checked: {v}");

    // Live equals the snapshot again (the dropped table is back).
    assert_eq!(digests(&live, "app"), snap, "live after --replace-live differs from the snapshot");
    // The damaged database is kept.
    let kept: Vec<String> = databases(&live).into_iter().filter(|d| d.starts_with("app_replaced_")).collect();
    assert_eq!(kept.len(), 1, "expected one app_replaced_* database: {:?}", databases(&live));
    if let Some(name) = v["replaced"].as_str() {
        assert_eq!(name, kept[0], "--json replaced");
    }
    assert_eq!(digests(&live, &kept[0]), damaged, "the kept database does not hold the damaged data");
    let dbs = databases(&live);
    assert!(dbs.iter().all(|d| !d.contains("_restoring_")), "restoring database left: {dbs:?}");

    // Owner, settings, grants and connectability are as before.
    assert_eq!(live.psql("postgres", owner_sql), owner, "owner of app changed");
    assert_eq!(live.psql("postgres", "SELECT datallowconn FROM pg_database WHERE datname = 'app'"), "t");
    let settings = live.psql(
        "postgres",
        "SELECT s.setconfig::text FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
         WHERE d.datname = 'app' AND s.setrole = 0",
    );
    assert!(settings.contains("work_mem=7MB"), "database settings of app: {settings:?}");
    assert_eq!(query_ok(&live, "app", PASSWORD, "app", "SHOW work_mem"), "7MB");
    assert_eq!(query_ok(&live, "reader", READER_PW, "app", "SELECT current_user"), "reader");
    let out = query_as(&live, "outsider", "outsider-pw", "app", "SELECT 1");
    assert!(!out.status.success(), "PUBLIC's revoked CONNECT came back: outsider connected");
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied"), "{out:?}");
    // The app role connects with its password and can write its tables.
    assert_eq!(
        query_ok(&live, "app", PASSWORD, "app", "INSERT INTO customers (name) VALUES ('after') RETURNING name"),
        "after"
    );
    // Table-level grants came back with the dump.
    assert_eq!(query_ok(&live, "reader", READER_PW, "app", "SELECT count(*) > 0 FROM customers"), "t");

    // The idle client session was disconnected.
    let left =
        live.psql("postgres", "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgr-idle-client'");
    assert_eq!(left, "0", "the idle client session is still connected");
    {
        let mut stdin = client.stdin.take().unwrap();
        let _ = stdin.write_all(b"SELECT 1;\n");
    }
    let out = client.wait_with_output().expect("wait for psql");
    assert!(!out.status.success(), "the idle client's next query succeeded: it was not disconnected");
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("terminat") || err.contains("closed the connection"), "idle client's error: {err}");

    // pgrehearse itself works against the replaced live database.
    snapshot(&pgr);
    assert_staging_empty(&pgr, "after --replace-live");
}

/// Every database-level setting of `db` (also per role), as `role:setting`.
fn db_settings(c: &Cluster, db: &str) -> String {
    c.psql(
        "postgres",
        &format!(
            "SELECT string_agg(coalesce(pg_get_userbyid(nullif(s.setrole, 0))::text, '*') || ':' || x, ' ; ' ORDER BY 1)
             FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase, unnest(s.setconfig) x
             WHERE d.datname = '{db}'"
        ),
    )
}

#[test]
fn replace_live_carries_list_valued_and_per_role_settings() {
    let live = live_cluster(100);
    live.psql("app", "CREATE SCHEMA extra AUTHORIZATION app");
    live.psql(
        "postgres",
        "ALTER DATABASE app SET search_path = extra, public;
         ALTER DATABASE app SET application_name = 'has space';
         ALTER ROLE app IN DATABASE app SET statement_timeout = '5s';",
    );
    let before = db_settings(&live, "app");
    let shown = |c: &Cluster| {
        query_ok(
            c,
            "app",
            PASSWORD,
            "app",
            "SELECT current_setting('search_path') || ' | ' || current_setting('statement_timeout')",
        )
    };
    let seen = shown(&live);
    assert_eq!(seen, "extra, public | 5s");
    let pgr = pgr_for(&live);
    snapshot(&pgr);
    restore(&pgr, &["latest", "--replace-live", "--yes"]).ok();
    let (after, session) = (db_settings(&live, "app"), shown(&live));
    assert_eq!(
        after, before,
        "database-level settings of app differ after --replace-live (app's session sees {session:?})"
    );
    assert_eq!(session, seen, "the app role's session settings differ after --replace-live");
}
