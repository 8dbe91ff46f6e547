//! Network faults between pgrehearse and S3: the fault proxy sits between
//! pgrehearse (the store's `endpoint`) and moto, and each of `snapshot`,
//! `verify`, `rehearse` and `apply` runs under each fault: 503 for the first
//! two requests and 500 on every one, every connection dropped (FIN), a
//! short stall and one that lasts until cleared, a reset after 1 MiB
//! forwarded on the next two connections and on every one.
//!
//! Each run either survives (exit 0, and what it wrote is whole: the dump's
//! SHA-256 read back with the AWS CLI straight from moto, not through the
//! proxy, equals the manifest's) or fails cleanly within a bound: a
//! non-zero exit naming S3, no panic, no new object (so no manifest and no
//! listed snapshot), no multipart upload left once S3 answers again, the
//! first snapshot intact (SHA-256), a failed verify not recorded in the manifest
//! and no scratch database left, a failed rehearsal not approvable and live
//! untouched, a failed release `aborted` with live exactly as before. Then
//! the fault is cleared and the same operation must succeed.
//!
//! Small data (an 8 MiB incompressible table, 5 MiB parts: a dump is two
//! parts, so a reset after 1 MiB lands inside one) and short timeouts
//! (`io_timeout = "3s"`, three attempts) keep the matrix quick. Every case
//! is checked on its own and recorded in the fault report; a failing case
//! is reported at the end, the next one still runs.

use crate::harness::cli::{Run, s3_store_toml, target_toml, toml_string};
use crate::harness::dump::final_error;
use crate::harness::faults::{Expect, case, failed_how, finish, finish_run};
use crate::harness::migrations::{PASSWORD, Rig, fingerprint};
use crate::harness::proxy::{Fault, Proxy};
use crate::harness::release::{applied_versions, plan_of, release_config, release_ids};
use crate::harness::s3::S3Server;
use crate::harness::shadow::{scratch_dbs, shadow_url, staging_files, template_name};
use crate::harness::{data, sha256_file};
use serde_json::Value;
use std::time::{Duration, Instant};

const BUCKET: &str = "faults";
const SETUP: &str = "CREATE TABLE t (id int PRIMARY KEY, note text NOT NULL);
    INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 2000) g;";
/// One fault: its name in the report, how to put it in force, and what
/// each operation must do under it (snapshot, verify, rehearse, apply).
pub struct S3Fault {
    pub name: &'static str,
    pub set: fn(&Proxy),
    pub expect: [Expect; 4],
}

impl S3Fault {
    /// Strikes only once a connection (or the proxy) carried 1 MiB or
    /// more: a rehearsal must move that much, so it takes a fresh snapshot
    /// (a clone of the template already on the shadow would not).
    fn needs_bulk(&self) -> bool {
        self.name.contains("mid-transfer") || self.name.contains("reset after")
    }
}

fn s3_faults() -> Vec<S3Fault> {
    use Expect::*;
    vec![
        S3Fault {
            name: "S3: HTTP 503 SlowDown-style error for the first 2 requests",
            set: |p| p.set(Fault::HttpError { status: 503, requests: Some(2) }),
            expect: [Survive; 4],
        },
        S3Fault {
            name: "S3: HTTP 500 InternalError on every request",
            set: |p| p.set(Fault::HttpError { status: 500, requests: None }),
            expect: [Fail; 4],
        },
        S3Fault {
            name: "S3: every connection dropped (FIN), new ones closed at once",
            set: |p| p.set(Fault::Drop),
            expect: [Fail; 4],
        },
        S3Fault {
            name: "S3: from 4 MiB forwarded on (mid-transfer), open connections closed and every request answered 500",
            set: |p| p.set_after(4 << 20, Fault::HttpError { status: 500, requests: None }),
            expect: [Fail; 4],
        },
        S3Fault {
            name: "S3: from 4 MiB forwarded on (mid-transfer), every connection dropped (FIN)",
            set: |p| p.set_after(4 << 20, Fault::Drop),
            expect: [Fail; 4],
        },
        S3Fault {
            name: "S3: stall of 1.5 s (io_timeout 3 s)",
            set: |p| p.set(Fault::Stall { until: Some(Instant::now() + Duration::from_millis(1500)) }),
            expect: [Survive; 4],
        },
        S3Fault {
            name: "S3: from 4 MiB forwarded on (mid-transfer), stall until cleared (permanent)",
            set: |p| p.set_after(4 << 20, Fault::Stall { until: None }),
            expect: [Fail; 4],
        },
        S3Fault {
            name: "S3: reset after 1 MiB forwarded, next 2 connections",
            set: |p| p.set(Fault::ResetAfter { bytes: 1 << 20, conns: Some(2) }),
            expect: [Survive; 4],
        },
        S3Fault {
            name: "S3: reset after 1 MiB forwarded, every connection",
            // Uploads cannot get a 5 MiB part through; a download resumes
            // with a Range request after each reset and gets there.
            set: |p| p.set(Fault::ResetAfter { bytes: 1 << 20, conns: None }),
            expect: [Fail, Either, Either, Fail],
        },
    ]
}

