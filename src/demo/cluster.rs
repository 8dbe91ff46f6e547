//! The demo's throwaway PostgreSQL clusters: finding the server binaries,
//! `initdb` + `pg_ctl` (as the `postgres` OS user when we run as root, since
//! initdb refuses root), unix socket only, no fsync — and stopping them
//! again on every path out: the normal end, an error, Ctrl-C (the caller
//! stops them) and a panic ([`Drop`]).
//!
//! Written by hand because what it does is a handful of process calls; the
//! test harness has its own copy for the same reason (it must not depend
//! on the code under test).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::DemoError;

/// The port in the socket file's name. Each cluster has its own socket
/// directory, so both may use it.
const PORT: u16 = 5432;
/// `sockaddr_un.sun_path` holds 108 bytes with the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// The PostgreSQL server programs the demo runs.
#[derive(Debug, Clone)]
pub struct Postgres {
    pub bindir: PathBuf,
    /// e.g. `15.18`.
    pub version: String,
}

const PROGRAMS: [&str; 5] = ["initdb", "pg_ctl", "postgres", "pg_dump", "pg_restore"];

impl Postgres {
    /// The first directory holding every program the demo needs:
    /// `pg_config --bindir`, then the `$PATH` entry with `initdb`, then
    /// Debian's `/usr/lib/postgresql/<newest>/bin`.
    pub fn find() -> Result<Postgres, DemoError> {
        let dirs = candidates();
        Self::find_in(&dirs)
    }

    pub(super) fn find_in(dirs: &[PathBuf]) -> Result<Postgres, DemoError> {
        for dir in dirs {
            if PROGRAMS.iter().all(|p| dir.join(p).is_file()) {
                let out = std::process::Command::new(dir.join("initdb")).arg("--version").output();
                let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
                if let Some((version, _)) = crate::pg::tools::parse_version(&text) {
                    return Ok(Postgres { bindir: dir.clone(), version });
                }
            }
        }
        let mut looked: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        looked.dedup();
        Err(DemoError::PostgresMissing { looked: looked.join(", ") })
    }

    fn program(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }
}

fn candidates() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(out) = std::process::Command::new("pg_config").arg("--bindir").stderr(Stdio::null()).output()
        && out.status.success()
    {
        dirs.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    if let Some(path) = std::env::var_os("PATH") {
        // A symlink in /usr/local/bin counts as its target's directory,
        // where its siblings (postgres, pg_ctl …) are.
        dirs.extend(
            std::env::split_paths(&path)
                .map(|d| d.join("initdb"))
                .filter(|p| p.is_file())
                .filter_map(|p| std::fs::canonicalize(&p).ok()?.parent().map(Path::to_path_buf)),
        );
    }
    dirs.extend(crate::pg::tools::debian_bindirs());
    dirs
}

/// The OS user the clusters run as when we are root: `postgres`.
#[derive(Debug, Clone, Copy)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

impl RunAs {
    /// `None` when not root (the clusters run as we do).
    pub fn needed() -> Result<Option<RunAs>, DemoError> {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(None);
        }
        let name = c"postgres";
        // SAFETY: getpwnam returns null or a pointer to static storage; the
        // two integers are copied out at once.
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        if pw.is_null() {
            return Err(DemoError::NoPostgresUser);
        }
        Ok(Some(unsafe { RunAs { uid: (*pw).pw_uid, gid: (*pw).pw_gid } }))
    }

    /// Whether this user can reach `dir` (search permission on it and
    /// every parent), so that a data directory under it can be used.
    pub fn can_reach(&self, dir: &Path) -> bool {
        dir.ancestors().all(|d| {
            let Ok(md) = std::fs::metadata(d) else { return false };
            let bit = if md.uid() == self.uid {
                0o100
            } else if md.gid() == self.gid {
                0o010
            } else {
                0o001
            };
            md.mode() & bit != 0
        })
    }

    pub fn chown(&self, path: &Path) -> Result<(), DemoError> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid)).map_err(|e| DemoError::io(path, e))
    }
}

/// One cluster: `<dir>/data`, `<dir>/server.log`, its socket in
/// `socket_dir`.
pub struct Cluster {
    pub name: &'static str,
    pub dir: PathBuf,
    pub socket_dir: PathBuf,
    pg: Postgres,
    run_as: Option<RunAs>,
    /// Set before `pg_ctl start` runs, so an interrupted start is stopped too.
    running: bool,
}

impl Cluster {
    /// Where cluster `name` under `root` keeps its socket: in its own
    /// directory when the path fits in a socket address, else in
    /// `/tmp/pgrehearse-demo-<key>-<name>`.
    pub fn socket_dir_for(root: &Path, name: &str, key: &str) -> PathBuf {
        let dir = root.join(name);
        if dir.join(format!(".s.PGSQL.{PORT}")).as_os_str().len() <= MAX_SOCKET_PATH {
            dir
        } else {
            PathBuf::from(format!("/tmp/pgrehearse-demo-{key}-{name}"))
        }
    }

