//! Validating `[store]`: the store kind, its local directory or S3 bucket,
//! endpoint and credentials, and the size settings (`parse_size`).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use super::super::locate::KeyPath;
use super::super::raw::*;
use super::super::secret;
use super::super::*;
use super::Ctx;

pub(super) fn store(cx: &mut Ctx, raw: &RawStore, state_dir: &Path) -> StoreConfig {
    let p = KeyPath::root().key("store");
    let kind = match raw.kind.as_deref().unwrap_or("local") {
        "local" => {
            for (key, set) in [("bucket", raw.bucket.is_some()), ("endpoint", raw.endpoint.is_some())] {
                if set {
                    cx.problem(&p.key(key), "only applies to kind = \"s3\"");
                }
            }
            let path = raw.path.as_deref().map(|d| cx.path(d)).unwrap_or_else(|| state_dir.join("snapshots"));
            StoreKind::Local { path }
        }
        "s3" => StoreKind::S3(s3(cx, &p, raw)),
        other => {
            cx.problem(&p.key("kind"), format!("unknown store kind `{other}`; use \"local\" or \"s3\""));
            StoreKind::Local { path: state_dir.join("snapshots") }
        }
    };
    for (i, r) in raw.encrypt_to.iter().enumerate() {
        if age::x25519::Recipient::from_str(r.trim()).is_err() {
            cx.problem(
                &p.key("encrypt_to").index(i),
                "not an age X25519 recipient (age1…); create one with age-keygen",
            );
        }
    }
    let abort_incomplete_after = cx
        .duration(
            &p.key("abort_incomplete_after"),
            raw.abort_incomplete_after.as_deref(),
            Some(Duration::from_secs(86400)),
        )
        .unwrap_or(Duration::from_secs(86400));
    let staging_reserve = match raw.staging_reserve.as_deref() {
        None => 256 << 20,
        Some(s) => parse_size(s).unwrap_or_else(|| {
            cx.problem(&p.key("staging_reserve"), format!("`{s}`: write a size such as \"512MiB\" or \"2GiB\""));
            256 << 20
        }),
    };
    StoreConfig {
        staging_reserve,
        kind,
        encrypt_to: raw.encrypt_to.iter().map(|r| r.trim().to_string()).collect(),
        identity_file: raw.identity_file.as_deref().map(|f| secret::secret_path(f, &cx.dir)),
        abort_incomplete_after,
    }
}

fn s3(cx: &mut Ctx, p: &KeyPath, raw: &RawStore) -> S3Config {
    let bucket = raw.bucket.clone().unwrap_or_default();
    if bucket.is_empty() {
        cx.problem(&p.key("bucket"), "kind = \"s3\" needs a bucket");
    }
    let checksums = match raw.checksums.as_deref().unwrap_or("when_required") {
        "when_required" => Checksums::WhenRequired,
        "when_supported" => Checksums::WhenSupported,
        other => {
            cx.problem(&p.key("checksums"), format!("`{other}`: use \"when_required\" or \"when_supported\""));
            Checksums::WhenRequired
        }
    };
    if let Some(e) = &raw.endpoint
        && url::Url::parse(e).is_err()
    {
        cx.problem(&p.key("endpoint"), format!("`{e}` is not a URL; write e.g. \"http://127.0.0.1:9000\""));
    }
    let secret_access_key =
        raw.secret_access_key_file.as_deref().and_then(|f| cx.secret_file(&p.key("secret_access_key_file"), f));
    if secret_access_key.is_some() != raw.access_key_id.is_some() {
        cx.problem(&p.key("access_key_id"), "access_key_id and secret_access_key_file go together; set both or neither (then the standard AWS chain is used)");
    }
    let min_part_size = match raw.part_size.as_deref() {
        None => 8 << 20,
        Some(s) => match parse_size(s) {
            Some(n) if (5 << 20..=5u64 << 30).contains(&n) => n,
            _ => {
                cx.problem(&p.key("part_size"), format!("`{s}`: write a size between \"5MiB\" and \"5GiB\""));
                8 << 20
            }
        },
    };
    let upload_concurrency = raw.upload_concurrency.unwrap_or(3);
    if !(1..=64).contains(&upload_concurrency) {
        cx.problem(&p.key("upload_concurrency"), "must be between 1 and 64");
    }
    let connect_timeout = cx
        .duration(&p.key("connect_timeout"), raw.connect_timeout.as_deref(), Some(Duration::from_secs(10)))
        .unwrap_or(Duration::from_secs(10));
    let io_timeout = cx
        .duration(&p.key("io_timeout"), raw.io_timeout.as_deref(), Some(Duration::from_secs(60)))
        .unwrap_or(Duration::from_secs(60));
    for (key, d) in [("connect_timeout", connect_timeout), ("io_timeout", io_timeout)] {
        if d < Duration::from_millis(100) {
            cx.problem(&p.key(key), "must be at least 100ms; write e.g. \"10s\"");
        }
    }
    S3Config {
        bucket,
        prefix: raw.prefix.clone().unwrap_or_else(|| "pgrehearse".into()).trim_matches('/').to_string(),
        endpoint: raw.endpoint.clone(),
        region: raw.region.clone().unwrap_or_else(|| "us-east-1".into()),
        force_path_style: raw.force_path_style.unwrap_or(false),
        checksums,
        access_key_id: raw.access_key_id.clone(),
        secret_access_key,
        upload_concurrency: upload_concurrency.clamp(1, 64),
        min_part_size,
        max_attempts: raw.max_attempts.unwrap_or(5).max(1),
        connect_timeout,
        io_timeout,
    }
}

/// `8MiB`, `16 MB`, `1048576`.
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        "tib" | "t" => 1 << 40,
        "kb" => 1000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}
