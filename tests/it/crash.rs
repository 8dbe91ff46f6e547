//! pgrehearse itself dying or being stopped mid-snapshot, and two snapshots
//! of one target at once:
//!
//! - SIGKILL mid-upload (S3 and local store): nothing can clean up, so an
//!   open multipart upload or a `.partial` file stays behind; the next start
//!   must mark the run failed (start-up reaper), abort the upload (sweeper),
//!   never list the run, and `prune` must refuse while the latest run failed.
//! - SIGTERM mid-upload: pgrehearse cancels by itself, aborts its own upload,
//!   kills and reaps its pg_dump, and exits 1.
//! - A second snapshot while the first holds the heavy-job advisory lock is
//!   refused (exit 75) without disturbing the first, which then completes.
//!
//! "Mid-upload" is made deterministic by freezing pg_dump with SIGSTOP and
//! letting it run in short steps until the wanted state is visible.

use crate::harness::cli::{Pgr, local_store_path, local_store_toml, s3_store_toml, target_toml};
use crate::harness::dump::{final_error, step_until, stopped_pg_dump};
use crate::harness::pg::Cluster;
use crate::harness::proc::{signal, state, try_signal};
use crate::harness::s3::S3Server;
use crate::harness::{data, files_under, wait_for};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const PASSWORD: &str = "crash-test-pw";
const BUCKET: &str = "snaps";
/// A policy that keeps only what is always kept: the newest snapshot.
const KEEP_NOTHING: &str = "retention = { keep_last = 0, keep_daily = 0, keep_weekly = 0, keep_monthly = 0 }";
/// How long pg_dump runs per step while we wait for the wanted state.
const SLICE: Duration = Duration::from_millis(50);

/// A cluster with an app database (a small rich schema).
fn app_cluster() -> Cluster {
    let c = Cluster::start();
    c.create_app_db("app", "app", PASSWORD);
    data::create_rich_schema(&c, "app", "app", 100);
    c
}

fn s3_pgr(s3: &S3Server, c: &Cluster, target_extra: &str) -> Pgr {
    let pgr = Pgr::new();
    pgr.write_config(&format!(
        "{}{}",
        s3_store_toml(&pgr, &s3.endpoint(), BUCKET, ""),
        target_toml("app", &c.url("app", "app", PASSWORD), target_extra)
    ));
    pgr
}

fn local_pgr(c: &Cluster) -> Pgr {
    let pgr = Pgr::new();
    pgr.write_config(&format!(
        "{}{}",
        local_store_toml(&pgr, ""),
        target_toml("app", &c.url("app", "app", PASSWORD), "")
    ));
    pgr
}

/// The snapshot id in a key `[pgrehearse/]app/<id>/<file>`.
fn id_in_key(key: &str) -> String {
    let rel = key.strip_prefix("pgrehearse/").unwrap_or(key);
    rel.split('/').nth(1).unwrap_or_default().to_string()
}

/// Open multipart uploads of the bucket that have at least one part.
fn uploads_with_parts(s3: &S3Server) -> Vec<(String, String)> {
    s3.list_multipart_uploads(BUCKET)
        .into_iter()
        .filter(|(key, id)| key.starts_with("pgrehearse/app/") && !s3.list_parts(BUCKET, key, id).is_empty())
        .collect()
}

/// Ids listed by `snapshots --json`, in its order.
fn listed_ids(pgr: &Pgr) -> Vec<String> {
    let r = pgr.run_json(&["snapshots"]);
    r.ok();
    r.json()
        .as_array()
        .expect("snapshots --json is an array")
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_string())
        .collect()
}

fn snapshot_ok(pgr: &Pgr) -> String {
    let r = pgr.run_json(&["snapshot"]);
    r.ok();
    r.json()["id"].as_str().expect("id").to_string()
}

/// `*.partial` files in a local store, with their sizes.
fn partials(store: &Path) -> Vec<(PathBuf, u64)> {
    files_under(store)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".partial"))
        .map(|p| {
            let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            (p, len)
        })
        .collect()
}

fn manifests(store: &Path) -> Vec<PathBuf> {
    files_under(store).into_iter().filter(|p| p.file_name().is_some_and(|n| n == "manifest.json")).collect()
}

