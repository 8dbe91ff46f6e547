//! Command-line types only (clap derive), and what the commands print
//! (`print.rs`). Parsing happens in `main.rs`; every command's behaviour
//! lives in its domain module, so the daemon's scheduler and these commands
//! call the same functions.

pub mod print;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Shown by `pgrehearse --help` and in the man page (the README has the same table).
const EXIT_CODES: &str = "\
Exit codes:
  0   ok
  1   the operation failed (the message says why and what to do)
  2   a rehearsal or verification found problems
  64  usage error
  69  a dependency (PostgreSQL, S3, SMTP, pg_dump/pg_restore) is unavailable or not installed
  75  refused for now (a heavy job of the target is running, outside a window, not approved, ...)
  78  configuration invalid, or the database rejected the configured role, password or database

Configuration: /etc/pgrehearse/pgrehearse.toml (or -c / $PGREHEARSE_CONFIG); check it with
`pgrehearse config check`. Logs go to stderr (RUST_LOG=debug for more).";

/// Safe PostgreSQL schema releases: proven snapshots, rehearsed migrations,
/// windowed apply, restore on failure.
#[derive(Debug, Parser)]
#[command(name = "pgrehearse", version, about, long_about = None, after_long_help = EXIT_CODES)]
pub struct Cli {
    /// The configuration file.
    #[arg(
        short = 'c',
        long = "config",
        value_name = "PATH",
        env = "PGREHEARSE_CONFIG",
        default_value = "/etc/pgrehearse/pgrehearse.toml",
        global = true
    )]
    pub config: PathBuf,

    /// Print one JSON document on stdout instead of human text.
    #[arg(long, global = true)]
    pub json: bool,

    /// The target to act on (optional when the config has exactly one).
    #[arg(long, global = true, value_name = "NAME")]
    pub target: Option<String>,

    /// Mail no report from this command, even with an `[email]` section
    /// (by default `apply`, `verify` and `rehearse` mail as `[email]
    /// successes` says; failures always).
    #[arg(long, global = true)]
    pub no_mail: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Take a snapshot of the target's live database now.
    ///
    /// pg_dump streams through zstd (and age, if configured) into the store;
    /// the manifest, written last, records the exact row count of every
    /// table, taken in the dump's own MVCC snapshot.
    Snapshot(SnapshotArgs),
    /// List the target's snapshots, newest first.
    Snapshots,
    /// Download a snapshot as a plain `pg_dump -Fc` archive.
    ///
    /// Checks the stored object's SHA-256, decrypts and decompresses it, and
    /// writes an archive that `pg_restore` reads.
    Download(DownloadArgs),
    /// Delete the snapshots the retention policy no longer keeps.
    ///
    /// The newest snapshot, the `keep_verified_min` newest verified ones and
    /// those pinned by a release are kept, and nothing is deleted while the
    /// latest snapshot run failed (exit 75).
    Prune(PruneArgs),
    /// Restore drill: prove a snapshot by restoring it on the shadow server.
    ///
    /// Restores into a scratch database (or clones the template that already
    /// holds it), checks every table's row count against the manifest, index
    /// validity, pg_amcheck and the configured checks, and records the
    /// restore time (RTO). Exit 2 when problems are found.
    Verify(VerifyArgs),
    /// Disaster recovery: restore a snapshot on the live server.
    ///
    /// Into a new database (`--as NAME`), or in place of the live database
    /// (`--replace-live --yes`: the old one is renamed and kept, never
    /// dropped).
    Restore(RestoreArgs),
    /// Show the target's migrations, drift, plan and latest activity.
    ///
    /// Applied and pending migrations, drift (an applied file edited or
    /// gone, a failed history row, Payload dev-push rows), the plan hash,
    /// the latest snapshot and rehearsal, the newest approval and whether it
    /// still holds, and the release window. Reads live's history table
    /// only. Exit 2 on drift.
    Status,
    /// Rehearse the pending plan on a restored copy of production.
    ///
    /// Runs it as live will, measures every migration (duration, locks,
    /// rewrites, WAL), proves its downs, runs seeds twice and lints it. Live
    /// is never written. Exit 0 pass, 2 problems found, 1 could not run.
    Rehearse(RehearseArgs),
    /// Approve the pending plan by its hash, after a passing rehearsal.
    ///
    /// Refused (exit 75) unless the plan is the one pending on live now and
    /// its latest rehearsal passed within `approval_max_age`.
    Approve(ApproveArgs),
    /// Release the approved plan to live now.
    ///
    /// Only if a window is open and preflight passes: pre-release snapshot
    /// (pinned), apply as rehearsed, post-checks; on failure recover per
    /// `on_failure`. Exit 0 applied, 75 refused (nothing done), 1 failed
    /// (rolled back, restored or halted).
    Apply,
    /// Show the target's recent releases (or one, with its journal).
    Releases(ReleasesArgs),
    /// Put the writes a restored release stranded back into live.
    ///
    /// Reads the rows other sessions wrote on live between the release's
    /// pre-release snapshot and the restore from the kept database
    /// (`<db>_failed_<release>`) and writes SQL that puts them into live in
    /// one transaction (stdout, or -o FILE): inserts with ON CONFLICT DO
    /// NOTHING, updates and deletes by primary key, guarded so that a row
    /// live changed since is skipped, never overwritten. --apply runs it
    /// under the heavy-job lock and records it in the release. Exit 0 every
    /// row is in (or in the SQL), 2 rows were skipped or tables need a
    /// person, 64 nothing to salvage (release not restored, kept database
    /// gone, no list).
    Salvage(SalvageArgs),
    /// Run the performance watch of a release now.
    ///
    /// Waits for the end of its `watch_after` period if it has not come,
    /// compares live's pg_stat_statements before the release and after it,
    /// keeps the result in the release record and alerts on queries that got
    /// slower (the daemon does this by itself when the period ends). Exit 0
    /// none slower, 2 some slower.
    Watch(WatchArgs),
    /// Run every target's schedules, the HTTP API and metrics.
    ///
    /// For systemd: Type=notify, reload with SIGHUP, stop with SIGTERM (a
    /// running release finishes first).
    Daemon,
    /// Check the email configuration.
    #[command(subcommand)]
    Email(EmailCommand),
    /// Run the whole cycle in a throwaway sandbox (needs only PostgreSQL).
    ///
    /// Starts two throwaway PostgreSQL clusters (live and shadow) with a
    /// sample shop database, then snapshot, restore drill, rehearsal,
    /// approval, release, and a second release that fails on live and is
    /// restored; prints where the reports and emails are. Ignores -c. Exit 0
    /// when every stage did what it should, 1 otherwise, 69 without
    /// PostgreSQL.
    Demo(DemoArgs),
    /// Print a shell completion script on stdout (needs no config).
    #[command(long_about = "Print a shell completion script on stdout (needs no config).\n\n\
        Install it where the shell looks, e.g.:\n  \
        bash:  pgrehearse completions bash > /usr/share/bash-completion/completions/pgrehearse\n  \
        zsh:   pgrehearse completions zsh > /usr/local/share/zsh/site-functions/_pgrehearse\n  \
        fish:  pgrehearse completions fish > ~/.config/fish/completions/pgrehearse.fish")]
    Completions(CompletionsArgs),
    /// Print the man page on stdout, or write all pages into a directory (needs no config).
    ///
    /// Without --dir: `pgrehearse.1` as roff on stdout (`pgrehearse man |
    /// man -l -`). With --dir: one page per command, e.g. into
    /// /usr/local/share/man/man1.
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
    #[arg(value_name = "ID")]
    pub id: Option<String>,
}

#[derive(Debug, Args)]
pub struct SalvageArgs {
    /// The id (`r-…`) of a release that ended `restored`.
    #[arg(value_name = "RELEASE_ID")]
    pub id: String,
    /// Write the SQL to this file (must not exist) instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Run the SQL against live now (one transaction, under the heavy-job
    /// lock) and report what was applied and skipped.
    #[arg(long)]
    pub apply: bool,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// A release id (`r-…`) of an applied release of a target with `watch_after`.
    #[arg(value_name = "ID")]
    pub id: String,
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
    #[arg(value_name = "ID")]
    pub snapshot: String,
    /// Where to write the `pg_dump -Fc` archive (must not exist).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    /// age identity file for encrypted snapshots (overrides `[store] identity_file`).
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Snapshot id, or `latest`.
    #[arg(default_value = "latest", value_name = "ID")]
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
    #[arg(value_name = "ID")]
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
