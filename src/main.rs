//! pgrehearse: parse the command line, set up logging, run the command, and
//! map its result to a documented exit code. Nothing else lives here.

mod api;
mod cli;
mod cli_docs;
mod config;
mod conn_url;
mod daemon;
mod demo;
mod drill;
mod error_class;
mod format;
mod host;
mod jobs;
#[cfg(test)]
mod layers;
mod lint_rule;
mod metrics;
mod migrations;
mod pg;
mod progress;
mod rehearsal;
mod release;
mod report;
mod restore;
mod shadow;
mod snapshot;
mod state;
mod status;
mod store;
mod stranded;
mod watch;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command, ConfigCommand, EmailCommand, print};
use config::Config;
use error_class::Class;

/// Exit codes are API (see README).
mod exit {
    use crate::error_class::Class;

    pub const OK: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const PROBLEMS: u8 = 2;
    pub const USAGE: u8 = 64;
    pub const UNAVAILABLE: u8 = 69;
    pub const REFUSED: u8 = 75;
    pub const CONFIG: u8 = 78;

    /// The exit code of an error of `class`.
    pub fn of(class: Class) -> u8 {
        match class {
            Class::Usage => USAGE,
            Class::Refused => REFUSED,
            Class::Unavailable => UNAVAILABLE,
            Class::Configuration => CONFIG,
            Class::Problems => PROBLEMS,
            Class::Failed => FAILED,
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { exit::USAGE } else { exit::OK };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    progress::set_mode(match cli.command {
        // The demo prints its own stages; the daemon's jobs may run side by side.
        Command::Demo(_) => progress::Mode::Off,
        Command::Daemon => progress::Mode::Logs,
        _ if cli.json => progress::Mode::Logs,
        _ => progress::Mode::Auto,
    });
    init_logging(matches!(cli.command, Command::Demo(_)));
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    let json = cli.json;
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            let code = exit_code(&err);
            print::error(json, &err, code);
            ExitCode::from(code)
        }
    }
}