/// Live and shadow clusters, moto behind the proxy, and pgrehearse
/// configured with the proxy as the store's endpoint.
struct World {
    rig: Rig,
    s3: S3Server,
    proxy: Proxy,
    /// The first snapshot, which every case must leave intact.
    baseline: (String, String),
    next_migration: u32,
}

impl World {
    fn start() -> World {
        let s3 = std::thread::spawn(S3Server::start);
        let rig = Rig::start("sqlx", SETUP);
        data::create_blob_table(&rig.live, "app", "app", 8);
        let s3 = s3.join().expect("moto start");
        s3.create_bucket(BUCKET);
        let proxy = Proxy::start(s3.addr());
        let store = "part_size = \"5MiB\"\nmax_attempts = 3\nio_timeout = \"3s\"\nconnect_timeout = \"2s\"";
        let target = format!(
            "shadow_url = {}\nrestore_jobs = 2\nmigrations = {{ kind = \"sqlx\", dir = {} }}\n{}",
            toml_string(&shadow_url(&rig.shadow)),
            toml_string(&rig.dir.display().to_string()),
            release_config(&rig, "")
        );
        rig.pgr.write_config(&format!(
            "{}{}",
            s3_store_toml(&rig.pgr, &proxy.endpoint(), BUCKET, store),
            target_toml("app", &rig.live.url("app", "app", PASSWORD), &target)
        ));
        let mut w = World { rig, s3, proxy, baseline: (String::new(), String::new()), next_migration: 1 };
        let id = w.snapshot_ok("baseline snapshot", true);
        let sha = w.manifest(&id)["sha256"].as_str().expect("sha256").to_string();
        w.baseline = (id, sha);
        w
    }

    fn manifest(&self, id: &str) -> Value {
        self.s3.get_json(BUCKET, &format!("pgrehearse/app/{id}/manifest.json"))
    }

    /// Downloads the dump of snapshot `id` with the AWS CLI straight from
    /// moto and checks its size and SHA-256 against the manifest.
    fn assert_whole(&self, id: &str) {
        let m = self.manifest(id);
        let key = m["dump"]["key"].as_str().expect("dump.key in the manifest");
        let tmp = tempfile::NamedTempFile::new().unwrap();
        self.s3.download(BUCKET, &format!("pgrehearse/{key}"), tmp.path());
        assert_eq!(std::fs::metadata(tmp.path()).unwrap().len(), m["bytes_stored"].as_u64().unwrap(), "size of {id}");
        assert_eq!(sha256_file(tmp.path()), m["sha256"].as_str().unwrap(), "SHA-256 of {id}'s stored dump");
    }

    fn objects(&self) -> Vec<(String, u64)> {
        self.s3.list_objects(BUCKET, "pgrehearse/app/")
    }

    fn listed(&self) -> Vec<String> {
        let r = self.rig.pgr.run_json(&["snapshots"]);
        r.ok();
        r.json().as_array().expect("array").iter().map(|s| s["id"].as_str().unwrap().to_string()).collect()
    }

