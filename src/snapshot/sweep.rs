//! The start-up sweeper: cleans up the store after snapshot runs that can
//! never finish (aborts their incomplete uploads, deletes objects of
//! snapshots that never got a manifest). Whether a run is dead is read from
//! the state store's snapshot runs, so this lives with the snapshot noun,
//! above both the object store and the state store.

use chrono::{DateTime, Utc};

use crate::state::State;
use crate::store::{MANIFEST, Store, StoreError};

/// Whether the run that wrote snapshot `id` can never finish: this host
/// recorded it as failed or its process died; a run we know nothing of
/// (another host's) once it started longer than `grace` ago. The id starts
/// with its UTC start time, which dates even objects without metadata.
async fn run_is_dead(
    state: &State,
    id: &str,
    fallback_start: Option<DateTime<Utc>>,
    grace: std::time::Duration,
) -> bool {
    match state.snapshot_run(id).await.ok().flatten() {
        Some(r) => {
            r.status != crate::state::RunStatus::Running
                || (r.host == crate::host::hostname() && !crate::host::process_alive(r.pid))
        }
        None => {
            id_started_at(id).or(fallback_start).is_some_and(|t| (Utc::now() - t).to_std().unwrap_or_default() >= grace)
        }
    }
}

/// `20261124T031500Z-3fa9` → 2026-11-24 03:15:00 UTC.
fn id_started_at(id: &str) -> Option<DateTime<Utc>> {
    let stamp = id.get(..16)?;
    chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ").ok().map(|t| t.and_utc())
}

/// Cleans up after runs that can never finish: aborts their incomplete
/// uploads, and deletes objects of snapshots that never got a manifest (a
/// crash between the upload and the manifest, or an interrupted prune that
/// had already deleted the manifest). Returns how many were removed.
pub async fn sweep(store: &dyn Store, state: &State, grace: std::time::Duration) -> Result<usize, StoreError> {
    let mut removed = 0;
    for up in store.incomplete().await? {
        // `<target>/<id>/<file>`
        let id = up.key.split('/').nth(1).unwrap_or_default();
        if run_is_dead(state, id, up.initiated, grace).await {
            store.abort_incomplete(&up).await?;
            tracing::info!(key = %up.key, upload_id = %up.upload_id, "Aborted an incomplete upload left by a failed run.");
            removed += 1;
        }
    }
    let objects = store.list("").await?;
    let mut dirs: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for o in &objects {
        if let Some((dir, _)) = o.key.rsplit_once('/') {
            dirs.entry(dir).or_default().push(&o.key);
        }
    }
    for (dir, keys) in dirs {
        // Only `<target>/<id>` directories are ours to judge.
        let Some((_, id)) = dir.split_once('/').filter(|(_, id)| !id.contains('/')) else { continue };
        let has_manifest = keys.iter().any(|k| k.ends_with(&format!("/{MANIFEST}")));
        if has_manifest || !run_is_dead(state, id, None, grace).await {
            continue;
        }
        for key in keys {
            store.delete(key).await?;
            tracing::info!(key = %store.locate(key), "Deleted an object of a snapshot that never completed.");
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::local;

    #[test]
    fn ids_carry_their_start_time() {
        let t = id_started_at("20261124T031500Z-3fa9").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-24T03:15:00+00:00");
        assert!(id_started_at("notes").is_none());
    }

    #[tokio::test]
    async fn sweep_removes_only_dead_unfinished_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(&dir.path().join("state")).await.unwrap();
        let store = local::LocalStore::new(dir.path().join("store"));
        let put = |k: &'static str| {
            let p = dir.path().join("store").join(k);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        };
        put("app/20200101T000000Z-0001/dump.pgdump.zst"); // old, no manifest: orphan
        put("app/20200101T000000Z-0002/dump.pgdump.zst"); // old, complete
        put("app/20200101T000000Z-0002/manifest.json");
        let young = format!("app/{}/dump.pgdump.zst", crate::snapshot::new_id(Utc::now()));
        let p = dir.path().join("store").join(&young);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"x").unwrap(); // unknown but young: may be another host's
        put("notes/readme.txt"); // not ours

        let removed = sweep(&store, &state, std::time::Duration::from_secs(3600)).await.unwrap();
        assert_eq!(removed, 1);
        let left: Vec<String> = store.list("").await.unwrap().into_iter().map(|o| o.key).collect();
        assert!(!left.iter().any(|k| k.contains("-0001")), "{left:?}");
        assert!(left.contains(&"app/20200101T000000Z-0002/manifest.json".to_string()));
        assert!(left.contains(&young));
        assert!(left.contains(&"notes/readme.txt".to_string()));
    }
}
