//! Configs as operators write them: several targets (`--target` chooses),
//! the live URL from systemd's `$CREDENTIALS_DIRECTORY` or from the
//! environment, and `dump_globals = true` (roles without password hashes,
//! as a second object the manifest describes).

use crate::harness::cli::{Pgr, local_store_toml, s3_store_toml, target_toml};
use crate::harness::dump::final_error;
use crate::harness::pg::{Cluster, percent_encode};
use crate::harness::s3::S3Server;
use crate::harness::{data, sha256_file, zstd_decompress};
use serde_json::Value;
use std::path::Path;

const PASSWORD: &str = "targets-test-pw";
const BUCKET: &str = "snaps";

#[test]
fn two_targets_need_target_flag() {
    let c = Cluster::start();
    c.create_app_db("alpha", "app", PASSWORD);
    c.psql("postgres", "CREATE DATABASE beta OWNER app");
    data::create_rich_schema(&c, "alpha", "app", 20);
    data::create_rich_schema(&c, "beta", "app", 30);
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let pgr = Pgr::new();
    pgr.write_config(&format!(
        "{}{}{}",
        s3_store_toml(&pgr, &s3.endpoint(), BUCKET, ""),
        target_toml("alpha", &c.url("alpha", "app", PASSWORD), ""),
        target_toml("beta", &c.url("beta", "app", PASSWORD), "")
    ));

    let ambiguous = pgr.run(&["snapshot"]);
    ambiguous.expect_code(78);
    let msg = final_error(&ambiguous.stderr);
    assert!(
        msg.contains("alpha") && msg.contains("beta") && msg.contains("--target"),
        "the error does not name both targets and --target:\n{}",
        ambiguous.stderr
    );
    assert_eq!(s3.list_objects(BUCKET, ""), vec![], "something was stored without a target");

    let run = pgr.run_json(&["--target", "beta", "snapshot"]);
    run.ok();
    let out = run.json();
    let id = out["id"].as_str().expect("id").to_string();
    assert_eq!(out["target"], "beta");
    let objects: Vec<String> = s3.list_objects(BUCKET, "").into_iter().map(|o| o.0).collect();
    let manifest_key = format!("pgrehearse/beta/{id}/manifest.json");
    assert!(
        objects.contains(&manifest_key) && objects.contains(&format!("pgrehearse/beta/{id}/dump.pgdump.zst")),
        "objects: {objects:?}"
    );
    assert!(
        objects.iter().all(|k| k.starts_with(&format!("pgrehearse/beta/{id}/"))),
        "objects outside pgrehearse/beta/{id}/: {objects:?}"
    );
    let manifest = s3.get_json(BUCKET, &manifest_key);
    assert_eq!(manifest["target"], "beta");
    assert_eq!(manifest["database"], "beta", "dumped the wrong database");
    let customers = manifest["tables"].as_array().expect("tables[]").iter().find(|t| t["name"] == "customers").cloned();
    assert_eq!(
        customers.map(|t| t["rows"].clone()),
        Some(Value::from(30)),
        "row count of beta's customers (alpha has 20)"
    );

    let unknown = pgr.run(&["--target", "nope", "snapshot"]);
    unknown.expect_code(78);
    assert!(
        final_error(&unknown.stderr).contains("nope"),
        "the error does not name the unknown target:\n{}",
        unknown.stderr
    );
    assert_eq!(s3.list_objects(BUCKET, "").len(), objects.len(), "an unknown target stored something");
}

/// `config check --json` is valid and mentions no form of `password`.
fn config_check_hides(pgr: &Pgr, password: &str) {
    let r = pgr.run_json(&["config", "check"]);
    r.ok();
    assert_eq!(r.json()["ok"], true, "config check --json: {}", r.stdout);
    for needle in [password.to_string(), percent_encode(password)] {
        assert!(
            !r.stdout.contains(&needle) && !r.stderr.contains(&needle),
            "config check shows the password:\n{}\n{}",
            r.stdout,
            r.stderr
        );
    }
}

/// The database named in the manifest of a local-store snapshot.
fn dumped_database(snapshot: &Value) -> String {
    let path = snapshot["manifest_key"].as_str().expect("manifest_key");
    let m: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    m["database"].as_str().unwrap_or_default().to_string()
}

