//! The rehearsal runs as live's role, with live's privileges, on a live
//! cluster and a SECOND cluster as the shadow server (sqlx projects):
//!
//! - a live role without CREATE on the database cannot `CREATE EXTENSION
//!   ltree` (trusted in PG ≥ 13) in the rehearsal either (exit 2 with
//!   PostgreSQL's error); granted on live, the next rehearsal passes;
//! - `ALTER TABLE` on a table another role owns fails on the copy exactly
//!   as it does on live (checked there with `psql`);
//! - a shadow role that may not create roles: the report (JSON, Markdown in
//!   the store, mail) names the shadow's role as the one migrations ran as
//!   and warns which live role could not be mirrored;
//! - a non-superuser shadow role with CREATEROLE mirrors live's roles: the
//!   copy and the template keep live's owner, and no database-wide ANALYZE
//!   warning (`only superuser can analyze it`) is logged;
//! - switching the target's shadow role: every next rehearsal passes, the
//!   template another role made is kept with an exact hint (or rebuilt when
//!   the new role may), and no scratch database nor `…_template_new` is left;
//! - a configured `migration_role` (and an external `command` tool, through
//!   `PGOPTIONS`) runs as that role on the copy.

use crate::harness::cli::{local_store_path, local_store_toml, target_toml, toml_string};
use crate::harness::migrations::*;
use crate::harness::pg::Cluster;
use crate::harness::shadow::{scratch_dbs, template_name};
use crate::harness::smtp::eml_files;
use serde_json::Value;

const ORDERS_SQL: &str = "CREATE TABLE orders (id integer PRIMARY KEY, amount integer NOT NULL);
     INSERT INTO orders SELECT i, i % 100 FROM generate_series(1, 2000) i;";

const MIGRATOR_PW: &str = "migrator-pw";

/// Writes the rig's config with `live_url` as `user` and `shadow_url` as
/// given, plus `top` sections (after the target).
fn configure(rig: &Rig, user: &str, password: &str, shadow_url: &str, top: &str) {
    let extra = format!(
        "shadow_url = {}\nrestore_jobs = 2\nmigrations = {{ kind = \"sqlx\", dir = {} }}\n",
        toml_string(shadow_url),
        toml_string(&rig.dir.display().to_string())
    );
    rig.pgr.write_config(&format!(
        "{}{}{top}",
        local_store_toml(&rig.pgr, ""),
        target_toml("app", &rig.live.url("app", user, password), &extra)
    ));
}

/// A login role on the shadow cluster with `attrs`; returns its URL.
fn shadow_login(shadow: &Cluster, role: &str, attrs: &str) -> String {
    let pw = format!("{role}-pw");
    shadow.psql("postgres", &format!("CREATE ROLE {role} LOGIN {attrs} PASSWORD '{pw}'"));
    shadow.url("postgres", role, &pw)
}

/// Scratch databases left on the shadow (everything but the template).
fn leftovers(shadow: &Cluster) -> Vec<String> {
    scratch_dbs(shadow).into_iter().filter(|d| *d != template_name("app")).collect()
}

fn owner_of_db(c: &Cluster, db: &str) -> String {
    c.psql("postgres", &format!("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{db}'"))
}

fn warnings(report: &Value) -> Vec<String> {
    report["warnings"].as_array().unwrap().iter().map(|w| w.as_str().unwrap().to_string()).collect()
}