    /// A snapshot that must succeed; `check` reads it back with the CLI.
    fn snapshot_ok(&self, what: &str, check: bool) -> String {
        let (r, _) = finish_run(self.rig.pgr.spawn(&["--json", "snapshot"]), Expect::Survive, what);
        let id = r.json()["id"].as_str().expect("id").to_string();
        if check {
            self.assert_whole(&id);
        } else {
            assert!(self.listed().contains(&id), "snapshot {id} is not listed");
        }
        id
    }

    /// The baseline snapshot is still listed and whole.
    fn assert_baseline(&self) {
        assert!(self.listed().contains(&self.baseline.0), "the baseline snapshot is no longer listed");
        self.assert_whole(&self.baseline.0);
        assert_eq!(self.manifest(&self.baseline.0)["sha256"], self.baseline.1.as_str());
    }

    /// No multipart upload in moto now (`Ok`) or only until a pgrehearse
    /// run with S3 back swept it (`Err(n)`: n were open).
    fn uploads_after_failure(&self) -> Result<(), usize> {
        let open = self.s3.list_multipart_uploads(BUCKET).len();
        if open == 0 {
            return Ok(());
        }
        self.listed();
        let left = self.s3.list_multipart_uploads(BUCKET);
        assert!(left.is_empty(), "multipart uploads left after the sweeper ran: {left:?}");
        Err(open)
    }

    /// A new migration (a new plan): `ALTER TABLE t ADD COLUMN c<N>`.
    fn add_migration(&mut self) -> String {
        let n = self.next_migration;
        self.next_migration += 1;
        self.rig.sqlx(
            &n.to_string(),
            &format!("add_c{n}"),
            &format!("ALTER TABLE t ADD COLUMN c{n} int;\n"),
            Some(&format!("ALTER TABLE t DROP COLUMN c{n};\n")),
        );
        n.to_string()
    }

    fn approve(&self, plan: &str) -> Run {
        self.rig.pgr.run_json(&["approve", "--plan", plan, "--by", "faults"])
    }

    fn applied_versions(&self) -> Vec<String> {
        applied_versions(&self.rig.live)
    }
}

/// Panics unless the failure's message (see [`failed_how`]) says S3 failed.
fn assert_blames_s3(r: &Run) {
    let how = failed_how(r, Duration::ZERO).to_lowercase();
    assert!(how.contains("s3"), "the error does not say S3 failed: {how}\n{}", r.stderr);
}

fn snapshot_case(w: &World, f: &S3Fault) -> String {
    let (listed, objects) = (w.listed(), w.objects());
    let injected = w.proxy.injected();
    (f.set)(&w.proxy);
    let (r, took) = finish_run(w.rig.pgr.spawn(&["--json", "snapshot"]), f.expect[0], "snapshot");
    let dealt = w.proxy.injected() - injected;
    w.proxy.clear();
    assert!(dealt > 0, "the proxy dealt no fault: the case proves nothing");
    let outcome = if r.code == 0 {
        let id = r.json()["id"].as_str().expect("id").to_string();
        w.assert_whole(&id);
        format!("survived ({dealt} faults dealt, {:.1}s); dump SHA-256 verified via the AWS CLI", took.as_secs_f64())
    } else {
        let err = final_error(&r.stderr).to_lowercase();
        assert!(err.contains("s3"), "the error does not say S3 failed:\n{}", r.stderr);
        assert_eq!(w.objects(), objects, "a failed snapshot left objects in the bucket (e.g. a manifest)");
        let swept = w.uploads_after_failure();
        assert_eq!(w.listed(), listed, "the snapshot list changed after a failed snapshot");
        let uploads = match swept {
            Ok(()) => "multipart upload aborted".to_string(),
            Err(n) => format!("{n} multipart upload(s) left while S3 was down, aborted by the next run's sweeper"),
        };
        w.assert_baseline();
        format!(
            "{}; no object, no manifest, not listed; {uploads}; earlier objects unchanged, the first snapshot's SHA-256 re-verified via the AWS CLI",
            failed_how(&r, took)
        )
    };
    let again = w.snapshot_ok("snapshot after clearing the fault", false);
    format!("{outcome}; retry after clearing: ok ({again})")
}