fn write_0600(path: &Path, content: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn live_url_from_credentials_directory_and_environment() {
    const CRED_PW: &str = "cred-dir-pw-4711";
    const ENV_PW: &str = "env-var-pw-0815";
    let c = Cluster::start();
    c.create_app_db("credapp", "cred_role", CRED_PW);
    c.create_app_db("envapp", "env_role", ENV_PW);
    data::create_rich_schema(&c, "credapp", "cred_role", 20);
    data::create_rich_schema(&c, "envapp", "env_role", 20);

    // `live_url_file = "app-url"` (a bare name) from $CREDENTIALS_DIRECTORY.
    // A decoy with a wrong password sits next to the config: falling back to
    // the config's directory would fail authentication.
    let mut pgr = Pgr::new();
    let creds = tempfile::Builder::new().prefix("pgr-creds-").tempdir().unwrap();
    let empty = tempfile::Builder::new().prefix("pgr-creds-empty-").tempdir().unwrap();
    write_0600(&creds.path().join("app-url"), &format!("{}\n", c.url("credapp", "cred_role", CRED_PW)));
    pgr.write_secret("app-url", &c.url("credapp", "cred_role", "wrong-password"));
    pgr.write_config(&format!(
        "{}[[targets]]\nname = \"app\"\nlive_url_file = \"app-url\"\n",
        local_store_toml(&pgr, "")
    ));
    // Without the credential, the decoy is used and fails: the decoy works.
    pgr.env("CREDENTIALS_DIRECTORY", empty.path().to_str().unwrap());
    let decoy = pgr.run(&["snapshot"]);
    assert!(
        decoy.code != 0 && decoy.stderr.contains("password authentication failed"),
        "the decoy URL did not fail authentication (exit {}):\n{}",
        decoy.code,
        decoy.stderr
    );
    pgr.env("CREDENTIALS_DIRECTORY", creds.path().to_str().unwrap());
    let run = pgr.run_json(&["snapshot"]);
    run.ok();
    assert_eq!(dumped_database(&run.json()), "credapp");
    config_check_hides(&pgr, CRED_PW);

    // No live_url at all: PGREHEARSE_APP_LIVE_URL.
    let mut pgr = Pgr::new();
    pgr.env("PGREHEARSE_APP_LIVE_URL", &c.url("envapp", "env_role", ENV_PW));
    pgr.write_config(&format!("{}[[targets]]\nname = \"app\"\n", local_store_toml(&pgr, "")));
    let run = pgr.run_json(&["snapshot"]);
    run.ok();
    assert_eq!(dumped_database(&run.json()), "envapp");
    config_check_hides(&pgr, ENV_PW);
}

#[test]
fn dump_globals_has_roles_without_password_hashes() {
    let c = Cluster::start();
    c.create_app_db("app", "app", PASSWORD);
    data::create_rich_schema(&c, "app", "app", 20);
    // There is a hash to leak: the superuser pgrehearse connects as below
    // could read it, so only --no-role-passwords keeps it out.
    let hash = c.psql("postgres", "SELECT rolpassword FROM pg_authid WHERE rolname = 'app'");
    assert!(hash.starts_with("SCRAM-SHA-256$"), "app's password: {hash}");
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let pgr = Pgr::new();
    pgr.write_config(&format!(
        "{}{}",
        s3_store_toml(&pgr, &s3.endpoint(), BUCKET, ""),
        target_toml("app", &c.url("app", "postgres", ""), "dump_globals = true")
    ));
    let run = pgr.run_json(&["snapshot"]);
    run.ok();
    let out = run.json();
    let id = out["id"].as_str().expect("id").to_string();
    let key = format!("pgrehearse/app/{id}/globals.sql.zst");
    assert_eq!(out["globals_key"].as_str(), Some(key.as_str()), "snapshot --json");

    let size = s3
        .list_objects(BUCKET, "pgrehearse/")
        .into_iter()
        .find(|o| o.0 == key)
        .map(|o| o.1)
        .unwrap_or_else(|| panic!("{key} was not stored"));
    let dir = tempfile::tempdir().unwrap();
    let stored = dir.path().join("globals.sql.zst");
    s3.download(BUCKET, &key, &stored);
    assert_eq!(std::fs::metadata(&stored).unwrap().len(), size);

    let manifest = s3.get_json(BUCKET, &format!("pgrehearse/app/{id}/manifest.json"));
    let g = &manifest["globals"];
    assert_eq!(g["key"], format!("app/{id}/globals.sql.zst"), "manifest globals: {g}");
    assert_eq!(g["bytes"].as_u64(), Some(size), "manifest globals.bytes");
    assert_eq!(g["sha256"].as_str(), Some(sha256_file(&stored).as_str()), "manifest globals.sha256");

    let plain = dir.path().join("globals.sql");
    zstd_decompress(&stored, &plain);
    let sql = std::fs::read_to_string(&plain).unwrap();
    assert!(sql.lines().any(|l| l.trim() == "CREATE ROLE app;"), "no CREATE ROLE for app:\n{sql}");
    assert!(!sql.contains("SCRAM-SHA-256$") && !sql.contains(&hash), "a password hash is in the globals dump:\n{sql}");
}
