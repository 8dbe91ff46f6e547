//! Email through a real SMTP server (aiosmtpd, Mailbox handler), read back
//! with Python's `email` package:
//!
//! - `pgrehearse email test` delivers a multipart text + HTML message with
//!   the configured From, To and subject prefix; `tls=required` against a
//!   server without STARTTLS fails at once (exit 1) and sends nothing; with
//!   the server down it retries, then exits 69 with a message that names
//!   the server; the file
//!   transport writes an `.eml`; no `[email]` section is exit 78;
//! - the daemon alerts on a failed job (a snapshot of an unreachable live);
//! - the daemon mails a rehearsal report (per-migration table, chart, the
//!   approve command; `successes = "each"`) and a release report; with the
//!   mail server down the next rehearsal still passes and `/metrics` counts
//!   the failed delivery.

use crate::harness::cli::{Background, Pgr, local_store_toml, target_toml, toml_string};
use crate::harness::daemon::{daemon_toml, metric, start};
use crate::harness::http;
use crate::harness::migrations::{Rig, tail};
use crate::harness::release::configure;
use crate::harness::smtp::{Received, SmtpServer, free_port};
use crate::harness::wait_for;
use std::time::{Duration, Instant};

const FROM: &str = "pgrehearse <pgr@db1.example.com>";
const TO: [&str; 2] = ["dba@example.com", "oncall@example.com"];

/// An `[email]` section for `smtp_url`.
fn email_toml(smtp_url: &str, extra: &str) -> String {
    format!(
        "\n[email]\ntransport = \"smtp\"\nsmtp_url = {}\nfrom = {}\nto = [{}]\ntimeout = \"5s\"\n{extra}\n",
        toml_string(smtp_url),
        toml_string(FROM),
        TO.map(toml_string).join(", ")
    )
}

/// A config with `[email]` and one target that is never contacted.
fn cli_config(pgr: &Pgr, email: &str) -> String {
    format!("{}{email}{}", local_store_toml(pgr, ""), target_toml("app", "postgres://app@127.0.0.1:9/app", ""))
}

/// From, To (header and envelope), multipart/alternative with both parts.
fn assert_addressed(m: &Received) {
    assert_eq!(m.from, "pgr@db1.example.com", "{m:#?}");
    assert_eq!(m.to, TO, "{m:#?}");
    let mut rcpt = m.rcpt_to.clone();
    rcpt.sort();
    assert_eq!(rcpt, TO, "every recipient is in the envelope: {m:#?}");
    assert_eq!(m.content_type, "multipart/alternative", "{m:#?}");
    assert!(!m.text.trim().is_empty() && m.html.contains("<html"), "both parts: {m:#?}");
    assert!(!m.html.contains("<script") && !m.html.contains("src="), "no scripts, no external resources");
    assert_eq!(m.header("Auto-Submitted"), Some("auto-generated"));
}

#[test]
fn email_test_delivers_text_and_html_through_smtp() {
    let smtp = SmtpServer::start();
    let pgr = Pgr::new();
    pgr.write_config(&cli_config(&pgr, &email_toml(&smtp.url(), "subject_prefix = \"[pgrehearse staging]\"")));
    let r = pgr.run_json(&["email", "test"]);
    r.ok();
    let out = r.json();
    assert_eq!(out["destination"], smtp.url().as_str(), "{out:#}");
    assert_eq!((out["transport"].as_str(), out["attempts"].as_u64()), (Some("smtp"), Some(1)), "{out:#}");

    let m = smtp.wait_for_subject("test message", Duration::from_secs(10));
    assert!(m.subject.starts_with("[pgrehearse staging] test message from "), "{}", m.subject);
    assert_eq!(out["subject"], m.subject.as_str());
    assert_addressed(&m);
    assert!(m.text.contains("pgrehearse email test") && m.text.contains("Targets: app"), "{}", m.text);
    assert!(m.html.contains("Sample chart") && m.html.contains("height:10px;background:#2563eb"), "{}", m.html);
    assert_eq!(smtp.messages().len(), 1, "one message, sent once");

    // STARTTLS required, but this server offers none: a configuration that
    // does not fit the server, said at once (no retries), exit 1.
    let url = format!("{}?tls=required", smtp.url());
    pgr.write_config(&cli_config(&pgr, &email_toml(&url, "")));
    let t0 = Instant::now();
    let r = pgr.run(&["email", "test"]);
    r.expect_code(1);
    assert!(t0.elapsed() < Duration::from_secs(3), "not retried");
    assert!(r.stderr.contains("STARTTLS") && r.stderr.contains("check tls= in smtp_url"), "{}", r.stderr);
    assert!(!r.stderr.contains("retrying"), "{}", r.stderr);
    assert_eq!(smtp.messages().len(), 1, "nothing sent in clear text");
}

