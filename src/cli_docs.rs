//! `pgrehearse completions` and `pgrehearse man`: shell completion scripts and
//! man pages generated from the clap definition in `cli/mod.rs` (clap_complete,
//! clap_mangen), so they can never disagree with `--help`. Neither reads a
//! configuration file: they work on a machine where pgrehearse is not set up
//! yet, as packaging scripts need.
//!
//! Everything is rendered into memory first and written afterwards: the
//! generators panic on a failed write (a closed pipe, a full disk), and a
//! bad destination must be an error message, never a panic.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;
use crate::error_class::{Class, Classify};

const BIN: &str = "pgrehearse";

#[derive(Debug, thiserror::Error)]
pub enum DocsError {
    #[error("cannot write to standard output: {0}")]
    Stdout(#[source] io::Error),
    #[error("cannot create the man page directory {dir}: {source}; create it or choose another --dir")]
    Dir { dir: PathBuf, source: io::Error },
    #[error("cannot write the man page {path}: {source}; check the directory's permissions and free space")]
    Write { path: PathBuf, source: io::Error },
}

impl Classify for DocsError {
    fn class(&self) -> Class {
        match self {
            DocsError::Stdout(_) | DocsError::Dir { .. } | DocsError::Write { .. } => Class::Failed,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            DocsError::Stdout(_) => "stdout_closed",
            DocsError::Dir { .. } => "man_dir_unusable",
            DocsError::Write { .. } => "man_page_unwritable",
        }
    }
}

/// The completion script for `shell`.
pub fn completion_script(shell: Shell) -> Vec<u8> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, BIN, &mut out);
    out
}

/// Every man page: `(file name, roff)`, the top command's first, then each
/// subcommand's (nested ones as `pgrehearse-config-check.1`). clap's
/// implicit `help` subcommands and hidden commands get no page.
pub fn man_pages() -> Vec<(String, Vec<u8>)> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    collect(&cmd, &mut pages);
    pages
}

fn collect(cmd: &clap::Command, pages: &mut Vec<(String, Vec<u8>)>) {
    let man = clap_mangen::Man::new(cmd.clone()).manual("pgrehearse manual");
    let mut roff = Vec::new();
    // Rendering into a Vec cannot fail.
    let _ = man.render(&mut roff);
    pages.push((man.get_filename(), roff));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        collect(sub, pages);
    }
}

/// `pgrehearse completions SHELL`: the script on stdout.
pub fn print_completions(shell: Shell) -> Result<(), DocsError> {
    write_stdout(&completion_script(shell))
}

/// `pgrehearse man`: the top command's page on stdout.
pub fn print_man_page() -> Result<(), DocsError> {
    let pages = man_pages();
    write_stdout(pages.first().map(|(_, roff)| roff.as_slice()).unwrap_or_default())
}

/// `pgrehearse man --dir DIR`: every page into `dir` (created if missing,
/// existing pages overwritten); returns the files written.
pub fn write_man_pages(dir: &Path) -> Result<Vec<PathBuf>, DocsError> {
    std::fs::create_dir_all(dir).map_err(|source| DocsError::Dir { dir: dir.to_path_buf(), source })?;
    let mut written = Vec::new();
    for (name, roff) in man_pages() {
        let path = dir.join(name);
        std::fs::write(&path, roff).map_err(|source| DocsError::Write { path: path.clone(), source })?;
        written.push(path);
    }
    Ok(written)
}

/// Prints what `man --dir` wrote: one path a line, or `{dir, pages}` as JSON.
pub fn print_written(dir: &Path, written: &[PathBuf], json: bool) -> Result<(), DocsError> {
    let text = if json {
        let pages: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
        format!("{}\n", serde_json::json!({ "dir": dir.display().to_string(), "pages": pages }))
    } else {
        written.iter().map(|p| format!("{}\n", p.display())).collect()
    };
    write_stdout(text.as_bytes())
}

/// A reader that closed the pipe early (`| head`) got what it wanted.
fn write_stdout(bytes: &[u8]) -> Result<(), DocsError> {
    let mut out = io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(DocsError::Stdout(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command and argument a user can reach has help text, and
    /// clap's own consistency checks pass.
    #[test]
    fn every_command_and_argument_has_help() {
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        let mut missing = Vec::new();
        let mut seen = 0;
        walk(&cmd, "pgrehearse", &mut missing, &mut seen);
        assert!(missing.is_empty(), "help text missing for:\n{}", missing.join("\n"));
        // The tree really was walked: every top-level command and the nested ones.
        assert!(seen >= 20, "only {seen} commands visited");
    }

    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>, seen: &mut usize) {
        *seen += 1;
        if cmd.get_about().is_none_or(|a| a.to_string().trim().is_empty()) {
            missing.push(format!("command `{path}` has no about"));
        }
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") {
                continue;
            }
            if arg.get_help().is_none_or(|h| h.to_string().trim().is_empty()) {
                missing.push(format!("argument `{id}` of `{path}` has no help"));
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, &format!("{path} {}", sub.get_name()), missing, seen);
        }
    }

    #[test]
    fn man_pages_cover_every_subcommand_with_its_full_name() {
        let names: Vec<String> = man_pages().into_iter().map(|(n, _)| n).collect();
        for expected in
            ["pgrehearse.1", "pgrehearse-snapshot.1", "pgrehearse-config-check.1", "pgrehearse-email-test.1"]
        {
            assert!(names.iter().any(|n| n == expected), "{expected} not in {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("help")), "a page for clap's help command: {names:?}");
        let subcommands = Cli::command().get_subcommands().count();
        // The top page, one per subcommand, plus the nested ones (config check, email test).
        assert_eq!(names.len(), 1 + subcommands + 2, "{names:?}");
    }

    #[test]
    fn the_top_page_lists_subcommands_and_exit_codes() {
        let pages = man_pages();
        let top = String::from_utf8(pages[0].1.clone()).unwrap();
        assert!(top.starts_with(".ie \\n(.g .ds Aq") || top.starts_with(".TH"), "{}", &top[..200.min(top.len())]);
        assert!(top.contains(".TH pgrehearse 1"), "{top}");
        for sub in Cli::command().get_subcommands() {
            assert!(top.contains(sub.get_name()), "`{}` not in the man page", sub.get_name());
        }
        assert!(top.contains("Exit codes"), "{top}");
    }

    #[test]
    fn completion_scripts_name_the_binary() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish, Shell::Elvish, Shell::PowerShell] {
            let script = String::from_utf8(completion_script(shell)).unwrap();
            assert!(script.contains("pgrehearse") && script.contains("rehearse"), "{shell}: {script}");
        }
    }
}
