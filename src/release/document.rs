//! The release document: what `apply --json` prints and `releases [ID]`
//! lists — the release record with its journal, and what is read from the
//! journal and the state store besides (the write fence, the salvages, the
//! performance watch).

use serde::Serialize;

use super::{Outcome, ReleaseError, fence, salvage};
use crate::config::Target;
use crate::state::{JournalEntry, ReleaseRow, State};

/// What `apply --json` prints (and `releases` lists): the release record
/// (outcome, reason, timings, migrations, recovery) and its journal.
#[derive(Debug, Clone, Serialize)]
pub struct Release {
    #[serde(flatten)]
    pub record: ReleaseRow,
    pub journal: Vec<JournalEntry>,
    /// Whether live was in a write fence during the release (`fence_writes`),
    /// or, without one, whether writes could have been stranded; null for a
    /// release that never reached its pre-release snapshot.
    pub fence: Option<fence::FenceUse>,
    /// True when this run finished, by crash recovery, a release that a
    /// crash (or live's server going away) had interrupted. Not whether a
    /// recovery of live (`recovery`) succeeded: that is the `outcome`.
    pub finished_by_recovery: bool,
    /// Every `salvage --apply` of this release's stranded writes (when,
    /// how many rows), oldest first; empty when never salvaged.
    pub salvaged: Vec<salvage::SalvageRun>,
    /// The performance watch after the release (targets with
    /// `watch_after`): `{status, until, note, …result}`; null without one.
    pub watch: Option<serde_json::Value>,
}

impl Release {
    /// The document of `record` with its `journal` (the fence and the
    /// salvages are read from it).
    pub fn new(record: ReleaseRow, journal: Vec<JournalEntry>, finished_by_recovery: bool) -> Release {
        let salvaged = salvage::SalvageRun::from_journal(&journal);
        let fence = fence::report(&record, &journal);
        Release { record, journal, fence, finished_by_recovery, salvaged, watch: None }
    }

    pub fn outcome(&self) -> Outcome {
        self.record.outcome
    }
}

/// A migration's `error` object of a release record as one line: the
/// message, then PostgreSQL's DETAIL and HINT; empty when there is none.
pub fn error_text(error: &serde_json::Value) -> String {
    let field = |k: &str| error.get(k).and_then(|v| v.as_str()).filter(|s| !s.is_empty());
    let mut out = field("message").unwrap_or_default().to_string();
    if let Some(d) = field("detail") {
        out.push_str(&format!(" DETAIL: {d}"));
    }
    if let Some(h) = field("hint") {
        out.push_str(&format!(" HINT: {h}"));
    }
    out
}

pub(super) async fn release_doc(
    state: &State,
    record: ReleaseRow,
    finished_by_recovery: bool,
) -> Result<Release, ReleaseError> {
    let journal = state.journal(&record.id).await?;
    let mut rel = Release::new(record, journal, finished_by_recovery);
    rel.watch = state.watch(&rel.record.id).await?.map(|w| watch_view(&w));
    Ok(rel)
}

/// A release's watch as records show it: status, until, note, and the
/// comparison's result fields once made (no samples).
pub fn watch_view(w: &crate::state::WatchRow) -> serde_json::Value {
    let mut v = serde_json::json!({
        "status": w.status,
        "until": w.until.map(|u| u.to_rfc3339()),
        "note": w.note,
    });
    if let (Some(o), Some(serde_json::Value::Object(r))) = (v.as_object_mut(), &w.result) {
        for (k, x) in r {
            o.insert(k.clone(), x.clone());
        }
    }
    v
}

/// `pgrehearse releases [ID]`: the target's recent releases, or one.
pub async fn list(state: &State, target: &Target, id: Option<&str>) -> Result<Vec<Release>, ReleaseError> {
    let rows = match id {
        Some(id) => vec![
            state
                .release(id)
                .await?
                .filter(|r| r.target == target.name)
                .ok_or_else(|| ReleaseError::NotFound { target: target.name.clone(), id: id.into() })?,
        ],
        None => state.releases(Some(&target.name), 50).await?,
    };
    let mut out = Vec::new();
    for r in rows {
        out.push(release_doc(state, r, false).await?);
    }
    Ok(out)
}