#[test]
fn create_extension_needs_create_on_the_database_as_on_live() {
    let rig = Rig::start("sqlx", ORDERS_SQL);
    // `migrator` may create in `public` but not in the database itself.
    rig.live.psql(
        "app",
        &format!(
            "CREATE ROLE migrator LOGIN PASSWORD '{MIGRATOR_PW}';
             GRANT USAGE, CREATE ON SCHEMA public TO migrator;
             GRANT SELECT ON ALL TABLES IN SCHEMA public TO migrator;"
        ),
    );
    configure(&rig, "migrator", MIGRATOR_PW, &crate::harness::shadow::shadow_url(&rig.shadow), "");
    rig.sqlx(
        "1",
        "ltree_paths",
        "CREATE EXTENSION ltree;\nCREATE TABLE paths (id integer PRIMARY KEY, path ltree);\n",
        Some("DROP TABLE paths;\nDROP EXTENSION ltree;\n"),
    );
    let denied = rig.live.psql_output("app", "SET ROLE migrator; CREATE EXTENSION ltree;");
    let live_error = String::from_utf8_lossy(&denied.stderr).to_string();
    assert!(live_error.contains("permission denied to create extension \"ltree\""), "live itself: {live_error}");

    let r = rig.rehearse(&["--snapshot", "fresh"]);
    r.expect_code(2);
    let report = r.json();
    assert_eq!(report["role"], "migrator", "{}", r.stdout);
    assert_eq!(report["live_role"], "migrator", "{}", r.stdout);
    let m1 = migration(&report, "1");
    assert_eq!(m1["status"], "failed", "{m1:#}");
    let message = m1["error"]["message"].as_str().unwrap();
    assert!(message.contains("permission denied to create extension \"ltree\""), "{m1:#}");
    assert!(problems_text(&report).contains("permission denied to create extension"), "{}", r.stdout);
    assert_eq!(leftovers(&rig.shadow), Vec::<String>::new(), "scratch databases left after a failed rehearsal");

    rig.live.psql("postgres", "GRANT CREATE ON DATABASE app TO migrator");
    let r = rig.rehearse(&[]);
    r.ok();
    let report = r.json();
    assert_eq!(report["ok"], true, "{}", r.stdout);
    assert_eq!(report["role"], "migrator", "{}", r.stdout);
    assert_eq!(migration(&report, "1")["status"], "applied", "{}", r.stdout);
    assert_eq!(report["reversible"], true, "the down runs as migrator too: {}", r.stdout);
    assert_eq!(leftovers(&rig.shadow), Vec::<String>::new());
    assert_eq!(
        rig.live.psql("app", "SELECT count(*) FROM pg_extension WHERE extname = 'ltree'"),
        "0",
        "live untouched"
    );
}

#[test]
fn alter_table_owned_by_another_role_fails_as_on_live() {
    let rig = Rig::start("sqlx", ORDERS_SQL);
    rig.live.psql(
        "app",
        "CREATE ROLE auditor NOLOGIN;
         CREATE TABLE audit (id integer PRIMARY KEY, at timestamptz);
         ALTER TABLE audit OWNER TO auditor;
         GRANT SELECT ON audit TO app;",
    );
    rig.sqlx(
        "1",
        "order_note",
        "ALTER TABLE orders ADD COLUMN note text;\n",
        Some("ALTER TABLE orders DROP COLUMN note;\n"),
    );
    rig.sqlx(
        "2",
        "audit_who",
        "ALTER TABLE audit ADD COLUMN who text;\n",
        Some("ALTER TABLE audit DROP COLUMN who;\n"),
    );
    let on_live = rig.live.psql_output("app", "SET ROLE app; ALTER TABLE audit ADD COLUMN who text;");
    let live_error = String::from_utf8_lossy(&on_live.stderr).to_string();
    assert!(live_error.contains("must be owner of table audit"), "live itself: {live_error}");

    let r = rig.rehearse(&["--snapshot", "fresh"]);
    r.expect_code(2);
    let report = r.json();
    assert_eq!(report["role"], "app", "{}", r.stdout);
    assert_eq!(migration(&report, "1")["ok"], true, "orders is app's own table: {}", r.stdout);
    let m2 = migration(&report, "2");
    assert_eq!(m2["status"], "failed", "{m2:#}");
    assert!(m2["error"]["message"].as_str().unwrap().contains("must be owner of table audit"), "{m2:#}");
    assert_eq!(leftovers(&rig.shadow), Vec::<String>::new());
    // The roles were mirrored without a password or a login.
    assert_eq!(
        rig.shadow.psql(
            "postgres",
            "SELECT string_agg(rolname || ':' || rolcanlogin || ':' || (rolpassword IS NULL), ',' ORDER BY rolname) \
             FROM pg_authid WHERE rolname IN ('app', 'auditor')"
        ),
        "app:false:true,auditor:false:true"
    );
}

