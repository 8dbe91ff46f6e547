//! The README says what the binary does, checked against the binary:
//!
//! - every ```toml block is a configuration `pgrehearse config check`
//!   accepts (blocks without a target get a minimal one appended), with
//!   its bare-name `*_file` secrets served from a `$CREDENTIALS_DIRECTORY`,
//!   as under systemd;
//! - every `LoadCredential=` name is a secret some block reads, every
//!   secret of the deployment walkthrough has its `LoadCredential=`, and
//!   every `*_file` key named anywhere is a real config key;
//! - the commands table lists exactly the commands of `pgrehearse --help`;
//! - the metrics table lists exactly the metrics a real daemon exports
//!   after snapshotting, verifying, rehearsing, releasing and a refused
//!   reload, each with the labels it really has (the performance watch's
//!   two rows are checked by `release_watch.rs`, whose daemon watches).

use crate::harness::cli::Pgr;
use crate::harness::daemon::{daemon_toml, start};
use crate::harness::http;
use crate::harness::migrations::*;
use crate::harness::readme::{Shape, documented_metrics, exported_metrics, is_watch_metric, readme};
use crate::harness::release::configure;
use crate::harness::wait_for;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// The contents of the README's fenced blocks of `lang`.
fn blocks(text: &str, lang: &str) -> Vec<String> {
    let open = format!("```{lang}");
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match &mut current {
            None if line.trim_end() == open => current = Some(String::new()),
            Some(block) if line.trim_end() == "```" => {
                out.push(std::mem::take(block));
                current = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    out
}

/// `(key, value)` of every `something_file = "bare-name"` in `toml`.
fn secret_files(toml: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in toml.lines() {
        let line = line.split('#').next().unwrap_or_default();
        for part in line.split([',', '{', '}']) {
            let Some((k, v)) = part.split_once('=') else { continue };
            let (k, v) = (k.trim(), v.trim().trim_matches('"'));
            if k.ends_with("_file") && !v.is_empty() && !v.contains('/') {
                out.push((k.to_string(), v.to_string()));
            }
        }
    }
    out
}

/// Something a secret of `key` could hold: database URLs point the live
/// and the shadow at different servers, as validation requires.
fn secret_for(key: &str) -> &'static str {
    match key {
        "live_url_file" => "postgres://app:pw@db1.example/app",
        "admin_url_file" => "postgres://pgrehearse_admin:pw@db1.example/postgres",
        "shadow_url_file" => "postgres://pgrehearse:pw@db2.example/postgres",
        _ => "s3cr3t-value",
    }
}

#[test]
fn every_toml_block_passes_config_check() {
    let text = readme();
    let tomls = blocks(&text, "toml");
    assert!(tomls.len() >= 5, "only {} toml blocks found", tomls.len());
    let mut pgr = Pgr::new();
    let creds = pgr.dir().join("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    pgr.env("CREDENTIALS_DIRECTORY", creds.to_str().unwrap());
    for (i, block) in tomls.iter().enumerate() {
        for (key, name) in secret_files(block) {
            std::fs::write(creds.join(&name), format!("{}\n", secret_for(&key))).unwrap();
        }
        let toml = if block.contains("[[targets]]") {
            block.clone()
        } else {
            format!("{block}\n[[targets]]\nname = \"readme\"\nlive_url = \"postgres://app@db1.example/app\"\n")
        };
        pgr.write_config(&toml);
        let run = pgr.run(&["config", "check"]);
        assert_eq!(run.code, 0, "README toml block {} is not a valid config:\n{toml}\n---\n{}", i + 1, run.stderr);
    }
    // The walkthrough's blocks are among them.
    for needle in ["kind = \"payload\"", "secret_access_key_file", "transport = \"smtp\"", "token_file"] {
        assert!(tomls.iter().any(|b| b.contains(needle)), "no toml block with {needle}");
    }
}

#[test]
fn credentials_and_secret_keys_are_consistent() {
    let text = readme();
    let tomls = blocks(&text, "toml");
    let read: BTreeSet<String> = tomls.iter().flat_map(|b| secret_files(b)).map(|(_, v)| v).collect();
    let loaded: BTreeSet<String> = text
        .split("LoadCredential")
        .skip(1)
        .filter_map(|rest| {
            let rest = rest.strip_prefix("Encrypted").unwrap_or(rest).strip_prefix('=')?;
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
            (!name.is_empty()).then_some(name)
        })
        .collect();
    assert!(loaded.len() >= 6, "LoadCredential names: {loaded:?}");
    for name in &loaded {
        assert!(read.contains(name), "LoadCredential={name} is read by no `*_file` key in the README: {read:?}");
    }
    let walkthrough = tomls.iter().find(|b| b.contains("secret_access_key_file")).expect("the deployment config");
    for (key, name) in secret_files(walkthrough) {
        assert!(loaded.contains(&name), "{key} = \"{name}\" has no LoadCredential= in the README");
    }
    let raw = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/config/raw.rs")).unwrap();
    let named: BTreeSet<&str> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| {
            w.ends_with("_file") && w.len() > "_file".len() && w.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
        .collect();
    assert!(named.len() >= 6, "{named:?}");
    for key in named {
        assert!(raw.contains(&format!("pub {key}:")), "the README names `{key}`, which is no config key");
    }
}

#[test]
fn the_commands_table_lists_every_command() {
    let help = Pgr::new().run(&["--help"]);
    help.ok();
    let listed: BTreeSet<String> = crate::harness::cli::commands_in_help(&help.stdout).into_iter().collect();
    let text = readme();
    let section = text.split("\n## Commands\n").nth(1).expect("## Commands").split("\n## ").next().unwrap();
    let documented: BTreeSet<String> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split(['`', ' ']).next())
        .filter(|c| *c != "command")
        .map(str::to_string)
        .collect();
    assert!(listed.len() >= 15, "{listed:?}");
    assert_eq!(documented, listed, "README commands table vs pgrehearse --help");
}

#[test]
fn the_metrics_table_is_what_a_real_daemon_exports() {
    let all = documented_metrics();
    assert!(all.len() >= 15, "metrics table rows: {all:?}");
    // The performance watch's rows are checked by release_watch.rs, whose
    // daemon watches a release; they must be there all the same.
    assert!(all.keys().filter(|n| is_watch_metric(n)).count() == 2, "{all:?}");
    let documented: BTreeMap<String, Shape> = all.into_iter().filter(|(n, _)| !is_watch_metric(n)).collect();

    // A daemon that runs every kind of job once: scheduled snapshots and
    // drills, the rehearsal of a plan pending at start, and its release
    // (approved below) in an always-open window.
    let rig = Rig::start("sqlx", "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100);");
    rig.sqlx("1", "add_note", "ALTER TABLE t ADD COLUMN note text;\n", Some("ALTER TABLE t DROP COLUMN note;\n"));
    let port = http::free_port();
    let addr = format!("127.0.0.1:{port}");
    configure(&rig, "snapshot_schedule = \"*/3 * * * * *\"\nverify_schedule = \"*/5 * * * * *\"");
    let good = format!("{}{}", std::fs::read_to_string(rig.pgr.config_path()).unwrap(), daemon_toml(port, None));
    rig.pgr.write_config(&good);
    let bg = start(&rig.pgr, port);

    let plan = wait_for("a passing rehearsal", Duration::from_secs(120), Duration::from_millis(300), || {
        let st = rig.pgr.run_json(&["status"]).json();
        (st["last_rehearsal"]["current_plan"] == true && st["last_rehearsal"]["status"] == "passed")
            .then(|| st["plan"].as_str().unwrap().to_string())
    });
    rig.pgr.run_json(&["approve", "--plan", &plan, "--by", "readme-test"]).ok();
    // A reload with an invalid file is refused and counted.
    rig.pgr.write_config(&good.replace("[daemon]", "[daemon]\nno_such_key = 1"));
    crate::harness::proc::signal(bg.pid(), libc::SIGHUP);

    let wanted: BTreeSet<&String> = documented.keys().collect();
    let exported = wait_for("every documented metric", Duration::from_secs(180), Duration::from_millis(500), || {
        let m = exported_metrics(&http::get(&addr, "/metrics")?.body);
        wanted.iter().all(|n| m.get(*n).is_some_and(|(_, l)| !l.is_empty() || documented[*n].1.is_empty())).then_some(m)
    });
    let names =
        |m: &BTreeMap<String, Shape>| m.keys().filter(|n| !is_watch_metric(n)).cloned().collect::<BTreeSet<_>>();
    assert_eq!(names(&documented), names(&exported), "README metrics (left) vs the daemon's /metrics (right)");
    for (name, (kind, labels)) in &documented {
        assert_eq!((kind, labels), (&exported[name].0, &exported[name].1), "type and labels of {name}");
    }
    crate::harness::proc::signal(bg.pid(), libc::SIGTERM);
    let r = bg.wait(Duration::from_secs(60));
    assert_eq!(r.code, 0, "{}", tail(&r.stderr, 3000));
}
