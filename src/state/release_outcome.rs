//! The vocabulary of a release's record: how it ended ([`Outcome`]) and
//! what failed or refused it ([`ReleaseErrorKind`]), each stored as its
//! snake_case name and read back leniently (a name a newer version wrote
//! reads as the value a person must look at).

use serde::{Deserialize, Serialize};

/// How a release ended, or that it runs. Stored in `releases.outcome` as
/// the snake_case name (the same TEXT as before this was a type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Applied,
    /// Nothing of the plan stayed on live: its transaction rolled back, or
    /// `on_failure = "down"` reverted what it applied.
    RolledBack,
    /// The pre-release snapshot was restored in place of live.
    Restored,
    /// Stopped with live as the failure left it (`on_failure = "halt"`, or a
    /// recovery that could not finish); a person must act.
    Halted,
    /// Preflight refused; nothing was done.
    Refused,
    /// Interrupted before any migration ran; live untouched.
    Aborted,
    NothingPending,
    /// Still in progress (only seen in the record of a running release).
    Running,
    /// Stopped unfinished because live's server went away while live had
    /// to be recovered (e.g. the server crashed mid-release): the next
    /// pgrehearse command on the target finishes it once the server is back.
    Interrupted,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::RolledBack => "rolled_back",
            Outcome::Restored => "restored",
            Outcome::Halted => "halted",
            Outcome::Refused => "refused",
            Outcome::Aborted => "aborted",
            Outcome::NothingPending => "nothing_pending",
            Outcome::Running => "running",
            Outcome::Interrupted => "interrupted",
        }
    }

    /// Reads a stored outcome. A name this version does not know (written
    /// by a newer one) reads as `halted`: a person looks at it.
    pub fn from_stored(s: &str) -> Outcome {
        match s {
            "applied" => Outcome::Applied,
            "rolled_back" => Outcome::RolledBack,
            "restored" => Outcome::Restored,
            "refused" => Outcome::Refused,
            "aborted" => Outcome::Aborted,
            "nothing_pending" => Outcome::NothingPending,
            "running" => Outcome::Running,
            "interrupted" => Outcome::Interrupted,
            _ => Outcome::Halted,
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Why a release did not apply, as a bounded label: a preflight refusal's
/// kind, or what failed. Stored in `releases.error_kind` as the snake_case
/// name (the same TEXT as before this was a type); metrics use it as a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseErrorKind {
    Drift,
    NotApproved,
    PlanChanged,
    ApprovalExpired,
    ApprovalSpent,
    RehearsalNotPassed,
    NotPromoted,
    OutsideWindow,
    DoesNotFit,
    LockHeld,
    DumpRunning,
    LongTransaction,
    /// Sessions hold locks on the plan's tables longer than `max_queue_wait`.
    LocksHeld,
    NoStagingSpace,
    ClientTooOld,
    ShadowIsLive,
    SnapshotFailed,
    /// The write fence could not be put up (before anything ran).
    FenceFailed,
    MigrationFailed,
    /// The lock-queue guard cancelled a migration's lock wait until the
    /// retries ran out (the application queued behind it each time).
    LockQueue,
    LiveUnreachable,
    /// Live's server stopped answering mid-release (the stall watchdog).
    LiveStalled,
    Interrupted,
    Unknown,
}

impl ReleaseErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseErrorKind::Drift => "drift",
            ReleaseErrorKind::NotApproved => "not_approved",
            ReleaseErrorKind::PlanChanged => "plan_changed",
            ReleaseErrorKind::ApprovalExpired => "approval_expired",
            ReleaseErrorKind::ApprovalSpent => "approval_spent",
            ReleaseErrorKind::RehearsalNotPassed => "rehearsal_not_passed",
            ReleaseErrorKind::NotPromoted => "not_promoted",
            ReleaseErrorKind::OutsideWindow => "outside_window",
            ReleaseErrorKind::DoesNotFit => "does_not_fit",
            ReleaseErrorKind::LockHeld => "lock_held",
            ReleaseErrorKind::DumpRunning => "dump_running",
            ReleaseErrorKind::LongTransaction => "long_transaction",
            ReleaseErrorKind::LocksHeld => "locks_held",
            ReleaseErrorKind::NoStagingSpace => "no_staging_space",
            ReleaseErrorKind::ClientTooOld => "client_too_old",
            ReleaseErrorKind::ShadowIsLive => "shadow_is_live",
            ReleaseErrorKind::SnapshotFailed => "snapshot_failed",
            ReleaseErrorKind::FenceFailed => "fence_failed",
            ReleaseErrorKind::MigrationFailed => "migration_failed",
            ReleaseErrorKind::LockQueue => "lock_queue",
            ReleaseErrorKind::LiveUnreachable => "live_unreachable",
            ReleaseErrorKind::LiveStalled => "live_stalled",
            ReleaseErrorKind::Interrupted => "interrupted",
            ReleaseErrorKind::Unknown => "unknown",
        }
    }

    /// Reads a stored kind; one this version does not know reads as `unknown`.
    pub fn from_stored(s: &str) -> ReleaseErrorKind {
        match s {
            "drift" => ReleaseErrorKind::Drift,
            "not_approved" => ReleaseErrorKind::NotApproved,
            "plan_changed" => ReleaseErrorKind::PlanChanged,
            "approval_expired" => ReleaseErrorKind::ApprovalExpired,
            "approval_spent" => ReleaseErrorKind::ApprovalSpent,
            "rehearsal_not_passed" => ReleaseErrorKind::RehearsalNotPassed,
            "not_promoted" => ReleaseErrorKind::NotPromoted,
            "outside_window" => ReleaseErrorKind::OutsideWindow,
            "does_not_fit" => ReleaseErrorKind::DoesNotFit,
            "lock_held" => ReleaseErrorKind::LockHeld,
            "dump_running" => ReleaseErrorKind::DumpRunning,
            "long_transaction" => ReleaseErrorKind::LongTransaction,
            "locks_held" => ReleaseErrorKind::LocksHeld,
            "no_staging_space" => ReleaseErrorKind::NoStagingSpace,
            "client_too_old" => ReleaseErrorKind::ClientTooOld,
            "shadow_is_live" => ReleaseErrorKind::ShadowIsLive,
            "snapshot_failed" => ReleaseErrorKind::SnapshotFailed,
            "fence_failed" => ReleaseErrorKind::FenceFailed,
            "migration_failed" => ReleaseErrorKind::MigrationFailed,
            "lock_queue" => ReleaseErrorKind::LockQueue,
            "live_unreachable" => ReleaseErrorKind::LiveUnreachable,
            "live_stalled" => ReleaseErrorKind::LiveStalled,
            "interrupted" => ReleaseErrorKind::Interrupted,
            _ => ReleaseErrorKind::Unknown,
        }
    }
}

