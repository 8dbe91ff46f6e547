//! The database password never leaves pgrehearse through a `command` tool:
//! live's role authenticates with a password full of characters a URL must
//! encode; the tool prints its whole environment and its arguments (which
//! carry the password and the URL) and fails, in a rehearsal and in two
//! releases (the password in `PGPASSWORD` only, and with
//! `password_in_url = true`). The password, raw or percent-encoded, must
//! appear nowhere: stdout and stderr (`--json` and human), `releases ID`,
//! any row of the SQLite state store, any file under the state directory
//! (reports, `.eml` mail). The tool's output must be there, redacted.

use crate::harness::cli::{Run, local_store_toml, target_toml, toml_string};
use crate::harness::files_under;
use crate::harness::migrations::*;
use crate::harness::release::*;
use crate::harness::shadow::shadow_url;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// Needs encoding in a URL (`&`, `/`, `:`, `@`, `%`, space), and is unlike
/// anything else in the test's output.
const PW: &str = "Zq9&se/cr:et@p%w d";

/// The tool: prints its environment and arguments, then fails while a
/// `fail` file exists (it never applies anything).
const TOOL: &str = r#"#!/bin/sh
env
echo "argv: $*"
env | grep -E '^(PG|DATABASE_URL)' | sort >&2
echo "tool gave up on $DATABASE_URL (password $PGPASSWORD) argv: $*" >&2
[ -f fail ] && exit 3
exit 0
"#;

/// Every form of the password a leak could take.
fn forms() -> Vec<String> {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    let strict = utf8_percent_encode(PW, NON_ALPHANUMERIC).to_string();
    let mut u = url::Url::parse("postgres://u@h/d").unwrap();
    u.set_password(Some(PW)).unwrap();
    vec![
        PW.to_string(),
        crate::harness::pg::percent_encode(PW),
        strict.to_lowercase(),
        strict,
        u.password().unwrap().to_string(),
    ]
}

fn assert_clean(what: &str, text: &str) {
    for f in forms() {
        assert!(!text.contains(&f), "{what} holds the password as `{f}`:\n{text}");
    }
}

fn assert_run_clean(what: &str, r: &Run) {
    assert_clean(&format!("{what} stdout"), &r.stdout);
    assert_clean(&format!("{what} stderr"), &r.stderr);
}

fn configure(rig: &Rig, password_in_url: bool) {
    let apply = "./tool.sh --url \"$DATABASE_URL\" --password \"$PGPASSWORD\"";
    let extra = format!(
        "shadow_url = {}\nrestore_jobs = 2\n{}migrations = {{ kind = \"command\", dir = {}, pending = \"./tool.sh >/dev/null; ls *.sql\", apply = {}, password_in_url = {password_in_url} }}\n",
        toml_string(&shadow_url(&rig.shadow)),
        release_config(rig, ""),
        toml_string(&rig.dir.display().to_string()),
        toml_string(&apply),
    );
    rig.pgr.write_config(&format!(
        "{}[email]\ntransport = \"file\"\nto = [\"dba@example.com\"]\nfrom = \"pgrehearse@example.com\"\n\n{}",
        local_store_toml(&rig.pgr, ""),
        target_toml("app", &rig.live.url("app", "app", PW), &extra)
    ));
}

fn set_failing(rig: &Rig, failing: bool) {
    let flag = rig.dir.join("fail");
    if failing {
        std::fs::write(&flag, "").unwrap();
    } else {
        let _ = std::fs::remove_file(&flag);
    }
}

/// A passing rehearsal and its approval (the tool succeeds), then the
/// tool is made to fail for the release.
fn approve_then_fail(rig: &Rig) {
    set_failing(rig, false);
    rehearse_and_approve(rig);
    set_failing(rig, true);
}

