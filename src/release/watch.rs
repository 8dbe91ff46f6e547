//! The release's part of the performance watch (the comparison is the
//! `watch` operation's): when a release of a target with `watch_after`
//! starts, live's `pg_stat_statements` is sampled (the "before"); when it
//! applied, sampled again and the watch armed until `watch_after` later;
//! a release that did not apply has nothing to watch. Best effort: a
//! failed sample is logged and never costs the release.

use chrono::Utc;

use super::{Ctx, Outcome};
use crate::pg::stat_statements;
use crate::state::ReleaseRow;

/// Samples live at the release's start and records the watch (or, once,
/// that live has no `pg_stat_statements`).
pub(super) async fn started(cx: &Ctx<'_>, release_id: &str) {
    if cx.target.watch.is_none() {
        return;
    }
    let recorded = match stat_statements::sample(&cx.target.live_url).await {
        Ok(Ok(s)) => {
            let v = serde_json::to_value(&s).expect("samples serialize");
            cx.state.watch_started(release_id, &cx.target.name, Some(&v), None).await
        }
        Ok(Err(why)) => {
            tracing::info!(release = %release_id, reason = %why, "No performance watch for this release.");
            cx.state.watch_started(release_id, &cx.target.name, None, Some(&why)).await
        }
        Err(e) => {
            tracing::warn!(release = %release_id, error = %e, "Cannot sample pg_stat_statements on live: no performance watch for this release.");
            cx.state.watch_started(release_id, &cx.target.name, None, Some(&format!("cannot sample live: {e}"))).await
        }
    };
    if let Err(e) = recorded {
        tracing::warn!(release = %release_id, error = %e, "Cannot record the performance watch's start.");
    }
}

/// Arms the watch of an applied release (the end sample, and until when
/// the period runs); forgets it otherwise.
pub(super) async fn ended(cx: &Ctx<'_>, row: &ReleaseRow) {
    let Some(policy) = &cx.target.watch else { return };
    let recorded = if row.outcome != Outcome::Applied {
        cx.state.watch_dropped(&row.id).await
    } else {
        match stat_statements::sample(&cx.target.live_url).await {
            Ok(Ok(s)) => {
                let until = s.taken_at + chrono::Duration::from_std(policy.after).unwrap_or(chrono::Duration::MAX);
                let v = serde_json::to_value(&s).expect("samples serialize");
                tracing::info!(release = %row.id, until = %until, "Performance watch armed.");
                cx.state.watch_armed(&row.id, &v, until).await
            }
            Ok(Err(why)) => {
                cx.state.watch_finished(&row.id, crate::state::WatchStatus::Unavailable, None, Some(&why)).await
            }
            Err(e) => {
                tracing::warn!(release = %row.id, error = %e, "Cannot sample pg_stat_statements on live after the release: no performance watch.");
                let note = format!("cannot sample live after the release ({}): {e}", Utc::now().to_rfc3339());
                cx.state.watch_finished(&row.id, crate::state::WatchStatus::Unavailable, None, Some(&note)).await
            }
        }
    };
    if let Err(e) = recorded {
        tracing::warn!(release = %row.id, error = %e, "Cannot record the performance watch.");
    }
}
