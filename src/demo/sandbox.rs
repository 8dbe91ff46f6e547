//! The demo's directory: what lives where, the marker that makes it ours,
//! the lock that keeps two demos out of one directory, and the clean-up that
//! makes a second run start from scratch (a previous run's clusters are
//! stopped, even if that run was killed, and its files removed).
//!
//! Only a directory that is new, empty or marked by an earlier demo is
//! used, and only the entries the demo writes are removed: `--dir ~` by
//! mistake must not delete anything else.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::DemoError;
use super::cluster::{self, Cluster, Postgres, RunAs};

/// Marks a directory as a demo sandbox; also the file the lock is taken on.
const MARKER: &str = ".pgrehearse-demo";
/// Everything the demo writes in the sandbox.
const ENTRIES: [&str; 8] =
    ["clusters", "state", "store", "mail", "migrations", "migrations-failing", "pgrehearse.toml", "report.txt"];
pub const CLUSTERS: [&str; 2] = ["live", "shadow"];

pub struct Sandbox {
    pub dir: PathBuf,
    /// Where the clusters live: `<dir>/clusters`, or a directory under
    /// `/tmp` when the `postgres` user cannot reach `<dir>`.
    pub clusters: PathBuf,
    /// A short key derived from the sandbox path, for paths outside it.
    pub key: String,
    /// Held (flock) for the whole run; released when dropped.
    _lock: File,
}

impl Sandbox {
    /// Creates or takes over `dir`, stops and removes what an earlier demo
    /// left there.
    pub async fn prepare(dir: &Path, pg: &Postgres, run_as: Option<RunAs>) -> Result<Sandbox, DemoError> {
        std::fs::create_dir_all(dir).map_err(|e| DemoError::io(dir, e))?;
        let dir = std::fs::canonicalize(dir).map_err(|e| DemoError::io(dir, e))?;
        let marker = dir.join(MARKER);
        if !marker.exists() {
            let mut entries = std::fs::read_dir(&dir).map_err(|e| DemoError::io(&dir, e))?;
            if entries.next().is_some() {
                return Err(DemoError::NotASandbox { dir });
            }
        }
        let lock = File::create(&marker).map_err(|e| DemoError::io(&marker, e))?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(DemoError::Busy { dir });
        }
        let key = key_of(&dir);
        let outside = PathBuf::from(format!("/tmp/pgrehearse-demo-{key}"));
        let inside = dir.join("clusters");
        // Either place may hold an earlier run's clusters.
        for root in [&inside, &outside] {
            for name in CLUSTERS {
                let data = root.join(name).join("data");
                if data.join("postmaster.pid").exists() {
                    cluster::stop_now(pg, run_as, &data);
                    if !cluster::gone(&data).await {
                        return Err(DemoError::StillRunning { data });
                    }
                }
                let sock = Cluster::socket_dir_for(root, name, &key);
                if sock.starts_with("/tmp/pgrehearse-demo-") {
                    remove(&sock)?;
                }
            }
        }
        remove(&outside)?;
        for entry in ENTRIES {
            remove(&dir.join(entry))?;
        }
        let clusters = match run_as {
            Some(u) if !u.can_reach(&dir) => outside,
            _ => inside,
        };
        std::fs::create_dir_all(&clusters).map_err(|e| DemoError::io(&clusters, e))?;
        if let Some(u) = run_as {
            u.chown(&clusters)?;
        }
        Ok(Sandbox { dir, clusters, key, _lock: lock })
    }

    pub fn path(&self, entry: &str) -> PathBuf {
        self.dir.join(entry)
    }

    pub fn config(&self) -> PathBuf {
        self.path("pgrehearse.toml")
    }

    pub fn migrations(&self) -> PathBuf {
        self.path("migrations")
    }

    pub fn failing(&self) -> PathBuf {
        self.path("migrations-failing")
    }

    pub fn store(&self) -> PathBuf {
        self.path("store")
    }

    pub fn state(&self) -> PathBuf {
        self.path("state")
    }

    pub fn mail(&self) -> PathBuf {
        self.path("mail")
    }
}

/// 8 hex digits of the SHA-256 of the path: the same sandbox always maps to
/// the same `/tmp` paths, so a re-run finds them.
fn key_of(dir: &Path) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(dir.as_os_str().as_encoded_bytes())[..4])
}

fn remove(path: &Path) -> Result<(), DemoError> {
    let r = match std::fs::symlink_metadata(path) {
        Err(_) => return Ok(()),
        Ok(md) if md.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
    };
    r.map_err(|e| DemoError::io(path, e))
}
