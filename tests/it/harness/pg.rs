//! A throwaway PostgreSQL cluster per test: `initdb` + `pg_ctl` from
//! `pg_config --bindir`, run as the `postgres` user (initdb refuses root),
//! in a short `/tmp/pgr-XXXXXX` directory (socket paths are limited to 107
//! bytes), listening on a unix socket only.
//!
//! Authentication is real: `postgres` is trusted on the socket, every other
//! role must present its SCRAM password, so a test that passes a role's
//! password through pgrehearse proves the password actually reached libpq.

use super::{output, random_u64, run_ok};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A running cluster; stopped (immediate mode) and deleted on drop, also when
/// the test panics.
pub struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
    bindir: PathBuf,
    uid: u32,
    gid: u32,
}

impl Cluster {
    /// Creates and starts a fresh cluster on a random port. Retries with a new
    /// port if start-up fails (another test's cluster may have taken it; with a
    /// private socket directory a clash is unlikely but cheap to handle).
    pub fn start() -> Cluster {
        let bindir = PathBuf::from(run_ok(Command::new("pg_config").arg("--bindir")).trim().to_string());
        let (uid, gid) = postgres_user();
        let dir = tempfile::Builder::new().prefix("pgr-").tempdir_in("/tmp").expect("temp dir");
        chown(dir.path(), uid, gid);
        let mut cluster = Cluster { dir, port: 0, bindir, uid, gid };
        cluster.initdb();
        for attempt in 0..5 {
            cluster.port = 20000 + (random_u64() % 40000) as u16;
            cluster.write_port();
            if cluster.try_start() {
                return cluster;
            }
            eprintln!("cluster start attempt {attempt} on port {} failed, retrying", cluster.port);
        }
        panic!("could not start a PostgreSQL cluster; log:\n{}", cluster.log());
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Appends settings to `postgresql.conf` (they apply at the next
    /// [`Cluster::restart`]), e.g. `shared_preload_libraries`.
    pub fn append_conf(&self, text: &str) {
        append(&self.data().join("postgresql.conf"), &format!("\n{text}\n"));
    }

    /// The directory that holds the unix socket (`host=` in URLs).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// A command that runs as the `postgres` OS user, in the cluster dir.
    fn as_postgres(&self, bin: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join(bin));
        cmd.uid(self.uid).gid(self.gid).current_dir(self.dir.path());
        cmd
    }

    fn initdb(&self) {
        run_ok(
            self.as_postgres("initdb")
                .arg("-D")
                .arg(self.data())
                .args(["-U", "postgres", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"])
                .args(["-A", "trust"]),
        );
        // Durability is irrelevant for a throwaway cluster; speed matters.
        let conf = format!(
            "\nlisten_addresses = ''\nunix_socket_directories = '{}'\nfsync = off\n\
             synchronous_commit = off\nfull_page_writes = off\nmax_connections = 50\n\
             password_encryption = 'scram-sha-256'\n",
            self.dir.path().display()
        );
        append(&self.data().join("postgresql.conf"), &conf);
        // The superuser is trusted (the harness needs it); every other role
        // must really authenticate.
        std::fs::write(self.data().join("pg_hba.conf"), "local all postgres trust\nlocal all all scram-sha-256\n")
            .expect("write pg_hba.conf");
    }

    fn write_port(&self) {
        // A later `port` line wins in postgresql.conf.
        append(&self.data().join("postgresql.conf"), &format!("port = {}\n", self.port));
    }

    fn try_start(&self) -> bool {
        output(
            self.as_postgres("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .arg("-l")
                .arg(self.dir.path().join("server.log"))
                .args(["-w", "-t", "60", "start"]),
        )
        .status
        .success()
    }

    /// Stops the server at once (no checkpoint), as a crash would.
    pub fn stop_immediate(&self) {
        let _ = output(self.as_postgres("pg_ctl").arg("-D").arg(self.data()).args(["-w", "-m", "immediate", "stop"]));
    }

    /// Starts the server again after [`Cluster::stop_immediate`] (crash
    /// recovery runs; with `synchronous_commit = off` the last fraction of a
    /// second of commits may be lost, as on a real crash).
    pub fn start_again(&self) {
        assert!(self.try_start(), "start failed; log:\n{}", self.log());
    }

    /// A clean restart (fast shutdown, then start) on the same port: sessions
    /// are cut, committed data is kept.
    pub fn restart(&self) {
        run_ok(self.as_postgres("pg_ctl").arg("-D").arg(self.data()).args(["-w", "-m", "fast", "stop"]));
        self.start_again();
    }

    /// A `psql`/`pg_dump`-style command connected as `postgres` over the
    /// socket. The binary runs as root: no peer auth is involved.
    /// A `psql` session on `db` that has been fed `script` and stays open
    /// (stdin kept) until the child is killed or its stdin closed: a lock
    /// holder, or an application writer looping with `\watch`.
    pub fn psql_session(&self, db: &str, script: &str) -> std::process::Child {
        use std::io::Write;
        use std::process::Stdio;
        let mut child = self
            .client("psql")
            .args(["-XAtq", "-d", db])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.as_mut().unwrap();
        stdin.write_all(script.as_bytes()).unwrap();
        stdin.flush().unwrap();
        child
    }

    /// [`Cluster::psql_session`], killed (and reaped) when dropped.
    pub fn session(&self, db: &str, script: &str) -> Session {
        Session(self.psql_session(db, script))
    }

    pub fn client(&self, bin: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join(bin));
        cmd.arg("-h")
            .arg(self.socket_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres"])
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE");
        cmd
    }

    /// Runs SQL as `postgres` in `db`; returns unaligned, tuples-only output
    /// (trimmed). Panics on any SQL error.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        run_ok(self.client("psql").args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql])).trim().to_string()
    }

    /// Like [`Cluster::psql`] but returns the process output, for expected failures.
    pub fn psql_output(&self, db: &str, sql: &str) -> std::process::Output {
        output(self.client("psql").args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql]))
    }

    /// Creates a login role with a SCRAM password and a database it owns.
    pub fn create_app_db(&self, name: &str, role: &str, password: &str) {
        self.psql("postgres", &format!("CREATE ROLE {} LOGIN PASSWORD {}", quote_ident(role), quote_literal(password)));
        self.psql("postgres", &format!("CREATE DATABASE {} OWNER {}", quote_ident(name), quote_ident(role)));
    }

    /// A libpq URL for `user` on `db` over this cluster's socket, with the
    /// password percent-encoded. An empty password yields no password part.
    pub fn url(&self, db: &str, user: &str, password: &str) -> String {
        let auth = if password.is_empty() { user.to_string() } else { format!("{user}:{}", percent_encode(password)) };
        format!("postgres://{auth}@localhost/{db}?host={}&port={}", self.socket_dir().display(), self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_immediate();
        // TempDir removes the directory after this.
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn postgres_user() -> (u32, u32) {
    let name = std::ffi::CString::new("postgres").unwrap();
    // SAFETY: getpwnam returns a pointer to static storage or null; we copy
    // the two integers out immediately.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(!pw.is_null(), "no `postgres` OS user: run scripts/test.sh to install PostgreSQL");
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown temp dir");
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).expect("open for append");
    f.write_all(text.as_bytes()).expect("append");
}

/// A `psql` session ([`Cluster::session`]) that is killed and reaped on
/// drop: an application writer or a lock holder lives as long as its test
/// (or its scope) does, also when an assertion fails.
pub struct Session(pub std::process::Child);

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
