//! Errors classify themselves, and `main` only translates: every class has
//! its documented exit code, an error chain takes the class of its outermost
//! domain error, and every `thiserror` enum in `src/` implements `Classify`
//! with bounded kinds and is named in a `classifier!` list.

use std::io;
use std::path::Path;

use crate::error_class::{Class, Classify, is_label};
use crate::exit;
use crate::pg::PgError;
use crate::pg::lock::LockError;
use crate::pg::tools::ToolError;
use crate::store::StoreError;

#[test]
fn every_class_has_its_documented_exit_code() {
    let codes: Vec<(Class, u8)> = Class::ALL.iter().map(|c| (*c, exit::of(*c))).collect();
    assert_eq!(
        codes,
        [
            (Class::Usage, 64),
            (Class::Refused, 75),
            (Class::Unavailable, 69),
            (Class::Configuration, 78),
            (Class::Problems, 2),
            (Class::Failed, 1),
        ]
    );
}

fn refused_io() -> sqlx::Error {
    sqlx::Error::Io(io::Error::from(io::ErrorKind::ConnectionRefused))
}

fn pg_down() -> PgError {
    PgError::Connect { url: "postgres://app@db1/app".into(), source: refused_io() }
}

fn pg_restore_missing() -> ToolError {
    ToolError::NotFound { tool: "pg_restore".into(), looked: "/usr/bin".into(), server_major: 16 }
}

fn code(err: impl Into<anyhow::Error>) -> u8 {
    crate::exit_code(&err.into())
}

#[test]
fn a_missing_client_program_is_unavailable_wherever_it_is_wrapped() {
    use crate::drill::DrillError;
    use crate::rehearsal::RehearsalError;
    use crate::restore::RestoreError;
    use crate::snapshot::SnapshotError;
    assert_eq!(code(pg_restore_missing()), 69);
    assert_eq!(code(DrillError::Tool(pg_restore_missing())), 69);
    assert_eq!(code(RestoreError::Load(DrillError::Tool(pg_restore_missing()))), 69);
    assert_eq!(code(RehearsalError::Drill(DrillError::Tool(pg_restore_missing()))), 69);
    assert_eq!(code(SnapshotError::Tool(pg_restore_missing())), 69);
    let context = anyhow::Error::from(DrillError::Tool(pg_restore_missing())).context("verifying the latest snapshot");
    assert_eq!(crate::exit_code(&context), 69, "a context in front does not hide the class");
    let msg = pg_restore_missing().to_string();
    assert!(msg.contains("apt-get install postgresql-client-16") && msg.contains("pg_bindir"), "{msg}");
}

#[test]
fn wrapped_errors_take_the_class_of_what_they_wrap() {
    use crate::config::ConfigError;
    use crate::migrations::{PlanError, SourceError};
    use crate::release::ReleaseError;
    use crate::release::approval::ApprovalError;
    use crate::release::preflight::PreflightError;
    use crate::restore::RestoreError;
    use crate::snapshot::SnapshotError;
    use crate::state::StateError;
    use crate::status::StatusError;

    let held = || LockError::Held { target: "app".into(), holder: String::new() };
    assert_eq!(code(ReleaseError::Lock(held())), 75);
    assert_eq!(code(SnapshotError::Lock(LockError::Pg(pg_down()))), 69);
    assert_eq!(code(ReleaseError::Preflight(PreflightError::Store(StoreError::Unavailable("x".into())))), 69);
    assert_eq!(code(ReleaseError::Preflight(PreflightError::State(StateError::Query(sqlx::Error::RowNotFound)))), 1);
    assert_eq!(code(StatusError::Plan(PlanError::Source(SourceError::NotConfigured { target: "app".into() }))), 78);
    let history = SourceError::History { table: "_sqlx_migrations".into(), source: refused_io() };
    assert_eq!(code(ApprovalError::Plan(PlanError::Source(history))), 69);
    assert_eq!(code(ApprovalError::BadHash { given: "latest".into() }), 64);
    assert_eq!(code(ApprovalError::NotRehearsed { plan: "abc".into() }), 75);
    assert_eq!(code(ConfigError::UnknownTarget { name: "nope".into(), known: "app".into() }), 78);
    assert_eq!(code(RestoreError::Problems { id: "s".into(), db: "d".into(), problems: "p".into() }), 2);
    assert_eq!(code(RestoreError::Exists { name: "app_copy".into() }), 64);
    assert_eq!(code(anyhow::anyhow!("cannot listen on 127.0.0.1:1")), 1, "no domain error: failed");
}

#[test]
fn kinds_tell_a_store_outage_from_a_database_outage() {
    use crate::snapshot::SnapshotError;
    let s3 = SnapshotError::Store(StoreError::Unavailable("S3 bucket b: connection refused".into()));
    let pg = SnapshotError::Lock(LockError::Pg(pg_down()));
    assert_eq!((s3.class(), s3.kind()), (Class::Unavailable, "store_unavailable"));
    assert_eq!((pg.class(), pg.kind()), (Class::Unavailable, "pg_unreachable"));
}

/// `(file, enum name)` of every `thiserror` enum under `src/`.
fn domain_enums(dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            domain_enums(&path, out);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if !(line.trim_start().starts_with("#[derive(") && line.contains("thiserror::Error")) {
                continue;
            }
            let name = lines[i + 1..]
                .iter()
                .map(|l| l.trim_start())
                .find(|l| !l.starts_with("#["))
                .and_then(|l| l.split("enum ").nth(1))
                .map(|rest| rest.split(|c: char| !c.is_alphanumeric() && c != '_').next().unwrap().to_string());
            if let Some(name) = name {
                out.push((path.display().to_string(), name));
            }
        }
    }
}

fn src_text(dir: &Path, out: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            src_text(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("main_tests.rs") {
            out.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
}

#[test]
fn every_domain_error_enum_classifies_itself_and_main_finds_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut enums = Vec::new();
    domain_enums(&src, &mut enums);
    assert!(enums.len() >= 20, "found only {enums:?}");
    let mut text = String::new();
    src_text(&src, &mut text);
    let listed: Vec<&str> = crate::EDGE_ERRORS
        .iter()
        .chain(crate::jobs::DOMAIN_ERRORS)
        .map(|t| t.rsplit("::").next().unwrap().trim())
        .collect();
    for (file, name) in &enums {
        assert!(text.contains(&format!("impl Classify for {name} ")), "{file}: {name} does not implement Classify");
        assert!(
            listed.contains(&name.as_str()),
            "{file}: {name} is missing from the classifier! lists (jobs/error_chain.rs, or main.rs for the edges)"
        );
    }
}

#[test]
fn every_kind_is_a_bounded_label() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut text = String::new();
    src_text(&src, &mut text);
    let mut seen = 0;
    for block in text.split("impl Classify for ").skip(1) {
        let body = block.split("\n}\n").next().unwrap();
        let Some(kind_fn) = body.split("fn kind(&self)").nth(1) else { continue };
        for literal in kind_fn.split('"').skip(1).step_by(2) {
            assert!(is_label(literal), "kind {literal:?} is not a snake_case label in:\nimpl Classify for {body}");
            seen += 1;
        }
    }
    assert!(seen >= 100, "only {seen} kinds found");
}
