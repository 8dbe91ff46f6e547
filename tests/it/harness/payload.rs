//! Helpers for tests of the `payload` migration source: a [`Rig`] whose
//! migration source is a copy of the real Payload CMS 3 project in
//! `tests/fixtures/payload` (installed from npm by scripts/test.sh), the
//! fixture's migration names, and Payload's own CLI to run against a
//! database (so a test can set live up, or read it, as Payload itself does).

use super::migrations::{PASSWORD, Rig, rows};
use super::run_ok;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

pub const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/payload");
pub const INITIAL: &str = "20261124_093236_initial";
pub const SLUG: &str = "20261124_093251_posts_slug";
pub const SLOW: &str = "20261124_100000_slow_lock";
pub const FAILING: &str = "20261124_100100_planted_failure";
pub const UNIQUE_EMAIL: &str = "20261124_100200_unique_author_email";

/// A rig whose migration source is a copy of the fixture project (its
/// `node_modules` symlinked) holding only the initial migration, applied to
/// live by Payload's own CLI.
pub fn payload_rig() -> Rig {
    let rig = Rig::start("payload", "");
    let project = &rig.dir;
    for f in ["package.json", "payload.config.ts", "tsconfig.json"] {
        std::fs::copy(Path::new(FIXTURE).join(f), project.join(f)).expect("copy fixture file");
    }
    std::os::unix::fs::symlink(Path::new(FIXTURE).join("node_modules"), project.join("node_modules"))
        .expect("symlink node_modules");
    std::fs::create_dir(project.join("migrations")).unwrap();
    add(&rig, "migrations", INITIAL);
    payload_cli(project, &rig.live.url("app", "app", PASSWORD), "migrate");
    rig
}

/// Copies `<name>.ts` (and its schema snapshot, if any) from the fixture's
/// `from` directory into the project's migrations.
pub fn add(rig: &Rig, from: &str, name: &str) {
    for ext in ["ts", "json"] {
        let src = Path::new(FIXTURE).join(from).join(format!("{name}.{ext}"));
        if src.exists() {
            std::fs::copy(&src, rig.dir.join("migrations").join(format!("{name}.{ext}"))).unwrap();
        }
    }
}

/// Runs Payload's CLI (`migrate`, `migrate:status`, …) in `project` against
/// `url`, stdin closed; panics if it fails. Returns its stdout.
pub fn payload_cli(project: &Path, url: &str, command: &str) -> String {
    run_ok(
        Command::new("node")
            .arg("node_modules/payload/bin.js")
            .arg(command)
            .current_dir(project)
            .env("DATABASE_URI", url)
            .stdin(std::process::Stdio::null()),
    )
}

/// Live's `payload_migrations` as `name:batch`, in insertion order.
pub fn history(rig: &Rig) -> Vec<String> {
    rows(&rig.live, "app", "SELECT name || ':' || batch FROM payload_migrations ORDER BY id")
}

/// The entry named `name` in a report's or release's `migrations[]`.
pub fn by_name<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["migrations"]
        .as_array()
        .and_then(|a| a.iter().find(|m| m["name"] == name))
        .unwrap_or_else(|| panic!("migration {name} not in the report: {report:#}"))
}
