//! Secrets: values that must never reach argv, logs or printed configs.
//!
//! A secret comes from a `*_file` key, from the environment, or from systemd's
//! `$CREDENTIALS_DIRECTORY` (a bare file name in a `*_file` key is looked up
//! there first, so `LoadCredential=live-url:/etc/…` pairs with
//! `live_url_file = "live-url"`).

use std::fmt;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Serialize, Serializer};

/// A string that prints as `<redacted>` in `Debug`, `Display` and `Serialize`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself: only for handing to a connection or a child's env.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// Where a `*_file` value points: a bare name is first looked up in
/// `$CREDENTIALS_DIRECTORY`; a relative path is relative to the config file.
pub fn secret_path(value: &Path, config_dir: &Path) -> PathBuf {
    if value.components().count() == 1
        && value.is_relative()
        && let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY")
    {
        let candidate = Path::new(&dir).join(value);
        if candidate.exists() {
            return candidate;
        }
    }
    if value.is_relative() { config_dir.join(value) } else { value.to_path_buf() }
}

/// The largest secret file read (a URL, a key, a token: far smaller).
const MAX_SECRET: u64 = 64 * 1024;

/// Reads a secret file (trailing newline trimmed). World-readable files are
/// accepted with a warning: refusing would break hosts that keep secrets in
/// a 0644 file behind a 0700 directory, which is also safe.
pub fn read_secret_file(value: &Path, config_dir: &Path) -> Result<Secret, String> {
    let path = secret_path(value, config_dir);
    let cannot = |e: std::io::Error| {
        format!("cannot read secret file {}: {e}; create it or fix its permissions", path.display())
    };
    // Checked before opening: a FIFO would block the open, /dev/zero or a
    // dump file named by mistake would fill memory.
    let meta = std::fs::metadata(&path).map_err(cannot)?;
    if !meta.is_file() {
        return Err(format!(
            "secret file {} is not a regular file; point the key at a file holding only the secret",
            path.display()
        ));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(&path).and_then(|f| f.take(MAX_SECRET + 1).read_to_end(&mut bytes)).map_err(cannot)?;
    if bytes.len() as u64 > MAX_SECRET {
        return Err(format!(
            "secret file {} is larger than {} KiB; it must hold only the secret",
            path.display(),
            MAX_SECRET / 1024
        ));
    }
    let text = String::from_utf8(bytes).map_err(|_| format!("secret file {} is not UTF-8 text", path.display()))?;
    if let Ok(meta) = std::fs::metadata(&path)
        && meta.permissions().mode() & 0o004 != 0
    {
        tracing::warn!(path = %path.display(), "Secret file is readable by every user; run chmod 600 on it.");
    }
    let text = text.trim_end_matches(['\n', '\r']).to_string();
    if text.is_empty() {
        return Err(format!("secret file {} is empty", path.display()));
    }
    Ok(Secret(text))
}

/// The environment variable that may hold a target's secret, e.g.
/// `PGREHEARSE_APP_LIVE_URL` for target `app`, key `live_url`.
pub fn env_name(target: &str, key: &str) -> String {
    let t: String =
        target.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    format!("PGREHEARSE_{t}_{}", key.to_ascii_uppercase())
}
