//! The `command` source, for any other tool (Flyway, dbmate, goose, Rails…):
//! the configured `pending` command prints the pending migrations one per
//! line, the `apply` command applies them all (and `down`, when configured,
//! reverts what it applied). Each runs as a [`ToolProcess`] (`sh -c`, stdin
//! closed, in the migrations directory when one is configured, killed with
//! its process group after `timeout`) with the database in `DATABASE_URL`
//! (without its password unless `password_in_url = true`), `PGPASSWORD`,
//! `PGDATABASE`, `PGAPPNAME` and the target's timeouts in `PGOPTIONS`;
//! never on argv. What it prints comes back with every form of the password
//! replaced by `***`.

use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::tool::{Password, SpawnError, ToolProcess, ToolRun};
use super::{Down, Migration, SourceError};
use crate::config::MigrationsConfig;
use crate::conn_url::ConnUrl;

/// Runs `command` against the database at `url` (see the module doc);
/// `pg_options` becomes `PGOPTIONS`. Everything returned is redacted.
pub async fn run(
    command: &str,
    config: &MigrationsConfig,
    url: &ConnUrl,
    app_name: &str,
    timeout: Duration,
    pg_options: Option<&str>,
) -> Result<ToolRun, SpawnError> {
    let mut tool = ToolProcess::shell(command, timeout);
    if let Some(dir) = &config.dir {
        tool.current_dir(dir);
    }
    let password = if config.password_in_url { Password::InUrl } else { Password::Env };
    tool.database(url, app_name, password);
    if let Some(o) = pg_options {
        tool.env("PGOPTIONS", o);
    }
    tool.run(|_, _, _| {}).await
}

/// `command`'s run as a sentence for a failure: `` `apply` failed (exit
/// status: 1): <the end of its output> `` (redacted, as the run is).
pub fn outcome(command: &str, run: Result<ToolRun, SpawnError>) -> Result<(), String> {
    match run {
        Ok(r) if r.success() => Ok(()),
        Ok(r) => Err(format!("`{command}` failed ({}): {}", r.status(), crate::pg::tools::tail(&r.output(), 2000))),
        Err(e) => Err(e.to_string()),
    }
}

/// The pending migrations as the `pending` command lists them (one name per
/// line; blank lines and `#` comments ignored). Without a `pending`
/// command, the plan is the single step "run `apply`".
pub async fn pending(config: &MigrationsConfig, url: &ConnUrl) -> Result<Vec<Migration>, SourceError> {
    let apply = config.apply.clone().unwrap_or_default();
    let Some(pending) = &config.pending else {
        return Ok(vec![step("apply", &apply, config)]);
    };
    let run = run(pending, config, url, "pgrehearse-pending", config.timeout, None)
        .await
        .map_err(|e| SourceError::PendingCommand { status: "not started".into(), output_tail: e.to_string() })?;
    if !run.success() {
        return Err(SourceError::PendingCommand {
            status: run.status(),
            output_tail: crate::pg::tools::tail(&run.output(), 2000),
        });
    }
    // Only standard output lists migrations: tools log to standard error.
    Ok(pending_names(&run.stdout).into_iter().map(|name| step(name, &apply, config)).collect())
}

/// The names a `pending` command printed: one per line, trimmed, blank lines
/// and `#` comments left out.
pub fn pending_names(stdout: &str) -> Vec<&str> {
    stdout.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect()
}

fn step(name: &str, apply: &str, config: &MigrationsConfig) -> Migration {
    // The file's bytes when `name` is a file in the directory, so an edit
    // changes the plan hash; the name and command otherwise.
    let path: PathBuf = config.dir.as_ref().map(|d| d.join(name)).unwrap_or_else(|| PathBuf::from(name));
    let content = std::fs::read(&path).unwrap_or_else(|_| format!("{name}\n{apply}").into_bytes());
    Migration {
        version: name.to_string(),
        name: name.to_string(),
        path,
        up_sql: String::new(),
        checksum: hex::encode(Sha256::digest(&content)),
        transactional: false,
        down: if config.down.is_some() { Down::Tool } else { Down::Missing },
    }
}
