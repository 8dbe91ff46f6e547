//! The daemon's HTTP API, served by the real `pgrehearse daemon` on real
//! clusters, spoken to over plain HTTP/1.1:
//!
//! - `/metrics` parses as Prometheus text (`promtool check metrics`, the
//!   Prometheus project's own parser and linter);
//! - `/api/v1/targets`, `/snapshots`, `/rehearsals/{id}`, `/releases/{id}`
//!   show what the CLI recorded (snapshot, drill with its RTO, rehearsal,
//!   a refused release), and unknown ids get a 404 with a message;
//! - `POST /api/v1/approvals` needs the bearer token (401 without, 403
//!   wrong), answers malformed JSON with 400 and the parser's message,
//!   invalid fields with 422, an unknown target with 404, a refused
//!   approval with 409, and a good one with 201 — visible afterwards to
//!   `pgrehearse --json status` and in the state file itself (read with
//!   Python's sqlite3, not the code under test); the token is never logged;
//! - an approval runs through the job runner: an interrupted release of the
//!   target is finished (and reported in the daemon's metrics) first;
//! - without a token configured, writes are off (403 naming `token_file`);
//!   with live not answering at all, the targets and the page still answer
//!   within the timeout and say "live unreachable".

use crate::harness::cli::{Background, Pgr, local_store_toml, target_toml, toml_string};
use crate::harness::daemon::{daemon_toml, start};
use crate::harness::http::{self, Response};
use crate::harness::migrations::*;
use crate::harness::wait_for;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SETUP: &str = "CREATE TABLE t (id int PRIMARY KEY, note text);
    INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 500) g;";

pub const TOKEN: &str = "api-test-token-7f3a9c1e55d2";

/// A daemon serving one target with a pending, rehearsed plan, a verified
/// snapshot, and a release window that is not open (so the daemon never
/// releases on its own while a test approves).
pub struct ApiRig {
    pub rig: Rig,
    pub addr: String,
    pub snapshot: String,
    pub rehearsal: String,
    pub plan: String,
    pub daemon: Background,
}

/// A daily one-hour window starting twelve hours from now: never open
/// during a test, and always with a next opening to show.
fn closed_window() -> String {
    let hour = (chrono::Utc::now() + chrono::Duration::hours(12)).format("%H");
    format!("windows = [{{ cron = \"0 0 {hour} * * *\", duration = \"1h\", timezone = \"UTC\" }}]")
}

pub fn ready_daemon() -> ApiRig {
    let rig = Rig::start("sqlx", SETUP);
    rig.sqlx("1", "add_extra", "ALTER TABLE t ADD COLUMN extra int;\n", Some("ALTER TABLE t DROP COLUMN extra;\n"));
    let port = http::free_port();
    let token = rig.pgr.write_secret("api-token", &format!("{TOKEN}\n"));
    rig.configure(&closed_window());
    let text = std::fs::read_to_string(rig.pgr.config_path()).unwrap();
    rig.pgr.write_config(&format!("{text}{}", daemon_toml(port, Some(&token))));

    let snapshot = rig.snapshot();
    rig.pgr.run_json(&["verify", &snapshot]).ok();
    let r = rig.rehearse(&["--snapshot", &snapshot]);
    r.ok();
    let rehearsal = r.json()["id"].as_str().expect("rehearsal id").to_string();
    let plan = rig.status().json()["plan"].as_str().expect("plan").to_string();
    let daemon = start(&rig.pgr, port);
    ApiRig { rig, addr: format!("127.0.0.1:{port}"), snapshot, rehearsal, plan, daemon }
}

fn get(addr: &str, path: &str) -> Response {
    let r = http::get(addr, path).unwrap_or_else(|| panic!("GET {path}: no answer"));
    eprintln!("GET {path} -> {}\n{}", r.status, crate::harness::migrations::tail(&r.body, 2000));
    r
}

fn post(addr: &str, auth: Option<&str>, body: &str) -> Response {
    let bearer = auth.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(b) = &bearer {
        headers.push(("Authorization", b.as_str()));
    }
    let r =
        http::request(addr, "POST", "/api/v1/approvals", &headers, body).expect("POST /api/v1/approvals: no answer");
    eprintln!("POST {body} -> {}: {}", r.status, r.body);
    r
}

fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Asserts the status and a JSON `{ "error": … }` containing `needle`.
fn expect_error(r: &Response, status: u16, needle: &str) {
    assert_eq!(r.status, status, "{r:?}");
    let e = r.json()["error"].as_str().unwrap_or_else(|| panic!("no error message: {}", r.body)).to_string();
    assert!(e.contains(needle), "error {e:?} should contain {needle:?}");
}

/// `promtool check metrics` on the exposition text: it parses it and lints
/// the names (exit 0 and no output when both are clean).
fn promtool_check(text: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; scripts/test.sh installs it)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics ({}):\n{said}\n--- metrics:\n{text}",
        out.status
    );
}

