//! Command-line types only (clap derive). Parsing happens in `main.rs`; every
//! command's behaviour lives in its domain module, so the daemon's scheduler and
//! these commands call the same functions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Shown by `pgrehearse --help` and in the man page (the README has the same table).
const EXIT_CODES: &str = "\
Exit codes:
  0   ok
  1   the operation failed (the message says why and what to do)
  2   a rehearsal or verification found problems
  64  usage error
  69  a dependency (PostgreSQL, S3, SMTP) is unavailable
  75  refused for now (a heavy job of the target is running, outside a window, not approved, ...)
  78  configuration invalid, or the database rejected the configured role, password or database

Configuration: /etc/pgrehearse/pgrehearse.toml (or -c / $PGREHEARSE_CONFIG); check it with
`pgrehearse config check`. Logs go to stderr (RUST_LOG=debug for more).";

/// Safe PostgreSQL schema releases: proven snapshots, rehearsed migrations,
/// windowed apply, restore on failure.
#[derive(Debug, Parser)]
#[command(name = "pgrehearse", version, about, long_about = None, after_long_help = EXIT_CODES)]
pub struct Cli {
    /// Configuration file.
    #[arg(
        short = 'c',
        long = "config",
        env = "PGREHEARSE_CONFIG",
        default_value = "/etc/pgrehearse/pgrehearse.toml",
        global = true
    )]
    pub config: PathBuf,

    /// Print one JSON document on stdout instead of human text.
    #[arg(long, global = true)]
    pub json: bool,

    /// The target to act on (optional when the config has exactly one).
    #[arg(long, global = true)]
    pub target: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Take a snapshot of the target's live database now.
    Snapshot(SnapshotArgs),
    /// List the target's snapshots, newest first.
    Snapshots,
    /// Download a snapshot, check its SHA-256, decrypt and decompress it into a
    /// plain `pg_dump -Fc` archive that `pg_restore` reads.
    Download(DownloadArgs),
    /// Apply the retention policy: delete snapshots the policy no longer keeps.
    Prune(PruneArgs),
    /// Restore drill: restore a snapshot into a scratch database on the shadow
    /// server and check it (row counts, indexes); records the recovery time.
    Verify(VerifyArgs),
    /// Disaster recovery: restore a snapshot into a new database on the live
    /// server (`--as NAME`), or in place of the live database (`--replace-live --yes`).
    Restore(RestoreArgs),
    /// Show applied and pending migrations, drift, the plan hash, the latest
    /// snapshot and rehearsal, the approval and the release window. Reads
    /// live's history table only.
    Status,
    /// Rehearse the pending plan on a restored copy of production: run it as
    /// live will, measure every migration (duration, locks, rewrites, WAL),
    /// prove its downs, run seeds twice, lint it. Live is never written.
    Rehearse(RehearseArgs),
    /// Approve the pending plan by its hash: only a plan whose latest
    /// rehearsal passed (and is younger than `approval_max_age`) is accepted.
    Approve(ApproveArgs),
    /// Release the approved plan to live now, if a window is open and
    /// preflight passes: pre-release snapshot (pinned), apply as rehearsed,
    /// post-checks; on failure recover per `on_failure`. Exit 0 applied,
    /// 75 refused, 1 failed (rolled back, restored or halted).
    Apply,
    /// Show the target's recent releases (or one, with its journal).
    Releases(ReleasesArgs),
    /// Run every target's schedules, the HTTP API and metrics (for systemd:
    /// Type=notify, reload with SIGHUP, stop with SIGTERM).
    Daemon,
    /// Check the email configuration.
    #[command(subcommand)]
    Email(EmailCommand),
    /// The whole cycle in a sandbox: starts two throwaway PostgreSQL clusters
    /// (live and shadow) with a sample shop database, then snapshot, restore
    /// drill, rehearsal, approval, release, and a second release that fails
    /// on live and is restored; prints where the reports and emails are.
    /// Needs only PostgreSQL's programs; ignores -c. Exit 0 when every stage
    /// did what it should, 1 otherwise, 69 without PostgreSQL.
    Demo(DemoArgs),
    /// Print a shell completion script on stdout (needs no config).
    #[command(long_about = "Print a shell completion script on stdout (needs no config).\n\n\
        Install it where the shell looks, e.g.:\n  \
        bash:  pgrehearse completions bash > /usr/share/bash-completion/completions/pgrehearse\n  \
        zsh:   pgrehearse completions zsh > /usr/local/share/zsh/site-functions/_pgrehearse\n  \
        fish:  pgrehearse completions fish > ~/.config/fish/completions/pgrehearse.fish")]
    Completions(CompletionsArgs),
    /// Print the man page (roff) on stdout, or write one page per command into
    /// a directory with --dir (needs no config).
    Man(ManArgs),
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write `pgrehearse.1` and one page per subcommand (`pgrehearse-snapshot.1`,
    /// `pgrehearse-config-check.1`, …) into this directory (created if missing)
    /// instead of printing the top page.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The sandbox directory (created; an earlier demo's sandbox there is
    /// stopped and replaced, any other non-empty directory is refused).
    #[arg(long, default_value = "pgrehearse-demo")]
    pub dir: PathBuf,
    /// Size of the sample tables in MiB (README: for quick test runs).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=100_000), hide = true)]
    pub size_mb: u64,
}