#[test]
fn email_test_with_the_server_down_retries_then_exits_69() {
    let port = free_port();
    let pgr = Pgr::new();
    pgr.write_config(&cli_config(&pgr, &email_toml(&format!("smtp://127.0.0.1:{port}"), "")));
    let t0 = Instant::now();
    let r = pgr.run(&["email", "test"]);
    let took = t0.elapsed();
    r.expect_code(69);
    assert!(took >= Duration::from_secs(3), "waited 1 s + 2 s between the 3 attempts, took {took:?}");
    let err = r.stderr.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("{}", r.stderr));
    assert!(
        err.contains(&format!("smtp://127.0.0.1:{port}")) && err.contains("unreachable after 3 attempts"),
        "the message names the server and the retries: {err}"
    );
    assert_eq!(r.stderr.matches("Email delivery failed; retrying.").count(), 2, "{}", r.stderr);
    assert!(r.stderr.contains("ERROR") && r.stderr.contains("Email not delivered"), "{}", r.stderr);
}

#[test]
fn email_test_with_the_file_transport_writes_an_eml_and_needs_a_section() {
    let pgr = Pgr::new();
    pgr.write_config(&cli_config(
        &pgr,
        &format!("\n[email]\nfrom = {}\nto = [\"dba@example.com\"]\n", toml_string(FROM)),
    ));
    let r = pgr.run_json(&["email", "test"]);
    r.ok();
    let path = r.json()["destination"].as_str().expect("destination").to_string();
    assert!(path.starts_with(&pgr.state_dir().join("mail").display().to_string()), "{path}");
    let eml = std::fs::read_to_string(&path).unwrap();
    assert!(eml.contains("Subject: [pgrehearse] test message from ") && eml.contains("multipart/alternative"), "{eml}");

    pgr.write_config(&cli_config(&pgr, ""));
    let r = pgr.run(&["email", "test"]);
    r.expect_code(78);
    assert!(r.stderr.contains("add an [email] section"), "{}", r.stderr);
}

#[test]
fn the_daemon_alerts_when_a_job_fails() {
    let smtp = SmtpServer::start();
    let pgr = Pgr::new();
    let port = http::free_port();
    // A live server that does not exist: every snapshot fails.
    let target = target_toml("app", "postgres://app@127.0.0.1:9/app", "snapshot_schedule = \"*/2 * * * * *\"");
    pgr.write_config(&format!(
        "{}{}{}{target}",
        local_store_toml(&pgr, ""),
        email_toml(&smtp.url(), ""),
        daemon_toml(port, None)
    ));
    let bg = start(&pgr, port);
    let m = wait_mail(&smtp, &bg, "ALERT", Duration::from_secs(60));
    assert_eq!(m.subject, "[pgrehearse] ALERT app: snapshot failed");
    assert_addressed(&m);
    assert!(m.text.contains("The snapshot job of target app failed"), "{}", m.text);
    assert!(m.text.contains("pgrehearse --target app snapshot"), "says what to do next: {}", m.text);
    let addr = format!("127.0.0.1:{port}");
    wait_for("the delivery in /metrics", Duration::from_secs(10), Duration::from_millis(100), || {
        metric(&addr, "pgrehearse_email_deliveries_total{outcome=\"sent\"}").filter(|n| *n >= 1.0)
    });
    stop(bg);
}