    /// `initdb` of a new cluster in `<root>/<name>` (which must not exist).
    pub async fn create(
        pg: &Postgres,
        run_as: Option<RunAs>,
        root: &Path,
        name: &'static str,
        key: &str,
    ) -> Result<Cluster, DemoError> {
        let dir = root.join(name);
        let socket_dir = Self::socket_dir_for(root, name, key);
        for d in [&dir, &socket_dir] {
            std::fs::create_dir_all(d).map_err(|e| DemoError::io(d, e))?;
            if let Some(u) = run_as {
                u.chown(d)?;
            }
        }
        let cluster = Cluster { name, dir, socket_dir, pg: pg.clone(), run_as, running: false };
        let data = cluster.data();
        let mut initdb = cluster.command("initdb");
        initdb.arg("-D").arg(&data).args(["-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync", "-A", "trust"]);
        cluster.run(initdb, "initdb").await?;
        // Durability does not matter in a sandbox; speed does. No TCP: the
        // socket directory is private to the sandbox.
        let conf = format!(
            "\n# pgrehearse demo\nlisten_addresses = ''\nport = {PORT}\nunix_socket_directories = '{}'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_wal_size = '2GB'\n\
             max_connections = 40\n",
            cluster.socket_dir.display().to_string().replace('\'', "''")
        );
        append(&data.join("postgresql.conf"), &conf)?;
        let hba = data.join("pg_hba.conf");
        std::fs::write(&hba, "# pgrehearse demo: unix socket only, in the sandbox\nlocal all all trust\n")
            .map_err(|e| DemoError::io(&hba, e))?;
        Ok(cluster)
    }

    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// A libpq URL for `user` on `db` over this cluster's socket.
    pub fn url(&self, user: &str, db: &str) -> String {
        use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
        const KEEP: &AsciiSet = &NON_ALPHANUMERIC.remove(b'/').remove(b'-').remove(b'_').remove(b'.');
        let host = utf8_percent_encode(&self.socket_dir.to_string_lossy(), KEEP).to_string();
        format!("postgres://{user}@localhost/{db}?host={host}&port={PORT}")
    }

    pub async fn start(&mut self) -> Result<(), DemoError> {
        self.running = true;
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D").arg(self.data()).arg("-l").arg(self.log()).args(["-w", "-t", "120", "start"]);
        self.run(cmd, "pg_ctl start").await
    }

    /// Stops the server (fast shutdown: sessions are ended, data is kept),
    /// falling back to an immediate stop.
    pub async fn stop(&mut self) {
        if !self.running {
            return;
        }
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D").arg(self.data()).args(["-w", "-t", "30", "-m", "fast", "stop"]);
        let fast = self.run(cmd, "pg_ctl stop").await;
        if fast.is_err() && self.data().join("postmaster.pid").exists() {
            stop_now(&self.pg, self.run_as, &self.data());
        }
        self.running = false;
    }

    fn command(&self, program: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(self.pg.program(program));
        cmd.current_dir(&self.dir).stdin(Stdio::null()).kill_on_drop(true);
        if let Some(u) = self.run_as {
            cmd.uid(u.uid).gid(u.gid);
        }
        cmd
    }

    async fn run(&self, mut cmd: tokio::process::Command, what: &str) -> Result<(), DemoError> {
        let out = cmd.output().await.map_err(|e| DemoError::io(&self.pg.program(what), e))?;
        if out.status.success() {
            return Ok(());
        }
        let log = std::fs::read_to_string(self.log()).unwrap_or_default();
        Err(DemoError::Cluster {
            cluster: self.name,
            what: what.to_string(),
            output: crate::pg::tools::tail(
                &format!("{}{}{log}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
                2000,
            ),
        })
    }
}

impl Drop for Cluster {
    /// A panic or an early return still stops the server.
    fn drop(&mut self) {
        if self.running {
            stop_now(&self.pg, self.run_as, &self.data());
        }
    }
}

/// Stops whatever server runs in `data` at once (no checkpoint: the data is
/// thrown away or re-initialised next), waiting for it to exit.
pub fn stop_now(pg: &Postgres, run_as: Option<RunAs>, data: &Path) {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(pg.program("pg_ctl"));
    cmd.arg("-D").arg(data).args(["-w", "-t", "30", "-m", "immediate", "stop"]);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    if let Some(parent) = data.parent() {
        cmd.current_dir(parent);
    }
    if let Some(u) = run_as {
        cmd.uid(u.uid).gid(u.gid);
    }
    let _ = cmd.status();
}

/// Waits for a postmaster that `stop_now` could not stop (its pid file
/// names a dead process, or pg_ctl failed) to be gone; true when no server
/// runs in `data` any more.
pub async fn gone(data: &Path) -> bool {
    for _ in 0..50 {
        let pid = std::fs::read_to_string(data.join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next()?.trim().parse::<i32>().ok());
        match pid {
            // SAFETY: kill with signal 0 only checks that the process exists.
            Some(p) if unsafe { libc::kill(p, 0) } == 0 => tokio::time::sleep(Duration::from_millis(100)).await,
            _ => return true,
        }
    }
    false
}

fn append(path: &Path, text: &str) -> Result<(), DemoError> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| DemoError::io(path, e))
}
