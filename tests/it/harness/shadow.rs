//! Helpers for restore drills (`pgrehearse verify`): a second cluster as the
//! shadow server, the scratch databases pgrehearse leaves (or not) on it,
//! the staging directory, damaging stored objects on purpose (flip a byte,
//! cut the tail, tamper the manifest) with the AWS CLI or on disk, and
//! freezing the `pg_restore` that a running `pgrehearse` spawned.

use super::cli::{Background, Pgr};
use super::pg::Cluster;
use super::proc::{cmdline, descendants_named, state, try_signal};
use super::s3::S3Server;
use super::{files_under, run_ok, wait_for};
use serde_json::Value;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The template database pgrehearse keeps on the shadow for `target`.
pub fn template_name(target: &str) -> String {
    format!("pgrehearse_{target}_template")
}

/// `shadow_url` for `c`: the superuser (trusted on the socket) on `postgres`.
pub fn shadow_url(c: &Cluster) -> String {
    c.url("postgres", "postgres", "")
}

/// Every database of a cluster, sorted.
pub fn databases(c: &Cluster) -> Vec<String> {
    lines(&c.psql("postgres", "SELECT datname FROM pg_database ORDER BY 1"))
}

/// Databases named `pgrehearse_%` (scratch databases and templates), sorted.
pub fn scratch_dbs(c: &Cluster) -> Vec<String> {
    lines(&c.psql("postgres", r"SELECT datname FROM pg_database WHERE datname LIKE 'pgrehearse\_%' ORDER BY 1"))
}

/// Whether database `db` exists on `c`.
pub fn db_exists(c: &Cluster, db: &str) -> bool {
    databases(c).iter().any(|d| d == db)
}

fn lines(s: &str) -> Vec<String> {
    s.lines().filter(|l| !l.is_empty()).map(str::to_string).collect()
}

/// `pg_control_system().system_identifier` of a cluster.
pub fn system_identifier(c: &Cluster) -> String {
    c.psql("postgres", "SELECT system_identifier FROM pg_control_system()")
}

/// `<state_dir>/staging`.
pub fn staging_dir(pgr: &Pgr) -> PathBuf {
    pgr.state_dir().join("staging")
}

/// Every file below the staging directory (empty if it does not exist).
pub fn staging_files(pgr: &Pgr) -> Vec<PathBuf> {
    files_under(&staging_dir(pgr))
}

/// Asserts the staging directory holds no file (missing is fine).
pub fn assert_staging_empty(pgr: &Pgr, when: &str) {
    let left = staging_files(pgr);
    assert!(left.is_empty(), "staging files left {when}: {left:?}");
}

/// Flips every bit of the byte at the middle of the file; returns its offset.
pub fn flip_middle_byte(path: &Path) -> u64 {
    let len = std::fs::metadata(path).unwrap_or_else(|e| panic!("stat {path:?}: {e}")).len();
    assert!(len > 2, "{path:?} is too small to corrupt ({len} bytes)");
    let at = len / 2;
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(path).expect("open for corruption");
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    b[0] ^= 0xFF;
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&b).unwrap();
    f.sync_all().unwrap();
    at
}

/// Cuts the last `n` bytes off the file.
pub fn truncate_tail(path: &Path, n: u64) {
    let len = std::fs::metadata(path).unwrap().len();
    assert!(len > n, "{path:?} has only {len} bytes, cannot cut {n}");
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(len - n).unwrap();
    f.sync_all().unwrap();
}

/// Uploads a file as one object with the AWS CLI (plain PutObject).
pub fn s3_put(s3: &S3Server, bucket: &str, key: &str, path: &Path) {
    run_ok(s3.aws(&["put-object", "--bucket", bucket, "--key", key, "--body"]).arg(path));
}

/// Replaces the JSON object `key` by `value` with the AWS CLI.
pub fn s3_put_json(s3: &S3Server, bucket: &str, key: &str, value: &Value) {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), serde_json::to_string_pretty(value).unwrap()).unwrap();
    s3_put(s3, bucket, key, tmp.path());
}

