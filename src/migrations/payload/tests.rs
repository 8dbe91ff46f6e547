//! Tests of the Payload source (`payload.rs`): file order, history parsing, the CLI output parser on captured output, and secrets kept out of argv.

use super::output::*;
use super::*;

fn feed(text: &str) -> Progress {
    let mut p = Progress::default();
    let t = Instant::now();
    for line in text.split_inclusive('\n') {
        p.line(&strip_ansi(line), t);
    }
    p
}

// Captured from `node node_modules/payload/bin.js migrate` (Payload
// 3.90.2) on the fixture, stdout, byte for byte.
const MIGRATE_OK: &str = "[09:32:47] \u{1b}[33mWARN\u{1b}[39m: \u{1b}[36mNo email adapter provided. Email will be written to console. More info at https://payloadcms.com/docs/email/overview.\u{1b}[39m
[09:32:47] \u{1b}[32mINFO\u{1b}[39m: \u{1b}[36mReading migration files from /work/main/tests/fixtures/payload/migrations\u{1b}[39m
[09:32:47] \u{1b}[32mINFO\u{1b}[39m: \u{1b}[36mMigrating: 20261124_093236_initial\u{1b}[39m
[09:32:47] \u{1b}[32mINFO\u{1b}[39m: \u{1b}[36mMigrated:  20261124_093236_initial (28ms)\u{1b}[39m
[09:32:47] \u{1b}[32mINFO\u{1b}[39m: \u{1b}[36mMigrating: 20261124_093251_posts_slug\u{1b}[39m
[09:32:47] \u{1b}[32mINFO\u{1b}[39m: \u{1b}[36mMigrated:  20261124_093251_posts_slug (3ms)\u{1b}[39m
[09:32:47] \u{1b}[32mINFO\u{1b}[39m: \u{1b}[36mDone.\u{1b}[39m
";

// A run where the second file throws (exit status 1).
const MIGRATE_FAIL: &str = "[09:34:07] \u{1b}[32mINFO\u{1b}[39m: \u{1b}[36mReading migration files from /work/main/tests/fixtures/payload/migrations\u{1b}[39m
[09:34:07] \u{1b}[32mINFO\u{1b}[39m: \u{1b}[36mMigrating: 20261124_100000_slow_lock\u{1b}[39m
[09:34:08] \u{1b}[32mINFO\u{1b}[39m: \u{1b}[36mMigrated:  20261124_100000_slow_lock (303ms)\u{1b}[39m
[09:34:08] \u{1b}[32mINFO\u{1b}[39m: \u{1b}[36mMigrating: 20261124_100100_planted_failure\u{1b}[39m
[09:34:08] \u{1b}[31mERROR\u{1b}[39m: \u{1b}[36mError running migration 20261124_100100_planted_failure planted failure.\u{1b}[39m
err: {
  \"type\": \"Error\",
  \"message\": \"planted failure\",
  \"stack\":
      Error: planted failure
          at Object.up (/work/main/tests/fixtures/payload/migrations/20261124_100100_planted_failure.ts:9:9)
          at async runMigrationFile (/work/main/tests/fixtures/payload/node_modules/@payloadcms/drizzle/src/migrate.ts:99:5)
}
";

const DOWN_OK: &str =
    "[09:34:15] \u{1b}[32mINFO\u{1b}[39m: \u{1b}[36mRolling back batch 3 consisting of 3 migration(s).\u{1b}[39m
[09:34:15] \u{1b}[32mINFO\u{1b}[39m: \u{1b}[36mMigrating down: 20261124_100000_slow_lock\u{1b}[39m
[09:34:15] \u{1b}[32mINFO\u{1b}[39m: \u{1b}[36mMigrated down:  20261124_100000_slow_lock (3ms)\u{1b}[39m
[09:34:15] \u{1b}[32mINFO\u{1b}[39m: \u{1b}[36mDone.\u{1b}[39m
";

// migrate:down when the batch's file is gone: an uncaught error on stderr.
const DOWN_MISSING: &str =
    "[09:34:28] \u{1b}[32mINFO\u{1b}[39m: \u{1b}[36mRolling back batch 3 consisting of 3 migration(s).\u{1b}[39m
/work/main/tests/fixtures/payload/node_modules/@payloadcms/drizzle/src/migrateDown.ts:38
  throw new Error(`Migration ${migration.name} not found locally.`)
        ^


Error: Migration 20261124_100000_slow_lock not found locally.
at Object.migrateDown (/work/main/tests/fixtures/payload/node_modules/@payloadcms/drizzle/src/migrateDown.ts:38:13)
";

// `migrate` with a batch = -1 row and stdin on /dev/null: it waits here.
const DEV_PROMPT: &str = "[09:33:01] \u{1b}[32mINFO\u{1b}[39m: \u{1b}[36mReading migration files from /x/migrations\u{1b}[39m
\u{1b}[?25l\u{1b}[2K\u{1b}[1G\u{1b}[36m?\u{1b}[39m \u{1b}[1mIt looks like you've run Payload in dev mode, meaning you've dynamically pushed changes to your database.

If you'd like to run migrations, data loss will occur. Would you like to proceed?\u{1b}[22m \u{1b}[90m\u{203a}\u{1b}[39m \u{1b}[90m(y/N)\u{1b}[39m";

#[test]
fn parses_a_successful_migrate() {
    let p = feed(MIGRATE_OK);
    let got: Vec<(&str, u64)> = p.migrated.iter().map(|m| (m.name.as_str(), m.duration_ms)).collect();
    assert_eq!(got, vec![("20261124_093236_initial", 28), ("20261124_093251_posts_slug", 3)]);
    assert!(p.migrated.iter().all(|m| m.started_at.is_some()));
    assert!(p.running.is_none() && p.failed.is_none() && !p.prompt);
    assert!(!p.tail.contains('\u{1b}'), "colours stripped");
    assert!(p.tail.contains("INFO: Migrated:  20261124_093236_initial (28ms)"));
}

#[test]
fn parses_a_failure_and_keeps_what_committed_before() {
    let p = feed(MIGRATE_FAIL);
    assert_eq!(p.migrated.len(), 1);
    assert_eq!(p.migrated[0].name, "20261124_100000_slow_lock");
    assert_eq!(p.migrated[0].duration_ms, 303);
    assert_eq!(p.failed.as_deref(), Some("20261124_100100_planted_failure"));
    assert_eq!(p.running.as_ref().map(|r| r.0.as_str()), Some("20261124_100100_planted_failure"));
    assert!(pg::tools::tail(&p.tail, 2000).contains("planted failure"));
}

#[test]
fn the_failing_migration_ran_from_its_start_line_to_its_error_line() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let mut p = Progress::default();
    p.line("INFO: Migrating: m1\n", at(0));
    p.line("INFO: Migrated:  m1 (40ms)\n", at(45));
    p.line("INFO: Migrating: m2\n", at(50));
    p.line("ERROR: Error running migration m2 boom.\n", at(170));
    assert_eq!(p.unfinished(at(900)), Some((at(50), at(170))));
    // Killed while running: until the kill.
    let mut p = Progress::default();
    p.line("INFO: Migrating: m3\n", at(10));
    assert_eq!(p.unfinished(at(900)), Some((at(10), at(900))));
    // Nothing started: nothing to time.
    assert_eq!(Progress::default().unfinished(at(900)), None);
}

#[test]
fn parses_migrate_down() {
    let p = feed(DOWN_OK);
    assert_eq!(p.migrated.len(), 1);
    assert_eq!((p.migrated[0].name.as_str(), p.migrated[0].duration_ms), ("20261124_100000_slow_lock", 3));
    let p = feed(DOWN_MISSING);
    assert!(p.migrated.is_empty());
    assert_eq!(p.failed.as_deref(), Some("20261124_100000_slow_lock"));
}

#[test]
fn sees_the_dev_mode_prompt() {
    let p = feed(DEV_PROMPT);
    assert!(p.prompt);
    assert!(p.migrated.is_empty());
    assert!(!p.tail.contains('\u{1b}'));
}

#[test]
fn parses_json_logs_and_odd_names() {
    // A project whose config sets its own (JSON) pino logger.
    let line = r#"{"level":30,"time":1,"msg":"Migrated:  20240101_000000_a (12ms)"}"#;
    assert_eq!(event(line), Some(Event::Done { name: "20240101_000000_a".into(), ms: 12 }));
    let line = r#"{"level":30,"time":1,"msg":"Migrating: 20240101_000000_a"}"#;
    assert_eq!(event(line), Some(Event::Start("20240101_000000_a".into())));
    assert_eq!(event("INFO: Migrated:  with space (7ms)"), Some(Event::Done { name: "with space".into(), ms: 7 }));
    assert_eq!(event("INFO: Migrated:  broken (ms)"), None);
    assert_eq!(event("INFO: Done."), None);
    let mut p = Progress::default();
    let t = Instant::now();
    p.line("INFO: Migrating: with space\n", t);
    p.line("ERROR: Error running migration with space boom.\n", t);
    assert_eq!(p.failed.as_deref(), Some("with space"));
}

#[test]
fn strips_ansi_sequences() {
    assert_eq!(strip_ansi("\u{1b}[32mINFO\u{1b}[39m: x"), "INFO: x");
    assert_eq!(strip_ansi("\u{1b}[?25l\u{1b}[2K\u{1b}[1Ga"), "a");
    assert_eq!(strip_ansi("\u{1b}]0;title\u{7}b"), "b");
    assert_eq!(strip_ansi("plain ✓"), "plain ✓");
}

#[test]
fn files_in_payload_order() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for name in [
        "20240102_000000_b.ts",
        "20240101_000000_a.ts",
        "20240101_000000_a_more.js",
        "index.ts",
        "20240101_000000_a.json",
        "README.md",
        "Z_upper.ts",
    ] {
        std::fs::write(d.join(name), name).unwrap();
    }
    let got = files(d).unwrap();
    let names: Vec<&str> = got.iter().map(|f| f.name.as_str()).collect();
    // Sorted on whole file names: "." (0x2E) < "_" (0x5F), digits < "Z".
    assert_eq!(names, vec!["20240101_000000_a", "20240101_000000_a_more", "20240102_000000_b", "Z_upper"]);
    assert_eq!(got[0].checksum, hex::encode(Sha256::digest(b"20240101_000000_a.ts")));
    assert_eq!(got[0].path, d.join("20240101_000000_a.ts"));
}

#[test]
fn files_sort_by_utf16_like_javascript() {
    let dir = tempfile::tempdir().unwrap();
    // JavaScript compares UTF-16 code units: U+1F600 is 0xD83D 0xDE00,
    // below U+E000 and U+FF21; in UTF-8 byte order it would come last.
    std::fs::write(dir.path().join("a\u{FF21}.ts"), "").unwrap();
    std::fs::write(dir.path().join("a\u{1F600}.ts"), "").unwrap();
    std::fs::write(dir.path().join("a\u{E000}.ts"), "").unwrap();
    let names: Vec<String> = files(dir.path()).unwrap().into_iter().map(|f| f.name).collect();
    assert_eq!(names, vec!["a\u{1F600}", "a\u{E000}", "a\u{FF21}"]);
}

#[test]
fn files_finds_the_migration_dir_of_a_project_and_refuses_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("package.json"), "{}").unwrap();
    std::fs::create_dir(d.join("migrations")).unwrap();
    std::fs::write(d.join("migrations/20240101_a.ts"), "x").unwrap();
    assert_eq!(migration_dir(d), d.join("migrations"));
    assert_eq!(files(d).unwrap().len(), 1);
    std::fs::create_dir_all(d.join("src/migrations")).unwrap();
    assert_eq!(migration_dir(d), d.join("src/migrations"), "Payload's default prefers src/migrations");
    std::fs::write(d.join("migrations/20240101_a.js"), "y").unwrap();
    let err = files(&d.join("migrations")).unwrap_err();
    assert!(matches!(err, PayloadError::DuplicateName { ref name, .. } if name == "20240101_a"), "{err}");
    let err = files(&d.join("nope")).unwrap_err();
    assert!(err.to_string().contains("migrations.dir"), "{err}");
}

#[test]
fn the_password_reaches_the_child_only_through_its_environment() {
    let url = ConnUrl::parse("postgres://app:s%40cret@localhost/app?host=/tmp/s&application_name=x").unwrap();
    let child = child_url(&url, "pgrehearse-payload");
    assert!(!child.contains("cret") && child.starts_with("postgres://app@localhost/app?"), "{child}");
    assert!(child.contains("application_name=pgrehearse-payload") && !child.contains("application_name=x"));
    assert!(child.contains("host=%2Ftmp%2Fs") || child.contains("host=/tmp/s"), "{child}");
    let s = crate::migrations::tool::Secrets::of_url(&url);
    let out = s.redact(&format!("TypeError: Invalid URL input: '{child}' and s@cret"));
    assert!(!out.contains("cret"), "{out}");
    let q = ConnUrl::parse("postgres://app@localhost/app?password=zz%26y").unwrap();
    let child = child_url(&q, "a");
    assert!(!child.contains("password=") && !child.contains("zz"), "no password anywhere: {child}");
    assert_eq!(url::Url::parse(&child).unwrap().password(), None);
    let none = crate::migrations::tool::Secrets::of_url(&ConnUrl::parse("postgres://app@h/db").unwrap());
    assert_eq!(none.redact("postgres://app@h/db"), "postgres://app@h/db");
}

#[test]
fn error_messages_say_what_to_do() {
    let e = PayloadError::DevPushRows { table: "payload_migrations".into(), count: 1 };
    let s = e.to_string();
    assert!(s.contains("batch = -1") && s.contains("DELETE FROM payload_migrations WHERE batch = -1"), "{s}");
    let e = PayloadError::Failed {
        command: "migrate".into(),
        status: "exit status: 1".into(),
        migration: Some("m2".into()),
        migrated: Vec::new(),
        ran: None,
        output_tail: "boom".into(),
    };
    assert!(e.to_string().contains("failed (exit status: 1) in `m2`"), "{e}");
    let e = PayloadError::Timeout {
        command: "migrate".into(),
        after_secs: 5,
        migration: None,
        waiting_on_prompt: true,
        migrated: Vec::new(),
        ran: None,
        sessions_ended: Some(1),
        output_tail: String::new(),
    };
    assert!(e.to_string().contains("waiting for an answer to a prompt"), "{e}");
}