impl std::fmt::Display for ReleaseErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

#[cfg(test)]
mod vocabulary_tests {
    use super::*;

    #[test]
    fn outcomes_and_error_kinds_are_stored_as_their_names() {
        for k in [
            ReleaseErrorKind::Drift,
            ReleaseErrorKind::NotApproved,
            ReleaseErrorKind::PlanChanged,
            ReleaseErrorKind::ApprovalExpired,
            ReleaseErrorKind::ApprovalSpent,
            ReleaseErrorKind::RehearsalNotPassed,
            ReleaseErrorKind::NotPromoted,
            ReleaseErrorKind::OutsideWindow,
            ReleaseErrorKind::DoesNotFit,
            ReleaseErrorKind::LockHeld,
            ReleaseErrorKind::DumpRunning,
            ReleaseErrorKind::LongTransaction,
            ReleaseErrorKind::NoStagingSpace,
            ReleaseErrorKind::ClientTooOld,
            ReleaseErrorKind::ShadowIsLive,
            ReleaseErrorKind::SnapshotFailed,
            ReleaseErrorKind::MigrationFailed,
            ReleaseErrorKind::LiveUnreachable,
            ReleaseErrorKind::LiveStalled,
            ReleaseErrorKind::Interrupted,
            ReleaseErrorKind::Unknown,
        ] {
            assert_eq!(ReleaseErrorKind::from_stored(k.as_str()), k);
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
        assert_eq!(ReleaseErrorKind::from_stored("new_in_a_later_version"), ReleaseErrorKind::Unknown);
        assert_eq!(Outcome::from_stored("rolled_back"), Outcome::RolledBack);
        assert_eq!(serde_json::to_value(Outcome::NothingPending).unwrap(), "nothing_pending");
        assert_eq!(Outcome::from_stored("new_in_a_later_version"), Outcome::Halted);
        assert_eq!(format!("{:<9}|", Outcome::Applied), "applied  |");
    }
}
