//! Runs the real `pgrehearse` binary against a config file written into a
//! temporary directory, the way an operator would: `-c <file>`, exit code,
//! stdout, stderr. `--json` output is parsed with serde_json.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_pgrehearse")
}

/// A working directory with a config file and a state directory.
pub struct Pgr {
    dir: tempfile::TempDir,
    config: PathBuf,
    env: Vec<(String, String)>,
}

/// The outcome of one run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Parses stdout as exactly one JSON document.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!("stdout is not one JSON document ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr)
        })
    }

    /// Panics with the whole output unless the exit code is `code`.
    pub fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code, code,
            "expected exit {code}, got {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }

    pub fn ok(&self) -> &Run {
        self.expect_code(0)
    }
}

impl Pgr {
    /// A fresh directory; `config` is written by [`Pgr::write_config`].
    pub fn new() -> Pgr {
        let dir = tempfile::Builder::new().prefix("pgr-cli-").tempdir().expect("temp dir");
        let config = dir.path().join("pgrehearse.toml");
        Pgr { dir, config, env: vec![("RUST_LOG".into(), "info".into())] }
    }

    /// The temp directory (for state, stores, secret files, downloads).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `<dir>/state`, the conventional `state_dir`.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Writes the config file (replacing any previous one).
    pub fn write_config(&self, toml: &str) -> &Pgr {
        std::fs::write(&self.config, toml).expect("write config");
        self
    }

    /// Writes another file in the working directory and returns its path.
    pub fn write_file(&self, name: &str, content: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, content).expect("write file");
        p
    }

    /// Writes a secret file (mode 0600, as an operator would) and returns its path.
    pub fn write_secret(&self, name: &str, content: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = self.write_file(name, content);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod secret");
        p
    }

    /// Sets an environment variable for later runs (e.g. `RUST_LOG`).
    pub fn env(&mut self, key: &str, value: &str) -> &mut Pgr {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
        self
    }

    /// The command line `pgrehearse -c <config> <args>` with a clean,
    /// deterministic environment (no ambient AWS settings).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin());
        cmd.arg("-c").arg(&self.config).args(args);
        for var in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
            "PGREHEARSE_CONFIG",
            "PGPASSWORD",
            "PGPASSFILE",
        ] {
            cmd.env_remove(var);
        }
        // Empty AWS config files: nothing from the machine leaks in, and the
        // SDK has no missing file to warn about.
        let empty = self.dir.path().join("aws-empty");
        if !empty.exists() {
            std::fs::write(&empty, "").expect("write empty AWS config");
        }
        cmd.env("AWS_CONFIG_FILE", &empty)
            .env("AWS_SHARED_CREDENTIALS_FILE", &empty)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `pgrehearse -c <config> <args>` to completion.
    pub fn run(&self, args: &[&str]) -> Run {
        let out = self.command(args).output().unwrap_or_else(|e| panic!("cannot run {}: {e}", bin()));
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs with `--json` first and returns the run; parse with [`Run::json`].
    pub fn run_json(&self, args: &[&str]) -> Run {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// Starts `pgrehearse -c <config> <args>` in the background; output goes
    /// to files so a chatty child can never block on a full pipe.
    pub fn spawn(&self, args: &[&str]) -> Background {
        let n = super::random_u64();
        let stdout = self.dir.path().join(format!("bg-{n}.out"));
        let stderr = self.dir.path().join(format!("bg-{n}.err"));
        let child = self
            .command(args)
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", bin()));
        Background { child: Some(child), stdout, stderr }
    }
}

/// A `pgrehearse` process running in the background; killed on drop if the
/// test did not wait for it.
pub struct Background {
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Background {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Still running?
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().unwrap().try_wait(), Ok(None))
    }

    /// What it has written to stderr so far.
    pub fn stderr_so_far(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits (at most `timeout`) for exit and returns the run.
    pub fn wait(mut self, timeout: Duration) -> Run {
        // If this times out and panics, drop kills the child.
        let child = self.child.as_mut().unwrap();
        let status = super::wait_for("pgrehearse to exit", timeout, Duration::from_millis(20), || {
            child.try_wait().expect("try_wait")
        });
        self.child = None;
        Run {
            code: status.code().unwrap_or(-1),
            stdout: std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            stderr: std::fs::read_to_string(&self.stderr).unwrap_or_default(),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `state_dir` plus an S3 `[store]` section pointing at `endpoint` with the
/// test credentials (secret in a file), then `extra` lines in the section.
pub fn s3_store_toml(pgr: &Pgr, endpoint: &str, bucket: &str, extra: &str) -> String {
    let secret = pgr.write_secret("s3-secret", super::s3::SECRET_KEY);
    format!(
        "state_dir = \"{state}\"\n\n[store]\nkind = \"s3\"\nbucket = \"{bucket}\"\nprefix = \"pgrehearse\"\n\
         endpoint = \"{endpoint}\"\nregion = \"{region}\"\nforce_path_style = true\n\
         access_key_id = \"{key}\"\nsecret_access_key_file = \"{secret}\"\n{extra}\n",
        state = pgr.state_dir().display(),
        region = super::s3::REGION,
        key = super::s3::ACCESS_KEY,
        secret = secret.display(),
    )
}

/// `state_dir` plus a local `[store]` at `<dir>/store`, then `extra` lines.
pub fn local_store_toml(pgr: &Pgr, extra: &str) -> String {
    format!(
        "state_dir = \"{}\"\n\n[store]\nkind = \"local\"\npath = \"{}\"\n{extra}\n",
        pgr.state_dir().display(),
        local_store_path(pgr).display()
    )
}

/// Where [`local_store_toml`] puts the store.
pub fn local_store_path(pgr: &Pgr) -> PathBuf {
    pgr.dir().join("store")
}

/// The manifests of `target`'s snapshots in the local store, read from
/// the files (in no particular order; none when the store is empty).
pub fn stored_manifests(pgr: &Pgr, target: &str) -> Vec<Value> {
    let Ok(entries) = std::fs::read_dir(local_store_path(pgr).join(target)) else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("manifest.json")).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect()
}

/// A `[[targets]]` section with a `live_url` (TOML-escaped) and `extra` lines.
pub fn target_toml(name: &str, live_url: &str, extra: &str) -> String {
    format!("[[targets]]\nname = \"{name}\"\nlive_url = {}\n{extra}\n", toml_string(live_url))
}

/// A TOML basic string literal.
pub fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The subcommands a clap `--help` text lists under `Commands:` (without
/// `help`), so tests follow the binary's own list.
pub fn commands_in_help(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        // Wrapped descriptions continue on lines indented further.
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}