#[test]
fn a_role_the_shadow_cannot_create_is_named_in_json_markdown_and_mail() {
    let rig = Rig::start("sqlx", ORDERS_SQL);
    let url = shadow_login(&rig.shadow, "pgr", "CREATEDB");
    let mail = "\n[email]\ntransport = \"file\"\nfrom = \"pgrehearse <pgr@example.com>\"\nto = [\"dba@example.com\"]\nsuccesses = \"each\"\n";
    configure(&rig, "app", PASSWORD, &url, mail);
    rig.sqlx("1", "create_tags", "CREATE TABLE tags (id integer PRIMARY KEY);\n", Some("DROP TABLE tags;\n"));
    let r = rig.rehearse(&["--snapshot", "fresh"]);
    r.ok();
    let report = r.json();
    assert_eq!(report["role"], "pgr", "{}", r.stdout);
    assert_eq!(report["live_role"], "app", "{}", r.stdout);
    let w = warnings(&report);
    assert!(
        w.iter().any(|w| w.contains("role `app` does not exist on the shadow") && w.contains("may not create it")),
        "{w:?}"
    );
    assert!(!r.stderr.contains("can analyze it"), "a database-wide ANALYZE warned:\n{}", tail(&r.stderr, 3000));

    let id = report["id"].as_str().unwrap();
    let md = std::fs::read_to_string(local_store_path(&rig.pgr).join(format!("app/rehearsals/{id}/report.md")))
        .expect("report.md in the store");
    assert!(md.contains("Ran as role: `pgr`, the shadow's role: live's `app` could not be mirrored"), "{md}");
    assert!(md.contains("role `app` does not exist on the shadow"), "{md}");
    let mails = eml_files(&rig.pgr.state_dir().join("mail"));
    let m = mails.iter().find(|m| m.subject.contains("rehearsal")).unwrap_or_else(|| panic!("no rehearsal mail"));
    assert!(m.text.contains("Ran as role: `pgr`"), "{}", m.text);
    assert!(m.html.contains("Ran as role") && m.html.contains("does not exist on the shadow"), "{}", m.html);
    assert_eq!(leftovers(&rig.shadow), Vec::<String>::new());
}

#[test]
fn a_non_superuser_shadow_role_mirrors_live_and_analyzes_only_its_tables() {
    let rig = Rig::start("sqlx", ORDERS_SQL);
    let url = shadow_login(&rig.shadow, "pgr", "CREATEDB CREATEROLE");
    configure(&rig, "app", PASSWORD, &url, "");
    rig.sqlx("1", "create_tags", "CREATE TABLE tags (id integer PRIMARY KEY);\n", Some("DROP TABLE tags;\n"));
    let r = rig.rehearse(&["--snapshot", "fresh", "--keep"]);
    r.ok();
    let report = r.json();
    assert_eq!(report["role"], "app", "{}", r.stdout);
    assert_eq!(warnings(&report).iter().filter(|w| w.contains("role")).count(), 0, "{}", r.stdout);
    assert!(!r.stderr.contains("can analyze it"), "a database-wide ANALYZE warned:\n{}", tail(&r.stderr, 3000));
    let db = kept_db(&rig, &report);
    assert_eq!(owner_of_db(&rig.shadow, &db), "app");
    assert_eq!(owner_of_db(&rig.shadow, &template_name("app")), "app");
    assert_eq!(
        rig.shadow.psql(&db, "SELECT string_agg(tablename || ':' || tableowner, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'"),
        "_sqlx_migrations:app,orders:app,tags:app",
        "the copy keeps live's owners; what the plan made belongs to the role it ran as"
    );
    rig.shadow.psql("postgres", &format!("DROP DATABASE \"{db}\""));
}