fn verify_case(w: &World, f: &S3Fault) -> String {
    let id = w.baseline.0.clone();
    let manifest = w.manifest(&id);
    let injected = w.proxy.injected();
    (f.set)(&w.proxy);
    let (r, took) = finish_run(w.rig.pgr.spawn(&["--json", "verify", &id, "--full"]), f.expect[1], "verify");
    let dealt = w.proxy.injected() - injected;
    w.proxy.clear();
    assert!(dealt > 0, "the proxy dealt no fault: the case proves nothing");
    let template = template_name("app");
    let scratch: Vec<String> = scratch_dbs(&w.rig.shadow).into_iter().filter(|d| *d != template).collect();
    assert_eq!(scratch, Vec::<String>::new(), "scratch databases left on the shadow");
    assert_eq!(staging_files(&w.rig.pgr), Vec::<std::path::PathBuf>::new(), "staging files left");
    let outcome = if r.code == 0 {
        let rep = r.json();
        assert_eq!(rep["ok"], true, "{rep:#}");
        let after = w.manifest(&id);
        assert_eq!(after["verification"]["ok"], true, "{after:#}");
        assert_ne!(after["verification"], manifest["verification"], "the drill was not recorded");
        format!(
            "survived ({dealt} faults dealt, {:.1}s): restored, checked, recorded in the manifest",
            took.as_secs_f64()
        )
    } else {
        assert_blames_s3(&r);
        assert_eq!(w.manifest(&id), manifest, "a failed verify changed the manifest (marked it verified or failed)");
        format!(
            "{}; manifest unchanged (not marked verified), no scratch database, staging empty",
            failed_how(&r, took)
        )
    };
    let (r, _) = finish_run(w.rig.pgr.spawn(&["--json", "verify", &id, "--full"]), Expect::Survive, "verify again");
    assert_eq!(r.json()["ok"], true);
    format!("{outcome}; retry after clearing: ok")
}

fn rehearse_case(w: &mut World, f: &S3Fault) -> String {
    let version = w.add_migration();
    let plan = plan_of(&w.rig);
    let live = fingerprint(&w.rig.live, "app");
    let injected = w.proxy.injected();
    (f.set)(&w.proxy);
    let args: &[&str] =
        if f.needs_bulk() { &["--json", "rehearse", "--snapshot", "fresh"] } else { &["--json", "rehearse"] };
    let (r, took) = finish_run(w.rig.pgr.spawn(args), f.expect[2], "rehearse");
    let dealt = w.proxy.injected() - injected;
    w.proxy.clear();
    assert!(dealt > 0, "the proxy dealt no fault: the case proves nothing");
    assert_eq!(fingerprint(&w.rig.live, "app"), live, "a rehearsal changed live");
    let template = template_name("app");
    let scratch: Vec<String> = scratch_dbs(&w.rig.shadow).into_iter().filter(|d| *d != template).collect();
    assert_eq!(scratch, Vec::<String>::new(), "scratch databases left on the shadow");
    let outcome = if r.code == 0 {
        assert_eq!(r.json()["ok"], true);
        format!("survived ({dealt} faults dealt, {:.1}s)", took.as_secs_f64())
    } else {
        assert_blames_s3(&r);
        let a = w.approve(&plan);
        assert_eq!(a.code, 75, "a plan whose rehearsal failed was approvable:\n{}\n{}", a.stdout, a.stderr);
        format!("{}; live untouched, approval refused (exit 75), no scratch database", failed_how(&r, took))
    };
    let (r, _) = finish_run(w.rig.pgr.spawn(&["--json", "rehearse"]), Expect::Survive, "rehearse again");
    assert_eq!(r.json()["ok"], true);
    w.approve(&plan).ok();
    assert!(!w.applied_versions().contains(&version), "a rehearsal applied migration {version} to live");
    format!("{outcome}; retry after clearing: passed and approved")
}

