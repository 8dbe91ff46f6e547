//! Plans that external tools run (Payload's CLI, a `command` source's
//! `apply`), for the rehearsal and the release alike: the tool runs on a
//! [`crate::migrations::tool::ToolProcess`] with the target's timeouts in
//! `PGOPTIONS`, and its result becomes one [`Step`] per migration of the
//! plan. What the tool printed arrives redacted.

use std::time::Instant;

use super::{Failure, Run, Status, Step};
use crate::config::Target;
use crate::conn_url::ConnUrl;
use crate::migrations::payload::{Payload, PayloadError};
use crate::migrations::{Migration, Source, command};

/// The target's Payload project, with its timeouts for the CLI's sessions.
pub fn project(source: &Source<'_>) -> Payload {
    Payload {
        project_dir: source.config.dir.clone().unwrap_or_default(),
        timeout: source.config.timeout,
        table: source.table(),
        pg_options: Some(pg_options(source.target)),
    }
}

/// The target's session as `PGOPTIONS` for external tools' sessions: its
/// timeouts, and its `migration_role` as `-c role=…` (libpq and
/// node-postgres read `PGOPTIONS`), like [`super::Session`] for native ones;
/// and read-write whatever the database's default (a release's write fence,
/// see [`super::READ_WRITE`]).
pub fn pg_options(target: &Target) -> String {
    let mut o = format!("-c lock_timeout={} -c default_transaction_read_only=off", target.lock_timeout.as_millis());
    if let Some(st) = target.statement_timeout {
        o.push_str(&format!(" -c statement_timeout={}", st.as_millis()));
    }
    if let Some(role) = &target.migration_role {
        o.push_str(&format!(" -c role={}", options_escape(role)));
    }
    o
}

/// A value for `PGOPTIONS`, which splits on spaces: a backslash escapes
/// the next character.
fn options_escape(value: &str) -> String {
    value.chars().flat_map(|c| if c == ' ' || c == '\\' { vec!['\\', c] } else { vec![c] }).collect()
}

/// Runs one of a `command` source's commands (`apply`, `down`) on the
/// database at `url` with the target's timeouts; the error is a sentence
/// with the end of its (redacted) output.
pub async fn command_step(source: &Source<'_>, command: &str, url: &ConnUrl, app: &str) -> Result<(), String> {
    let options = pg_options(source.target);
    let run = command::run(command, source.config, url, app, source.config.timeout, Some(&options)).await;
    command::outcome(command, run)
}

/// The `command` source's `apply` as one step: every migration of the plan
/// gets its outcome. The tool commits as it goes, so a failure may leave
/// part of it behind (`partial`).
pub async fn command(source: &Source<'_>, url: &ConnUrl, app: &str, plan: &[Migration]) -> Run {
    let apply = source.config.apply.clone().unwrap_or_default();
    let start = Instant::now();
    let ran = command_step(source, &apply, url, app).await;
    let end = Instant::now();
    let failure = ran.err();
    let status = if failure.is_some() { Status::Failed } else { Status::Applied };
    let steps = plan
        .iter()
        .map(|_| Step {
            status,
            duration_ms: (end - start).as_millis() as u64,
            attempts: 1,
            failure: failure.clone().map(|f| Failure::of_file(apply.clone(), f)),
            error: failure.clone(),
            ran: Some((start, end)),
            ..Step::default()
        })
        .collect();
    let partial = failure.is_some();
    Run { steps, failure, partial }
}

/// Payload's `migrate` of `plan` on the database at `url`. Payload commits
/// file by file and runs them in order: every file before the failing one
/// is applied. Returns the run and, when the CLI did not succeed, its error
/// (the rehearsal reports a refusal — plan mismatch, dev-push rows, a
/// timeout — as an error of its own, not a failed migration).
pub async fn payload(source: &Source<'_>, url: &ConnUrl, app: &str, plan: &[Migration]) -> (Run, Option<PayloadError>) {
    let names: Vec<String> = plan.iter().map(|m| m.name.clone()).collect();
    let mut steps: Vec<Step> = plan.iter().map(|_| Step { attempts: 1, ..Step::default() }).collect();
    let error = match project(source).migrate(url, app, &names).await {
        Ok(run) => {
            for (m, s) in plan.iter().zip(steps.iter_mut()) {
                s.status = Status::Applied;
                if let Some(d) = run.migrated.iter().find(|d| d.name == m.name) {
                    s.duration_ms = d.duration_ms;
                    s.ran = Some(window(d));
                }
            }
            return (Run { steps, failure: None, partial: false }, None);
        }
        Err(e) => e,
    };
    let text = error.to_string();
    let (migrated, failing, ran, report) = match &error {
        PayloadError::Failed { migration, migrated, ran, status, output_tail, .. } => (
            migrated.as_slice(),
            migration.clone(),
            *ran,
            format!("payload migrate failed ({status}); its output ends with:\n{output_tail}"),
        ),
        PayloadError::Timeout { migration, migrated, ran, .. } => {
            (migrated.as_slice(), migration.clone(), *ran, text.clone())
        }
        _ => (&[][..], None, None, text.clone()),
    };
    let mut seen_failing = false;
    for (m, s) in plan.iter().zip(steps.iter_mut()) {
        let done = migrated.iter().find(|d| d.name == m.name);
        if let Some(d) = done {
            s.status = Status::Applied;
            s.duration_ms = d.duration_ms;
            s.ran = Some(window(d));
        } else if !seen_failing && failing.as_deref().is_none_or(|f| f == m.name) {
            seen_failing = true;
            s.status = Status::Failed;
            // Payload logs no time for the file that failed; its lines tell when it ran.
            if let Some((from, to)) = ran.filter(|_| failing.is_some()) {
                s.duration_ms = (to - from).as_millis() as u64;
                s.ran = Some((from, to));
            }
            s.error = Some(text.clone());
            s.failure = Some(Failure::of_file(m.path.display().to_string(), report.clone()));
        } else if !seen_failing && failing.is_some() {
            // Payload runs files in order: one before the failing one committed.
            s.status = Status::Applied;
        }
    }
    // Exit 0 without the rows: what ran is unknown.
    let unknown = matches!(error, PayloadError::NotRecorded { .. });
    let partial = unknown || steps.iter().any(|s| s.status == Status::Applied);
    (Run { steps, failure: Some(text), partial }, Some(error))
}

/// When Payload ran a migration: from its `Migrating:` line (or its
/// reported duration before `Migrated:`) to its `Migrated:` line.
fn window(d: &crate::migrations::payload::Migrated) -> (Instant, Instant) {
    let from = d
        .started_at
        .or_else(|| d.finished_at.checked_sub(std::time::Duration::from_millis(d.duration_ms)))
        .unwrap_or(d.finished_at);
    (from, d.finished_at)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_role_name_with_spaces_stays_one_option() {
        assert_eq!(super::options_escape("app"), "app");
        assert_eq!(super::options_escape("app owner\\x"), "app\\ owner\\\\x");
    }
}
