//! The snapshots that exist (those with a manifest): listing, lookup,
//! retention pruning, and download into a plain `pg_dump -Fc` archive.

use std::cell::RefCell;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio_util::io::SyncIoBridge;

use super::SnapshotError;
use super::manifest::Manifest;
use crate::config::{Config, Target};
use crate::error_class::{Class, Classify};
use crate::state::{RunStatus, State};
use crate::store::{self, Store, StoreError, retention};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("target `{target}` has no snapshot yet; take one with `pgrehearse snapshot`")]
    NoSnapshots { target: String },
    #[error("snapshot `{id}` of target `{target}` does not exist; list them with `pgrehearse snapshots`")]
    NotFound { target: String, id: String },
    #[error(
        "prune refused: the latest snapshot run of `{target}` ({id}, started {started_at}) failed: {error}. Nothing is deleted while backups are failing; fix the snapshot job first"
    )]
    LatestRunFailed { target: String, id: String, started_at: String, error: String },
    #[error("{path} already exists; choose another output path")]
    OutputExists { path: PathBuf },
    #[error(
        "snapshot {id} is encrypted; give the age identity with --identity FILE, [store] identity_file, or the systemd credential `age-identity`"
    )]
    NoIdentity { id: String },
    #[error(
        "cannot read the age identity {path}: {reason}; it must be a file pgrehearse may read holding an AGE-SECRET-KEY-1… line, as age-keygen writes it"
    )]
    BadIdentity { path: PathBuf, reason: String },
    #[error(
        "the age identity {path} cannot decrypt snapshot {id} (it is encrypted to {recipients}); use the matching identity file"
    )]
    WrongIdentity { path: PathBuf, id: String, recipients: String },
    #[error(
        "checksum mismatch: snapshot {id} is corrupt in the store: SHA-256 {actual} ({actual_bytes} bytes) differs from the manifest's {expected} ({expected_bytes} bytes); use an older snapshot"
    )]
    ChecksumMismatch { id: String, expected: String, actual: String, expected_bytes: u64, actual_bytes: u64 },
    #[error(
        "snapshot {id} could not be decoded: {reason}; the stored object is damaged: drill it (`pgrehearse verify {id}`) and use an older snapshot"
    )]
    Decode { id: String, reason: String },
    #[error(
        "cannot write {path}: {source}; check the directory's permissions and free space, or choose another output path"
    )]
    Write { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

impl Classify for CatalogError {
    fn class(&self) -> Class {
        match self {
            CatalogError::LatestRunFailed { .. } => Class::Refused,
            CatalogError::OutputExists { .. } | CatalogError::NoIdentity { .. } => Class::Usage,
            CatalogError::NoSnapshots { .. }
            | CatalogError::NotFound { .. }
            | CatalogError::BadIdentity { .. }
            | CatalogError::WrongIdentity { .. }
            | CatalogError::ChecksumMismatch { .. }
            | CatalogError::Decode { .. }
            | CatalogError::Write { .. } => Class::Failed,
            CatalogError::Store(e) => e.class(),
            CatalogError::Snapshot(e) => e.class(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            CatalogError::NoSnapshots { .. } => "no_snapshots",
            CatalogError::NotFound { .. } => "snapshot_not_found",
            CatalogError::LatestRunFailed { .. } => "backups_failing",
            CatalogError::OutputExists { .. } => "output_exists",
            CatalogError::NoIdentity { .. } => "no_identity",
            CatalogError::BadIdentity { .. } => "bad_identity",
            CatalogError::WrongIdentity { .. } => "wrong_identity",
            CatalogError::ChecksumMismatch { .. } => "checksum_mismatch",
            CatalogError::Decode { .. } => "snapshot_undecodable",
            CatalogError::Write { .. } => "output_unwritable",
            CatalogError::Store(e) => e.kind(),
            CatalogError::Snapshot(e) => e.kind(),
        }
    }
}

/// One row of `pgrehearse snapshots`.
#[derive(Debug, Serialize)]
pub struct Listed {
    pub id: String,
    pub target: String,
    pub created_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub reason: super::Reason,
    pub key: String,
    pub bytes_raw: u64,
    pub bytes_stored: u64,
    pub sha256: String,
    pub encrypted: bool,
    pub verified_at: Option<String>,
}

/// Every snapshot of `target`, newest first. Unreadable manifests are skipped
/// with a warning (a listing must not fail because of one bad object).
pub async fn manifests(store: &dyn Store, target: &str) -> Result<Vec<Manifest>, StoreError> {
    let objects = store.list(&format!("{target}/")).await?;
    let mut out = Vec::new();
    for obj in objects.iter().filter(|o| o.key.ends_with(&format!("/{}", store::MANIFEST))) {
        let body = store.get(&obj.key).await?;
        match serde_json::from_slice::<Manifest>(&body) {
            Ok(m) => out.push(m),
            Err(e) => tracing::warn!(key = %store.locate(&obj.key), error = %e, "Skipping an unreadable manifest."),
        }
    }
    out.sort_by(|a, b| b.started_at.cmp(&a.started_at).then_with(|| b.id.cmp(&a.id)));
    Ok(out)
}

/// The snapshots of `target` in `store`, newest first.
pub async fn list(store: &dyn Store, target: &Target) -> Result<Vec<Listed>, CatalogError> {
    Ok(manifests(store, &target.name)
        .await?
        .into_iter()
        .map(|m| Listed {
            verified_at: m.verified_at(),
            key: store.locate(&m.dump.key),
            id: m.id,
            target: m.target,
            created_at: m.started_at,
            finished_at: m.finished_at,
            reason: m.reason,
            bytes_raw: m.bytes_raw,
            bytes_stored: m.bytes_stored,
            sha256: m.sha256,
            encrypted: m.encryption.is_some(),
        })
        .collect())
}

/// The manifest of `id`, or of the newest snapshot for `latest`.
pub async fn resolve(store: &dyn Store, target: &str, id: &str) -> Result<Manifest, CatalogError> {
    if id == "latest" {
        return manifests(store, target)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| CatalogError::NoSnapshots { target: target.into() });
    }
    let key = store::snapshot_key(target, id, store::MANIFEST);
    match store.get(&key).await {
        Ok(body) => serde_json::from_slice(&body)
            .map_err(|e| CatalogError::Decode { id: id.into(), reason: format!("manifest: {e}") }),
        Err(StoreError::NotFound { .. }) => Err(CatalogError::NotFound { target: target.into(), id: id.into() }),
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Serialize)]
pub struct PruneOutcome {
    pub target: String,
    pub dry_run: bool,
    pub deleted: Vec<String>,
    pub kept: Vec<String>,
    /// Why each kept snapshot is kept.
    pub reasons: std::collections::BTreeMap<String, Vec<&'static str>>,
}

/// Applies the target's retention policy. Refuses to delete anything while
/// the latest snapshot run failed. Deletes each snapshot's manifest first, so
/// an interrupted prune leaves no half-deleted snapshot visible.
pub async fn prune(
    state: &State,
    store: &dyn Store,
    target: &Target,
    dry_run: bool,
) -> Result<PruneOutcome, CatalogError> {
    if let Some(run) = state.latest_snapshot_run(&target.name).await.map_err(SnapshotError::from)?
        && run.status == RunStatus::Failed
    {
        return Err(CatalogError::LatestRunFailed {
            target: run.target,
            id: run.id,
            started_at: run.started_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            error: run.error.unwrap_or_else(|| "unknown error".into()),
        });
    }
    let all = manifests(store, &target.name).await?;
    let candidates: Vec<retention::Candidate> = all
        .iter()
        .map(|m| retention::Candidate {
            id: m.id.clone(),
            at: m.started_at,
            verified: m.verified_at().is_some(),
            pinned: m.pinned_by.is_some(),
        })
        .collect();
    let decisions = retention::apply(&target.retention, &candidates);
    let mut out = PruneOutcome {
        target: target.name.clone(),
        dry_run,
        deleted: vec![],
        kept: vec![],
        reasons: Default::default(),
    };
    for d in decisions {
        if d.keep {
            out.reasons.insert(d.id.clone(), d.reasons);
            out.kept.push(d.id);
            continue;
        }
        if !dry_run {
            delete_snapshot(store, &target.name, &d.id).await?;
            tracing::info!(snapshot = %d.id, target = %target.name, "Snapshot deleted by retention.");
        }
        out.deleted.push(d.id);
    }
    Ok(out)
}

async fn delete_snapshot(store: &dyn Store, target: &str, id: &str) -> Result<(), StoreError> {
    store.delete(&store::snapshot_key(target, id, store::MANIFEST)).await?;
    for obj in store.list(&format!("{target}/{id}/")).await? {
        store.delete(&obj.key).await?;
    }
    Ok(())
}

#[derive(Debug, Serialize)]
pub struct Downloaded {
    pub snapshot_id: String,
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
}

/// Downloads a snapshot into `output` as a plain `pg_dump -Fc` archive,
/// checking the stored bytes' SHA-256 against the manifest on the way. The
/// file appears under its name only when everything checked out.
pub async fn download(
    config: &Config,
    store: &dyn Store,
    target: &Target,
    id: &str,
    output: &Path,
    identity: Option<&Path>,
) -> Result<Downloaded, CatalogError> {
    if output.exists() {
        return Err(CatalogError::OutputExists { path: output.into() });
    }
    let m = resolve(store, &target.name, id).await?;
    fetch(config, store, &m, identity, output, true).await
}

/// The identity that decrypts `m`: `--identity`, `[store] identity_file`,
/// or the systemd credential `age-identity`.
fn identity_for(
    config: &Config,
    m: &Manifest,
    given: Option<&Path>,
) -> Result<Option<(PathBuf, String)>, CatalogError> {
    let Some(enc) = &m.encryption else { return Ok(None) };
    let path = given
        .map(Path::to_path_buf)
        .or_else(|| config.store.identity_file.clone())
        .or_else(|| {
            // systemd: LoadCredential=age-identity:/path/to/key
            let dir = std::env::var_os("CREDENTIALS_DIRECTORY")?;
            Some(Path::new(&dir).join("age-identity")).filter(|p| p.exists())
        })
        .ok_or_else(|| CatalogError::NoIdentity { id: m.id.clone() })?;
    Ok(Some((path, enc.recipients.join(", "))))
}

/// Streams the dump of `m` from the store into `output` (via
/// `output.partial`): SHA-256 of the stored bytes checked against the
/// manifest, then decrypted and decompressed. When decoding fails, the rest
/// of the object is still hashed, so a corrupt object is reported as the
/// checksum mismatch it is, not as a decoder error.
pub async fn fetch(
    config: &Config,
    store: &dyn Store,
    m: &Manifest,
    identity: Option<&Path>,
    output: &Path,
    durable: bool,
) -> Result<Downloaded, CatalogError> {
    // Identities are not `Send`: they are loaded on the decoding thread.
    let identity = identity_for(config, m, identity)?;
    let reader = store.open(&m.dump.key).await?;
    let partial = PathBuf::from(format!("{}.partial", output.display()));
    let file =
        std::fs::File::create(&partial).map_err(|source| CatalogError::Write { path: partial.clone(), source })?;
    let hash = Arc::new(Mutex::new((Sha256::new(), 0u64)));
    let h = hash.clone();
    let mid = m.id.clone();
    let limit = m.bytes_stored;
    let failed = Arc::new(Mutex::new(None));
    let f = failed.clone();
    let progress = crate::progress::Progress::start("download", Some(m.bytes_stored), false);
    let counted = progress.reader(SyncIoBridge::new(reader));
    let result = tokio::task::spawn_blocking(move || -> Result<u64, CatalogError> {
        let src = Rc::new(RefCell::new(counted));
        let hashed = Hashed { inner: src.clone(), state: h.clone(), limit, failed: f.clone() };
        let decoded = decode_into(hashed, identity, file, &mid, durable);
        if matches!(decoded, Err(CatalogError::Decode { .. })) {
            // Hash what the decoder left unread (bounded by the expected size).
            let mut rest = Hashed { inner: src, state: h, limit, failed: f };
            let _ = io::copy(&mut rest, &mut io::sink());
        }
        decoded
    })
    .await
    .map_err(|e| CatalogError::Decode { id: m.id.clone(), reason: e.to_string() })
    .and_then(|r| r);

    let (sha, count) = {
        let g = hash.lock().expect("not poisoned");
        (hex::encode(g.0.clone().finalize()), g.1)
    };
    let mismatch = || CatalogError::ChecksumMismatch {
        id: m.id.clone(),
        expected: m.sha256.clone(),
        actual: sha.clone(),
        expected_bytes: m.bytes_stored,
        actual_bytes: count,
    };
    let read_error = failed.lock().expect("not poisoned").take();
    let checked = match result {
        // A download that broke off is the store failing, not a corrupt object.
        Err(_) if read_error.is_some() => {
            Err(StoreError::Unavailable(format!("reading {}: {}", m.dump.key, read_error.unwrap_or_default())).into())
        }
        Err(CatalogError::Decode { .. }) if sha != m.sha256 || count != m.bytes_stored => Err(mismatch()),
        Err(e) => Err(e),
        Ok(_) if sha != m.sha256 || count != m.bytes_stored => Err(mismatch()),
        Ok(bytes) => Ok(bytes),
    };
    match checked {
        Ok(bytes) => {
            progress.finish();
            std::fs::rename(&partial, output).map_err(|source| CatalogError::Write { path: output.into(), source })?;
            Ok(Downloaded { snapshot_id: m.id.clone(), path: output.into(), bytes, sha256: sha })
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

/// Reads the stored dump of `m` and checks its SHA-256 and size against the
/// manifest, without decoding it. Returns the stored size.
pub async fn check_stored(store: &dyn Store, m: &Manifest) -> Result<u64, CatalogError> {
    use tokio::io::AsyncReadExt;
    let mut reader = store.open(&m.dump.key).await?;
    let progress = crate::progress::Progress::start("checksum", Some(m.bytes_stored), false);
    let mut hasher = Sha256::new();
    let mut count = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n =
            reader.read(&mut buf).await.map_err(|e| StoreError::Unavailable(format!("reading {}: {e}", m.dump.key)))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        count += n as u64;
        progress.inc(n as u64);
        if count > m.bytes_stored {
            break;
        }
    }
    let sha = hex::encode(hasher.finalize());
    if sha != m.sha256 || count != m.bytes_stored {
        return Err(CatalogError::ChecksumMismatch {
            id: m.id.clone(),
            expected: m.sha256.clone(),
            actual: sha,
            expected_bytes: m.bytes_stored,
            actual_bytes: count,
        });
    }
    progress.finish();
    Ok(count)
}

/// Decrypts (when `identity` is given) and decompresses into `file`.
fn decode_into(
    hashed: impl Read,
    identity: Option<(PathBuf, String)>,
    file: std::fs::File,
    id: &str,
    durable: bool,
) -> Result<u64, CatalogError> {
    let mut out = io::BufWriter::with_capacity(1 << 20, file);
    let decode = |e: io::Error| CatalogError::Decode { id: id.to_string(), reason: e.to_string() };
    let written = match identity {
        None => {
            let mut z = zstd::Decoder::new(hashed).map_err(decode)?;
            let n = io::copy(&mut z, &mut out).map_err(decode)?;
            // Whatever follows the last frame still counts for the hash.
            io::copy(&mut z.finish(), &mut io::sink()).map_err(decode)?;
            n
        }
        Some((path, recipients)) => {
            let ids = load_identities(&path)?;
            let dec = age::Decryptor::new(hashed)
                .map_err(|e| CatalogError::Decode { id: id.to_string(), reason: e.to_string() })?;
            let plain = dec.decrypt(ids.iter().map(|i| i.as_ref() as &dyn age::Identity)).map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => CatalogError::WrongIdentity {
                    path: path.clone(),
                    id: id.to_string(),
                    recipients: recipients.clone(),
                },
                other => CatalogError::Decode { id: id.to_string(), reason: other.to_string() },
            })?;
            let mut z = zstd::Decoder::new(plain).map_err(decode)?;
            let n = io::copy(&mut z, &mut out).map_err(decode)?;
            io::copy(&mut z.finish(), &mut io::sink()).map_err(decode)?;
            n
        }
    };
    let file = out.into_inner().map_err(|e| decode(e.into_error()))?;
    // A user's download must survive a crash; a staging file for an
    // immediate restore need not reach the disk.
    if durable {
        file.sync_all().map_err(decode)?;
    }
    Ok(written)
}

fn load_identities(path: &Path) -> Result<Vec<Box<dyn age::Identity>>, CatalogError> {
    let bad = |reason: String| CatalogError::BadIdentity { path: path.to_path_buf(), reason };
    age::IdentityFile::from_file(path.display().to_string())
        .map_err(|e| bad(e.to_string()))?
        .into_identities()
        .map_err(|e| bad(e.to_string()))
}

/// Hashes what passes through; the source and the hash are shared so that
/// what a failed decoder left unread can still be hashed. Reads stop at one
/// byte past the expected size: enough to prove a mismatch.
struct Hashed<R> {
    inner: Rc<RefCell<R>>,
    state: Arc<Mutex<(Sha256, u64)>>,
    limit: u64,
    /// The first error reading the store: the object could not be read,
    /// which says nothing about whether it is corrupt.
    failed: Arc<Mutex<Option<String>>>,
}

impl<R: Read> Read for Hashed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut g = self.state.lock().expect("not poisoned");
        let room = (self.limit + 1).saturating_sub(g.1);
        if room == 0 {
            return Ok(0);
        }
        let max = buf.len().min(room.min(usize::MAX as u64) as usize);
        let n = self.inner.borrow_mut().read(&mut buf[..max]).inspect_err(|e| {
            self.failed.lock().expect("not poisoned").get_or_insert_with(|| e.to_string());
        })?;
        g.0.update(&buf[..n]);
        g.1 += n as u64;
        Ok(n)
    }
}
