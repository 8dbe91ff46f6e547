//! The shipped systemd files, checked with systemd's own tools (systemd is
//! not PID 1 here, so nothing is started): `systemd-analyze verify` finds
//! nothing to say about the unit, `systemd-analyze security --offline=true`
//! rates it at most 2.5, the unit has the settings the daemon relies on
//! (notify protocol, watchdog, reload, stop, exit code 78), and the sysusers
//! and tmpfiles files apply cleanly to a scratch root and agree with the unit.
//!
//! `verify` needs every `Exec*=` program to exist, so it runs with `--root`
//! on a scratch root holding a byte-for-byte copy of the shipped unit, the
//! built binary at the unit's path and the host's other programs (`kill`):
//! the file checked is the file shipped, not a rewritten one.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::output;

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd").join(name)
}

fn tool(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn systemd_analyze() -> PathBuf {
    tool("systemd-analyze")
        .expect("systemd-analyze not found: run scripts/test.sh (it installs Debian's systemd package)")
}

/// `(section, key, value)` of every setting, in file order (no line
/// continuations: the unit uses none).
fn settings(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (k, v) = line.split_once('=').unwrap_or_else(|| panic!("not a setting: {line}"));
        out.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
    }
    out
}

/// The values of `section`/`key`, in order.
fn values<'a>(all: &'a [(String, String, String)], section: &str, key: &str) -> Vec<&'a str> {
    all.iter().filter(|(s, k, _)| s == section && k == key).map(|(_, _, v)| v.as_str()).collect()
}

fn one<'a>(all: &'a [(String, String, String)], section: &str, key: &str) -> &'a str {
    match values(all, section, key).as_slice() {
        [v] => v,
        other => panic!("[{section}] {key}= set {} times: {other:?}", other.len()),
    }
}

/// An `Exec*=` line's program, without systemd's `-@:+!` prefixes.
fn program(exec: &str) -> &str {
    exec.trim_start_matches(['-', '@', ':', '+', '!']).split_whitespace().next().expect("a program")
}

/// A hard link when possible (the debug binary is large), else a copy.
fn place(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).unwrap_or_else(|e| panic!("cannot copy {} to {}: {e}", from.display(), to.display()));
    }
}

/// A scratch root for `--root`: the shipped unit (copied, then compared),
/// every program its `Exec*=` lines name, and a stub `sysinit.target` (the
/// unit's default dependencies need one). Returns the root and the unit's
/// path inside it.
fn scratch_root() -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::create_dir_all(r.join("usr/bin")).unwrap();
    // Debian 12's merged /usr: /bin/kill is /usr/bin/kill.
    std::os::unix::fs::symlink("usr/bin", r.join("bin")).unwrap();
    let units = r.join("etc/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    let unit = units.join("pgrehearse.service");
    std::fs::copy(shipped("pgrehearse.service"), &unit).unwrap();
    assert_eq!(std::fs::read(&unit).unwrap(), std::fs::read(shipped("pgrehearse.service")).unwrap());
    std::fs::write(units.join("sysinit.target"), "[Unit]\nDescription=stub for systemd-analyze verify\n").unwrap();

    let text = std::fs::read_to_string(&unit).unwrap();
    for (_, key, value) in settings(&text) {
        if !key.starts_with("Exec") {
            continue;
        }
        let prog = Path::new(program(&value));
        assert!(prog.is_absolute(), "{key}={value}: the program must be an absolute path");
        let inside = r.join(prog.strip_prefix("/").unwrap());
        if inside.exists() {
            continue;
        }
        if prog.file_name() == Some("pgrehearse".as_ref()) {
            place(Path::new(env!("CARGO_BIN_EXE_pgrehearse")), &inside);
        } else {
            let host = std::fs::canonicalize(prog).unwrap_or_else(|e| panic!("{key}={value}: {}: {e}", prog.display()));
            place(&host, &inside);
        }
    }
    (root, unit)
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let (root, unit) = scratch_root();
    let out = output(Command::new(systemd_analyze()).arg("verify").arg("--root").arg(root.path()).arg(&unit));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 on unknown keys or bad values: what it says is the test.
    assert!(stderr.trim().is_empty(), "systemd-analyze verify complains:\n{stderr}");
    assert!(out.status.success(), "systemd-analyze verify failed ({})", out.status);
}

