//! Whether the newest snapshot can carry a rehearsal, or the rehearsal must
//! take a fresh one by itself. A rehearsal on an older snapshot first
//! replays what live applied since (the catch-up); pgrehearse can do that
//! for the SQL it runs itself (sqlx, diesel), but Payload's CLI runs every
//! file the copy lacks in one go — the migrations live applied since the
//! snapshot and the plan alike — so it cannot bring the copy up to live
//! apart from the plan. After every Payload release the newest snapshot is
//! the pre-release one, so the next rehearsal (the CLI's, or the daemon's
//! on a file change) takes a fresh snapshot instead, and says why.
//!
//! Here too: picking the snapshot (verified first if it never was) and the
//! catch-up, the migrations live applied after it to replay on the copy.

use std::collections::HashSet;

use tokio_util::sync::CancellationToken;

use super::{Choice, RehearsalError};
use crate::config::{Config, MigrationKind, Target};
use crate::drill;
use crate::migrations::{Migration, Plan, Source};
use crate::snapshot::{self, catalog, manifest::Manifest};
use crate::state::State;
use crate::store::Store;

/// Why a rehearsal asked for the newest snapshot takes a fresh one itself;
/// `None` when `newest` can carry it. `live_applied` is live's history as
/// the plan read it (versions, or Payload names).
pub fn fresh_needed(kind: MigrationKind, live_applied: &[String], newest: Option<&Manifest>) -> Option<String> {
    let Some(m) = newest else {
        return Some("there is no snapshot of the target yet".into());
    };
    if kind != MigrationKind::Payload {
        return None;
    }
    // A manifest without a history table (or from before the field) holds none.
    let copy: HashSet<&str> = m.migrations.iter().flat_map(|s| s.applied.iter()).map(String::as_str).collect();
    let missing: Vec<&str> = live_applied.iter().map(String::as_str).filter(|v| !copy.contains(v)).collect();
    if missing.is_empty() {
        return None;
    }
    Some(format!(
        "the newest snapshot {} (taken {}) predates {} migration(s) live applied since ({}), and Payload's CLI cannot replay them on the copy apart from the plan",
        m.id,
        m.started_at.format("%Y-%m-%d %H:%M UTC"),
        missing.len(),
        missing.join(", ")
    ))
}

/// The snapshot to rehearse on: verified first if it never was. For
/// `latest`, a fresh one when the newest cannot carry the rehearsal (see
/// [`freshness`]); the second value then says why.
#[allow(clippy::too_many_arguments)]
pub(super) async fn pick_snapshot(
    config: &Config,
    state: &State,
    target: &Target,
    kind: MigrationKind,
    plan: &Plan,
    store: &dyn Store,
    choice: &Choice,
    cancel: &CancellationToken,
) -> Result<(Manifest, Option<String>), RehearsalError> {
    let mut fresh = None;
    let id = match choice {
        Choice::Id(id) => id.clone(),
        Choice::Fresh => snapshot::take(config, state, store, target, snapshot::Reason::Rehearsal, cancel).await?.id,
        Choice::Latest => {
            let newest = catalog::manifests(store, &target.name).await?.into_iter().next();
            match fresh_needed(kind, &plan.applied_versions(), newest.as_ref()) {
                None => newest.map(|m| m.id).unwrap_or_else(|| "latest".into()),
                Some(why) => {
                    tracing::info!(reason = %why, "Taking a fresh snapshot to rehearse on.");
                    fresh = Some(why);
                    snapshot::take(config, state, store, target, snapshot::Reason::Rehearsal, cancel).await?.id
                }
            }
        }
    };
    let m = catalog::resolve(store, &target.name, &id).await?;
    if m.verified_at().is_some() {
        return Ok((m, fresh));
    }
    tracing::info!(snapshot = %m.id, "The snapshot was never verified: running its restore drill first.");
    let drill = drill::verify(config, state, store, target, &m.id, false, false).await?;
    if !drill.ok {
        return Err(RehearsalError::SnapshotBroken { id: m.id, problems: drill.mismatches.join("; ") });
    }
    Ok((catalog::resolve(store, &target.name, &m.id).await?, fresh))
}

