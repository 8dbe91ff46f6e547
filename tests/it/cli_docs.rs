//! The generated user documentation, from the real binary, with no
//! configuration file anywhere (`-c` names a file that does not exist):
//!
//! - `completions bash` is valid bash (`bash -n`) and, sourced, registers a
//!   completion for `pgrehearse` that completes subcommands; `zsh`, `fish`,
//!   `elvish` and `powershell` scripts name the subcommands;
//! - `man` prints a roff page (`.TH`) that names every subcommand;
//!   `man --dir` writes one page per command, nested ones included, and
//!   `man -l` (or `groff`) renders them;
//! - `<cmd> --help` answers 0 with text for every command; an unknown
//!   command exits 64 (usage, see README) with clap's hint.

use crate::harness::cli::{Pgr, Run};
use std::path::Path;
use std::process::Command;

/// Every subcommand path, as `pgrehearse help` lists them (parsed from the
/// binary's own help, so a new command is covered without editing this).
fn subcommands(pgr: &Pgr) -> Vec<Vec<String>> {
    use crate::harness::cli::commands_in_help as listed;
    let top = pgr.run(&["--help"]);
    top.ok();
    let mut out = Vec::new();
    for cmd in listed(&top.stdout) {
        let help = pgr.run(&[&cmd, "--help"]);
        help.ok();
        let nested = listed(&help.stdout);
        out.push(vec![cmd.clone()]);
        out.extend(nested.into_iter().map(|n| vec![cmd.clone(), n]));
    }
    assert!(out.len() >= 15, "too few commands found in --help: {out:?}\n{}", top.stdout);
    for expected in ["snapshot", "rehearse", "apply", "daemon", "completions", "man"] {
        assert!(out.iter().any(|c| c == &[expected]), "`{expected}` not in --help: {out:?}");
    }
    assert!(out.iter().any(|c| c == &["config", "check"]), "`config check` not in `config --help`: {out:?}");
    out
}

fn no_config() -> Pgr {
    let pgr = Pgr::new();
    assert!(!pgr.config_path().exists());
    pgr
}

fn have(tool: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success())
}