#[test]
fn unit_exposure_is_at_most_2_5() {
    let (root, unit) = scratch_root();
    let out = output(
        Command::new(systemd_analyze())
            .args(["security", "--offline=true", "--no-pager"])
            .arg("--root")
            .arg(root.path())
            .arg(&unit),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level for pgrehearse.service:"))
        .unwrap_or_else(|| panic!("no overall exposure in:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    let score: f64 = line
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score in {line:?}"));
    let open: Vec<&str> = stdout.lines().filter(|l| l.starts_with('✗')).collect();
    assert!(score <= 2.5, "exposure {score} > 2.5; open:\n{}", open.join("\n"));
}

#[test]
fn unit_has_what_the_daemon_relies_on() {
    let text = std::fs::read_to_string(shipped("pgrehearse.service")).unwrap();
    let all = settings(&text);
    let svc = |key| one(&all, "Service", key);

    // The notify protocol the daemon speaks, from the main process only.
    assert_eq!(svc("Type"), "notify");
    assert_eq!(svc("NotifyAccess"), "main");
    // Pinged at half the interval from a loop that ticks at least every
    // 250 ms: anything from a few seconds up works; minutes is sensible.
    let watchdog = svc("WatchdogSec");
    let secs: u64 = watchdog.strip_suffix('s').unwrap_or(watchdog).parse().expect("WatchdogSec in seconds");
    assert!((10..=600).contains(&secs), "WatchdogSec={watchdog}");

    // Start only with a valid configuration; the daemon is the same binary.
    let start = svc("ExecStart");
    assert!(start.ends_with("pgrehearse daemon"), "ExecStart={start}");
    let bin = program(start);
    assert_eq!(values(&all, "Service", "ExecStartPre"), [format!("{bin} config check")]);
    // Reload: check first (a failing check fails the reload and the daemon is
    // not signalled), then SIGHUP, which the daemon handles itself.
    assert_eq!(
        values(&all, "Service", "ExecReload"),
        [format!("{bin} config check"), "/bin/kill -HUP $MAINPID".into()]
    );

    // Stop: SIGTERM to the daemon alone; it finishes a release first.
    assert_eq!(svc("KillMode"), "mixed");
    assert!(!svc("TimeoutStopSec").is_empty());
    assert_eq!(svc("Restart"), "on-failure");
    assert!(svc("RestartPreventExitStatus").split_whitespace().any(|s| s == "78"));
    // ExecStartPre's 78 is not the main process's: the start limit ends the loop.
    assert!(!one(&all, "Unit", "StartLimitBurst").is_empty());

    // The sandbox the issue asks for.
    for (key, want) in [
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("StateDirectory", "pgrehearse"),
        ("ConfigurationDirectory", "pgrehearse"),
        ("User", "pgrehearse"),
    ] {
        assert_eq!(svc(key), want, "{key}=");
    }
    assert_eq!(svc("Environment"), "PGREHEARSE_CONFIG=/etc/pgrehearse/pgrehearse.toml");

    // Credentials are documented in terms of the config's real *_file keys.
    assert!(text.contains("LoadCredential=") && text.contains("$CREDENTIALS_DIRECTORY"));
    let raw = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config/raw.rs")).unwrap();
    let named: Vec<&str> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.ends_with("_file") && w.len() > "_file".len())
        .collect();
    assert!(named.len() >= 5, "the unit names the secret keys: {named:?}");
    for key in named {
        assert!(raw.contains(&format!("pub {key}:")), "the unit names `{key}`, which is no config key");
    }
}

#[test]
fn sysusers_and_tmpfiles_apply_to_a_scratch_root() {
    let unit = settings(&std::fs::read_to_string(shipped("pgrehearse.service")).unwrap());
    let (Some(sysusers), Some(tmpfiles)) = (tool("systemd-sysusers"), tool("systemd-tmpfiles")) else {
        eprintln!("systemd-sysusers or systemd-tmpfiles missing: sysusers/tmpfiles files not checked");
        return;
    };
    // Installed as the README says, applied by name as the README says.
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::create_dir_all(r.join("etc")).unwrap();
    for (file, dir) in [("pgrehearse.sysusers", "usr/lib/sysusers.d"), ("pgrehearse.tmpfiles", "usr/lib/tmpfiles.d")] {
        std::fs::create_dir_all(r.join(dir)).unwrap();
        std::fs::copy(shipped(file), r.join(dir).join("pgrehearse.conf")).unwrap();
    }

    // sysusers tells what it creates on stderr; its parse errors name the file.
    let out = output(Command::new(&sysusers).arg("--root").arg(r).arg("pgrehearse.conf"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stderr.contains("pgrehearse.conf"), "systemd-sysusers: {stderr}");
    let passwd = std::fs::read_to_string(r.join("etc/passwd")).unwrap();
    let user: Vec<&str> = passwd.lines().find(|l| l.starts_with("pgrehearse:")).expect("user").split(':').collect();
    let group = std::fs::read_to_string(r.join("etc/group")).unwrap();
    let gid: u32 = group
        .lines()
        .find(|l| l.starts_with("pgrehearse:"))
        .and_then(|l| l.split(':').nth(2))
        .and_then(|g| g.parse().ok())
        .expect("group pgrehearse");
    assert_eq!(user[3], gid.to_string(), "the user's primary group is pgrehearse");
    // The unit runs as this user; its home is the unit's state directory.
    assert_eq!(one(&unit, "Service", "User"), user[0]);
    assert_eq!(user[5], format!("/var/lib/{}", one(&unit, "Service", "StateDirectory")));
    assert!(user[6].ends_with("nologin"), "no login shell: {}", user[6]);

    let out = output(Command::new(&tmpfiles).arg("--root").arg(r).args(["--create", "pgrehearse.conf"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "systemd-tmpfiles ({}): {stderr}", out.status);
    let etc = std::fs::metadata(r.join("etc/pgrehearse")).unwrap();
    assert_eq!((etc.uid(), etc.gid()), (0, gid), "/etc/pgrehearse is root:pgrehearse");
    let mode = etc.permissions().mode() & 0o7777;
    assert_eq!(mode, 0o750);
    // The same mode as the unit's, or systemd warns at every start.
    let unit_mode = u32::from_str_radix(one(&unit, "Service", "ConfigurationDirectoryMode"), 8).unwrap();
    assert_eq!(mode, unit_mode, "ConfigurationDirectoryMode= and the tmpfiles entry differ");
    let creds = std::fs::metadata(r.join("etc/pgrehearse/credentials")).unwrap();
    assert_eq!((creds.uid(), creds.gid(), creds.permissions().mode() & 0o7777), (0, 0, 0o700));
}