/// Migrations live applied after the snapshot was taken, to replay on the
/// copy before the plan (so the plan runs on the history live has).
pub(super) async fn catch_up(
    source: &Source<'_>,
    plan: &Plan,
    conn: &mut sqlx::PgConnection,
    m: &Manifest,
) -> Result<Vec<Migration>, RehearsalError> {
    if source.kind() == MigrationKind::Command {
        return Ok(Vec::new());
    }
    let copy: HashSet<String> = source.history(conn).await?.into_iter().filter(|a| a.ok).map(|a| a.version).collect();
    let live: HashSet<String> = plan.applied_versions().into_iter().collect();
    let ahead: Vec<String> = copy.difference(&live).cloned().collect();
    if !ahead.is_empty() {
        return Err(RehearsalError::SnapshotAhead { snapshot: m.id.clone(), versions: ahead.join(", ") });
    }
    let missing: Vec<&String> = live.difference(&copy).collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    if !source.is_native() {
        let mut v: Vec<String> = missing.into_iter().cloned().collect();
        v.sort();
        return Err(RehearsalError::CatchUpExternal {
            snapshot: m.id.clone(),
            versions: v.join(", "),
            kind: format!("{:?}", source.kind()).to_lowercase(),
        });
    }
    let files = source.files().await?;
    let replay: Vec<Migration> = files.into_iter().filter(|f| missing.contains(&&f.version)).collect();
    if replay.len() != missing.len() {
        let have: HashSet<&String> = replay.iter().map(|f| &f.version).collect();
        let gone: Vec<String> = missing.into_iter().filter(|v| !have.contains(v)).cloned().collect();
        return Err(RehearsalError::CatchUpMissing { versions: gone.join(", ") });
    }
    Ok(replay)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::manifest::MigrationState;

    fn manifest(applied: Option<&[&str]>) -> Manifest {
        let mut m: Manifest = serde_json::from_value(serde_json::json!({
            "format_version": 1,
            "id": "20261207T050000Z",
            "target": "app",
            "database": "app",
            "server_version": "15.8",
            "server_version_num": 150008,
            "pg_dump_version": "15.8",
            "started_at": "2026-12-07T05:00:00Z",
            "finished_at": "2026-12-07T05:00:01Z",
            "bytes_raw": 1,
            "bytes_stored": 1,
            "sha256": "00",
            "compression": { "algorithm": "zstd", "level": 1 },
            "dump": { "key": "app/x/dump", "bytes": 1, "sha256": "00" },
            "reason": "pre-release"
        }))
        .expect("a minimal manifest parses");
        m.migrations = applied.map(|a| MigrationState {
            kind: MigrationKind::Payload,
            table: "payload_migrations".into(),
            applied: a.iter().map(|s| s.to_string()).collect(),
        });
        m
    }

    fn live(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_payload_snapshot_older_than_live_history_needs_a_fresh_one() {
        let pre_release = manifest(Some(&["initial"]));
        let why = fresh_needed(MigrationKind::Payload, &live(&["initial", "slug", "slow"]), Some(&pre_release))
            .expect("the pre-release snapshot cannot carry the next rehearsal");
        assert!(why.contains("20261207T050000Z") && why.contains("slug, slow"), "{why}");
        assert!(why.contains("2 migration(s)"), "{why}");
    }

    #[test]
    fn a_snapshot_with_live_history_is_used() {
        let current = manifest(Some(&["initial", "slug"]));
        assert_eq!(fresh_needed(MigrationKind::Payload, &live(&["initial", "slug"]), Some(&current)), None);
        // Nothing applied anywhere, and no history table at dump time.
        assert_eq!(fresh_needed(MigrationKind::Payload, &[], Some(&manifest(None))), None);
    }

    #[test]
    fn a_manifest_without_history_predates_any_applied_migration() {
        let why = fresh_needed(MigrationKind::Payload, &live(&["initial"]), Some(&manifest(None)));
        assert!(why.is_some_and(|w| w.contains("(initial)")));
    }

    #[test]
    fn native_sources_catch_up_themselves() {
        let old = manifest(Some(&[]));
        for kind in [MigrationKind::Sqlx, MigrationKind::Diesel, MigrationKind::Command] {
            assert_eq!(fresh_needed(kind, &live(&["1", "2"]), Some(&old)), None, "{kind:?}");
        }
    }

    #[test]
    fn no_snapshot_at_all_needs_one() {
        let why = fresh_needed(MigrationKind::Sqlx, &[], None).expect("no snapshot");
        assert!(why.contains("no snapshot"), "{why}");
    }
}
