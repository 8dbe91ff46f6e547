//! `pgrehearse config check`: invalid configurations exit 78 and name the
//! file, the line and the key; `--json` reports `{ok, errors}`; a valid
//! config is echoed with its secrets redacted.

use crate::harness::cli::{Pgr, Run, local_store_toml, target_toml};

const SECRET_PW: &str = "Zx9-config-secret-Qw7";

/// The 1-based line of the first line of `toml` that starts with `key`.
fn line_of(toml: &str, key: &str) -> usize {
    toml.lines().position(|l| l.trim_start().starts_with(key)).unwrap_or_else(|| panic!("{key} not in config:\n{toml}"))
        + 1
}

/// Writes `toml`, runs `config check`, and asserts exit 78 with an error
/// naming the file, `key` and (when given) the line.
fn expect_invalid(toml: &str, key: &str, line: Option<usize>) -> (Pgr, Run) {
    let pgr = Pgr::new();
    pgr.write_config(toml);
    let run = pgr.run(&["config", "check"]);
    run.expect_code(78);
    let path = pgr.config_path().display().to_string();
    assert!(run.stderr.contains(&path), "error does not name the file {path}:\n{}", run.stderr);
    assert!(run.stderr.contains(key), "error does not name the key {key}:\n{}", run.stderr);
    if let Some(line) = line {
        assert!(
            run.stderr.contains(&format!("line {line}")) || run.stderr.contains(&format!("{path}:{line}")),
            "error does not name line {line}:\n{}",
            run.stderr
        );
    }
    (pgr, run)
}

fn base(pgr: &Pgr, target_extra: &str) -> String {
    format!(
        "{}{}",
        local_store_toml(pgr, ""),
        target_toml(
            "app",
            &format!("postgres://app:{SECRET_PW}@localhost/app?host=/tmp/nowhere&port=5432"),
            target_extra
        )
    )
}

#[test]
fn unknown_key_is_rejected_with_location() {
    // In [store], where a typo of `bucket` would land.
    let toml = base(&Pgr::new(), "").replacen("kind = \"local\"", "kind = \"local\"\nbucketz = \"x\"", 1);
    expect_invalid(&toml, "bucketz", Some(line_of(&toml, "bucketz")));
}

#[test]
fn bad_duration_is_rejected_with_location() {
    let toml = base(&Pgr::new(), "lock_timeout = \"3 parsecs\"");
    let (_, run) = expect_invalid(&toml, "lock_timeout", Some(line_of(&toml, "lock_timeout")));
    assert!(run.stderr.contains("3 parsecs"), "error does not quote the bad value:\n{}", run.stderr);
}

#[test]
fn missing_target_is_rejected() {
    let pgr = Pgr::new();
    let toml = local_store_toml(&pgr, "");
    expect_invalid(&toml, "targets", None);
}

#[test]
fn unreadable_secret_file_is_rejected_with_location() {
    let pgr = Pgr::new();
    let toml = format!("{}[[targets]]\nname = \"app\"\nlive_url_file = \"/nonexistent\"\n", local_store_toml(&pgr, ""));
    let (_, run) = expect_invalid(&toml, "live_url_file", Some(line_of(&toml, "live_url_file")));
    assert!(run.stderr.contains("/nonexistent"), "error does not name the secret file:\n{}", run.stderr);
}

#[test]
fn shadow_equal_to_live_is_rejected() {
    let url = format!("postgres://app:{SECRET_PW}@localhost/app?host=/tmp/nowhere&port=5432");
    let toml = base(&Pgr::new(), &format!("shadow_url = \"{url}\""));
    let (_, run) = expect_invalid(&toml, "shadow_url", Some(line_of(&toml, "shadow_url")));
    assert!(!run.stderr.contains(SECRET_PW), "the error prints the password:\n{}", run.stderr);
}

#[test]
fn json_errors_document() {
    let toml = base(&Pgr::new(), "lock_timeout = \"3 parsecs\"");
    let pgr = Pgr::new();
    pgr.write_config(&toml);
    let run = pgr.run_json(&["config", "check"]);
    run.expect_code(78);
    let v = run.json();
    assert_eq!(v["ok"], false, "{v}");
    let errors = v["errors"].as_array().unwrap_or_else(|| panic!("no errors[]: {v}"));
    assert!(!errors.is_empty(), "ok=false but no errors: {v}");
    assert!(v["errors"].to_string().contains("lock_timeout"), "errors do not name the key: {v}");
}

#[test]
fn valid_config_is_ok_and_redacted() {
    let pgr = Pgr::new();
    let toml = base(&pgr, "lock_timeout = \"3s\"\nretention = { keep_last = 7, keep_daily = 14, keep_weekly = 8 }");
    pgr.write_config(&toml);

    let human = pgr.run(&["config", "check"]);
    human.ok();
    assert!(!human.stdout.is_empty(), "config check printed nothing");
    assert!(!human.stdout.contains(SECRET_PW), "password in config check output:\n{}", human.stdout);
    assert!(!human.stderr.contains(SECRET_PW), "password in config check logs:\n{}", human.stderr);

    let run = pgr.run_json(&["config", "check"]);
    run.ok();
    let v = run.json();
    assert_eq!(v["ok"], true, "{v}");
    assert!(!run.stdout.contains(SECRET_PW), "password in config check --json:\n{}", run.stdout);
    assert!(v["errors"].as_array().is_none_or(|e| e.is_empty()), "ok but errors: {v}");
}
