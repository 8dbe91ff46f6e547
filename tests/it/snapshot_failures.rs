//! Snapshots that fail midway leave nothing that looks like a snapshot:
//! `pg_dump` killed mid-stream (S3 and local store), and the S3 server going
//! away mid-upload (through the fault proxy), after which the start-up
//! sweeper aborts the orphaned multipart upload.
//!
//! To hit "mid-stream" deterministically, the test freezes `pg_dump` with
//! SIGSTOP and lets it run in short steps until the wanted state is visible
//! (a part uploaded, bytes written); only then does it inject the fault.

use crate::harness::cli::{Pgr, local_store_path, local_store_toml, s3_store_toml, target_toml};
use crate::harness::dump::{final_error, step_until, stopped_pg_dump};
use crate::harness::pg::Cluster;
use crate::harness::proc::{bytes_written, try_signal};
use crate::harness::proxy::Proxy;
use crate::harness::s3::S3Server;
use crate::harness::{data, files_under};
use std::time::Duration;

const PASSWORD: &str = "failure-test-pw";

const SLICE: Duration = Duration::from_millis(100);

/// A cluster with an app database whose dump is `mb` megabytes of
/// incompressible data.
fn big_database(mb: u32) -> Cluster {
    let c = Cluster::start();
    c.create_app_db("app", "app", PASSWORD);
    data::create_rich_schema(&c, "app", "app", 100);
    data::create_blob_table(&c, "app", "app", mb);
    c
}

/// Whether a multipart upload under our prefix has at least one part.
fn has_uploaded_part(s3: &S3Server, bucket: &str) -> bool {
    s3.list_multipart_uploads(bucket)
        .iter()
        .any(|(key, id)| key.starts_with("pgrehearse/app/") && !s3.list_parts(bucket, key, id).is_empty())
}

fn snapshots_listed(pgr: &Pgr) -> Vec<serde_json::Value> {
    let r = pgr.run_json(&["snapshots"]);
    r.ok();
    r.json().as_array().cloned().expect("snapshots --json is an array")
}

#[test]
fn pg_dump_killed_mid_stream_s3() {
    let c = big_database(150);
    let s3 = S3Server::start();
    s3.create_bucket("snaps");
    let pgr = Pgr::new();
    pgr.write_config(&format!(
        "{}{}",
        s3_store_toml(&pgr, &s3.endpoint(), "snaps", ""),
        target_toml("app", &c.url("app", "app", PASSWORD), "")
    ));
    let mut bg = pgr.spawn(&["snapshot"]);
    let dump = stopped_pg_dump(&mut bg);
    step_until(&bg, dump, SLICE, "a multipart upload with a part", || has_uploaded_part(&s3, "snaps"));
    assert!(
        try_signal(dump, libc::SIGKILL),
        "pg_dump {dump} vanished while stopped; pgrehearse stderr:\n{}",
        bg.stderr_so_far()
    );
    let run = bg.wait(Duration::from_secs(120));
    eprintln!("snapshot exit {}; stderr:\n{}", run.code, run.stderr);

    assert_ne!(run.code, 0, "snapshot succeeded although pg_dump was killed:\n{}", run.stderr);
    assert!(final_error(&run.stderr).contains("pg_dump"), "the error does not name pg_dump:\n{}", run.stderr);
    let objects = s3.list_objects("snaps", "pgrehearse/");
    assert!(
        !objects.iter().any(|(k, _)| k.ends_with("manifest.json")),
        "a manifest exists for a failed snapshot: {objects:?}"
    );
    assert!(objects.is_empty(), "objects left behind by a failed snapshot: {objects:?}");
    assert_eq!(s3.list_multipart_uploads("snaps"), vec![], "the multipart upload was not aborted");
    assert_eq!(snapshots_listed(&pgr), Vec::<serde_json::Value>::new(), "a failed snapshot is listed");
}

#[test]
fn pg_dump_killed_mid_stream_local() {
    let c = big_database(150);
    let pgr = Pgr::new();
    pgr.write_config(&format!(
        "{}{}",
        local_store_toml(&pgr, ""),
        target_toml("app", &c.url("app", "app", PASSWORD), "")
    ));
    let mut bg = pgr.spawn(&["snapshot"]);
    let dump = stopped_pg_dump(&mut bg);
    step_until(&bg, dump, SLICE, "pg_dump to write 32 MB", || bytes_written(dump).unwrap_or(0) >= 32 << 20);
    assert!(
        try_signal(dump, libc::SIGKILL),
        "pg_dump {dump} vanished while stopped; pgrehearse stderr:\n{}",
        bg.stderr_so_far()
    );
    let run = bg.wait(Duration::from_secs(120));
    eprintln!("snapshot exit {}; stderr:\n{}", run.code, run.stderr);

    assert_ne!(run.code, 0, "snapshot succeeded although pg_dump was killed:\n{}", run.stderr);
    assert!(final_error(&run.stderr).contains("pg_dump"), "the error does not name pg_dump:\n{}", run.stderr);
    let left = files_under(&local_store_path(&pgr));
    assert!(left.is_empty(), "files left in the local store by a failed snapshot: {left:?}");
    assert_eq!(snapshots_listed(&pgr), Vec::<serde_json::Value>::new(), "a failed snapshot is listed");
}

#[test]
fn s3_down_mid_upload_then_sweeper_aborts() {
    let c = big_database(64);
    let s3 = S3Server::start();
    s3.create_bucket("snaps");
    let proxy = Proxy::start(s3.addr());
    let pgr = Pgr::new();
    pgr.write_config(&format!(
        "{}{}",
        s3_store_toml(&pgr, &proxy.endpoint(), "snaps", "max_attempts = 2"),
        target_toml("app", &c.url("app", "app", PASSWORD), "")
    ));
    let mut bg = pgr.spawn(&["snapshot"]);
    let dump = stopped_pg_dump(&mut bg);
    step_until(&bg, dump, SLICE, "a multipart upload with a part", || has_uploaded_part(&s3, "snaps"));
    proxy.set_down(true);
    assert!(
        try_signal(dump, libc::SIGCONT),
        "pg_dump {dump} vanished while stopped; pgrehearse stderr:\n{}",
        bg.stderr_so_far()
    );
    let run = bg.wait(Duration::from_secs(180));
    eprintln!("snapshot exit {}; stderr:\n{}", run.code, run.stderr);

    assert_ne!(run.code, 0, "snapshot succeeded although S3 went away:\n{}", run.stderr);
    // The cause is the store, not pg_dump (which only lost its reader).
    let msg = final_error(&run.stderr).to_lowercase();
    assert!(msg.contains("s3"), "the error does not say S3 failed:\n{}", run.stderr);
    let objects = s3.list_objects("snaps", "pgrehearse/");
    assert!(
        !objects.iter().any(|(k, _)| k.ends_with("manifest.json")),
        "a manifest exists for a failed snapshot: {objects:?}"
    );
    // The server was unreachable, so the upload is necessarily still open:
    // that is what the sweeper must clean up.
    assert!(!s3.list_multipart_uploads("snaps").is_empty(), "no open upload left to sweep");

    proxy.set_down(false);
    let listed = snapshots_listed(&pgr);
    assert!(listed.is_empty(), "a failed snapshot is listed: {listed:?}");
    assert_eq!(s3.list_multipart_uploads("snaps"), vec![], "the sweeper left the dead run's upload open");
}