/// Text on stderr; under systemd (`$JOURNAL_STREAM` names the journal as
/// our stderr) natively to journald instead, so fields stay fields. `quiet`
/// (the demo, whose progress is on stdout) logs warnings and errors only.
fn init_logging(quiet: bool) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let level = if quiet { "warn" } else { "info" };
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{level},sqlx=warn,sqlx::query=error,aws_config=error,aws_smithy_runtime=warn,aws_sdk_s3=warn,hyper=warn"
        ))
    });
    let journald = std::env::var_os("JOURNAL_STREAM")
        .and_then(|_| tracing_journald::layer().ok())
        .map(|l| l.with_syslog_identifier("pgrehearse".into()));
    if let Some(journald) = journald {
        tracing_subscriber::registry().with(filter).with(journald).init();
        return;
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(progress::LogWriter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    // Generated from the CLI definition alone: no config needed.
    if matches!(cli.command, Command::Completions(_) | Command::Man(_)) {
        return docs(&cli.command, cli.json);
    }
    if let Command::Demo(args) = &cli.command {
        let opts = demo::Options { dir: args.dir.clone(), size_mb: args.size_mb, json: cli.json };
        return Ok(demo::run(&opts).await?);
    }
    if let Command::Config(ConfigCommand::Check) = cli.command {
        return Ok(print::config_check(&cli.config, cli.json));
    }
    let config = Config::load(&cli.config)?;
    if let Command::Daemon = cli.command {
        return daemon::run(&cli.config, config).await;
    }
    if let Command::Email(EmailCommand::Test) = cli.command {
        let sent = report::email::send_test(&config).await?;
        print::email_sent(cli.json, &sent);
        return Ok(exit::OK);
    }
    let target = config.target(cli.target.as_deref())?.clone();
    let single_release = matches!(&cli.command, Command::Releases(args) if args.id.is_some());
    let job = job_of(cli.command);
    // Snapshots and rehearsals stop cleanly on SIGINT/SIGTERM; a release
    // notes the signals and finishes; other commands die as usual.
    let cancel = match job {
        jobs::Job::Snapshot { .. } | jobs::Job::Rehearse(_) => cancel_on_signal(),
        _ => tokio_util::sync::CancellationToken::new(),
    };
    let _guard = matches!(job, jobs::Job::Apply).then(hold_signals);
    let reporter = jobs::Reporter::cli(&config, cli.no_mail);
    let env = jobs::Env::open(std::sync::Arc::new(config), reporter, cancel, progress::mode()).await?;
    let json = cli.json;
    Ok(match jobs::run(&env, &target, job).await? {
        jobs::Done::Snapshot(outcome) => {
            print::snapshot(json, &outcome);
            exit::OK
        }
        jobs::Done::Snapshots(list) => {
            print::snapshots(json, &list);
            exit::OK
        }
        jobs::Done::Downloaded(d) => {
            print::downloaded(json, &d);
            exit::OK
        }
        jobs::Done::Verified(report) => {
            print::verified(json, &report);
            if !report.ok {
                eprintln!(
                    "error: snapshot {} failed its restore drill: {}",
                    report.snapshot_id,
                    report.mismatches.join("; ")
                );
            }
            if report.ok { exit::OK } else { exit::PROBLEMS }
        }
        jobs::Done::Restored(r) => {
            print::restored(json, &r);
            exit::OK
        }
        jobs::Done::Status(st) => {
            print::status(json, &st);
            if st.drift.is_empty() { exit::OK } else { exit::PROBLEMS }
        }
        jobs::Done::Rehearsed(report) => {
            print::rehearsed(json, &report);
            if report.ok { exit::OK } else { exit::PROBLEMS }
        }
        jobs::Done::Approved(a) => {
            print::approved(json, &a);
            exit::OK
        }
        jobs::Done::Released(r) => {
            print::released(json, &r);
            r.outcome().exit_code()
        }
        jobs::Done::Releases(list) => {
            print::releases(json, &list, single_release);
            exit::OK
        }
        jobs::Done::Watched(w) => {
            print::watched(json, &w);
            if w.slower.is_empty() { exit::OK } else { exit::PROBLEMS }
        }
        jobs::Done::Pruned(outcome) => {
            print::pruned(json, &outcome);
            exit::OK
        }
        jobs::Done::Salvaged(s) => {
            print::salvaged(json, &s);
            if s.needs_a_person() { exit::PROBLEMS } else { exit::OK }
        }
    })
}

/// The job a command runs on its target.
fn job_of(command: Command) -> jobs::Job {
    use jobs::Job;
    match command {
        Command::Config(_)
        | Command::Daemon
        | Command::Email(_)
        | Command::Demo(_)
        | Command::Completions(_)
        | Command::Man(_) => unreachable!("handled before a target is chosen"),
        Command::Snapshot(args) => Job::Snapshot { reason: args.reason, then_prune: false },
        Command::Snapshots => Job::Snapshots,
        Command::Download(args) => {
            Job::Download { snapshot: args.snapshot, output: args.output, identity: args.identity }
        }
        Command::Verify(args) => Job::Verify { snapshot: args.snapshot, full: args.full, keep: args.keep },
        Command::Restore(args) => match args.as_name {
            Some(name) => Job::RestoreAs { snapshot: args.snapshot, name },
            None => Job::ReplaceLive { snapshot: args.snapshot, yes: args.yes },
        },
        Command::Status => Job::Status,
        Command::Rehearse(args) => Job::Rehearse(rehearsal::Options {
            snapshot: rehearsal::Choice::parse(&args.snapshot),
            keep: args.keep,
            reverse: !args.no_reverse,
        }),
        Command::Approve(args) => Job::Approve { plan: args.plan, by: args.by, note: args.note },
        Command::Apply => Job::Apply,
        Command::Releases(args) => Job::Releases { id: args.id },
        Command::Watch(args) => Job::Watch { release: args.id },
        Command::Prune(args) => Job::Prune { dry_run: args.dry_run },
        Command::Salvage(args) => Job::Salvage {
            release: args.id,
            options: release::salvage::Options { output: args.output, apply: args.apply },
        },
    }
}

/// `pgrehearse completions SHELL` and `pgrehearse man [--dir DIR]`.
fn docs(command: &Command, json: bool) -> anyhow::Result<u8> {
    match command {
        Command::Completions(args) => cli_docs::print_completions(args.shell)?,
        Command::Man(args) => match &args.dir {
            None => cli_docs::print_man_page()?,
            Some(dir) => cli_docs::print_written(dir, &cli_docs::write_man_pages(dir)?, json)?,
        },
        _ => {}
    }
    Ok(exit::OK)
}

/// A token cancelled by the first SIGINT or SIGTERM, so that work in flight
/// stops cleanly (uploads aborted, runs recorded as failed) instead of dying
/// mid-way.
fn cancel_on_signal() -> tokio_util::sync::CancellationToken {
    use tokio::signal::unix::{SignalKind, signal};
    let token = tokio_util::sync::CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
            return;
        };
        let name = tokio::select! { _ = int.recv() => "SIGINT", _ = term.recv() => "SIGTERM" };
        tracing::warn!(signal = name, "Stopping: the current operation is being cancelled cleanly.");
        t.cancel();
    });
    token
}

/// While a release runs, SIGINT and SIGTERM are noted, not obeyed: a
/// release is never abandoned half-way (it finishes or rolls back). The
/// returned task ends when dropped.
fn hold_signals() -> tokio::task::JoinHandle<()> {
    use tokio::signal::unix::{SignalKind, signal};
    tokio::spawn(async move {
        let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
            return;
        };
        loop {
            let name = tokio::select! { _ = int.recv() => "SIGINT", _ = term.recv() => "SIGTERM" };
            tracing::warn!(signal = name, "A release is running: it finishes (or recovers) before pgrehearse exits.");
        }
    })
}

/// The exit code of a failed command: the class of the first domain error
/// in its chain (each classifies the errors it wraps), else 1.
fn exit_code(err: &anyhow::Error) -> u8 {
    let first = err.chain().find_map(|cause| classified(cause).or_else(|| jobs::classified(cause)));
    exit::of(first.map_or(Class::Failed, |e| e.class()))
}

error_class::classifier!(
    /// The edges' own domain errors (those of the operations:
    /// [`jobs::classified`]).
    fn classified; EDGE_ERRORS = [cli_docs::DocsError, demo::DemoError]
);

#[cfg(test)]
mod main_tests;