/// Kills pg_dump left behind by a killed pgrehearse and waits until it is
/// dead (a zombie at most: reaping it is up to its new parent).
fn kill_orphan(pid: u32) {
    // If it already died with its parent, there is nothing to kill.
    try_signal(pid, libc::SIGKILL);
    wait_for("the orphaned pg_dump to die", Duration::from_secs(10), Duration::from_millis(20), || {
        matches!(state(pid), None | Some('Z' | 'X')).then_some(())
    });
}

/// `prune` (or `--dry-run`) refuses with exit 75 because the run `id` is the
/// latest and failed; returns the message.
fn prune_refused(pgr: &Pgr, args: &[&str], id: &str) -> String {
    let r = pgr.run_json(args);
    r.expect_code(75);
    let v = r.json();
    assert_eq!(v["ok"], false, "prune --json after a failed run: {v}");
    let msg = v["error"].as_str().unwrap_or_default().to_string();
    assert!(msg.contains(id), "the refusal does not name the failed run {id}: {msg}");
    msg
}

#[test]
fn sigkill_mid_upload_s3_reaped_swept_and_prune_refuses() {
    let c = app_cluster();
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let pgr = s3_pgr(&s3, &c, KEEP_NOTHING);

    // Two good snapshots (small and quick: the big table comes later); the
    // policy would delete the older one.
    let first = snapshot_ok(&pgr);
    let second = snapshot_ok(&pgr);
    let dry = pgr.run_json(&["prune", "--dry-run"]);
    dry.ok();
    assert_eq!(
        dry.json()["deleted"],
        serde_json::json!([first.clone()]),
        "the policy should delete the older snapshot: otherwise the refusal below proves nothing"
    );

    data::create_blob_table(&c, "app", "app", 40);
    let mut bg = pgr.spawn(&["snapshot"]);
    let dump = stopped_pg_dump(&mut bg);
    step_until(&bg, dump, SLICE, "a multipart upload with a part", || !uploads_with_parts(&s3).is_empty());
    signal(bg.pid(), libc::SIGKILL);
    // Reaped here, so its pid is really gone for the next start's reaper.
    let run = bg.wait(Duration::from_secs(10));
    assert_ne!(run.code, 0, "pgrehearse survived SIGKILL?\n{}", run.stderr);
    kill_orphan(dump);

    let uploads = s3.list_multipart_uploads(BUCKET);
    assert_eq!(uploads.len(), 1, "after SIGKILL exactly the crashed run's upload should be open: {uploads:?}");
    let crashed = id_in_key(&uploads[0].0);
    assert!(!crashed.is_empty() && crashed != first && crashed != second, "unexpected upload key {}", uploads[0].0);
    let objects = s3.list_objects(BUCKET, "pgrehearse/");
    assert!(
        !objects.iter().any(|(k, _)| k.contains(&crashed)),
        "the crashed run has objects (a manifest?): {objects:?}"
    );

    // The next start: reaper marks the run failed, sweeper aborts its upload.
    assert_eq!(listed_ids(&pgr), vec![second.clone(), first.clone()], "snapshots after the crash");
    assert_eq!(s3.list_multipart_uploads(BUCKET), vec![], "the start-up sweeper left the dead run's upload open");

    // The latest run failed: prune refuses and deletes nothing.
    let msg = prune_refused(&pgr, &["prune"], &crashed);
    eprintln!("prune refused: {msg}");
    for id in [&first, &second] {
        assert!(
            s3.exists(BUCKET, &format!("pgrehearse/app/{id}/manifest.json")),
            "prune deleted {id} although the latest run failed"
        );
    }
    assert_eq!(listed_ids(&pgr), vec![second, first]);
}

#[test]
fn sigkill_mid_write_local_partial_removed_at_next_start() {
    let c = app_cluster();
    data::create_blob_table(&c, "app", "app", 96);
    let pgr = local_pgr(&c);
    let store = local_store_path(&pgr);

    let mut bg = pgr.spawn(&["snapshot"]);
    let dump = stopped_pg_dump(&mut bg);
    step_until(&bg, dump, SLICE, "a .partial file with data", || partials(&store).iter().any(|(_, len)| *len > 0));
    signal(bg.pid(), libc::SIGKILL);
    let run = bg.wait(Duration::from_secs(10));
    assert_ne!(run.code, 0, "pgrehearse survived SIGKILL?\n{}", run.stderr);
    kill_orphan(dump);

    // Nothing ran to clean up: the partial file is still there.
    let left = partials(&store);
    assert_eq!(left.len(), 1, "partial files after SIGKILL: {left:?}");
    let crashed = left[0]
        .0
        .strip_prefix(store.join("app"))
        .ok()
        .and_then(|p| p.components().next())
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .expect("partial file under <store>/app/<id>/");
    assert_eq!(manifests(&store), Vec::<PathBuf>::new(), "manifest after a crash");

    // The next start removes it; the run is recorded as failed.
    assert_eq!(listed_ids(&pgr), Vec::<String>::new(), "snapshots after the crash");
    assert_eq!(partials(&store), vec![], "the start-up sweeper left the dead run's .partial file");
    assert_eq!(manifests(&store), Vec::<PathBuf>::new(), "manifest after a crash");
    prune_refused(&pgr, &["prune", "--dry-run"], &crashed);
}

