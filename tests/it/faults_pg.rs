//! Network faults between pgrehearse and PostgreSQL: a fault proxy in front
//! of each cluster's unix socket, the target's `live_url` and `admin_url`
//! pointing at the live cluster's proxy and `shadow_url` at the shadow's
//! (local store, so only PostgreSQL fails). `snapshot` and `apply` run with
//! the fault on live, `verify --full` and `rehearse` with it on the shadow,
//! under: every connection dropped (FIN), every connection reset (RST), a
//! stall of 2 s, a reset after 1 MiB forwarded on every connection (mid
//! `pg_dump` / `pg_restore` stream), a stall that never ends from 1 MiB
//! forwarded on (mid stream), and, for `apply`, live's connections reset
//! while a migration runs and live stalling for good while a migration runs.
//!
//! Each run survives or fails cleanly (see `faults_s3`): nothing new in the
//! store after a failed snapshot and the earlier snapshots intact (SHA-256
//! of the stored file), a failed drill not recorded in the manifest and no
//! scratch database on the shadow, a failed rehearsal not approvable and
//! live untouched, a failed release leaving live exactly pre-release with a
//! record that says so (or exactly post-release, recorded `applied`). Then
//! the fault is cleared and the operation must succeed.
//!
//! A stall that never ends (the proxy holds every connection open and
//! forwards nothing) must end each run within [`STALL_BOUND`] with exit 69
//! and an error naming the stall: the config sets `stall_timeout` to
//! [`STALL_TIMEOUT`]. A scratch database the stalled run could not drop is
//! dropped by the retry (it was made by a run that died), and a stalled
//! release is recorded `interrupted` until the next command finishes it.

use crate::harness::cli::{Run, local_store_path, local_store_toml, target_toml, toml_string};
use crate::harness::faults::{Expect, case, failed_how, finish, finish_run};
use crate::harness::migrations::{PASSWORD, Rig, as_app, fingerprint};
use crate::harness::pg::{Cluster, percent_encode};
use crate::harness::proxy::{Fault, Proxy};
use crate::harness::release::{ALWAYS_OPEN, applied_versions, plan_of, release_ids};
use crate::harness::shadow::{scratch_dbs, staging_files, template_name};
use crate::harness::{data, files_under, sha256_file, wait_for};
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const SETUP: &str = "CREATE TABLE t (id int PRIMARY KEY, note text NOT NULL);
    INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 2000) g;
    CREATE TABLE ctl (pause float8 NOT NULL);
    INSERT INTO ctl VALUES (0);";

/// The `stall_timeout` of this suite's config: well above the 2 s stall
/// that must be survived, small enough to keep the permanent stall short.
const STALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a run may take once a permanent stall strikes: 3 stall
/// timeouts (the watchdog's probe interval, its probe, the job's grace to
/// clean up) plus setup.
const STALL_BOUND: Duration = Duration::from_secs(3 * 5 + 30);

struct PgFault {
    name: &'static str,
    set: fn(&Proxy),
    /// snapshot, verify, rehearse, apply.
    expect: [Expect; 4],
}

fn pg_faults() -> Vec<PgFault> {
    use Expect::*;
    vec![
        PgFault {
            name: "PostgreSQL: every connection dropped (FIN), new ones closed at once",
            set: |p| p.set(Fault::Drop),
            expect: [Fail; 4],
        },
        PgFault { name: "PostgreSQL: every connection reset (RST)", set: |p| p.set(Fault::Reset), expect: [Fail; 4] },
        PgFault {
            name: "PostgreSQL: stall of 2 s",
            set: |p| p.set(Fault::Stall { until: Some(Instant::now() + Duration::from_secs(2)) }),
            expect: [Survive; 4],
        },
        PgFault {
            name: "PostgreSQL: reset after 1 MiB forwarded, every connection",
            set: |p| p.set(Fault::ResetAfter { bytes: 1 << 20, conns: None }),
            expect: [Fail; 4],
        },
        PgFault {
            name: PERMANENT_STALL,
            set: |p| p.set_after(1 << 20, Fault::Stall { until: None }),
            expect: [Fail; 4],
        },
    ]
}

const PERMANENT_STALL: &str = "PostgreSQL: stall that never ends, from 1 MiB forwarded on (connections held open)";

/// A run under a permanent stall ended within [`STALL_BOUND`], exit 69,
/// naming the stall.
fn assert_stall_stopped(r: &Run, took: Duration) {
    assert!(took < STALL_BOUND, "a stalled run took {took:?} (bound {STALL_BOUND:?})");
    assert_eq!(r.code, 69, "a stalled run must exit 69 (unavailable):\n{}\n{}", r.stdout, r.stderr);
    let said = format!("{}{}", r.stdout, r.stderr);
    assert!(said.contains("stalled") && said.contains("stall_timeout"), "the error does not name the stall:\n{said}");
}