fn apply_case(w: &mut World, f: &S3Fault) -> String {
    let version = w.add_migration();
    let (r, _) = finish_run(w.rig.pgr.spawn(&["--json", "rehearse"]), Expect::Survive, "rehearse before apply");
    assert_eq!(r.json()["ok"], true);
    let plan = plan_of(&w.rig);
    w.approve(&plan).ok();
    let before = fingerprint(&w.rig.live, "app");
    let objects = w.objects();
    let releases = release_ids(&w.rig);
    let injected = w.proxy.injected();
    (f.set)(&w.proxy);
    let (r, took) = finish_run(w.rig.pgr.spawn(&["--json", "apply"]), f.expect[3], "apply");
    let dealt = w.proxy.injected() - injected;
    w.proxy.clear();
    assert!(dealt > 0, "the proxy dealt no fault: the case proves nothing");
    let rel = serde_json::from_str::<Value>(&r.stdout).unwrap_or(Value::Null);
    let outcome = if r.code == 0 {
        assert_eq!(rel["outcome"], "applied", "{rel:#}");
        assert!(w.applied_versions().contains(&version), "applied, but live lacks migration {version}");
        w.assert_whole(rel["pre_snapshot_id"].as_str().expect("pre_snapshot_id"));
        format!("survived ({dealt} faults dealt, {:.1}s): applied, pre-release snapshot whole", took.as_secs_f64())
    } else {
        assert_blames_s3(&r);
        assert_eq!(fingerprint(&w.rig.live, "app"), before, "live is not exactly its pre-release state");
        let record = match rel["release_id"].as_str() {
            Some(id) => {
                let record = crate::harness::release::release(&w.rig, id);
                assert_eq!(record["outcome"], "aborted", "the record must say nothing was applied: {record:#}");
                "release `aborted` (pre-release snapshot failed)"
            }
            None => {
                assert_eq!(release_ids(&w.rig), releases, "no release_id printed, yet a release was recorded");
                "stopped before a release began (no release recorded)"
            }
        };
        assert_eq!(w.objects(), objects, "the failed pre-release snapshot left objects");
        let swept = w.uploads_after_failure();
        format!(
            "{}; {record}, live exactly pre-release, no object left{}",
            failed_how(&r, took),
            if swept.is_err() { ", upload swept by the next run" } else { ", upload aborted" }
        )
    };
    if r.code != 0 {
        w.assert_baseline();
        if w.approve(&plan).code != 0 {
            panic!("the plan could not be approved again after the aborted release");
        }
        let (r, _) = finish_run(w.rig.pgr.spawn(&["--json", "apply"]), Expect::Survive, "apply again");
        assert_eq!(r.json()["outcome"], "applied");
        assert!(w.applied_versions().contains(&version), "live lacks migration {version} after the retry");
        return format!(
            "{outcome}; the first snapshot's SHA-256 re-verified via the AWS CLI; retry after clearing: applied"
        );
    }
    outcome
}

#[test]
fn faults_s3_snapshot_and_verify() {
    let t0 = Instant::now();
    let w = World::start();
    let mut failures = Vec::new();
    for f in s3_faults() {
        case(&mut failures, "snapshot", f.name, || snapshot_case(&w, &f));
    }
    for f in s3_faults() {
        case(&mut failures, "verify", f.name, || verify_case(&w, &f));
    }
    eprintln!("faults_s3_snapshot_and_verify: {:?}", t0.elapsed());
    finish(failures);
}

#[test]
fn faults_s3_rehearse_and_apply() {
    let t0 = Instant::now();
    let mut w = World::start();
    let mut failures = Vec::new();
    for f in s3_faults() {
        case(&mut failures, "rehearse", f.name, || rehearse_case(&mut w, &f));
    }
    for f in s3_faults() {
        case(&mut failures, "apply", f.name, || apply_case(&mut w, &f));
    }
    eprintln!("faults_s3_rehearse_and_apply: {:?}", t0.elapsed());
    finish(failures);
}
