//! `pgrehearse apply` with a real Payload CMS 3 project (tests/fixtures/payload)
//! released through its own CLI on real clusters (live + shadow):
//!
//! - Success: live has the first migration applied by Payload itself;
//!   rehearse → approve → apply → outcome `applied`. `payload_migrations`
//!   holds a row per file in one real batch, the schema changes are on live
//!   with its data intact, Payload's own `migrate` finds nothing left to do,
//!   `status` shows nothing pending, and the pre-release snapshot is pinned
//!   by the release.
//! - Failure restored: a plan approved on clean data (the slug migration,
//!   then a unique index on `authors.email`) meets duplicate emails written
//!   to live after the rehearsal (data does not change the plan hash).
//!   Payload commits the slug file, then fails on the index; recovery
//!   restores the pre-release snapshot and swaps it in: exit 1, outcome
//!   `restored`, live's schema and every table's digest equal to what they
//!   were just before `apply` (duplicates included), and the failed database
//!   kept as `app_failed_*` holding the partly applied plan.
//! - Password in the environment: live's role and the shadow's role both
//!   authenticate with a SCRAM password (pg_hba requires it). A migration
//!   records the environment Payload's CLI got: every run of the rehearsal
//!   and the release has `DATABASE_URI`, `DATABASE_URL` and `POSTGRES_URL`
//!   without a password and `PGPASSWORD` set, and every run succeeds, so
//!   node-postgres really took the password from `PGPASSWORD`.

use crate::harness::cli::{local_store_toml, target_toml, toml_string};
use crate::harness::migrations::*;
use crate::harness::payload::*;
use crate::harness::release::*;
use serde_json::Value;

/// Authors (distinct emails) and posts, written as the application would.
const DATA: &str = "INSERT INTO authors (name, email)
      SELECT 'author ' || g, 'a' || g || '@example.com' FROM generate_series(1, 20) g;
    INSERT INTO posts (title, body, author_id)
      SELECT 'post ' || g, repeat('text ', g % 50), 1 + g % 20 FROM generate_series(1, 500) g;";

fn columns(rig: &Rig, db: &str, table: &str) -> Vec<String> {
    rows(
        &rig.live,
        db,
        &format!("SELECT column_name FROM information_schema.columns WHERE table_name = '{table}' ORDER BY 1"),
    )
}

fn index_exists(rig: &Rig, db: &str, name: &str) -> bool {
    rig.live.psql(db, &format!("SELECT count(*) FROM pg_indexes WHERE indexname = '{name}'")) == "1"
}