/// The approvals table as SQLite itself returns it (Python's sqlite3).
pub fn approvals_in_state_file(state_dir: &Path) -> Vec<Value> {
    let script = "import json, sqlite3, sys\n\
        c = sqlite3.connect('file:' + sys.argv[1] + '?mode=ro', uri=True)\n\
        c.row_factory = sqlite3.Row\n\
        print(json.dumps([dict(r) for r in c.execute('SELECT * FROM approvals ORDER BY approved_at')]))\n";
    let db = state_dir.join("state.sqlite");
    let out = crate::harness::run_ok(Command::new("python3").arg("-c").arg(script).arg(&db));
    serde_json::from_str::<Value>(&out).unwrap().as_array().unwrap().clone()
}

#[test]
fn the_api_shows_what_was_recorded_and_guards_approvals_with_the_token() {
    let t = ready_daemon();
    let addr = t.addr.as_str();

    let m = get(addr, "/metrics");
    assert_eq!(m.status, 200);
    assert_eq!(header(&m, "content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    assert!(
        m.body.contains("\npgrehearse_uptime_seconds ") && m.body.contains("pgrehearse_host_memory_available_bytes"),
        "{}",
        m.body
    );
    promtool_check(&m.body);

    let targets = get(addr, "/api/v1/targets");
    assert_eq!(targets.status, 200);
    let all = targets.json();
    assert_eq!(all.as_array().map(Vec::len), Some(1), "{all:#}");
    let a = &all[0];
    assert_eq!(a["name"], "app");
    assert_eq!(a["live"], "ok", "{a:#}");
    assert_eq!(a["plan"], t.plan.as_str());
    assert_eq!(a["pending_count"], 1);
    assert_eq!(a["pending"][0]["name"], "add extra", "sqlx names it by its description");
    assert_eq!(a["last_snapshot"]["id"], t.snapshot.as_str());
    assert!(a["last_snapshot"]["verified_at"].is_string(), "the drill verified it: {a:#}");
    assert!(a["last_snapshot"]["restore_duration_ms"].as_u64().is_some_and(|ms| ms > 0), "measured RTO: {a:#}");
    assert_eq!(a["last_rehearsal"]["id"], t.rehearsal.as_str());
    assert_eq!(a["last_rehearsal"]["status"], "passed");
    assert_eq!(a["last_rehearsal"]["plan"], t.plan.as_str());
    assert_eq!(a["plan_rehearsal"]["current_plan"], true);
    assert!(a["approval"].is_null() && a["approvable"] == true, "{a:#}");
    assert!(a["window_open"].is_null() && a["next_window"]["start"].is_string(), "{a:#}");
    assert!(a["last_release"].is_null(), "{a:#}");

    let snaps = get(addr, "/api/v1/snapshots").json();
    assert_eq!(snaps[0]["id"], t.snapshot.as_str());
    assert_eq!(get(addr, "/api/v1/snapshots?target=app").json(), snaps);
    assert_eq!(snaps[0]["verification_ok"], true, "{snaps:#}");
    expect_error(&get(addr, "/api/v1/snapshots?target=nope"), 404, "nope");
    expect_error(&get(addr, "/api/v1/snapshots?colour=blue"), 400, "target");

    let report = get(addr, &format!("/api/v1/rehearsals/{}", t.rehearsal)).json();
    assert_eq!(report["id"], t.rehearsal.as_str());
    assert_eq!(report["plan"], t.plan.as_str());
    assert_eq!(report["migrations"][0]["version"], "1", "{report:#}");
    assert!(report["migrations"][0]["locks"].is_array(), "{report:#}");
    expect_error(&get(addr, "/api/v1/rehearsals/no-such-rehearsal"), 404, "no-such-rehearsal");
    expect_error(&get(addr, "/api/v1/releases/no-such-release"), 404, "no-such-release");
    expect_error(&get(addr, "/api/v1/nothing-here"), 404, "/api/v1/nothing-here");

    // Approvals: the token first, then the body, the target, the plan.
    let good = format!(r#"{{"target": "app", "plan": "{}", "by": "api-test", "note": "CAB-7"}}"#, &t.plan[..16]);
    let r = post(addr, None, &good);
    expect_error(&r, 401, "Authorization: Bearer");
    assert!(header(&r, "www-authenticate").is_some_and(|v| v.starts_with("Bearer")), "{r:?}");
    expect_error(&post(addr, Some("not-the-token"), &good), 403, "token is wrong");
    expect_error(&post(addr, Some(&format!("{TOKEN}x")), &good), 403, "token is wrong");
    expect_error(&post(addr, Some(TOKEN), r#"{"target": "app", "plan": "#), 400, "malformed JSON: EOF while parsing");
    expect_error(&post(addr, Some(TOKEN), "{'plan': 1}"), 400, "malformed JSON: key must be a string");
    expect_error(&post(addr, Some(TOKEN), ""), 400, "body is empty");
    expect_error(&post(addr, Some(TOKEN), r#"{"target": "app", "by": "x"}"#), 422, "missing field `plan`");
    expect_error(
        &post(addr, Some(TOKEN), r#"{"target": "app", "plan": "abc", "by": "x", "when": 1}"#),
        422,
        "unknown field `when`",
    );
    expect_error(
        &post(addr, Some(TOKEN), r#"{"target": "app", "plan": "abcdef0123456", "by": "  "}"#),
        422,
        "`by` is empty",
    );
    expect_error(
        &post(addr, Some(TOKEN), r#"{"target": "app", "plan": "latest", "by": "x"}"#),
        422,
        "is not a plan hash",
    );
    expect_error(&post(addr, Some(TOKEN), r#"{"target": "nope", "plan": "abcdef0123456", "by": "x"}"#), 404, "nope");
    expect_error(
        &post(addr, Some(TOKEN), r#"{"target": "app", "plan": "abcdef0123456", "by": "x"}"#),
        409,
        "is not the plan pending",
    );
    assert!(approvals_in_state_file(&t.rig.pgr.state_dir()).is_empty(), "refusals wrote nothing");

    let r = post(addr, Some(TOKEN), &good);
    assert_eq!(r.status, 201, "{r:?}");
    let created = r.json();
    assert_eq!(created["plan"], t.plan.as_str(), "a prefix names the full plan");
    assert_eq!(created["approved_by"], "api-test");
    assert_eq!(created["rehearsal_id"], t.rehearsal.as_str());
    let id = created["approval_id"].as_str().expect("approval_id").to_string();

    let st = t.rig.status().json();
    assert_eq!(st["approval"]["id"], id.as_str(), "{st:#}");
    assert_eq!(st["approval"]["approved_by"], "api-test");
    assert_eq!(st["approval"]["valid"], true, "{st:#}");
    let rows = approvals_in_state_file(&t.rig.pgr.state_dir());
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!((&rows[0]["id"], &rows[0]["plan_hash"]), (&Value::from(id.clone()), &Value::from(t.plan.clone())));
    assert_eq!((&rows[0]["approved_by"], &rows[0]["note"]), (&Value::from("api-test"), &Value::from("CAB-7")));
    let a = &get(addr, "/api/v1/targets").json()[0];
    assert_eq!(
        (&a["approval"]["id"], &a["approval"]["valid"], &a["approvable"]),
        (&Value::from(id), &Value::from(true), &Value::from(false))
    );

    // A release outside the window is refused and recorded: the API shows
    // the record and its journal as `releases ID` does.
    let r = t.rig.pgr.run_json(&["apply"]);
    r.expect_code(75);
    let release = r.json()["release_id"].as_str().expect("release_id").to_string();
    let via_api = get(addr, &format!("/api/v1/releases/{release}")).json();
    let via_cli = t.rig.pgr.run_json(&["releases", &release]).json();
    let via_cli = if via_cli.is_array() { via_cli[0].clone() } else { via_cli };
    assert_eq!(via_api["release_id"], release.as_str());
    assert_eq!(via_api["outcome"], "refused");
    assert_eq!((&via_api["reason"], &via_api["journal"]), (&via_cli["reason"], &via_cli["journal"]));
    let a = &get(addr, "/api/v1/targets").json()[0];
    assert_eq!(
        (&a["last_release"]["id"], &a["last_release"]["outcome"]),
        (&Value::from(release), &Value::from("refused"))
    );

    // A new file: the daemon rehearses the new plan on its own; the API
    // answers meanwhile, and the job's metrics still pass promtool.
    t.rig.sqlx("2", "add_more", "ALTER TABLE t ADD COLUMN more int;\n", Some("ALTER TABLE t DROP COLUMN more;\n"));
    let a =
        wait_for("the daemon's rehearsal of the new plan", Duration::from_secs(90), Duration::from_millis(100), || {
            let t0 = Instant::now();
            let r = http::get(addr, "/api/v1/targets")?;
            assert!(
                t0.elapsed() < Duration::from_secs(4),
                "GET /api/v1/targets took {:?} while a job runs",
                t0.elapsed()
            );
            let a = r.json()[0].clone();
            (a["plan_rehearsal"]["status"] == "passed" && a["pending_count"] == 2).then_some(a)
        });
    assert_eq!(a["approval"]["valid"], false, "the approval was for the previous plan: {a:#}");
    assert_eq!(a["approvable"], true, "{a:#}");
    // The job's metrics are set when it ends, just after its report is stored.
    let m = wait_for("the rehearsal job's metrics", Duration::from_secs(30), Duration::from_millis(100), || {
        let m = http::get(addr, "/metrics")?.body;
        (m.contains("pgrehearse_rehearsal_ok{")
            && m.contains("pgrehearse_job_runs_total{error_kind=\"none\",job=\"rehearse\""))
        .then_some(m)
    });
    promtool_check(&m);

    let logs = t.daemon.stderr_so_far();
    assert!(!logs.contains(TOKEN) && !logs.contains("not-the-token"), "a token reached the log:\n{logs}");
    assert!(logs.contains("Refused an approval request") && logs.contains("Plan approved through the API"), "{logs}");
}

#[test]
fn an_api_approval_goes_through_the_job_runner_which_first_finishes_an_interrupted_release() {
    use crate::harness::release::{approve_current, crash_apply, interrupted_release, release, wait_no_sessions};
    let t = ready_daemon();
    let rig = &t.rig;
    // The daemon keeps the configuration it started with (its window is
    // closed: it never releases on its own); the CLI gets one whose window
    // is open, approves, and dies right after journaling the release's
    // first step. No scheduled job runs, so nothing but the approval can
    // finish that release.
    crate::harness::release::configure(rig, "");
    approve_current(rig);
    crash_apply(rig, "snapshot");
    let id = interrupted_release(rig, "snapshot");
    wait_no_sessions(&rig.live, "pgrehearse-lock-%");

    let r = post(&t.addr, Some(TOKEN), &format!(r#"{{"target": "app", "plan": "{}", "by": "api-runner"}}"#, t.plan));
    assert_eq!(r.status, 201, "{r:?}");
    // The job runner finished the release before approving, as it does
    // before `pgrehearse approve` …
    let rel = release(rig, &id);
    assert_eq!(rel["outcome"], "aborted", "the interrupted release is finished: {rel:#}");
    assert!(rel["finished_at"].is_string(), "{rel:#}");
    // … handed that to the daemon's reporter (its metrics) …
    let m = get(&t.addr, "/metrics").body;
    assert!(
        m.lines().any(|l| l.starts_with("pgrehearse_release_outcomes_total{")
            && l.contains("outcome=\"aborted\"")
            && l.ends_with(" 1")),
        "the recovery was reported:\n{m}"
    );
    // … and then recorded the approval.
    let rows = approvals_in_state_file(&rig.pgr.state_dir());
    let ours: Vec<&Value> = rows.iter().filter(|r| r["approved_by"] == "api-runner").collect();
    assert_eq!(ours.len(), 1, "{rows:#?}");
    assert_eq!(ours[0]["plan_hash"], t.plan.as_str());
}

/// Accepts TCP connections and never answers: a live server that hangs.
fn black_hole() -> (u16, std::thread::JoinHandle<()>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s);
        }
    });
    (port, h)
}

#[test]
fn without_a_token_writes_are_off_and_a_hanging_live_degrades_the_status() {
    let pgr = Pgr::new();
    let dir = pgr.dir().join("migrations");
    std::fs::create_dir_all(&dir).unwrap();
    sqlx_migration(&dir, "1", "first", "SELECT 1;\n", None);
    let (live_port, _hole) = black_hole();
    let port = http::free_port();
    let live = format!("postgres://app:pw@127.0.0.1:{live_port}/app");
    let extra = format!("migrations = {{ kind = \"sqlx\", dir = {} }}", toml_string(&dir.display().to_string()));
    pgr.write_config(&format!(
        "{}{}{}",
        local_store_toml(&pgr, ""),
        target_toml("app", &live, &extra),
        daemon_toml(port, None)
    ));
    let daemon = start(&pgr, port);
    let addr = format!("127.0.0.1:{port}");

    let t0 = Instant::now();
    let targets = get(&addr, "/api/v1/targets");
    let took = t0.elapsed();
    assert_eq!(targets.status, 200);
    let a = &targets.json()[0];
    assert_eq!(a["live"], "unreachable", "{a:#}");
    assert!(a["plan"].is_null() && a["approval"].is_null(), "{a:#}");
    assert!(a["problems"][0].as_str().is_some_and(|p| p.starts_with("live unreachable")), "{a:#}");
    assert!(took >= Duration::from_secs(4) && took < Duration::from_secs(12), "the live timeout is 5 s; took {took:?}");

    let page = get(&addr, "/");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("live unreachable"), "{}", page.body);
    assert!(header(&page, "content-security-policy").is_some_and(|c| c.contains("script-src 'self'")), "{page:?}");

    let body = r#"{"target": "app", "plan": "abcdef0123456", "by": "x"}"#;
    expect_error(&post(&addr, Some("anything"), body), 403, "set [api] token_file");
    expect_error(&post(&addr, None, body), 403, "set [api] token_file");
    drop(daemon);
}