/// A URL through `proxy` (TCP on loopback) for `user` on `db`.
fn proxied_url(proxy: &Proxy, db: &str, user: &str, password: &str) -> String {
    let auth = if password.is_empty() { user.to_string() } else { format!("{user}:{}", percent_encode(password)) };
    format!("postgres://{auth}@127.0.0.1:{}/{db}", proxy.port())
}

fn socket(c: &Cluster) -> PathBuf {
    c.socket_dir().join(format!(".s.PGSQL.{}", c.port()))
}

struct World {
    rig: Rig,
    live: Proxy,
    shadow: Proxy,
    baseline: (String, String),
    next_migration: u32,
}

impl World {
    fn start() -> World {
        let rig = Rig::start("sqlx", SETUP);
        data::create_blob_table(&rig.live, "app", "app", 8);
        let live = Proxy::start_unix(&socket(&rig.live));
        let shadow = Proxy::start_unix(&socket(&rig.shadow));
        let target = format!(
            "shadow_url = {}\nadmin_url = {}\nrestore_jobs = 2\nmigrations = {{ kind = \"sqlx\", dir = {} }}\n{ALWAYS_OPEN}\n",
            toml_string(&proxied_url(&shadow, "postgres", "postgres", "")),
            toml_string(&proxied_url(&live, "postgres", "postgres", "")),
            toml_string(&rig.dir.display().to_string()),
        );
        rig.pgr.write_config(&format!(
            "stall_timeout = \"{}s\"\n{}{}",
            STALL_TIMEOUT.as_secs(),
            local_store_toml(&rig.pgr, ""),
            target_toml("app", &proxied_url(&live, "app", "app", PASSWORD), &target)
        ));
        let mut w = World { rig, live, shadow, baseline: (String::new(), String::new()), next_migration: 1 };
        let id = w.snapshot_ok("baseline snapshot");
        let sha = w.manifest(&id)["sha256"].as_str().expect("sha256").to_string();
        w.baseline = (id, sha);
        w
    }

    fn store(&self) -> PathBuf {
        local_store_path(&self.rig.pgr)
    }

    fn manifest(&self, id: &str) -> Value {
        let p = self.store().join("app").join(id).join("manifest.json");
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {p:?}: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{p:?} is not JSON: {e}"))
    }

    /// The stored dump's size and SHA-256 equal the manifest's.
    fn assert_whole(&self, id: &str) {
        let m = self.manifest(id);
        let dump = self.store().join("app").join(id).join("dump.pgdump.zst");
        assert_eq!(std::fs::metadata(&dump).map(|m| m.len()).ok(), m["bytes_stored"].as_u64(), "size of {id}");
        assert_eq!(sha256_file(&dump), m["sha256"].as_str().unwrap(), "SHA-256 of {id}'s stored dump");
    }

    fn listed(&self) -> Vec<String> {
        let r = self.rig.pgr.run_json(&["snapshots"]);
        r.ok();
        r.json().as_array().expect("array").iter().map(|s| s["id"].as_str().unwrap().to_string()).collect()
    }

    fn snapshot_ok(&self, what: &str) -> String {
        let (r, _) = finish_run(self.rig.pgr.spawn(&["--json", "snapshot"]), Expect::Survive, what);
        let id = r.json()["id"].as_str().expect("id").to_string();
        self.assert_whole(&id);
        id
    }

    fn assert_baseline(&self) {
        assert!(self.listed().contains(&self.baseline.0), "the baseline snapshot is no longer listed");
        self.assert_whole(&self.baseline.0);
        assert_eq!(self.manifest(&self.baseline.0)["sha256"], self.baseline.1.as_str());
    }