#[test]
fn the_daemon_mails_rehearsal_and_release_reports_and_survives_a_dead_mail_server() {
    let mut smtp = SmtpServer::start();
    let rig = Rig::start(
        "sqlx",
        "CREATE TABLE orders (id int PRIMARY KEY, note text);
         INSERT INTO orders SELECT g, 'order ' || g FROM generate_series(1, 5000) g;",
    );
    let port = http::free_port();
    let addr = format!("127.0.0.1:{port}");
    configure(&rig, "");
    let base = std::fs::read_to_string(rig.pgr.config_path()).unwrap();
    // A report per passing rehearsal (the default is a daily digest).
    let email = email_toml(&smtp.url(), "successes = \"each\"");
    rig.pgr.write_config(&format!("{base}{email}{}", daemon_toml(port, None)));
    // The daemon takes its baseline of the migration source before it
    // answers /healthz: a file written from now on is a change.
    let bg = start(&rig.pgr, port);

    // A migration dropped into the source directory: rehearsed, reported.
    rig.sqlx(
        "1",
        "orders_flag",
        "ALTER TABLE orders ADD COLUMN flag boolean NOT NULL DEFAULT false;\n",
        Some("ALTER TABLE orders DROP COLUMN flag;\n"),
    );
    let (plan, id) =
        wait_for("a passing rehearsal of the plan", Duration::from_secs(180), Duration::from_millis(300), || {
            let st = rig.pgr.run_json(&["status"]).json();
            let r = &st["last_rehearsal"];
            (r["current_plan"] == true && r["status"] == "passed")
                .then(|| (st["plan"].as_str().unwrap().to_string(), r["id"].as_str().unwrap().to_string()))
        });
    // The report of exactly that rehearsal arrives.
    let m = wait_mail(&smtp, &bg, &format!("rehearsal {id}"), Duration::from_secs(60));
    assert_eq!(m.subject, format!("[pgrehearse] app: rehearsal {id} passed"));
    assert_addressed(&m);
    let approve = format!("pgrehearse approve --target app --plan {plan}");
    assert!(m.text.contains(&approve) && m.text.contains("1 orders flag"), "{}", m.text);
    assert!(m.html.contains(&approve), "{}", m.html);
    assert!(m.html.contains("Duration and locks") && m.html.contains("height:10px;background:#2563eb"), "chart");
    assert!(m.html.contains("ACCESS EXCLUSIVE on orders"), "the lock the ALTER took: {}", m.html);

    // Approved, released in the always-open window, reported.
    rig.pgr.run_json(&["approve", "--plan", &plan, "--by", "email-test"]).ok();
    let m = wait_mail(&smtp, &bg, "release", Duration::from_secs(180));
    assert!(m.subject.starts_with("[pgrehearse] app: release r-") && m.subject.ends_with(" applied"), "{}", m.subject);
    assert_addressed(&m);
    assert!(m.text.contains("Pre-release snapshot: ") && m.text.contains("applied      1 orders flag"), "{}", m.text);

    // The mail server goes away: the next rehearsal still passes, and the
    // failed delivery is counted.
    smtp.stop();
    rig.sqlx("2", "orders_note_idx", "CREATE INDEX orders_note ON orders (note);\n", Some("DROP INDEX orders_note;\n"));
    wait_for("a passing rehearsal of the second plan", Duration::from_secs(180), Duration::from_millis(300), || {
        let st = rig.pgr.run_json(&["status"]).json();
        let r = &st["last_rehearsal"];
        (r["current_plan"] == true && r["status"] == "passed").then_some(())
    });
    let failed =
        wait_for("the failed delivery in /metrics", Duration::from_secs(30), Duration::from_millis(200), || {
            metric(&addr, "pgrehearse_email_deliveries_total{outcome=\"failed\"}").filter(|n| *n >= 1.0)
        });
    assert!(failed >= 1.0);
    let sent = metric(&addr, "pgrehearse_email_deliveries_total{outcome=\"sent\"}").unwrap_or(0.0);
    assert!(sent >= 2.0, "the rehearsal and release reports were counted as sent: {sent}");
    let log = bg.stderr_so_far();
    assert!(log.contains("Email delivery failed; retrying."), "a WARN per failed attempt: {}", tail(&log, 3000));
    stop(bg);
}

/// Waits for a mail whose subject contains `needle`; on timeout, fails with
/// the daemon's log and the server's.
fn wait_mail(smtp: &SmtpServer, bg: &Background, needle: &str, timeout: Duration) -> Received {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(m) = smtp.messages().into_iter().find(|m| m.subject.contains(needle)) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "no mail with `{needle}` in its subject after {timeout:?}; got {:?}\n--- daemon log (tail):\n{}\n--- aiosmtpd log:\n{}",
            smtp.messages().iter().map(|m| m.subject.clone()).collect::<Vec<_>>(),
            tail(&bg.stderr_so_far(), 6000),
            tail(&smtp.log(), 2000)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn stop(bg: Background) {
    crate::harness::proc::signal(bg.pid(), libc::SIGTERM);
    let r = bg.wait(Duration::from_secs(60));
    assert_eq!(r.code, 0, "the daemon stops cleanly: {}", tail(&r.stderr, 3000));
}
