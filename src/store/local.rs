//! The local store: a directory, `<root>/<target>/<id>/<file>`. Uploads go to
//! `<file>.partial` and are renamed into place after `fsync`, and small objects
//! likewise, so a crash never leaves a half-written file under its final name.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::io::{AsyncRead, AsyncWriteExt};

use super::{Incomplete, ObjectInfo, Store, StoreError, Upload};

const PARTIAL: &str = ".partial";

pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: PathBuf) -> Self {
        LocalStore { root }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.display().to_string(), source }
}

/// Flushes a directory entry (the rename) to disk.
async fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    let d = dir.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(&d).and_then(|f| f.sync_all()))
        .await
        .map_err(|e| StoreError::Failed(e.to_string()))?
        .map_err(io(dir))
}

async fn write_atomically(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().expect("keys have a directory");
    tokio::fs::create_dir_all(dir).await.map_err(io(dir))?;
    let tmp = partial_path(path);
    let mut f = tokio::fs::File::create(&tmp).await.map_err(io(&tmp))?;
    f.write_all(data).await.map_err(io(&tmp))?;
    f.sync_all().await.map_err(io(&tmp))?;
    drop(f);
    tokio::fs::rename(&tmp, path).await.map_err(io(path))?;
    sync_dir(dir).await
}

fn partial_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(PARTIAL);
    PathBuf::from(s)
}

fn walk(dir: &Path, out: &mut Vec<(PathBuf, std::fs::Metadata)>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            walk(&entry.path(), out)?;
        } else {
            out.push((entry.path(), meta));
        }
    }
    Ok(())
}

#[async_trait]
impl Store for LocalStore {
    fn locate(&self, key: &str) -> String {
        self.path(key).display().to_string()
    }

    async fn begin_upload(&self, key: &str, _expected_size: u64) -> Result<Box<dyn Upload>, StoreError> {
        let path = self.path(key);
        let dir = path.parent().expect("keys have a directory").to_path_buf();
        tokio::fs::create_dir_all(&dir).await.map_err(io(&dir))?;
        let tmp = partial_path(&path);
        let file = tokio::fs::File::create(&tmp).await.map_err(io(&tmp))?;
        Ok(Box::new(LocalUpload { file: Some(tokio::io::BufWriter::with_capacity(1 << 20, file)), tmp, path, size: 0 }))
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        write_atomically(&self.path(key), &data).await
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let path = self.path(key);
        match tokio::fs::read(&path).await {
            Ok(b) => Ok(Bytes::from(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::NotFound { key: key.into() }),
            Err(e) => Err(io(&path)(e)),
        }
    }

    async fn open(&self, key: &str) -> Result<Box<dyn AsyncRead + Send + Unpin>, StoreError> {
        let path = self.path(key);
        match tokio::fs::File::open(&path).await {
            Ok(f) => Ok(Box::new(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::NotFound { key: key.into() }),
            Err(e) => Err(io(&path)(e)),
        }
    }

    async fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let path = self.path(key);
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let root = self.root.clone();
        let files = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            walk(&root, &mut out).map(|_| out)
        })
        .await
        .map_err(|e| StoreError::Failed(e.to_string()))?
        .map_err(io(&self.root))?;
        let mut objects: Vec<ObjectInfo> = files
            .into_iter()
            .filter_map(|(p, _)| {
                let rel = p.strip_prefix(&self.root).ok()?.to_str()?.to_string();
                (rel.starts_with(prefix) && !rel.ends_with(PARTIAL)).then_some(ObjectInfo { key: rel })
            })
            .collect();
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
        // Remove the snapshot's directory once it is empty.
        if let Some(dir) = path.parent()
            && dir != self.root
        {
            let _ = tokio::fs::remove_dir(dir).await;
        }
        Ok(())
    }

    async fn incomplete(&self) -> Result<Vec<Incomplete>, StoreError> {
        let root = self.root.clone();
        let files = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            walk(&root, &mut out).map(|_| out)
        })
        .await
        .map_err(|e| StoreError::Failed(e.to_string()))?
        .map_err(io(&self.root))?;
        Ok(files
            .into_iter()
            .filter_map(|(p, m)| {
                let rel = p.strip_prefix(&self.root).ok()?.to_str()?;
                let key = rel.strip_suffix(PARTIAL)?.to_string();
                Some(Incomplete {
                    key,
                    upload_id: p.display().to_string(),
                    initiated: m.modified().ok().map(DateTime::<Utc>::from),
                })
            })
            .collect())
    }

    async fn abort_incomplete(&self, upload: &Incomplete) -> Result<(), StoreError> {
        let p = PathBuf::from(&upload.upload_id);
        match tokio::fs::remove_file(&p).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&p)(e)),
        }
    }
}

struct LocalUpload {
    file: Option<tokio::io::BufWriter<tokio::fs::File>>,
    tmp: PathBuf,
    path: PathBuf,
    size: u64,
}

#[async_trait]
impl Upload for LocalUpload {
    async fn write(&mut self, data: Bytes) -> Result<(), StoreError> {
        let f = self.file.as_mut().expect("write after finish");
        f.write_all(&data).await.map_err(io(&self.tmp))?;
        self.size += data.len() as u64;
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<u64, StoreError> {
        let mut f = self.file.take().expect("finish twice");
        let result = async {
            f.flush().await.map_err(io(&self.tmp))?;
            f.get_mut().sync_all().await.map_err(io(&self.tmp))?;
            drop(f);
            tokio::fs::rename(&self.tmp, &self.path).await.map_err(io(&self.path))?;
            sync_dir(self.path.parent().expect("keys have a directory")).await
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&self.tmp).await;
        }
        result.map(|_| self.size)
    }

    async fn abort(mut self: Box<Self>) {
        self.file.take();
        let _ = tokio::fs::remove_file(&self.tmp).await;
    }
}

impl Drop for LocalUpload {
    fn drop(&mut self) {
        // Dropped mid-way (an error or a cancelled task): never leave the
        // partial file behind.
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
