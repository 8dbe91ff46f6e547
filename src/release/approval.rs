//! `pgrehearse approve --plan HASH`: approves the plan pending on live, and
//! only when its latest rehearsal passed and is younger than the target's
//! `approval_max_age`. An approval names who approved, when, the rehearsal
//! it rests on, and expires after `approval_expires_after`. Any edited file,
//! new migration or moved live history changes the plan hash, so an approval
//! can never release a plan other than the one rehearsed. With
//! `requires_release_on`, the same migrations must have been released on
//! that other target first (promotion dev → staging → production).

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::Target;
use crate::error_class::{Class, Classify};
use crate::migrations::{self, PlanError, Source};
use crate::state::{ApprovalRow, RehearsalStatus, State, StateError};

/// At least this many hex digits of a plan hash are needed to name it.
pub const MIN_PREFIX: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error(
        "`{given}` is not a plan hash: give the hash `pgrehearse status` or the rehearsal report shows (at least {MIN_PREFIX} hex digits)"
    )]
    BadHash { given: String },
    #[error("target `{target}` has no pending migrations: there is nothing to approve")]
    NothingPending { target: String },
    #[error(
        "plan {given} is not the plan pending on `{target}` now ({current}): files were edited or added, or live's history moved since; rehearse the current plan and approve its hash"
    )]
    NotCurrent { target: String, given: String, current: String },
    #[error("plan {plan} was never rehearsed; run `pgrehearse rehearse` and approve it once it passes")]
    NotRehearsed { plan: String },
    #[error(
        "the latest rehearsal of plan {plan} ({id}) did not pass (status: {status}); fix its problems, rehearse again, then approve"
    )]
    NotPassed { plan: String, id: String, status: String },
    #[error(
        "the passing rehearsal of plan {plan} ({id}) finished {age} ago, longer than approval_max_age ({max}); rehearse again and approve that rehearsal"
    )]
    TooOld { plan: String, id: String, age: String, max: String },
    #[error("{0}")]
    NotPromoted(String),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    State(#[from] StateError),
}

impl Classify for ApprovalError {
    fn class(&self) -> Class {
        match self {
            ApprovalError::BadHash { .. } => Class::Usage,
            // The request is well-formed but the evidence does not allow it.
            ApprovalError::NothingPending { .. }
            | ApprovalError::NotCurrent { .. }
            | ApprovalError::NotRehearsed { .. }
            | ApprovalError::NotPassed { .. }
            | ApprovalError::TooOld { .. }
            | ApprovalError::NotPromoted(_) => Class::Refused,
            ApprovalError::Plan(e) => e.class(),
            ApprovalError::State(e) => e.class(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            ApprovalError::BadHash { .. } => "bad_plan_hash",
            ApprovalError::NothingPending { .. } => "nothing_pending",
            ApprovalError::NotCurrent { .. } => "plan_changed",
            ApprovalError::NotRehearsed { .. } => "not_rehearsed",
            ApprovalError::NotPassed { .. } => "rehearsal_not_passed",
            ApprovalError::TooOld { .. } => "rehearsal_too_old",
            ApprovalError::NotPromoted(_) => "not_promoted",
            ApprovalError::Plan(e) => e.kind(),
            ApprovalError::State(e) => e.kind(),
        }
    }
}

/// What `approve --json` prints.
#[derive(Debug, Serialize)]
pub struct Approved {
    pub approval_id: String,
    pub target: String,
    pub plan: String,
    pub rehearsal_id: String,
    pub approved_by: String,
    pub approved_at: String,
    pub expires_at: String,
}

/// Approves `plan` (the full hash or a prefix of at least [`MIN_PREFIX`]),
/// recording the approval in `state`.
pub async fn approve(
    state: &State,
    target: &Target,
    plan: &str,
    by: Option<&str>,
    note: Option<&str>,
) -> Result<Approved, ApprovalError> {
    let given = parse_hash(plan)?;
    let source = Source::of(target).map_err(PlanError::from)?;
    let current = migrations::plan_for(state, &source, &target.live_url).await?;
    if current.pending.is_empty() {
        return Err(ApprovalError::NothingPending { target: target.name.clone() });
    }
    if !current.hash.starts_with(&given) {
        return Err(ApprovalError::NotCurrent { target: target.name.clone(), given, current: current.hash });
    }
    let rehearsal = state
        .latest_rehearsal(&target.name, Some(&current.hash))
        .await?
        .ok_or_else(|| ApprovalError::NotRehearsed { plan: current.hash.clone() })?;
    if rehearsal.status != RehearsalStatus::Passed {
        return Err(ApprovalError::NotPassed {
            plan: current.hash,
            id: rehearsal.id,
            status: rehearsal.status.to_string(),
        });
    }
    if let Some(refusal) = super::preflight::promotion(state, target, &current).await? {
        return Err(ApprovalError::NotPromoted(refusal.to_string()));
    }
    let now = Utc::now();
    let finished = rehearsal
        .finished_at
        .as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map_or(now, |t| t.with_timezone(&Utc));
    let age = (now - finished).to_std().unwrap_or_default();
    if age > target.approval_max_age {
        return Err(ApprovalError::TooOld {
            plan: current.hash,
            id: rehearsal.id,
            age: humantime::format_duration(std::time::Duration::from_secs(age.as_secs())).to_string(),
            max: humantime::format_duration(target.approval_max_age).to_string(),
        });
    }
    let expires = now + chrono::Duration::from_std(target.approval_expires_after).unwrap_or(chrono::Duration::days(7));
    let row = ApprovalRow {
        id: format!("a-{}", crate::snapshot::new_id(now)),
        target: target.name.clone(),
        plan_hash: current.hash.clone(),
        rehearsal_id: rehearsal.id,
        approved_by: by.map(str::to_string).unwrap_or_else(whoami),
        note: note.map(str::to_string),
        approved_at: now.to_rfc3339(),
        expires_at: expires.to_rfc3339(),
    };
    state.approval_insert(&row).await?;
    tracing::info!(approval = %row.id, plan = %row.plan_hash, by = %row.approved_by, expires_at = %row.expires_at, "Plan approved.");
    Ok(Approved {
        approval_id: row.id,
        target: row.target,
        plan: row.plan_hash,
        rehearsal_id: row.rehearsal_id,
        approved_by: row.approved_by,
        approved_at: row.approved_at,
        expires_at: row.expires_at,
    })
}

/// Why an approval cannot release a plan, in the order they are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unusable {
    /// It names another plan than the one pending now.
    PlanChanged,
    /// Its `expires_at` passed (or cannot be read).
    Expired,
    /// A release already used it.
    Spent { release: String },
}

