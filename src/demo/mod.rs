//! `pgrehearse demo`: the whole release cycle in a sandbox, with nothing but
//! PostgreSQL's programs installed. It starts two throwaway clusters (live
//! and shadow), loads a sample shop database, writes a configuration and
//! example migrations, then runs the stages an operator would — snapshot,
//! restore drill, rehearsal, approval, release, and a second release that
//! fails on live and is restored — through the job runner as the commands
//! (`jobs::run` with a files reporter, which writes every report the daemon
//! would mail as `.eml` files), and stops its clusters on every way out.
//! Unlike `apply`, Ctrl-C here stops even a release mid-way: the sandbox
//! is disposable, and the next run replaces it.
//!
//! Exit 0 when every stage did what it should (the failing release must end
//! `restored`), 1 otherwise; 69 without PostgreSQL, 64 for a `--dir` that is
//! not a sandbox, 75 while another demo runs in it.

mod cluster;
mod cycle;
mod describe;
mod progress;
mod sample;
mod sandbox;
mod summary;

use std::path::PathBuf;
use std::time::Instant;

use cluster::{Cluster, Postgres, RunAs};
use progress::Progress;
use sandbox::Sandbox;

use crate::error_class::{Class, Classify};

/// What `pgrehearse demo` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    pub dir: PathBuf,
    /// The sample tables' size in MiB (heap, TOAST, indexes).
    pub size_mb: u64,
    pub json: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(
        "PostgreSQL's server programs (initdb, pg_ctl, postgres, pg_dump, pg_restore) were not found (looked in: {looked}). Install them: on Debian or Ubuntu, as root, `apt-get install postgresql-15` (`bash scripts/demo.sh` does it for you); elsewhere your distribution's PostgreSQL server package. Or, if they are installed somewhere else, put that directory on PATH (e.g. `export PATH=/usr/lib/postgresql/15/bin:$PATH`) or make `pg_config --bindir` print it"
    )]
    PostgresMissing { looked: String },
    #[error(
        "the demo runs as root, so its clusters must run as the `postgres` OS user (initdb refuses root), but there is no such user; install PostgreSQL from your distribution (`apt-get install postgresql-15` creates it) or run the demo as an ordinary user"
    )]
    NoPostgresUser,
    #[error(
        "{} has files but is not a pgrehearse demo sandbox (no .pgrehearse-demo in it), so the demo will not clear it; pass --dir with a new or empty directory", dir.display()
    )]
    NotASandbox { dir: PathBuf },
    #[error("another pgrehearse demo is running in {}; wait for it to end, or pass another --dir", dir.display())]
    Busy { dir: PathBuf },
    #[error(
        "a PostgreSQL server of an earlier demo still runs in {} and did not stop; stop it (`pg_ctl -D {} stop -m immediate`, as the user that owns it) and run the demo again", data.display(), data.display()
    )]
    StillRunning { data: PathBuf },
    #[error("the {cluster} cluster: {what} failed:\n{output}")]
    Cluster { cluster: &'static str, what: String, output: String },
    #[error("cannot {what} in the sample database: {source}")]
    Sql { what: &'static str, source: sqlx::Error },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Setup(String),
    #[error("interrupted by {signal}: the demo's clusters were stopped; run `pgrehearse demo` again to start over")]
    Interrupted { signal: &'static str },
}

impl DemoError {
    fn io(path: &std::path::Path, source: std::io::Error) -> DemoError {
        DemoError::Io { path: path.to_path_buf(), source }
    }
}

/// The exit codes of the module doc.
impl Classify for DemoError {
    fn class(&self) -> Class {
        match self {
            DemoError::PostgresMissing { .. } | DemoError::NoPostgresUser => Class::Unavailable,
            DemoError::NotASandbox { .. } => Class::Usage,
            DemoError::Busy { .. } => Class::Refused,
            DemoError::StillRunning { .. }
            | DemoError::Cluster { .. }
            | DemoError::Sql { .. }
            | DemoError::Io { .. }
            | DemoError::Setup(_)
            | DemoError::Interrupted { .. } => Class::Failed,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            DemoError::PostgresMissing { .. } => "postgres_missing",
            DemoError::NoPostgresUser => "no_postgres_user",
            DemoError::NotASandbox { .. } => "not_a_sandbox",
            DemoError::Busy { .. } => "sandbox_busy",
            DemoError::StillRunning { .. } => "cluster_still_running",
            DemoError::Cluster { .. } => "cluster_failed",
            DemoError::Sql { .. } => "sample_sql_failed",
            DemoError::Io { .. } => "sandbox_io_failed",
            DemoError::Setup(_) => "setup_failed",
            DemoError::Interrupted { .. } => "interrupted",
        }
    }
}

/// The two clusters, once created; stopped by [`Clusters::stop`] (or by
/// their `Drop` on a panic).
#[derive(Default)]
pub(crate) struct Clusters {
    live: Option<Cluster>,
    shadow: Option<Cluster>,
}

impl Clusters {
    async fn stop(&mut self) -> Vec<String> {
        let mut stopped = Vec::new();
        for c in [self.live.as_mut(), self.shadow.as_mut()].into_iter().flatten() {
            c.stop().await;
            stopped.push(c.name.to_string());
        }
        stopped
    }

    fn logs(&self) -> Vec<PathBuf> {
        [self.live.as_ref(), self.shadow.as_ref()].into_iter().flatten().map(Cluster::log).collect()
    }
}

/// Runs the demo; `Ok(exit code)` once it got as far as running stages.
pub async fn run(opts: &Options) -> Result<u8, DemoError> {
    let pg = Postgres::find()?;
    let run_as = RunAs::needed()?;
    let sandbox = Sandbox::prepare(&opts.dir, &pg, run_as).await?;
    let mut p = Progress::new(opts.json);
    p.say(&format!("pgrehearse demo: the whole release cycle in a sandbox at {}", sandbox.dir.display()));
    p.say(&format!("PostgreSQL {} from {}", pg.version, pg.bindir.display()));
    p.say("");
    let mut clusters = Clusters::default();
    let mut found = cycle::Found::default();
    let interrupted = {
        let work = cycle::run(&mut p, &pg, run_as, &sandbox, &mut clusters, opts.size_mb, &mut found);
        tokio::select! {
            () = work => None,
            s = signal() => Some(s),
        }
    };
    if let Some(signal) = interrupted {
        p.tick_done();
        p.say(&format!("Interrupted by {signal}: stopping the clusters."));
        clusters.stop().await;
        return Err(DemoError::Interrupted { signal });
    }
    let t0 = Instant::now();
    let stopped = clusters.stop().await;
    let data_dirs: Vec<PathBuf> =
        [clusters.live.as_ref(), clusters.shadow.as_ref()].into_iter().flatten().map(Cluster::data).collect();
    let still = data_dirs.iter().filter(|d| d.join("postmaster.pid").exists()).count();
    p.stage(
        "stop",
        still == 0,
        t0,
        if still == 0 {
            format!("stopped the {} cluster; the data stays in {}", stopped.join(" and "), sandbox.clusters.display())
        } else {
            format!("{still} cluster(s) did not stop")
        },
        Vec::new(),
    );
    let ok = found.completed && p.all_ok();
    summary::report(&mut p, &sandbox, &pg, run_as, &clusters.logs(), &data_dirs, &found, ok);
    let report = sandbox.path("report.txt");
    std::fs::write(&report, &p.text).map_err(|e| DemoError::io(&report, e))?;
    if p.json() {
        summary::print_json(&p, &sandbox, &found, ok);
    }
    Ok(if ok { 0 } else { 1 })
}

/// The first SIGINT or SIGTERM.
async fn signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        return std::future::pending().await;
    };
    tokio::select! { _ = int.recv() => "SIGINT", _ = term.recv() => "SIGTERM" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_postgres_says_how_to_install_it_and_exits_69() {
        let empty = tempfile::tempdir().unwrap();
        let err = Postgres::find_in(&[empty.path().to_path_buf()]).unwrap_err();
        assert_eq!(err.class(), Class::Unavailable);
        let msg = err.to_string();
        assert!(msg.contains("apt-get install postgresql-15"), "{msg}");
        assert!(msg.contains("PATH") && msg.contains("pg_config --bindir"), "{msg}");
        assert!(msg.contains(&empty.path().display().to_string()), "names where it looked: {msg}");
    }

    #[tokio::test]
    async fn a_directory_with_foreign_files_is_not_cleared() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("precious.txt"), "keep me").unwrap();
        let pg = Postgres { bindir: PathBuf::from("/nonexistent"), version: "15".into() };
        let err = Sandbox::prepare(dir.path(), &pg, None).await.err().expect("refused");
        assert_eq!(err.class(), Class::Usage, "{err}");
        assert_eq!(std::fs::read_to_string(dir.path().join("precious.txt")).unwrap(), "keep me");
    }
}