#[test]
fn switching_the_shadow_role_keeps_rehearsing_and_leaves_nothing_behind() {
    let rig = Rig::start("sqlx", ORDERS_SQL);
    let url_a = shadow_login(&rig.shadow, "pgr_a", "CREATEDB");
    let url_b = shadow_login(&rig.shadow, "pgr_b", "CREATEDB");
    rig.sqlx("1", "create_tags", "CREATE TABLE tags (id integer PRIMARY KEY);\n", Some("DROP TABLE tags;\n"));
    configure(&rig, "app", PASSWORD, &url_a, "");
    rig.rehearse(&["--snapshot", "fresh"]).ok();
    assert_eq!(owner_of_db(&rig.shadow, &template_name("app")), "pgr_a");

    // Another role, which may not touch pgr_a's template.
    configure(&rig, "app", PASSWORD, &url_b, "");
    for args in [&["--snapshot", "fresh"][..], &[][..]] {
        let r = rig.rehearse(args);
        r.ok();
        if !args.is_empty() {
            // The drill says exactly what to drop to let it be rebuilt.
            let hint = format!("DROP DATABASE \"{}\"", template_name("app"));
            assert!(r.stderr.contains(&hint), "no hint `{hint}`:\n{}", tail(&r.stderr, 3000));
        }
        assert_eq!(r.json()["role"], "pgr_b", "{}", r.stdout);
        assert_eq!(r.json()["method"], "restore", "pgr_a's template is not cloned: {}", r.stdout);
        assert_eq!(leftovers(&rig.shadow), Vec::<String>::new(), "after {args:?}");
    }
    assert_eq!(owner_of_db(&rig.shadow, &template_name("app")), "pgr_a", "kept, not half-replaced");

    // A shadow role that may drop it (a superuser): rebuilt for live's owner.
    configure(&rig, "app", PASSWORD, &crate::harness::shadow::shadow_url(&rig.shadow), "");
    let r = rig.rehearse(&["--snapshot", "fresh"]);
    r.ok();
    assert_eq!(r.json()["role"], "app", "{}", r.stdout);
    assert_eq!(owner_of_db(&rig.shadow, &template_name("app")), "app", "rebuilt for live's owner");
    assert_eq!(leftovers(&rig.shadow), Vec::<String>::new());
    let r = rig.rehearse(&[]);
    r.ok();
    assert_eq!(r.json()["method"], "template_clone", "the rebuilt template is cloned: {}", r.stdout);
}

#[test]
fn a_command_tool_runs_as_lives_role_too() {
    use crate::rehearse_command::{APPLY, PENDING};
    let rig = Rig::start("command", ORDERS_SQL);
    let apply = format!(r#"psql -XAtq "$DATABASE_URL" -c "SELECT current_user" > ran_as.txt && {APPLY}"#);
    let extra = format!(
        "migrations = {{ kind = \"command\", dir = {}, pending = {}, apply = {} }}\n",
        toml_string(&rig.dir.display().to_string()),
        toml_string(PENDING),
        toml_string(&apply)
    );
    rig.pgr.write_config(&rig.pgr_config_with(&extra));
    std::fs::write(rig.dir.join("001_tags.sql"), "CREATE TABLE tags (id integer PRIMARY KEY);\n").unwrap();
    let r = rig.rehearse(&["--snapshot", "fresh", "--keep"]);
    r.ok();
    let report = r.json();
    assert_eq!(report["role"], "app", "{}", r.stdout);
    assert_eq!(std::fs::read_to_string(rig.dir.join("ran_as.txt")).unwrap().trim(), "app", "PGOPTIONS -c role=app");
    let db = kept_db(&rig, &report);
    assert_eq!(rig.shadow.psql(&db, "SELECT tableowner FROM pg_tables WHERE tablename = 'tags'"), "app");
    rig.shadow.psql("postgres", &format!("DROP DATABASE \"{db}\""));
}

#[test]
fn a_configured_migration_role_is_what_the_copy_runs_as() {
    let rig = Rig::start("sqlx", ORDERS_SQL);
    // app logs in; its migrations run as `deployer`, which owns the schema's tables.
    rig.live.psql(
        "app",
        "CREATE ROLE deployer NOLOGIN; GRANT deployer TO app; ALTER TABLE orders OWNER TO deployer;
         GRANT CREATE ON SCHEMA public TO deployer;",
    );
    rig.configure("migration_role = \"deployer\"\n");
    rig.sqlx("1", "order_note", "ALTER TABLE orders ADD COLUMN note text;\nCREATE TABLE notes (id integer);\n", None);
    let r = rig.rehearse(&["--snapshot", "fresh", "--keep"]);
    r.ok();
    let report = r.json();
    assert_eq!((report["role"].as_str(), report["live_role"].as_str()), (Some("deployer"), Some("deployer")));
    let db = kept_db(&rig, &report);
    assert_eq!(rig.shadow.psql(&db, "SELECT tableowner FROM pg_tables WHERE tablename = 'notes'"), "deployer");
    rig.shadow.psql("postgres", &format!("DROP DATABASE \"{db}\""));
}
