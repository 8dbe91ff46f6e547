//! Restore drills (`pgrehearse verify`) on real clusters: a live cluster with
//! an app database and a SECOND cluster as the shadow server.
//!
//! - A snapshot restores, every table's exact row count matches the
//!   manifest, the result is recorded in the manifest and the listing, the
//!   scratch database is dropped and staging emptied; a repeat clones the
//!   template, `--full` restores again, `--keep` keeps an exact copy.
//! - A damaged stored object (a flipped byte, a cut tail) fails the SHA-256
//!   check before anything is restored — also when a template exists.
//! - A tampered manifest row count fails the drill, naming the table.
//! - A shadow that reaches the live cluster through another path is refused
//!   before any write (the server's own DDL log proves it).
//! - Not enough staging space is refused before downloading.
//! - A drill killed mid-restore is cleaned up by the next one, which passes.
//!
//! Independent read-backs: `psql` on both clusters, the AWS CLI for the
//! store, the servers' logs with `log_statement = 'ddl'`.

use crate::harness::cli::{Pgr, Run, local_store_path, local_store_toml, s3_store_toml, target_toml, toml_string};
use crate::harness::data;
use crate::harness::dump::{final_error, step_until};
use crate::harness::pg::Cluster;
use crate::harness::proc::signal;
use crate::harness::s3::S3Server;
use crate::harness::shadow::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const PASSWORD: &str = "verify-test-pw";
const BUCKET: &str = "snaps";

/// A live cluster with the app database (rich schema, `rows` customers).
fn live_cluster(rows: u32) -> Cluster {
    let c = Cluster::start();
    c.create_app_db("app", "app", PASSWORD);
    data::create_rich_schema(&c, "app", "app", rows);
    c
}

/// Target `app` on `live` with `shadow_url` and `extra` lines.
fn target(live: &Cluster, shadow_url: &str, extra: &str) -> String {
    target_toml("app", &live.url("app", "app", PASSWORD), &format!("shadow_url = {}\n{extra}", toml_string(shadow_url)))
}

fn s3_pgr(s3: &S3Server, live: &Cluster, shadow: &Cluster, store_extra: &str) -> Pgr {
    let pgr = Pgr::new();
    pgr.write_config(&format!(
        "{}{}",
        s3_store_toml(&pgr, &s3.endpoint(), BUCKET, store_extra),
        target(live, &shadow_url(shadow), "restore_jobs = 2")
    ));
    pgr
}

fn local_pgr(live: &Cluster, shadow_url: &str, store_extra: &str, target_extra: &str) -> Pgr {
    let pgr = Pgr::new();
    pgr.write_config(&format!("{}{}", local_store_toml(&pgr, store_extra), target(live, shadow_url, target_extra)));
    pgr
}

/// `snapshot --json`; returns `(id, key)`.
fn snapshot(pgr: &Pgr) -> (String, String) {
    let r = pgr.run_json(&["snapshot"]);
    r.ok();
    let v = r.json();
    (v["id"].as_str().expect("id").to_string(), v["key"].as_str().expect("key").to_string())
}

/// `--json verify <args>`, with the outcome on stderr for the test log.
fn verify(pgr: &Pgr, args: &[&str]) -> Run {
    let mut all = vec!["verify"];
    all.extend_from_slice(args);
    let t0 = Instant::now();
    let r = pgr.run_json(&all);
    eprintln!("verify {args:?}: exit {} in {:?}\nstdout:\n{}\nstderr:\n{}", r.code, t0.elapsed(), r.stdout, r.stderr);
    r
}

/// The verify report of a passing run, checked for the common fields.
fn passed(r: &Run, id: &str, method: &str, tables: usize) -> Value {
    r.ok();
    let v = r.json();
    assert_eq!(v["ok"], true, "verify --json: {v}");
    assert_eq!(v["snapshot_id"], id, "snapshot_id: {v}");
    assert_eq!(v["method"], method, "method: {v}");
    assert_eq!(v["tables_checked"].as_u64(), Some(tables as u64), "tables_checked: {v}");
    assert_eq!(v["mismatches"], json!([]), "mismatches: {v}");
    assert!(v["restore_duration_ms"].as_u64().is_some(), "restore_duration_ms missing: {v}");
    let db = v["database"].as_str().unwrap_or_else(|| panic!("no database in {v}"));
    assert!(db.starts_with("pgrehearse_app_"), "scratch database name {db}");
    assert_ne!(db, template_name("app"), "the drill ran in the template itself");
    v
}