fn sh(script: &str, cwd: &Path) -> Run {
    let out = Command::new("bash").args(["-c", script]).current_dir(cwd).output().expect("run bash");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn bash_completion_is_valid_and_registers_and_completes() {
    let pgr = no_config();
    let run = pgr.run(&["completions", "bash"]);
    run.ok();
    let script = pgr.write_file("pgrehearse.bash", &run.stdout);

    let syntax = sh(&format!("bash -n {}", script.display()), pgr.dir());
    assert_eq!(syntax.code, 0, "bash -n rejects the completion script: {}", syntax.stderr);

    // Sourced into a shell, it registers a completion function, and that
    // function completes `pgrehearse re` to the commands starting with `re`.
    let probe = format!(
        r#"source {script}
complete -p pgrehearse
COMP_WORDS=(pgrehearse re); COMP_CWORD=1; COMP_LINE="pgrehearse re"; COMP_POINT=${{#COMP_LINE}}
fn=$(complete -p pgrehearse | sed -E 's/.*-F ([^ ]+).*/\1/')
"$fn" pgrehearse re pgrehearse
printf 'reply:%s\n' "${{COMPREPLY[@]}}""#,
        script = script.display()
    );
    let r = sh(&probe, pgr.dir());
    assert_eq!(r.code, 0, "sourcing the completion failed:\n{}\n{}", r.stdout, r.stderr);
    let registered = r.stdout.lines().next().unwrap_or_default();
    assert!(
        registered.starts_with("complete ") && registered.trim_end().ends_with(" pgrehearse"),
        "`complete -p pgrehearse` shows no completion: {}",
        r.stdout
    );
    let replies: Vec<&str> = r.stdout.lines().filter_map(|l| l.strip_prefix("reply:")).collect();
    for expected in ["rehearse", "releases", "restore"] {
        assert!(replies.contains(&expected), "`pgrehearse re<TAB>` does not offer {expected}: {replies:?}");
    }
    assert!(!replies.contains(&"snapshot"), "`pgrehearse re<TAB>` offers snapshot: {replies:?}");
}

#[test]
fn other_shells_get_scripts_naming_the_subcommands() {
    let pgr = no_config();
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let run = pgr.run(&["completions", shell]);
        run.ok();
        assert!(!run.stdout.trim().is_empty(), "{shell}: empty script");
        for cmd in ["snapshot", "rehearse", "approve", "completions"] {
            assert!(run.stdout.contains(cmd), "{shell} script does not mention `{cmd}`:\n{}", run.stdout);
        }
    }
    if have("zsh") {
        let run = pgr.run(&["completions", "zsh"]);
        let f = pgr.write_file("_pgrehearse", &run.stdout);
        let r = sh(&format!("zsh -n {}", f.display()), pgr.dir());
        assert_eq!(r.code, 0, "zsh -n rejects the script: {}", r.stderr);
    }
    if have("fish") {
        let run = pgr.run(&["completions", "fish"]);
        let f = pgr.write_file("pgrehearse.fish", &run.stdout);
        let r = sh(&format!("fish --no-execute {}", f.display()), pgr.dir());
        assert_eq!(r.code, 0, "fish rejects the script: {}", r.stderr);
    }
    let bad = pgr.run(&["completions", "tcsh"]);
    bad.expect_code(64);
    assert!(bad.stderr.contains("bash") && bad.stderr.contains("zsh"), "no list of shells: {}", bad.stderr);
}

#[test]
fn man_page_on_stdout_names_every_subcommand() {
    let pgr = no_config();
    let run = pgr.run(&["man"]);
    run.ok();
    let th = run.stdout.lines().find(|l| l.starts_with(".TH")).unwrap_or_default();
    assert!(th.starts_with(".TH pgrehearse 1"), "no .TH header for pgrehearse(1):\n{}", &run.stdout);
    assert!(
        run.stdout.lines().take_while(|l| !l.starts_with(".TH")).all(|l| l.starts_with('.')),
        "text before .TH:\n{}",
        run.stdout
    );
    for cmd in subcommands(&pgr).iter().filter(|c| c.len() == 1) {
        assert!(run.stdout.contains(&cmd[0]), "the man page does not mention `{}`", cmd[0]);
    }
    assert!(run.stdout.contains("Exit codes"), "the man page has no exit codes");
}

#[test]
fn man_dir_writes_one_renderable_page_per_command() {
    let pgr = no_config();
    let dir = pgr.dir().join("man/man1");
    let run = pgr.run(&["man", "--dir", dir.to_str().unwrap()]);
    run.ok();
    let mut written: Vec<String> = std::fs::read_dir(&dir)
        .expect("man --dir created no directory")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    let mut expected: Vec<String> = subcommands(&pgr).iter().map(|c| format!("pgrehearse-{}.1", c.join("-"))).collect();
    expected.push("pgrehearse.1".into());
    expected.sort();
    assert_eq!(written, expected, "man --dir wrote other files than one per command");
    // It says what it wrote, one path a line.
    assert_eq!(run.stdout.lines().count(), expected.len(), "{}", run.stdout);

    let check = pgr.dir().join("man/man1/pgrehearse-config-check.1");
    let page = std::fs::read_to_string(&check).unwrap();
    assert!(page.contains(".TH pgrehearse-config-check 1"), "{page}");
    assert!(page.contains("Validate the configuration"), "{page}");

    let renderer = if have("man") {
        Some("man -l")
    } else if have("groff") {
        Some("groff -man -Tutf8")
    } else {
        None
    };
    let Some(renderer) = renderer else {
        eprintln!("NOTE: neither man nor groff is installed: the pages' rendering is not checked");
        return;
    };
    for name in ["pgrehearse.1", "pgrehearse-snapshot.1", "pgrehearse-config-check.1"] {
        let r = sh(&format!("MANPAGER=cat MANWIDTH=100 {renderer} {} 2>&1", dir.join(name).display()), pgr.dir());
        assert_eq!(r.code, 0, "{renderer} {name} failed:\n{}", r.stdout);
        let text = strip_overstrike(&r.stdout);
        assert!(text.contains("NAME") && text.contains("SYNOPSIS"), "{renderer} {name}:\n{text}");
        assert!(!text.contains("warning"), "{renderer} {name} warns:\n{text}");
        if name == "pgrehearse-snapshot.1" {
            assert!(text.contains("--reason"), "{name} does not show --reason:\n{text}");
        }
    }
    // The same --json as every command: where, and which pages.
    let json = pgr.run_json(&["man", "--dir", dir.to_str().unwrap()]);
    json.ok();
    assert_eq!(json.json()["pages"].as_array().map(Vec::len), Some(expected.len()), "{}", json.stdout);
}

/// `man` writes bold as `X\bX` when its output is not a terminal.
fn strip_overstrike(s: &str) -> String {
    let mut out: Vec<char> = Vec::new();
    for c in s.chars() {
        if c == '\u{8}' {
            out.pop();
        } else {
            out.push(c);
        }
    }
    out.into_iter().collect()
}

#[test]
fn man_dir_that_cannot_be_created_is_an_error_not_a_panic() {
    let pgr = no_config();
    let file = pgr.write_file("not-a-dir", "x");
    let run = pgr.run(&["man", "--dir", &format!("{}/man1", file.display())]);
    run.expect_code(1);
    assert!(run.stderr.contains("cannot create the man page directory"), "{}", run.stderr);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
}

#[test]
fn every_command_has_help_and_unknown_commands_get_a_hint() {
    let pgr = no_config();
    for cmd in subcommands(&pgr) {
        let mut args: Vec<&str> = cmd.iter().map(String::as_str).collect();
        args.push("--help");
        let run = pgr.run(&args);
        run.ok();
        let name = cmd.join(" ");
        assert!(run.stdout.contains("Usage: pgrehearse"), "`{name} --help` has no usage:\n{}", run.stdout);
        // A description line before the usage.
        let about = run.stdout.lines().next().unwrap_or_default();
        assert!(about.len() > 10 && !about.starts_with("Usage"), "`{name} --help` has no description:\n{}", run.stdout);
    }

    let run = pgr.run(&["snapshto"]);
    run.expect_code(64);
    assert!(run.stderr.contains("unrecognized subcommand 'snapshto'"), "{}", run.stderr);
    assert!(run.stderr.contains("similar subcommand") && run.stderr.contains("snapshot"), "no hint: {}", run.stderr);
    assert!(run.stderr.contains("--help"), "no pointer to --help: {}", run.stderr);
}
