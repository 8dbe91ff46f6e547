//! The PostgreSQL client programs: finding them, checking their versions,
//! and building their command lines and environments so that a password is
//! passed by `PGPASSWORD` in the child's environment, never in argv, and the
//! connection carries TCP keepalives and `tcp_user_timeout` (see `stall`).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

use super::ConnUrl;
use crate::error_class::{Class, Classify};

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error(
        "{tool} not found (looked in {looked}); install the PostgreSQL client for server {server_major} (apt-get install postgresql-client-{server_major}) or set pg_bindir"
    )]
    NotFound { tool: String, looked: String, server_major: u32 },
    #[error(
        "{tool} {client_major} is older than the server ({server_major}) and cannot dump it; install postgresql-client-{server_major} or point pg_bindir at a newer bindir"
    )]
    TooOld { tool: String, client_major: u32, server_major: u32 },
    #[error(
        "cannot run {path}: {source}; check that it is an executable PostgreSQL client program that pgrehearse's user may run, or set pg_bindir to the directory of one"
    )]
    Spawn { path: String, source: std::io::Error },
    #[error(
        "cannot read the version of {path} (it printed `{output}`); it is not a PostgreSQL client program: set pg_bindir to the directory of the real ones"
    )]
    Version { path: String, output: String },
}

impl Classify for ToolError {
    fn class(&self) -> Class {
        match self {
            // The job needs a client program this host does not have: install
            // it and retry, as for a server that is down.
            ToolError::NotFound { .. } | ToolError::TooOld { .. } => Class::Unavailable,
            ToolError::Spawn { .. } | ToolError::Version { .. } => Class::Failed,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            ToolError::NotFound { .. } => "tool_missing",
            ToolError::TooOld { .. } => "tool_too_old",
            ToolError::Spawn { .. } => "tool_spawn_failed",
            ToolError::Version { .. } => "tool_version_unreadable",
        }
    }
}

/// A located client program and its major version.
#[derive(Debug, Clone)]
pub struct Tool {
    pub path: PathBuf,
    pub version: String,
    pub major: u32,
}

/// Candidate bindirs, best first: the configured one; Debian's versioned
/// dirs from the newest down; `pg_config --bindir`; then `$PATH`.
/// Debian's versioned bindirs (`/usr/lib/postgresql/<major>/bin`), newest first.
pub fn debian_bindirs() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") else { return Vec::new() };
    let mut versioned: Vec<(u32, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .collect();
    versioned.sort_by_key(|v| std::cmp::Reverse(v.0));
    versioned.into_iter().map(|(_, p)| p).collect()
}

fn candidates(configured: Option<&Path>) -> Vec<PathBuf> {
    if let Some(dir) = configured {
        return vec![dir.to_path_buf()];
    }
    let mut dirs = Vec::new();
    dirs.extend(debian_bindirs());
    if let Ok(out) = std::process::Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        dirs.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs
}

/// `pg_dump (PostgreSQL) 15.4 (Debian …)` → ("15.4", 15).
pub fn parse_version(out: &str) -> Option<(String, u32)> {
    let v = out.split_whitespace().find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))?;
    let major = v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()?;
    Some((v.to_string(), major))
}

/// Finds `name` (pg_dump, pg_restore, …) whose major version is at least the
/// server's: a client older than the server cannot dump it.
pub async fn find(name: &str, configured: Option<&Path>, server_major: u32) -> Result<Tool, ToolError> {
    let dirs = candidates(configured);
    let mut older: Option<Tool> = None;
    for dir in &dirs {
        let path = dir.join(name);
        if !path.is_file() {
            continue;
        }
        let out = Command::new(&path)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|source| ToolError::Spawn { path: path.display().to_string(), source })?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (version, major) = parse_version(&text)
            .ok_or_else(|| ToolError::Version { path: path.display().to_string(), output: text.trim().to_string() })?;
        let tool = Tool { path, version, major };
        if major >= server_major {
            return Ok(tool);
        }
        older.get_or_insert(tool);
    }
    match older {
        Some(t) => Err(ToolError::TooOld { tool: name.into(), client_major: t.major, server_major }),
        None => Err(ToolError::NotFound {
            tool: name.into(),
            looked: dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "),
            server_major,
        }),
    }
}

/// A command for a client program connecting with `url`: the URL without
/// password, with keepalive parameters added, goes in `--dbname`; the
/// password in `PGPASSWORD`.
pub fn command(tool: &Tool, url: &ConnUrl, application_name: &str) -> Command {
    let mut cmd = Command::new(&tool.path);
    cmd.arg(format!("--dbname={}", conninfo(url, tool.major)));
    finish(cmd, url, application_name)
}