#[derive(Debug, Subcommand)]
pub enum EmailCommand {
    /// Send one test message through the configured transport (with the
    /// daemon's retries). Exit 0 sent, 69 mail server unreachable, 1 refused
    /// or not usable as configured, 78 no [email] section.
    Test,
}

#[derive(Debug, Args)]
pub struct ReleasesArgs {
    /// A release id (`r-…`); without it, the newest 50.
    pub id: Option<String>,
}

#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The plan hash (from `status` or the rehearsal report; a prefix of at
    /// least 12 hex digits is enough).
    #[arg(long)]
    pub plan: String,
    /// Who approves (default: the user running the command).
    #[arg(long)]
    pub by: Option<String>,
    /// A note kept with the approval.
    #[arg(long)]
    pub note: Option<String>,
}

#[derive(Debug, Args)]
pub struct RehearseArgs {
    /// The snapshot to rehearse on: an id, `latest` (verified on the way if
    /// it never was; a fresh one when there is none), or `fresh`.
    #[arg(long, default_value = "latest")]
    pub snapshot: String,
    /// Keep the scratch database afterwards (its name is in the report).
    #[arg(long)]
    pub keep: bool,
    /// Skip the reversibility check (downs, schema compare, ups again).
    #[arg(long)]
    pub no_reverse: bool,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and print it with secrets redacted.
    Check,
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// Why this snapshot is taken (recorded in the manifest).
    #[arg(long, value_enum, default_value = "manual")]
    pub reason: crate::snapshot::Reason,
}

#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// Snapshot id, or `latest`.
    pub snapshot: String,
    /// Where to write the `pg_dump -Fc` archive (must not exist).
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// age identity file for encrypted snapshots (overrides `[store] identity_file`).
    #[arg(long)]
    pub identity: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Snapshot id, or `latest`.
    #[arg(default_value = "latest")]
    pub snapshot: String,
    /// Restore for real even when the template holds this snapshot.
    #[arg(long)]
    pub full: bool,
    /// Keep the scratch database afterwards (its name is printed).
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("into").required(true).args(["as_name", "replace_live"])))]
pub struct RestoreArgs {
    /// Snapshot id, or `latest`.
    pub snapshot: String,
    /// Restore into this new database (refused if it exists).
    #[arg(long = "as", value_name = "DBNAME")]
    pub as_name: Option<String>,
    /// Restore, check, then swap the result in place of the live database;
    /// the old one is kept as `<db>_replaced_<timestamp>`.
    #[arg(long)]
    pub replace_live: bool,
    /// Confirm --replace-live (without it, the plan is printed and nothing changes).
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Show what would be deleted without deleting anything.
    #[arg(long)]
    pub dry_run: bool,
}
