//! The steps of a release journal, as the state store keeps them (TEXT, the
//! snake_case name). Recovery reads them back to decide how far a crashed
//! release got, so a name this version does not know reads as `unknown`,
//! which no recovery decision matches.

use std::fmt;

use serde::Serialize;

/// A step of a release, in the order a release takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// The write fence is about to go up on live; the detail keeps the
    /// database and its original setting, to put back (`release::fence`).
    FenceOn,
    Snapshot,
    SnapshotDone,
    Apply,
    Migration,
    MigrationDone,
    /// A lock timeout: the migration (or the plan's transaction) is retried.
    LockRetry,
    /// One of pgrehearse's own transactions on live (its id, journaled
    /// before it commits): rows it wrote are not stranded writes.
    Xid,
    /// A write of the plan no transaction id tells apart (a statement
    /// outside a transaction, an external `command` tool).
    Unattributed,
    Applied,
    Postcheck,
    Failed,
    Recovery,
    Restore,
    RestoreDone,
    Swap,
    SwapRenamed,
    /// Comparing the failed database with the restored one (live offline).
    Stranded,
    /// The comparison's summary (or why it could not be made).
    StrandedDone,
    SwapDone,
    Down,
    /// The write fence was lifted (journaled after it is down).
    FenceOff,
    Interrupted,
    /// This run stopped unfinished: live's server went away during recovery.
    Suspended,
    Finished,
    /// Stranded writes were put back into live (`pgrehearse salvage
    /// --apply`, after the release finished); the detail holds the counts.
    Salvaged,
    /// A stored name this version does not know.
    Unknown,
}

const ALL: [Step; 27] = [
    Step::FenceOn,
    Step::Snapshot,
    Step::SnapshotDone,
    Step::Apply,
    Step::Migration,
    Step::MigrationDone,
    Step::LockRetry,
    Step::Xid,
    Step::Unattributed,
    Step::Applied,
    Step::Postcheck,
    Step::Failed,
    Step::Recovery,
    Step::Restore,
    Step::RestoreDone,
    Step::Swap,
    Step::SwapRenamed,
    Step::Stranded,
    Step::StrandedDone,
    Step::SwapDone,
    Step::Down,
    Step::FenceOff,
    Step::Interrupted,
    Step::Suspended,
    Step::Finished,
    Step::Salvaged,
    Step::Unknown,
];

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::FenceOn => "fence_on",
            Step::Snapshot => "snapshot",
            Step::SnapshotDone => "snapshot_done",
            Step::Apply => "apply",
            Step::Migration => "migration",
            Step::MigrationDone => "migration_done",
            Step::LockRetry => "lock_retry",
            Step::Xid => "xid",
            Step::Unattributed => "unattributed",
            Step::Applied => "applied",
            Step::Postcheck => "postcheck",
            Step::Failed => "failed",
            Step::Recovery => "recovery",
            Step::Restore => "restore",
            Step::RestoreDone => "restore_done",
            Step::Swap => "swap",
            Step::SwapRenamed => "swap_renamed",
            Step::Stranded => "stranded",
            Step::StrandedDone => "stranded_done",
            Step::SwapDone => "swap_done",
            Step::Down => "down",
            Step::FenceOff => "fence_off",
            Step::Interrupted => "interrupted",
            Step::Suspended => "suspended",
            Step::Finished => "finished",
            Step::Salvaged => "salvaged",
            Step::Unknown => "unknown",
        }
    }

    /// Reads a stored name; one this version does not know is `Unknown`.
    pub fn from_stored(s: &str) -> Step {
        ALL.into_iter().find(|step| step.as_str() == s).unwrap_or(Step::Unknown)
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_stored_as_their_names() {
        for s in ALL {
            assert_eq!(Step::from_stored(s.as_str()), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(Step::from_stored("someday"), Step::Unknown);
        assert_eq!(Step::LockRetry.as_str(), "lock_retry", "the name earlier versions stored");
    }
}