/// A second directory that reaches `c`'s socket: a symlink to its socket
/// directory, so a URL with `host=<alias>` names "another server" textually
/// while it is the same cluster. Keep the returned TempDir alive.
pub fn socket_alias(c: &Cluster) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new().prefix("pgr-alias-").tempdir_in("/tmp").expect("temp dir");
    let link = dir.path().join("sock");
    std::os::unix::fs::symlink(c.socket_dir(), &link).expect("symlink to the socket dir");
    (dir, link)
}

/// A libpq URL for `postgres` on database `postgres`, through `host_dir` and `port`.
pub fn url_via(host_dir: &Path, port: u16) -> String {
    format!("postgres://postgres@localhost/postgres?host={}&port={port}", host_dir.display())
}

/// Pids of live (not zombie) processes named `comm` below `bg`, excluding
/// `--version` probes.
pub fn working_children(bg: &Background, comm: &str) -> Vec<u32> {
    descendants_named(bg.pid(), comm)
        .into_iter()
        .filter(|&pid| {
            let argv = cmdline(pid).unwrap_or_default();
            let probe = argv.split(' ').any(|a| a == "--version" || a == "-V");
            !argv.trim().is_empty() && !probe && !matches!(state(pid), None | Some('Z' | 'X'))
        })
        .collect()
}

/// Waits for the restoring `pg_restore` that `bg` spawned, freezes it with
/// SIGSTOP and returns its pid and argv.
pub fn stopped_pg_restore(bg: &mut Background) -> (u32, String) {
    wait_for("pgrehearse to start pg_restore", Duration::from_secs(120), Duration::from_millis(2), || {
        assert!(bg.running(), "pgrehearse exited before starting pg_restore:\n{}", bg.stderr_so_far());
        working_children(bg, "pg_restore").into_iter().find_map(|pid| {
            let argv = cmdline(pid).unwrap_or_default();
            (try_signal(pid, libc::SIGSTOP) && state(pid) != Some('Z')).then_some((pid, argv))
        })
    })
}

/// SIGKILLs `pid` (stopped or not) and waits until it is gone or a zombie.
pub fn kill_and_wait(pid: u32) {
    try_signal(pid, libc::SIGKILL);
    wait_for("a killed process to die", Duration::from_secs(10), Duration::from_millis(10), || {
        matches!(state(pid), None | Some('Z' | 'X')).then_some(())
    });
}

/// Whether an argv (joined by spaces) asks for `n` parallel jobs.
pub fn argv_has_jobs(argv: &str, n: u32) -> bool {
    let a: Vec<&str> = argv.split(' ').collect();
    let n = n.to_string();
    a.iter().any(|x| *x == format!("-j{n}") || *x == format!("--jobs={n}"))
        || a.windows(2).any(|w| (w[0] == "-j" || w[0] == "--jobs") && w[1] == n)
}

/// Makes the cluster log every DDL statement (`log_statement = 'ddl'`), so a
/// test can prove from the server's own log that no database was created or
/// dropped — also one created and dropped again between two looks.
pub fn log_ddl(c: &Cluster) {
    c.psql("postgres", "ALTER SYSTEM SET log_statement = 'ddl'");
    c.psql("postgres", "SELECT pg_reload_conf()");
    wait_for("log_statement = ddl to take effect", Duration::from_secs(10), Duration::from_millis(20), || {
        (c.psql("postgres", "SHOW log_statement") == "ddl").then_some(())
    });
}

/// The current length of the server log, to look only at what comes after.
pub fn log_mark(c: &Cluster) -> usize {
    c.log().len()
}

/// Database-level DDL (`CREATE`/`DROP`/`ALTER DATABASE`) logged since `mark`.
pub fn database_ddl_since(c: &Cluster, mark: usize) -> Vec<String> {
    let log = c.log();
    let tail = log.get(mark..).unwrap_or_default();
    tail.lines()
        .filter(|l| {
            let u = l.to_uppercase();
            u.contains("CREATE DATABASE") || u.contains("DROP DATABASE") || u.contains("ALTER DATABASE")
        })
        .map(str::to_string)
        .collect()
}

/// `CREATE DATABASE` statements logged since `mark` (see [`log_ddl`]).
pub fn databases_created_since(c: &Cluster, mark: usize) -> Vec<String> {
    database_ddl_since(c, mark).into_iter().filter(|l| l.to_uppercase().contains("CREATE DATABASE")).collect()
}