#[test]
fn sigterm_mid_upload_aborts_cleanly() {
    let c = app_cluster();
    data::create_blob_table(&c, "app", "app", 40);
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let pgr = s3_pgr(&s3, &c, "");

    let mut bg = pgr.spawn(&["snapshot"]);
    let dump = stopped_pg_dump(&mut bg);
    step_until(&bg, dump, SLICE, "a multipart upload with a part", || !uploads_with_parts(&s3).is_empty());
    let crashed = id_in_key(&uploads_with_parts(&s3)[0].0);
    // pg_dump stays frozen: pgrehearse must stop it by itself.
    let t0 = Instant::now();
    signal(bg.pid(), libc::SIGTERM);
    let run = bg.wait(Duration::from_secs(20));
    let took = t0.elapsed();
    eprintln!("exit {} after {took:?}; stderr:\n{}", run.code, run.stderr);

    run.expect_code(1);
    assert!(took < Duration::from_secs(5), "pgrehearse took {took:?} to stop after SIGTERM");
    assert!(
        final_error(&run.stderr).to_lowercase().contains("interrupted"),
        "the error does not say the snapshot was interrupted:\n{}",
        run.stderr
    );
    // Killed and reaped by pgrehearse (not left stopped, nor a zombie).
    assert_eq!(state(dump), None, "pg_dump {dump} is still there after pgrehearse exited");
    // Cleaned up by the process itself, before any later start.
    assert_eq!(s3.list_multipart_uploads(BUCKET), vec![], "the interrupted run left its multipart upload open");
    let objects = s3.list_objects(BUCKET, "pgrehearse/");
    assert!(objects.is_empty(), "objects left by an interrupted snapshot: {objects:?}");
    assert_eq!(listed_ids(&pgr), Vec::<String>::new());
    // Recorded as failed.
    prune_refused(&pgr, &["prune", "--dry-run"], &crashed);
}

#[test]
fn second_snapshot_of_same_target_refused_while_first_runs() {
    let c = app_cluster();
    data::create_blob_table(&c, "app", "app", 24);
    let pgr = local_pgr(&c);
    let store = local_store_path(&pgr);

    let mut first = pgr.spawn(&["--json", "snapshot"]);
    let dump = stopped_pg_dump(&mut first);
    step_until(&first, dump, SLICE, "a .partial file with data", || partials(&store).iter().any(|(_, len)| *len > 0));
    let partial = partials(&store);

    let second = pgr.run_json(&["snapshot"]);
    eprintln!("second snapshot: exit {}\n{}", second.code, second.stderr);
    second.expect_code(75);
    let msg = final_error(&second.stderr);
    assert!(
        msg.contains("another heavy job") && msg.contains("`app`"),
        "the refusal does not say another heavy job of app is running:\n{}",
        second.stderr
    );
    assert_eq!(second.json()["exit_code"], 75, "--json error document");
    // The second run's start-up sweeper must leave the live run's file alone.
    assert_eq!(
        partials(&store).into_iter().map(|p| p.0).collect::<Vec<_>>(),
        partial.into_iter().map(|p| p.0).collect::<Vec<_>>(),
        "the running snapshot's .partial file was touched"
    );

    assert!(try_signal(dump, libc::SIGCONT), "pg_dump {dump} vanished while stopped:\n{}", first.stderr_so_far());
    let run = first.wait(Duration::from_secs(60));
    run.ok();
    let id = run.json()["id"].as_str().expect("id").to_string();
    assert_eq!(listed_ids(&pgr), vec![id]);
    assert_eq!(partials(&store), vec![]);
    assert_eq!(manifests(&store).len(), 1);
    // The refused run made no attempt: it must not count as a failed backup
    // that stops retention.
    let prune = pgr.run(&["--json", "prune", "--dry-run"]);
    prune.ok();
}