/// Every row of every table of every SQLite file under `dir`, as text.
fn sqlite_rows(dir: &Path) -> (usize, String) {
    let dbs: Vec<_> = files_under(dir)
        .into_iter()
        .filter(|p| std::fs::read(p).is_ok_and(|b| b.starts_with(b"SQLite format 3\0")))
        .collect();
    assert!(!dbs.is_empty(), "no SQLite state store under {dir:?}");
    let script = r#"
import sqlite3, sys
n = 0
for path in sys.argv[1:]:
    db = sqlite3.connect(path)
    for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
        for row in db.execute(f'SELECT * FROM "{t}"'):
            n += 1
            print(t, repr(row))
print("ROWS", n, file=sys.stderr)
"#;
    let out = Command::new("python3").arg("-c").arg(script).args(&dbs).output().expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    let n: usize = err.trim().trim_start_matches("ROWS ").parse().unwrap_or_else(|_| panic!("{err}"));
    (n, String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn a_failing_command_tool_never_leaks_the_password() {
    let rig = Rig::start(
        "command",
        "CREATE TABLE orders (id int PRIMARY KEY); INSERT INTO orders SELECT generate_series(1, 100);",
    );
    rig.live.psql("postgres", &format!("ALTER ROLE app PASSWORD '{}'", PW.replace('\'', "''")));
    let tool = rig.dir.join("tool.sh");
    std::fs::write(&tool, TOOL).unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(rig.dir.join("001_add_note.sql"), "ALTER TABLE orders ADD COLUMN note text;\n").unwrap();
    configure(&rig, false);
    let mut runs: Vec<(String, Run)> = Vec::new();

    // `status` runs `pending` on live: the password really authenticates.
    let st = rig.status();
    st.ok();
    assert_eq!(st.json()["pending"].as_array().unwrap().len(), 1, "{}", st.stdout);
    rig.snapshot();

    // A failing rehearsal, --json and human.
    set_failing(&rig, true);
    let r = rig.rehearse(&[]);
    assert_ne!(r.code, 0, "the tool failed");
    let step = &r.json()["migrations"][0];
    assert_eq!(step["status"], "failed", "{step:#}");
    let message = step["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("argv: --url") && message.contains("exit status: 3"),
        "the tool's output is in the report: {message}"
    );
    runs.push(("rehearse --json".into(), r));
    let r = rig.pgr.run(&["rehearse"]);
    assert_ne!(r.code, 0);
    runs.push(("rehearse".into(), r));

    // A release whose tool fails on live: the password in PGPASSWORD only.
    approve_then_fail(&rig);
    let r = apply(&rig);
    r.expect_code(1);
    let rel = r.json();
    assert_eq!(rel["outcome"], "restored", "{rel:#}");
    let reason = rel["reason"].as_str().unwrap();
    assert!(reason.contains("PGPASSWORD=***"), "the tool's environment, redacted, is in the reason: {reason}");
    assert!(reason.contains("--password ***"), "the tool's arguments, redacted: {reason}");
    assert!(reason.contains("DATABASE_URL=postgres://app@"), "no password in the URL the tool got: {reason}");
    let first = rel["release_id"].as_str().unwrap().to_string();
    runs.push(("apply --json".into(), r));

    // The same with the password inside DATABASE_URL, human output.
    configure(&rig, true);
    approve_then_fail(&rig);
    let r = rig.pgr.run(&["apply"]);
    r.expect_code(1);
    runs.push(("apply".into(), r));
    let ids = release_ids(&rig);
    let second = ids.iter().find(|id| **id != first).expect("a second release").clone();
    let rel = release(&rig, &second);
    let reason = rel["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("DATABASE_URL=postgres://app:***@"), "the URL had the password, redacted: {rel:#}");

    for id in [&first, &second] {
        runs.push((format!("releases {id} --json"), rig.pgr.run_json(&["releases", id])));
        runs.push((format!("releases {id}"), rig.pgr.run(&["releases", id])));
    }
    for (what, r) in &runs {
        assert!(!r.stdout.is_empty() || !r.stderr.is_empty(), "{what} printed nothing");
        assert_run_clean(what, r);
    }

    let state = rig.pgr.state_dir();
    let (rows, dump) = sqlite_rows(&state);
    assert!(rows > 0 && dump.contains("argv: --url"), "the state store holds the tool's output ({rows} rows)");
    assert_clean("the state store", &dump);
    // Every file pgrehearse wrote (state store, mail, snapshots), the config aside.
    let files: Vec<_> = files_under(rig.pgr.dir()).into_iter().filter(|p| p != rig.pgr.config_path()).collect();
    let eml: Vec<_> = files.iter().filter(|p| p.extension().is_some_and(|e| e == "eml")).collect();
    // The CLI mails a restored release (report and alert) when [email] is set.
    // Bodies may be encoded: read them decoded (Python's email package) too.
    assert!(!eml.is_empty(), "no .eml file: {files:?}");
    let mail_dir = eml[0].parent().unwrap();
    let mails = crate::harness::smtp::eml_files(mail_dir);
    for id in [&first, &second] {
        assert!(
            mails.iter().any(|m| m.subject.contains(id.as_str()) && m.subject.contains("restored")),
            "release {id}'s report was mailed: {:?}",
            mails.iter().map(|m| &m.subject).collect::<Vec<_>>()
        );
    }
    assert!(mails.iter().any(|m| m.subject.contains("ALERT")), "the alert was mailed");
    assert!(mails.iter().any(|m| m.text.contains("argv: --url")), "a mail carries the tool's output, redacted");
    for m in &mails {
        let headers: String = m.headers.iter().map(|(k, v)| format!("{k}: {v}\n")).collect();
        assert_clean(&format!("mail `{}`", m.subject), &format!("{headers}{}\n{}", m.text, m.html));
    }
    assert!(files.iter().any(|p| p.starts_with(&state) && p.extension().is_some_and(|e| e == "sqlite")), "{files:?}");
    for f in &files {
        let text = String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned();
        assert_clean(&f.display().to_string(), &text);
    }
}