    /// A new plan: `ALTER TABLE t ADD COLUMN c<N>`, then live's pause.
    fn add_migration(&mut self) -> String {
        let n = self.next_migration;
        self.next_migration += 1;
        self.rig.sqlx(
            &n.to_string(),
            &format!("add_c{n}"),
            &format!("ALTER TABLE t ADD COLUMN c{n} int;\nSELECT pg_sleep((SELECT pause FROM ctl));\n"),
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

    /// Scratch databases on the shadow (read directly), the template aside.
    fn scratch(&self) -> Vec<String> {
        let template = template_name("app");
        scratch_dbs(&self.rig.shadow).into_iter().filter(|d| *d != template).collect()
    }
}

/// Puts the fault on `proxy`, runs `args` in the background, clears the
/// fault; checks the fault was dealt.
/// `op` indexes `f.expect` (snapshot, verify, rehearse, apply).
fn under(w: &World, proxy: &Proxy, f: &PgFault, op: usize, args: &[&str]) -> (Run, Duration, u64) {
    let injected = proxy.injected();
    (f.set)(proxy);
    let (r, took) = finish_run(w.rig.pgr.spawn(args), f.expect[op], args[1]);
    let dealt = proxy.injected() - injected;
    proxy.clear();
    assert!(dealt > 0, "the proxy dealt no fault: the case proves nothing");
    if f.name == PERMANENT_STALL {
        assert_stall_stopped(&r, took);
    }
    (r, took, dealt)
}

fn snapshot_case(w: &World, f: &PgFault) -> String {
    let (listed, files) = (w.listed(), files_under(&w.store()));
    let (r, took, dealt) = under(w, &w.live, f, 0, &["--json", "snapshot"]);
    let outcome = if r.code == 0 {
        w.assert_whole(r.json()["id"].as_str().expect("id"));
        format!("survived ({dealt} faults dealt, {:.1}s); stored dump SHA-256 checked", took.as_secs_f64())
    } else {
        assert_eq!(files_under(&w.store()), files, "a failed snapshot left files in the store");
        assert_eq!(w.listed(), listed, "the snapshot list changed after a failed snapshot");
        format!("{}; nothing written to the store, not listed", failed_how(&r, took))
    };
    w.assert_baseline();
    let again = w.snapshot_ok("snapshot after clearing the fault");
    format!("{outcome}; the first snapshot still listed, its SHA-256 re-verified; retry after clearing: ok ({again})")
}

/// No scratch database on the shadow (a reset backend may take a moment
/// to go; the database must go with it).
fn no_scratch(w: &World) {
    wait_for("no scratch database", Duration::from_secs(10), Duration::from_millis(100), || {
        w.scratch().is_empty().then_some(())
    });
}

/// After a failed run: no scratch database, except after a permanent stall,
/// where the run could not reach the shadow to drop it (the retry must).
fn left_scratch(w: &World, f: &PgFault) -> String {
    if f.name != PERMANENT_STALL {
        no_scratch(w);
        return "no scratch database".into();
    }
    match w.scratch().len() {
        0 => "no scratch database".into(),
        n => format!("{n} scratch database(s) left on the stalled shadow"),
    }
}

fn verify_case(w: &World, f: &PgFault) -> String {
    let id = w.baseline.0.clone();
    let manifest = w.manifest(&id);
    let (r, took, dealt) = under(w, &w.shadow, f, 1, &["--json", "verify", &id, "--full"]);
    let left = left_scratch(w, f);
    assert_eq!(staging_files(&w.rig.pgr), Vec::<PathBuf>::new(), "staging files left");
    let outcome = if r.code == 0 {
        assert_eq!(r.json()["ok"], true);
        assert_ne!(w.manifest(&id)["verification"], manifest["verification"], "the drill was not recorded");
        format!("survived ({dealt} faults dealt, {:.1}s): restored, checked, recorded", took.as_secs_f64())
    } else {
        assert_eq!(w.manifest(&id), manifest, "a failed verify changed the manifest");
        format!("{}; manifest unchanged (not marked verified), {left}, staging empty", failed_how(&r, took))
    };
    let (r, _) = finish_run(w.rig.pgr.spawn(&["--json", "verify", &id, "--full"]), Expect::Survive, "verify again");
    assert_eq!(r.json()["ok"], true);
    no_scratch(w);
    format!("{outcome}; retry after clearing: ok, no scratch database left")
}

fn rehearse_case(w: &mut World, f: &PgFault) -> String {
    let version = w.add_migration();
    let plan = plan_of(&w.rig);
    let live = fingerprint(&w.rig.live, "app");
    // A reset after 1 MiB needs a restore to stream through the proxy: a
    // fresh snapshot (the latest is already a template on the shadow).
    let args: &[&str] = if f.name.contains("reset after") || f.name == PERMANENT_STALL {
        &["--json", "rehearse", "--snapshot", "fresh"]
    } else {
        &["--json", "rehearse"]
    };
    let (r, took, dealt) = under(w, &w.shadow, f, 2, args);
    assert_eq!(fingerprint(&w.rig.live, "app"), live, "a rehearsal changed live");
    let left = left_scratch(w, f);
    let outcome = if r.code == 0 {
        assert_eq!(r.json()["ok"], true);
        format!("survived ({dealt} faults dealt, {:.1}s)", took.as_secs_f64())
    } else {
        let a = w.approve(&plan);
        assert_eq!(a.code, 75, "a plan whose rehearsal failed was approvable:\n{}\n{}", a.stdout, a.stderr);
        format!("{}; live untouched, approval refused (exit 75), {left}", failed_how(&r, took))
    };
    let (r, _) = finish_run(w.rig.pgr.spawn(&["--json", "rehearse"]), Expect::Survive, "rehearse again");
    assert_eq!(r.json()["ok"], true);
    no_scratch(w);
    w.approve(&plan).ok();
    assert!(!w.applied_versions().contains(&version), "a rehearsal applied migration {version} to live");
    format!("{outcome}; retry after clearing: passed and approved")
}

/// Rehearses and approves a new migration; returns (version, plan, live now).
fn ready_release(w: &mut World) -> (String, String, String) {
    let version = w.add_migration();
    let (r, _) = finish_run(w.rig.pgr.spawn(&["--json", "rehearse"]), Expect::Survive, "rehearse before apply");
    assert_eq!(r.json()["ok"], true);
    let plan = plan_of(&w.rig);
    w.approve(&plan).ok();
    (version, plan, fingerprint(&w.rig.live, "app"))
}

/// Live is exactly pre- or post-release, and the record says which; then
/// a retry after clearing applies the plan.
/// `releases` were the ids listed before the run.
fn check_release(
    w: &World,
    r: &Run,
    took: Duration,
    version: &str,
    plan: &str,
    before: &str,
    releases: &[String],
) -> String {
    let rel: Value =
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("apply printed no JSON ({e}): {}", r.stdout));
    let outcome = match rel["release_id"].as_str() {
        Some(id) => crate::harness::release::release(&w.rig, id)["outcome"].as_str().unwrap_or_default().to_string(),
        None => {
            assert_eq!(release_ids(&w.rig), releases, "no release_id printed, yet a release was recorded");
            "none: stopped before a release began".to_string()
        }
    };
    let state = if w.applied_versions().contains(&version.to_string()) {
        assert_eq!(outcome, "applied", "live holds the plan; the record must say applied: {rel:#}");
        assert_eq!(r.code, 0, "applied, yet exit {}", r.code);
        "live exactly post-release"
    } else {
        assert_eq!(fingerprint(&w.rig.live, "app"), before, "live is neither pre- nor post-release");
        assert!(
            ["aborted", "rolled_back", "restored", "none: stopped before a release began"].contains(&outcome.as_str()),
            "live is pre-release; the record says `{outcome}`: {rel:#}"
        );
        "live exactly pre-release"
    };
    let how = if r.code == 0 { format!("survived ({:.1}s)", took.as_secs_f64()) } else { failed_how(r, took) };
    if outcome != "applied" {
        w.approve(plan).ok();
        let (r, _) = finish_run(w.rig.pgr.spawn(&["--json", "apply"]), Expect::Survive, "apply again");
        assert_eq!(r.json()["outcome"], "applied");
        assert!(w.applied_versions().contains(&version.to_string()), "live lacks {version} after the retry");
    }
    format!("{how}; release `{outcome}`, {state}; retry after clearing: applied")
}

fn apply_case(w: &mut World, f: &PgFault) -> String {
    let (version, plan, before) = ready_release(w);
    let releases = release_ids(&w.rig);
    let (r, took, dealt) = under(w, &w.live, f, 3, &["--json", "apply"]);
    eprintln!("{dealt} faults dealt");
    check_release(w, &r, took, &version, &plan, &before, &releases)
}

/// Live's connections reset while migration N sleeps inside the plan's
/// transaction; S3-independent. The proxy is back up a second later.
fn apply_reset_mid_migration(w: &mut World) -> String {
    let (version, plan, _) = ready_release(w);
    // Data only: the plan hash stays; the migration now sleeps 3 s on live.
    as_app(&w.rig.live, "app", "UPDATE ctl SET pause = 3");
    let before = fingerprint(&w.rig.live, "app");
    let releases = release_ids(&w.rig);
    let t0 = Instant::now();
    let bg = w.rig.pgr.spawn(&["--json", "apply"]);
    wait_migration_sleeping(w);
    let injected = w.live.injected();
    w.live.set(Fault::Reset);
    std::thread::sleep(Duration::from_secs(1));
    w.live.clear();
    assert!(w.live.injected() > injected, "no connection was reset");
    let (r, _) = finish_run(bg, Expect::Either, "apply");
    let out = check_release(w, &r, t0.elapsed(), &version, &plan, &before, &releases);
    as_app(&w.rig.live, "app", "UPDATE ctl SET pause = 0");
    out
}

fn wait_migration_sleeping(w: &World) {
    wait_for("the migration to sleep on live", Duration::from_secs(60), Duration::from_millis(20), || {
        let n = w.rig.live.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%pg_sleep((SELECT pause%' AND pid <> pg_backend_pid()",
        );
        (n != "0").then_some(())
    });
}

/// Live stalls for good while migration N sleeps inside the plan's
/// transaction: the release stops within the bound, recorded `interrupted`
/// (`live_stalled`); live's server rolls the transaction back once the
/// session is gone; the next command finishes the release; a retry applies.
fn apply_stalled_mid_migration(w: &mut World) -> String {
    let (version, plan, _) = ready_release(w);
    as_app(&w.rig.live, "app", "UPDATE ctl SET pause = 3");
    let before = fingerprint(&w.rig.live, "app");
    let releases = release_ids(&w.rig);
    let bg = w.rig.pgr.spawn(&["--json", "apply"]);
    wait_migration_sleeping(w);
    let injected = w.live.injected();
    w.live.set(Fault::Stall { until: None });
    let (r, took) = finish_run(bg, Expect::Fail, "apply");
    let dealt = w.live.injected() - injected;
    w.live.clear();
    assert!(dealt > 0, "the proxy dealt no fault: the case proves nothing");
    assert_stall_stopped(&r, took);
    let id = release_ids(&w.rig).into_iter().find(|i| !releases.contains(i)).expect("the stalled release is recorded");
    let rec = crate::harness::release::release(&w.rig, &id);
    assert_eq!(rec["outcome"], "interrupted", "{rec:#}");
    assert_eq!(rec["error_kind"], "live_stalled", "{rec:#}");
    assert!(rec["reason"].as_str().is_some_and(|m| m.contains("stalled")), "{rec:#}");
    // The server rolls the plan's transaction back once the session is gone.
    wait_for("live back to its pre-release state", Duration::from_secs(60), Duration::from_millis(200), || {
        (fingerprint(&w.rig.live, "app") == before).then_some(())
    });
    // Any command on the target finishes the interrupted release.
    let status = w.rig.pgr.run_json(&["status"]);
    let rec = crate::harness::release::release(&w.rig, &id);
    let finished = rec["outcome"].as_str().unwrap_or_default().to_string();
    assert!(
        ["rolled_back", "aborted"].contains(&finished.as_str()),
        "`status` (exit {}) did not finish the stalled release: {rec:#}\n{}",
        status.code,
        status.stderr
    );
    assert_eq!(fingerprint(&w.rig.live, "app"), before, "live changed while the release was finished");
    as_app(&w.rig.live, "app", "UPDATE ctl SET pause = 0");
    w.approve(&plan).ok();
    let (again, _) = finish_run(w.rig.pgr.spawn(&["--json", "apply"]), Expect::Survive, "apply again");
    assert_eq!(again.json()["outcome"], "applied");
    assert!(w.applied_versions().contains(&version), "live lacks {version} after the retry");
    format!(
        "{}; release recorded `interrupted` (live_stalled), live exactly pre-release once the server dropped the session; `status` finished it `{finished}`; retry after clearing: applied",
        failed_how(&r, took)
    )
}

#[test]
fn faults_pg_snapshot_and_verify() {
    let t0 = Instant::now();
    let w = World::start();
    let mut failures = Vec::new();
    for f in pg_faults() {
        case(&mut failures, "snapshot", f.name, || snapshot_case(&w, &f));
    }
    for f in pg_faults() {
        case(&mut failures, "verify", f.name, || verify_case(&w, &f));
    }
    eprintln!("faults_pg_snapshot_and_verify: {:?}", t0.elapsed());
    finish(failures);
}

#[test]
fn faults_pg_rehearse_and_apply() {
    let t0 = Instant::now();
    let mut w = World::start();
    let mut failures = Vec::new();
    for f in pg_faults() {
        case(&mut failures, "rehearse", f.name, || rehearse_case(&mut w, &f));
    }
    for f in pg_faults() {
        if f.name == PERMANENT_STALL {
            case(
                &mut failures,
                "apply",
                "PostgreSQL: live stalls for good (connections held open) during a migration",
                || apply_stalled_mid_migration(&mut w),
            );
        } else {
            case(&mut failures, "apply", f.name, || apply_case(&mut w, &f));
        }
    }
    case(&mut failures, "apply", "PostgreSQL: live's connections reset (RST) for 1 s during a migration", || {
        apply_reset_mid_migration(&mut w)
    });
    eprintln!("faults_pg_rehearse_and_apply: {:?}", t0.elapsed());
    finish(failures);
}