fn manifest(rig: &Rig, snapshot: &str) -> Value {
    let path = crate::harness::cli::local_store_path(&rig.pgr).join("app").join(snapshot).join("manifest.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("read {path:?}: {e}"))).unwrap()
}

#[test]
fn an_approved_payload_plan_is_released_through_its_cli() {
    let rig = payload_rig();
    as_app(&rig.live, "app", DATA);
    add(&rig, "migrations", SLUG);
    add(&rig, "migrations-extra", SLOW);
    configure(&rig, "");
    assert_eq!(history(&rig), [format!("{INITIAL}:1")], "Payload applied the first migration to live");
    let plan = rehearse_and_approve(&rig);

    let r = apply(&rig);
    r.ok();
    let rel = r.json();
    assert_eq!(rel["outcome"], "applied", "{rel:#}");
    assert_eq!(rel["plan"], plan.as_str());
    assert!(rel["recovery"].is_null(), "no recovery after a success: {rel:#}");
    assert!(rel["warnings"].as_array().unwrap().is_empty(), "post-checks found problems: {rel:#}");
    for name in [SLUG, SLOW] {
        assert_eq!(by_name(&rel, name)["status"], "applied", "{name}: {rel:#}");
    }
    let steps = journal_steps(&rel);
    for s in ["snapshot", "snapshot_done", "apply", "migration", "applied", "postcheck", "finished"] {
        assert!(steps.iter().any(|x| x == s), "journal lacks {s}: {steps:?}");
    }

    // History as Payload writes it: one row per file, the plan as batch 2.
    let after = history(&rig);
    assert_eq!(after, [format!("{INITIAL}:1"), format!("{SLUG}:2"), format!("{SLOW}:2")], "live's history");
    // The schema changes are on live, the data intact.
    let cols = columns(&rig, "app", "posts");
    assert!(cols.contains(&"slug".to_string()) && cols.contains(&"word_count".to_string()), "{cols:?}");
    assert!(index_exists(&rig, "app", "posts_slug_idx"), "the slug migration's index is on live");
    assert_eq!(rig.live.psql("app", "SELECT count(*) FROM posts WHERE slug IS NULL"), "500");
    assert_eq!(rig.live.psql("app", "SELECT count(*) FROM authors"), "20");

    // Payload itself sees nothing left to run, and neither does status.
    payload_cli(&rig.dir, &rig.live.url("app", "app", PASSWORD), "migrate");
    assert_eq!(history(&rig), after, "Payload's own migrate found something pending after the release");
    let st = rig.status();
    st.ok();
    let st = st.json();
    assert!(st["pending"].as_array().unwrap().is_empty(), "nothing pending after the release: {st:#}");

    // The pre-release snapshot is this release's recovery point: pinned.
    let snap = rel["pre_snapshot_id"].as_str().expect("pre_snapshot_id");
    let m = manifest(&rig, snap);
    assert_eq!(m["pinned_by"], rel["release_id"], "{m:#}");
    assert_eq!(m["reason"], "pre-release", "{m:#}");
}

#[test]
fn a_payload_release_failing_on_live_is_restored_to_the_pre_release_state() {
    let rig = payload_rig();
    as_app(&rig.live, "app", DATA);
    add(&rig, "migrations", SLUG);
    add(&rig, "migrations-extra", UNIQUE_EMAIL);
    configure(&rig, "");
    let plan = rehearse_and_approve(&rig);

    // After the rehearsal the application writes an author whose email is
    // taken: the plan (hash over files and history) is unchanged, but the
    // unique index can no longer be built on live.
    as_app(&rig.live, "app", "INSERT INTO authors (name, email) VALUES ('twin', 'a7@example.com')");
    assert_eq!(plan_of(&rig), plan, "data changes must not change the plan");
    let before = live_fingerprint(&rig);
    assert!(live_dbs_like(&rig, "app_failed_").is_empty());

    let r = apply(&rig);
    r.expect_code(1);
    let rel = r.json();
    assert_eq!(rel["outcome"], "restored", "{rel:#}");
    assert_eq!(rel["recovery"], "restore", "{rel:#}");
    assert_eq!(rel["error_kind"], "migration_failed", "{rel:#}");
    let reason = rel["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(UNIQUE_EMAIL), "the reason names the failing file: {reason}");
    assert_eq!(by_name(&rel, SLUG)["status"], "applied", "Payload committed the first file: {rel:#}");
    assert_eq!(by_name(&rel, UNIQUE_EMAIL)["status"], "failed", "{rel:#}");
    let steps = journal_steps(&rel);
    for s in ["apply", "failed", "recovery", "restore", "restore_done", "swap", "swap_done", "finished"] {
        assert!(steps.iter().any(|x| x == s), "journal lacks {s}: {steps:?}");
    }
    assert!(!steps.iter().any(|x| x == "applied"), "a failed release is not `applied`: {steps:?}");

    // Live is the pre-release state: schema and every table's contents,
    // the duplicate author included; no trace of the slug migration.
    assert_eq!(live_fingerprint(&rig), before, "live differs from its state just before `apply`");
    assert_eq!(history(&rig), [format!("{INITIAL}:1")], "live's history");
    assert!(!columns(&rig, "app", "posts").contains(&"slug".to_string()), "posts.slug survived the restore");
    assert_eq!(rig.live.psql("app", "SELECT count(*) FROM authors WHERE email = 'a7@example.com'"), "2");
    // Ownership carried over: the application can still write to live.
    as_app(&rig.live, "app", "INSERT INTO posts (title) VALUES ('after the restore')");

    // The failed database is kept, holding what Payload committed on live:
    // the slug file with its row, the index file rolled back.
    let failed = rel["failed_database"].as_str().expect("failed_database").to_string();
    assert!(failed.starts_with("app_failed_"), "{failed}");
    assert_eq!(live_dbs_like(&rig, "app_failed_"), [failed.as_str()], "the failed database is on the live cluster");
    let kept = rows(&rig.live, &failed, "SELECT name || ':' || batch FROM payload_migrations ORDER BY id");
    assert_eq!(kept, [format!("{INITIAL}:1"), format!("{SLUG}:2")], "history in the failed database");
    assert!(columns(&rig, &failed, "posts").contains(&"slug".to_string()), "the failed database has posts.slug");
    assert!(!index_exists(&rig, &failed, "authors_email_idx"), "Payload rolled the failing file back");
    assert_eq!(rig.live.psql(&failed, "SELECT count(*) FROM authors"), "21");

    // The pre-release snapshot stays pinned: it is what live now is.
    let snap = rel["pre_snapshot_id"].as_str().expect("pre_snapshot_id");
    assert_eq!(manifest(&rig, snap)["pinned_by"], rel["release_id"]);
    let st = rig.status().json();
    let pending: Vec<&str> = st["pending"].as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(pending, [SLUG, UNIQUE_EMAIL], "the plan is pending again after the restore: {st:#}");
}

/// The shadow's role: a superuser that must present this password.
const SHADOW_PW: &str = "sh@dow/pw 9";
const PROBE: &str = "20261124_093300_env_probe";

/// A migration that appends, on `up` and on `down`, the connection
/// variables Payload's CLI was given to `env-probe.jsonl` in the project
/// (the CLI's working directory); only whether `PGPASSWORD` is set.
const PROBE_TS: &str = r#"import { appendFileSync } from 'node:fs'
import type { MigrateDownArgs, MigrateUpArgs } from '@payloadcms/db-postgres'

const probe = (dir: string) =>
  appendFileSync(
    'env-probe.jsonl',
    JSON.stringify({
      dir,
      DATABASE_URI: process.env.DATABASE_URI,
      DATABASE_URL: process.env.DATABASE_URL,
      POSTGRES_URL: process.env.POSTGRES_URL,
      PGPASSWORD: process.env.PGPASSWORD ? 'set' : 'unset',
    }) + '\n',
  )

export async function up({ db }: MigrateUpArgs): Promise<void> {
  probe('up')
}

export async function down({ db }: MigrateDownArgs): Promise<void> {
  probe('down')
}
"#;

#[test]
fn payload_gets_the_password_in_pgpassword_not_in_its_url() {
    let rig = payload_rig();
    add(&rig, "migrations", SLUG);
    std::fs::write(rig.dir.join("migrations").join(format!("{PROBE}.ts")), PROBE_TS).unwrap();
    rig.shadow.psql(
        "postgres",
        &format!("CREATE ROLE rehearser SUPERUSER LOGIN PASSWORD '{}'", SHADOW_PW.replace('\'', "''")),
    );
    let extra = format!(
        "shadow_url = {}\nrestore_jobs = 2\nmigrations = {{ kind = \"payload\", dir = {} }}\n{}",
        toml_string(&rig.shadow.url("postgres", "rehearser", SHADOW_PW)),
        toml_string(&rig.dir.display().to_string()),
        release_config(&rig, ""),
    );
    rig.pgr.write_config(&format!(
        "{}{}",
        local_store_toml(&rig.pgr, ""),
        target_toml("app", &rig.live.url("app", "app", PASSWORD), &extra)
    ));
    rig.snapshot();
    let r = rig.rehearse(&[]);
    r.ok();
    assert_eq!(r.json()["reversible"], true, "{}", r.stdout);
    let plan = plan_of(&rig);
    rig.pgr.run_json(&["approve", "--plan", &plan, "--by", "test"]).ok();
    let a = apply(&rig);
    a.ok();
    assert_eq!(a.json()["outcome"], "applied", "{}", a.stdout);
    assert_eq!(history(&rig), [format!("{INITIAL}:1"), format!("{SLUG}:2"), format!("{PROBE}:2")]);

    let probes: Vec<Value> = std::fs::read_to_string(rig.dir.join("env-probe.jsonl"))
        .expect("the probe migration ran")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Rehearsal: migrate, migrate:down, migrate; release: migrate.
    let dirs: Vec<&str> = probes.iter().map(|p| p["dir"].as_str().unwrap()).collect();
    assert_eq!(dirs, ["up", "down", "up", "up"], "{probes:#?}");
    for (i, p) in probes.iter().enumerate() {
        assert_eq!(p["PGPASSWORD"], "set", "run {i}: {p:#}");
        let uri = p["DATABASE_URI"].as_str().unwrap_or_else(|| panic!("run {i} has no DATABASE_URI: {p:#}"));
        assert_eq!(p["DATABASE_URL"], uri, "{p:#}");
        assert_eq!(p["POSTGRES_URL"], uri, "{p:#}");
        let u = url::Url::parse(uri).unwrap();
        assert_eq!(u.password(), None, "run {i}: a password in the URL: {uri}");
        assert!(!u.query_pairs().any(|(k, _)| k == "password"), "run {i}: a password in the query: {uri}");
        for pw in [PASSWORD, SHADOW_PW, "sh%40dow"] {
            assert!(!uri.contains(pw), "run {i}: {uri}");
        }
    }
    let users: Vec<String> = probes
        .iter()
        .map(|p| url::Url::parse(p["DATABASE_URI"].as_str().unwrap()).unwrap().username().to_string())
        .collect();
    assert_eq!(users, ["rehearser", "rehearser", "rehearser", "app"], "the shadow's role rehearses, live's releases");
    for (what, text) in [("rehearse", &r.stdout), ("rehearse", &r.stderr), ("apply", &a.stdout), ("apply", &a.stderr)] {
        for pw in [PASSWORD, SHADOW_PW, "sh%40dow%2Fpw"] {
            assert!(!text.contains(pw), "{what} output holds a password:\n{text}");
        }
    }
}
