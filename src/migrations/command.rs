//! The `command` source, for any other tool (Flyway, dbmate, goose, Rails…):
//! the configured `pending` command prints the pending migrations one per
//! line, the `apply` command applies them all (and `down`, when configured,
//! reverts what it applied). Both get the database's URL in `DATABASE_URL`
//! (and libpq's `PG*` variables) in their environment, never on argv; they run
//! in the migrations directory when one is configured.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{Down, Migration, SourceError};
use crate::config::MigrationsConfig;
use crate::pg::url::ConnUrl;

/// What a finished command printed and how long it took.
#[derive(Debug)]
pub struct CommandRun {
    pub success: bool,
    pub status: String,
    /// Standard output then standard error, for messages.
    pub output: String,
    /// Standard output alone (what `pending` lists).
    pub stdout: String,
}

/// Runs `command` with `sh -c`, stdin closed, the database (and
/// `PGOPTIONS`, when given) in the environment, killed (with its process group) after `timeout`.
pub async fn run(
    command: &str,
    config: &MigrationsConfig,
    url: &ConnUrl,
    app_name: &str,
    timeout: Duration,
    pg_options: Option<&str>,
) -> std::io::Result<CommandRun> {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c").arg(command);
    if let Some(dir) = &config.dir {
        cmd.current_dir(dir);
    }
    cmd.env("DATABASE_URL", url.expose())
        .env("PGAPPNAME", app_name)
        .env("PGDATABASE", url.database())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    crate::pg::tools::die_with_parent(&mut cmd);
    if let Some(p) = url.password() {
        cmd.env("PGPASSWORD", p);
    }
    if let Some(o) = pg_options {
        cmd.env("PGOPTIONS", o);
    }
    let child = cmd.spawn()?;
    let pid = child.id();
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(out) => {
            let out = out?;
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let output = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
            Ok(CommandRun { success: out.status.success(), status: out.status.to_string(), output, stdout })
        }
        Err(_) => {
            if let Some(pid) = pid {
                // SAFETY: signalling the process group we created.
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            }
            Ok(CommandRun {
                success: false,
                status: format!("killed after the {}s timeout", timeout.as_secs()),
                output: String::new(),
                stdout: String::new(),
            })
        }
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
    if !run.success {
        return Err(SourceError::PendingCommand {
            status: run.status,
            output_tail: crate::pg::tools::tail(&run.output, 2000),
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
