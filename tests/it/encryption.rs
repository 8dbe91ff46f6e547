//! Client-side encryption to age recipients: the stored object is not a
//! readable dump, `download` with the right identity gives back the exact
//! plain archive, and a wrong identity is refused without writing a file.
//! Keys come from the `age-keygen` CLI and the object is also decrypted with
//! the `age` CLI, independently of the code under test.

use crate::harness::cli::{Pgr, local_store_path, local_store_toml, target_toml};
use crate::harness::pg::Cluster;
use crate::harness::{data, file_head, output, run_ok, sha256_file};
use crate::roundtrip::assert_manifest_counts;
use std::path::{Path, PathBuf};
use std::process::Command;

const PASSWORD: &str = "encryption-test-pw";

/// Generates an age key file; returns its path and public key.
fn age_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    run_ok(Command::new("age-keygen").arg("-o").arg(&path));
    let text = std::fs::read_to_string(&path).unwrap();
    let public = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("age key file has a public key comment")
        .trim()
        .to_string();
    assert!(public.starts_with("age1"));
    (path, public)
}

#[test]
fn encrypted_snapshot_round_trip_and_wrong_identity() {
    let c = Cluster::start();
    c.create_app_db("app", "app", PASSWORD);
    data::create_rich_schema(&c, "app", "app", 2000);
    let pgr = Pgr::new();
    let (key, recipient) = age_key(pgr.dir(), "age-key.txt");
    let (wrong_key, _) = age_key(pgr.dir(), "other-key.txt");
    pgr.write_config(&format!(
        "{}{}",
        local_store_toml(&pgr, &format!("encrypt_to = [\"{recipient}\"]\nidentity_file = \"{}\"", key.display())),
        target_toml("app", &c.url("app", "app", PASSWORD), "")
    ));
    let run = pgr.run_json(&["snapshot"]);
    run.ok();
    let reported = run.json();
    let id = reported["id"].as_str().expect("id");
    let snap_dir = local_store_path(&pgr).join("app").join(id);
    let stored = snap_dir.join("dump.pgdump.zst.age");
    assert_eq!(PathBuf::from(reported["key"].as_str().expect("key")), stored);
    assert!(!snap_dir.join("dump.pgdump.zst").exists(), "an unencrypted dump was stored too");

    // Stored bytes: an age file, not a dump, and what the manifest says.
    assert_eq!(file_head(&stored, 21), b"age-encryption.org/v1");
    let sha = sha256_file(&stored);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(snap_dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["sha256"].as_str(), Some(sha.as_str()));
    assert_eq!(reported["sha256"].as_str(), Some(sha.as_str()));
    assert!(
        manifest["encryption"].to_string().contains(&recipient),
        "manifest encryption does not name the recipient: {}",
        manifest["encryption"]
    );
    let tmp = tempfile::tempdir().unwrap();
    assert!(
        !output(Command::new("zstd").args(["-q", "-d", "-c"]).arg(&stored)).status.success(),
        "zstd -d decoded an encrypted object"
    );
    assert!(
        !output(Command::new("pg_restore").arg("-l").arg(&stored)).status.success(),
        "pg_restore -l read an encrypted object"
    );

    // download with the configured identity: the plain archive.
    let plain = tmp.path().join("plain.pgdump");
    pgr.run(&["download", id, "-o", plain.to_str().unwrap()]).ok();
    assert_eq!(file_head(&plain, 5), b"PGDMP");
    // The age CLI agrees on the content.
    let by_age = tmp.path().join("by-age.zst");
    run_ok(Command::new("age").arg("-d").arg("-i").arg(&key).arg("-o").arg(&by_age).arg(&stored));
    let by_age_plain = tmp.path().join("by-age.pgdump");
    crate::harness::zstd_decompress(&by_age, &by_age_plain);
    assert_eq!(sha256_file(&plain), sha256_file(&by_age_plain), "download != age -d | zstd -d");
    assert_eq!(reported["bytes_raw"].as_u64(), Some(std::fs::metadata(&plain).unwrap().len()));

    data::restore_archive(&c, &plain, "restored");
    data::assert_same_database(&c, "app", "restored");
    assert_manifest_counts(&c, "restored", &manifest);

    // A wrong identity is refused and leaves no file behind.
    let refused = tmp.path().join("refused.pgdump");
    let r = pgr.run(&["download", id, "-o", refused.to_str().unwrap(), "--identity", wrong_key.to_str().unwrap()]);
    assert_ne!(r.code, 0, "download with a wrong identity succeeded:\n{}", r.stderr);
    let msg = r.stderr.to_lowercase();
    assert!(
        msg.contains("identity") || msg.contains("decrypt"),
        "the refusal does not say what went wrong:\n{}",
        r.stderr
    );
    assert!(!refused.exists(), "a file was created despite the wrong identity");
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("refused"))
        .collect();
    assert!(leftovers.is_empty(), "partial files left: {leftovers:?}");
}