/// `plan` as a (prefix of a) plan hash, lowercased.
fn parse_hash(plan: &str) -> Result<String, ApprovalError> {
    let given = plan.trim().to_ascii_lowercase();
    if given.len() < MIN_PREFIX || given.len() > 64 || !given.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ApprovalError::BadHash { given: plan.to_string() });
    }
    Ok(given)
}

/// What decides whether an approval is usable, read once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usability {
    /// Whether it names the plan pending now (`None`: not known).
    pub names_plan: Option<bool>,
    pub expired: bool,
    /// The release that used it, if one did.
    pub spent_by: Option<String>,
}

impl Usability {
    /// The one decision: usable when it names the pending plan (or that is
    /// not known), has not expired and was not spent; else the first reason
    /// why not.
    pub fn verdict(&self) -> Result<(), Unusable> {
        if self.names_plan == Some(false) {
            return Err(Unusable::PlanChanged);
        }
        if self.expired {
            return Err(Unusable::Expired);
        }
        match &self.spent_by {
            Some(release) => Err(Unusable::Spent { release: release.clone() }),
            None => Ok(()),
        }
    }

    pub fn usable(&self) -> bool {
        self.verdict().is_ok()
    }
}

/// Reads whether approval `a` is usable for `plan` (the pending plan's
/// hash, when known) at `now`: every caller (status, the API, the daemon's
/// scheduler, preflight) decides through this and [`Usability::verdict`].
pub async fn usability(
    state: &crate::state::State,
    a: &ApprovalRow,
    plan: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Usability, StateError> {
    Ok(Usability {
        names_plan: plan.map(|p| p == a.plan_hash),
        expired: expired(a, now),
        spent_by: state.approval_spent(&a.id).await?,
    })
}

/// Whether `a` expired at `now` (an unreadable time counts as expired).
pub fn expired(a: &ApprovalRow, now: DateTime<Utc>) -> bool {
    DateTime::parse_from_rfc3339(&a.expires_at).map_or(true, |t| t.with_timezone(&Utc) <= now)
}

/// Who runs this command: the user behind sudo, else the login user.
fn whoami() -> String {
    ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        // SAFETY: getuid(2) cannot fail and touches no memory.
        .unwrap_or_else(|| format!("uid {}", unsafe { libc::getuid() }))
}