/// A run that failed with exit 2 and says `needle` (case-insensitive) on
/// stderr; stdout is still one JSON document saying not ok.
fn problems(r: &Run, needle: &str) -> Value {
    r.expect_code(2);
    assert!(r.stderr.to_lowercase().contains(&needle.to_lowercase()), "stderr does not say {needle:?}:\n{}", r.stderr);
    let v = r.json();
    assert_eq!(v["ok"], false, "--json of a failed drill: {v}");
    v
}

/// The manifest's `verification` must not claim a passed drill.
fn assert_not_verified_ok(manifest: &Value, when: &str) {
    let ver = &manifest["verification"];
    assert!(ver.is_null() || ver["ok"] != true, "manifest says verified ok {when}: {ver}");
}

fn listed(pgr: &Pgr, id: &str) -> Value {
    let r = pgr.run_json(&["snapshots"]);
    r.ok();
    let list = r.json();
    list.as_array()
        .expect("snapshots --json is an array")
        .iter()
        .find(|s| s["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("snapshot {id} not listed: {list}"))
}

/// Indexes of the public schema with their validity, sorted.
fn indexes(c: &Cluster, db: &str) -> String {
    c.psql(
        db,
        "SELECT string_agg(ic.relname || ':' || i.indisvalid, ',' ORDER BY ic.relname)
         FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
         JOIN pg_namespace n ON n.oid = ic.relnamespace WHERE n.nspname = 'public'",
    )
}

#[test]
fn verify_restores_records_and_then_clones_the_template_s3() {
    let t0 = Instant::now();
    let live = live_cluster(2000);
    let shadow = Cluster::start();
    assert_ne!(system_identifier(&live), system_identifier(&shadow), "two initdb runs, one identifier?");
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let pgr = s3_pgr(&s3, &live, &shadow, "");
    let live_dbs = databases(&live);
    let (id, dump_key) = snapshot(&pgr);
    let manifest_key = format!("pgrehearse/app/{id}/manifest.json");
    let tables = data::tables(&live, "app");
    assert_eq!(tables.len(), 3, "rich schema tables: {tables:?}");

    // First drill: a real restore.
    let r = verify(&pgr, &["latest"]);
    let v = passed(&r, &id, "restore", tables.len());
    let first_db = v["database"].as_str().unwrap().to_string();
    assert_eq!(scratch_dbs(&shadow), vec![template_name("app")], "after the first drill only the template may remain");
    assert!(!db_exists(&shadow, &first_db), "scratch database {first_db} was not dropped");
    assert_eq!(databases(&live), live_dbs, "the drill touched the live cluster's databases");
    assert_staging_empty(&pgr, "after a passing drill");

    // Recorded in the manifest (read back with the AWS CLI) and the listing.
    let manifest = s3.get_json(BUCKET, &manifest_key);
    let ver = &manifest["verification"];
    assert!(ver["verified_at"].as_str().is_some_and(|s| !s.is_empty()), "manifest verification: {ver}");
    assert_eq!(ver["ok"], true, "manifest verification: {ver}");
    assert_eq!(ver["method"], "restore", "manifest verification: {ver}");
    assert_eq!(ver["restore_duration_ms"], v["restore_duration_ms"], "manifest verification: {ver}");
    assert_eq!(ver["tables_checked"].as_u64(), Some(tables.len() as u64), "manifest verification: {ver}");
    // The rest of the manifest is unchanged by the rewrite.
    assert_eq!(manifest["id"], id.as_str());
    assert!(manifest["tables"].as_array().is_some_and(|t| t.len() == 3), "manifest tables: {manifest}");
    let entry = listed(&pgr, &id);
    assert!(!entry["verified_at"].is_null(), "snapshots --json after a passing drill: {entry}");

    // Second drill of the same snapshot: cloned from the template.
    let r = verify(&pgr, &["latest"]);
    let v2 = passed(&r, &id, "template_clone", tables.len());
    assert!(!db_exists(&shadow, v2["database"].as_str().unwrap()), "clone was not dropped");
    assert_eq!(scratch_dbs(&shadow), vec![template_name("app")]);
    assert_staging_empty(&pgr, "after a template clone");
    let manifest = s3.get_json(BUCKET, &manifest_key);
    assert_eq!(manifest["verification"]["ok"], true, "manifest after the clone drill: {}", manifest["verification"]);

    // --full restores for real; --keep leaves an exact copy of live.
    let r = verify(&pgr, &[&id, "--full", "--keep"]);
    let v3 = passed(&r, &id, "restore", tables.len());
    let kept = v3["database"].as_str().unwrap().to_string();
    let mut expected = vec![template_name("app"), kept.clone()];
    expected.sort();
    assert_eq!(scratch_dbs(&shadow), expected, "--keep must keep {kept}");
    assert_eq!(data::tables(&shadow, &kept), tables, "tables of the kept copy");
    for (s, t) in &tables {
        assert_eq!(
            data::table_digest(&live, "app", s, t),
            data::table_digest(&shadow, &kept, s, t),
            "rows of {s}.{t} differ between live and the kept drill database"
        );
    }
    assert_eq!(indexes(&live, "app"), indexes(&shadow, &kept), "indexes (and validity) of the kept copy");
    assert_eq!(
        live.psql("app", "SELECT last_value FROM invoice_no"),
        shadow.psql(&kept, "SELECT last_value FROM invoice_no"),
        "sequence value of the kept copy"
    );
    assert_staging_empty(&pgr, "after --full --keep");

    // The template exists, but a later drill still re-reads the stored
    // object: bit rot in the store is caught, not hidden by a clone.
    let dir = tempfile::tempdir().unwrap();
    let obj = dir.path().join("dump.pgdump.zst");
    s3.download(BUCKET, &dump_key, &obj);
    flip_middle_byte(&obj);
    s3_put(&s3, BUCKET, &dump_key, &obj);
    log_ddl(&shadow);
    let mark = log_mark(&shadow);
    let r = verify(&pgr, &["latest"]);
    problems(&r, "checksum mismatch");
    assert_eq!(databases_created_since(&shadow, mark), Vec::<String>::new(), "a corrupted snapshot made databases");
    assert_staging_empty(&pgr, "after a checksum mismatch");
    assert_eq!(databases(&live), live_dbs, "the drills touched the live cluster's databases");
    assert!(db_exists(&shadow, &template_name("app")), "a corrupted snapshot dropped the template");
    assert!(
        db_exists(&shadow, &kept),
        "the database kept with --keep ({kept}) was dropped by the next drill; shadow DDL since:\n{}",
        database_ddl_since(&shadow, mark).join("\n")
    );
    assert_eq!(scratch_dbs(&shadow), expected, "a corrupted snapshot changed the scratch databases");
    eprintln!("test took {:?}", t0.elapsed());
}

#[test]
fn damaged_object_fails_checksum_and_restores_nothing_s3() {
    let t0 = Instant::now();
    let live = live_cluster(2000);
    let shadow = Cluster::start();
    log_ddl(&shadow);
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let pgr = s3_pgr(&s3, &live, &shadow, "");
    let (id, dump_key) = snapshot(&pgr);
    let manifest_key = format!("pgrehearse/app/{id}/manifest.json");
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("original.zst");
    s3.download(BUCKET, &dump_key, &original);
    let size = std::fs::metadata(&original).unwrap().len();

    let check_refused = |what: &str| {
        let mark = log_mark(&shadow);
        let r = verify(&pgr, &["latest"]);
        problems(&r, "checksum mismatch");
        assert_eq!(database_ddl_since(&shadow, mark), Vec::<String>::new(), "{what}: databases made or dropped");
        assert_eq!(scratch_dbs(&shadow), Vec::<String>::new(), "{what}: scratch databases left");
        assert_staging_empty(&pgr, &format!("after a {what}"));
        assert_not_verified_ok(&s3.get_json(BUCKET, &manifest_key), &format!("after a {what}"));
        assert!(listed(&pgr, &id)["verified_at"].is_null(), "{what}: listed as verified");
    };

    // One byte flipped in the middle.
    let flipped = dir.path().join("flipped.zst");
    std::fs::copy(&original, &flipped).unwrap();
    flip_middle_byte(&flipped);
    s3_put(&s3, BUCKET, &dump_key, &flipped);
    assert_eq!(s3.head(BUCKET, &dump_key)["ContentLength"].as_u64(), Some(size));
    check_refused("flipped byte");

    // The last 1000 bytes cut off.
    let cut = dir.path().join("cut.zst");
    std::fs::copy(&original, &cut).unwrap();
    truncate_tail(&cut, 1000);
    s3_put(&s3, BUCKET, &dump_key, &cut);
    assert_eq!(s3.head(BUCKET, &dump_key)["ContentLength"].as_u64(), Some(size - 1000));
    check_refused("truncated object");

    // The original bytes back: the same drill passes (the refusals above
    // were the damage, nothing else).
    s3_put(&s3, BUCKET, &dump_key, &original);
    let r = verify(&pgr, &["latest"]);
    passed(&r, &id, "restore", 3);
    assert_eq!(scratch_dbs(&shadow), vec![template_name("app")]);
    assert_staging_empty(&pgr, "after the repaired drill");
    eprintln!("test took {:?}", t0.elapsed());
}

#[test]
fn tampered_row_count_names_the_table_local() {
    let t0 = Instant::now();
    let live = live_cluster(500);
    let shadow = Cluster::start();
    let pgr = local_pgr(&live, &shadow_url(&shadow), "", "");
    let (id, key) = snapshot(&pgr);
    let manifest_path = local_store_path(&pgr).join("app").join(&id).join("manifest.json");
    let read = |p: &Path| -> Value { serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap() };

    // Local store too: a flipped byte in the dump file fails the checksum.
    let dump = PathBuf::from(&key);
    let at = flip_middle_byte(&dump);
    let r = verify(&pgr, &["latest"]);
    problems(&r, "checksum mismatch");
    assert_eq!(scratch_dbs(&shadow), Vec::<String>::new());
    assert_staging_empty(&pgr, "after a local checksum mismatch");
    assert_eq!(flip_middle_byte(&dump), at); // flipped back: the original bytes

    // One row more in the manifest than in the dump.
    let mut manifest = read(&manifest_path);
    let name = manifest["tables"][0]["name"].as_str().expect("tables[0].name").to_string();
    let rows = manifest["tables"][0]["rows"].as_i64().expect("tables[0].rows");
    manifest["tables"][0]["rows"] = json!(rows + 1);
    std::fs::write(&manifest_path, serde_json::to_string_pretty(&manifest).unwrap()).unwrap();

    let r = verify(&pgr, &["latest"]);
    let v = problems(&r, &name);
    let mismatches = v["mismatches"].as_array().unwrap_or_else(|| panic!("no mismatches[] in {v}"));
    assert_eq!(mismatches.len(), 1, "exactly one table was tampered: {v}");
    let m = mismatches[0].as_str().unwrap_or_default();
    assert!(m.contains(&name), "the mismatch does not name {name}: {m}");
    assert!(m.contains(&rows.to_string()) && m.contains(&(rows + 1).to_string()), "counts not in: {m}");
    assert_eq!(v["tables_checked"].as_u64(), Some(3), "{v}");
    // A failed drill leaves no scratch database and no template to clone.
    assert_eq!(scratch_dbs(&shadow), Vec::<String>::new(), "after a failed drill");
    assert_staging_empty(&pgr, "after a failed drill");
    assert_not_verified_ok(&read(&manifest_path), "after a row count mismatch");
    eprintln!("test took {:?}", t0.elapsed());
}

#[test]
fn shadow_reaching_the_live_cluster_is_refused_before_any_write() {
    let t0 = Instant::now();
    let live = live_cluster(200);
    log_ddl(&live);
    let (_alias_dir, alias) = socket_alias(&live);
    let via_alias = url_via(&alias, live.port());

    // Take the snapshot with a config that has a proper shadow elsewhere.
    let other = Cluster::start();
    let pgr = local_pgr(&live, &shadow_url(&other), "", "");
    let (id, _) = snapshot(&pgr);
    let before = databases(&live);
    let app_rows = data::table_digest(&live, "app", "public", "customers");

    // Another path to the same socket: textually a different server.
    pgr.write_config(&format!("{}{}", local_store_toml(&pgr, ""), target(&live, &via_alias, "")));
    let mark = log_mark(&live);
    let r = verify(&pgr, &["latest"]);
    r.expect_code(78);
    let msg = final_error(&r.stderr).to_lowercase();
    assert!(msg.contains("live"), "the refusal does not mention the live server:\n{}", r.stderr);
    assert_eq!(r.json()["exit_code"], 78, "--json error document");
    assert_eq!(databases(&live), before, "a database was created or dropped on the live cluster");
    assert_eq!(database_ddl_since(&live, mark), Vec::<String>::new(), "database DDL ran on the live cluster");
    assert_staging_empty(&pgr, "after the refusal");

    // Literally the live server's socket: rejected by config validation.
    pgr.write_config(&format!("{}{}", local_store_toml(&pgr, ""), target(&live, &shadow_url(&live), "")));
    let r = verify(&pgr, &["latest"]);
    r.expect_code(78);
    assert_eq!(databases(&live), before);
    assert_eq!(database_ddl_since(&live, mark), Vec::<String>::new(), "database DDL ran on the live cluster");

    // Allowed explicitly: the same alias works (the refusal above was the
    // identity check, nothing else), and the live database is untouched.
    pgr.write_config(&format!(
        "{}{}",
        local_store_toml(&pgr, ""),
        target(&live, &via_alias, "shadow_on_live_server = true")
    ));
    let r = verify(&pgr, &["latest"]);
    passed(&r, &id, "restore", 3);
    assert_eq!(scratch_dbs(&live), vec![template_name("app")]);
    assert_eq!(data::table_digest(&live, "app", "public", "customers"), app_rows, "live data changed");
    assert_staging_empty(&pgr, "after the allowed drill");
    eprintln!("test took {:?}", t0.elapsed());
}

#[test]
fn not_enough_staging_space_is_refused_before_download() {
    let t0 = Instant::now();
    let live = live_cluster(200);
    let shadow = Cluster::start();
    log_ddl(&shadow);
    let pgr = local_pgr(&live, &shadow_url(&shadow), "staging_reserve = \"100000GiB\"", "");
    let (id, _) = snapshot(&pgr);

    let mark = log_mark(&shadow);
    let r = verify(&pgr, &["latest"]);
    r.expect_code(75);
    let msg = final_error(&r.stderr).to_lowercase();
    assert!(msg.contains("space"), "the refusal does not mention free space:\n{}", r.stderr);
    assert!(msg.contains("staging") || msg.contains(&staging_dir(&pgr).display().to_string()), "where? {msg}");
    assert_eq!(r.json()["exit_code"], 75, "--json error document");
    assert_staging_empty(&pgr, "after a refusal for space");
    assert_eq!(scratch_dbs(&shadow), Vec::<String>::new());
    assert_eq!(database_ddl_since(&shadow, mark), Vec::<String>::new(), "databases made on the shadow");
    assert!(listed(&pgr, &id)["verified_at"].is_null());

    // With a sane reserve the same drill runs.
    pgr.write_config(&format!(
        "{}{}",
        local_store_toml(&pgr, "staging_reserve = \"1MiB\""),
        target(&live, &shadow_url(&shadow), "")
    ));
    passed(&verify(&pgr, &["latest"]), &id, "restore", 3);
    eprintln!("test took {:?}", t0.elapsed());
}

/// Bytes in `public.blobs` of `db` (0 if the table or database is not there yet).
fn blob_bytes(c: &Cluster, db: &str) -> u64 {
    let out = c.psql_output(db, "SELECT coalesce(pg_total_relation_size(to_regclass('public.blobs')), 0)");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

#[test]
fn killed_mid_restore_is_cleaned_up_by_the_next_drill() {
    let t0 = Instant::now();
    let live = live_cluster(100);
    data::create_blob_table(&live, "app", "app", 64);
    let shadow = Cluster::start();
    // A shadow role that must really authenticate: its password must reach
    // pg_restore through the environment, never its argv.
    const SHADOW_PW: &str = "drill-shadow-secret-9f3k";
    shadow.psql("postgres", &format!("CREATE ROLE drill LOGIN SUPERUSER PASSWORD '{SHADOW_PW}'"));
    let pgr = local_pgr(&live, &shadow.url("postgres", "drill", SHADOW_PW), "", "restore_jobs = 2");
    let (id, _) = snapshot(&pgr);
    let tables = data::tables(&live, "app");
    eprintln!("setup took {:?}", t0.elapsed());

    let mut bg = pgr.spawn(&["--json", "verify", "latest"]);
    let (restore, argv) = stopped_pg_restore(&mut bg);
    eprintln!("pg_restore {restore}: {argv}");
    // A superuser shadow mirrors live's roles: owners and grants are restored.
    assert!(!argv.contains("--no-owner") && !argv.contains("--no-acl"), "live's owners dropped: {argv}");
    assert!(argv.contains("--exit-on-error") || argv.split(' ').any(|a| a == "-e"), "no --exit-on-error: {argv}");
    assert!(argv_has_jobs(&argv, 2), "restore_jobs = 2 not passed as -j 2: {argv}");
    assert!(!argv.contains(SHADOW_PW), "the shadow password is on pg_restore's command line: {argv}");
    // Run it in slices until blob data is arriving in a scratch database.
    step_until(&bg, restore, Duration::from_millis(50), "blob data in a scratch database", || {
        scratch_dbs(&shadow).iter().any(|db| blob_bytes(&shadow, db) > 1 << 20)
    });
    let leftovers = scratch_dbs(&shadow);
    let staged = staging_files(&pgr);
    let restores = working_children(&bg, "pg_restore");
    eprintln!("killing mid-restore: scratch {leftovers:?}, staging {staged:?}, pg_restore {restores:?}");
    assert!(!staged.is_empty(), "no staging file while pg_restore runs?");

    signal(bg.pid(), libc::SIGKILL);
    let run = bg.wait(Duration::from_secs(10));
    assert_ne!(run.code, 0, "pgrehearse survived SIGKILL?\n{}", run.stderr);
    for pid in restores.iter().copied().chain([restore]) {
        kill_and_wait(pid);
    }
    // Nothing could clean up: the crash really left both behind.
    assert_eq!(scratch_dbs(&shadow), leftovers, "the leftovers vanished by themselves?");
    assert!(!staging_files(&pgr).is_empty(), "the staging file vanished by itself?");

    // The next drill cleans up and passes with a real restore (a template
    // from the killed run, if any, must not be cloned).
    let t1 = Instant::now();
    let r = verify(&pgr, &["latest"]);
    eprintln!("second drill took {:?}", t1.elapsed());
    passed(&r, &id, "restore", tables.len());
    assert_eq!(scratch_dbs(&shadow), vec![template_name("app")], "leftover scratch databases after the next drill");
    for db in &leftovers {
        if *db != template_name("app") {
            assert!(!db_exists(&shadow, db), "leftover {db} still there");
        }
    }
    assert_staging_empty(&pgr, "after the next drill");
    // The template really holds the snapshot.
    let n = shadow.psql_output(&template_name("app"), "SELECT count(*) FROM blobs");
    if n.status.success() {
        assert_eq!(
            String::from_utf8_lossy(&n.stdout).trim(),
            live.psql("app", "SELECT count(*) FROM blobs"),
            "rows of blobs in the template"
        );
    }
    eprintln!("test took {:?}", t0.elapsed());
}