/// `url` without its password, with the libpq keepalive parameters of the
/// stall timeout in force added (a parameter the URL sets itself wins).
pub fn conninfo(url: &ConnUrl, client_major: u32) -> String {
    let plain = url.without_password();
    let Ok(mut u) = url::Url::parse(&plain) else { return plain };
    let set: Vec<String> = u.query_pairs().map(|(k, _)| k.into_owned()).collect();
    let add: Vec<(&str, String)> = super::stall::libpq_params(super::stall::timeout(), client_major)
        .into_iter()
        .filter(|(k, _)| !set.iter().any(|s| s == k))
        .collect();
    if !add.is_empty() {
        u.query_pairs_mut().extend_pairs(add);
    }
    u.to_string()
}

/// For programs that do not take a connection string (`pg_amcheck`): the
/// server and role go in `PGHOST`/`PGPORT`/`PGUSER`, the database name in
/// `flag`. libpq has no environment variable for keepalives: such a
/// program relies on the job's stall watchdog alone.
pub fn command_with_flag(tool: &Tool, url: &ConnUrl, application_name: &str, flag: &str) -> Command {
    let mut cmd = Command::new(&tool.path);
    let (host, port) = url.server_key();
    cmd.env("PGHOST", host).env("PGPORT", port.to_string());
    if let Some(user) = url.user() {
        cmd.env("PGUSER", user);
    }
    cmd.arg(format!("{flag}={}", url.database()));
    finish(cmd, url, application_name)
}

fn finish(mut cmd: Command, url: &ConnUrl, application_name: &str) -> Command {
    cmd.env("PGAPPNAME", application_name);
    // A password in the environment of the caller must not leak into a
    // connection that did not ask for it, nor a stale one override ours.
    cmd.env_remove("PGPASSWORD");
    if let Some(pw) = url.password() {
        cmd.env("PGPASSWORD", pw);
    }
    cmd.stdin(Stdio::null());
    cmd.kill_on_drop(true);
    die_with_parent(&mut cmd);
    cmd
}

/// Makes a child die with pgrehearse (`PR_SET_PDEATHSIG`): a pg_restore or
/// migration tool must not go on writing after a killed pgrehearse, or it
/// would race the recovery the next run makes.
pub fn die_with_parent(cmd: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe calls (prctl, getppid, _exit).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// The last `max` bytes of a text, at a line boundary where possible.
pub fn tail(s: &str, max: usize) -> String {
    let s = s.trim_end();
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    let cut = &s[start..];
    cut.find('\n').map_or(cut, |i| &cut[i + 1..]).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_a_client_older_than_the_server() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("pg_dump");
        std::fs::write(&fake, "#!/bin/sh\necho 'pg_dump (PostgreSQL) 14.9'\n").unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = find("pg_dump", Some(dir.path()), 15).await.unwrap_err();
        assert!(matches!(err, ToolError::TooOld { client_major: 14, server_major: 15, .. }), "{err}");
        assert!(err.to_string().contains("postgresql-client-15"));
        let ok = find("pg_dump", Some(dir.path()), 14).await.unwrap();
        assert_eq!(ok.major, 14);
        let missing = find("pg_restore", Some(dir.path()), 15).await.unwrap_err();
        assert!(matches!(missing, ToolError::NotFound { .. }));
    }

    #[test]
    fn client_urls_carry_keepalives_but_no_password() {
        let url =
            ConnUrl::parse("postgres://app:s3cret@db.example:5433/app?sslmode=require&keepalives_idle=7").unwrap();
        let info = conninfo(&url, 16);
        assert!(!info.contains("s3cret"), "{info}");
        assert!(info.contains("sslmode=require") && info.contains("keepalives=1"), "{info}");
        assert!(info.contains("tcp_user_timeout="), "{info}");
        // The URL's own setting wins.
        assert_eq!(info.matches("keepalives_idle=").count(), 1, "{info}");
        assert!(info.contains("keepalives_idle=7"), "{info}");
    }

    #[test]
    fn parses_client_versions() {
        assert_eq!(parse_version("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"), Some(("15.18".into(), 15)));
        assert_eq!(parse_version("pg_dump (PostgreSQL) 17beta1"), Some(("17beta1".into(), 17)));
        assert_eq!(parse_version("garbage"), None);
    }
}
