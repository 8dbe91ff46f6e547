//! Whether a release of a plan can strand writes, decided in one place for
//! the release (does it put up the write fence?) and the rehearsal report
//! (does it warn?). Writes are stranded only by a restore: a plan that runs
//! in one transaction rolls back instead, and `on_failure = "down"` or
//! `"halt"` never restores, so live keeps every write in both cases and a
//! fence would only make the application fail for nothing.

use serde::Serialize;

use crate::config::{OnFailure, Target};

/// How a release of a plan stands towards stranded writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Exposure {
    /// It may end in a restore and `fence_writes` is on: live is fenced.
    Fenced,
    /// It may end in a restore and nothing fences live: other sessions'
    /// writes between the pre-release snapshot and the swap would be
    /// stranded in the failed database.
    Unfenced,
    /// The plan runs in one transaction: a failure rolls back, nothing is
    /// restored.
    OneTransaction,
    /// `on_failure` is not `restore`.
    NoRestore,
}

impl Exposure {
    /// `target`'s release of a plan that runs in one transaction or not.
    pub fn of(target: &Target, single_transaction: bool) -> Exposure {
        if target.on_failure != OnFailure::Restore {
            Exposure::NoRestore
        } else if single_transaction {
            Exposure::OneTransaction
        } else if target.release.fence_writes {
            Exposure::Fenced
        } else {
            Exposure::Unfenced
        }
    }

    /// What a report says about it: for [`Exposure::Unfenced`], that writes
    /// would be stranded and how to fence them; for the others, why no
    /// fence is needed (`None` when live is fenced).
    pub fn note(self) -> Option<&'static str> {
        match self {
            Exposure::Fenced => None,
            Exposure::Unfenced => Some(
                "if this plan fails on live and the release restores the pre-release snapshot, writes other sessions make on live between that snapshot and the swap are stranded in the failed database (live lacks them until `pgrehearse salvage`); set fence_writes = true on the target to make such writes fail during the release instead",
            ),
            Exposure::OneTransaction => Some(
                "not needed: the plan runs in one transaction, so a failure rolls back and nothing is restored; no write can be stranded",
            ),
            Exposure::NoRestore => Some(
                "not needed: on_failure is not \"restore\", so live keeps every write the application makes during the release",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_plan_that_may_restore_is_exposed() {
        let dir = std::env::temp_dir().join(format!("pgrehearse-exposure-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("t.toml");
        std::fs::write(&file, "[[targets]]\nname = \"a\"\nlive_url = \"postgres://u@h/db\"\n").unwrap();
        let mut t = crate::config::Config::load(&file).unwrap().targets.remove(0);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(Exposure::of(&t, false), Exposure::Unfenced);
        assert!(Exposure::Unfenced.note().unwrap().contains("fence_writes = true"));
        assert_eq!(Exposure::of(&t, true), Exposure::OneTransaction);
        t.release.fence_writes = true;
        assert_eq!(Exposure::of(&t, false), Exposure::Fenced);
        assert_eq!(Exposure::of(&t, true), Exposure::OneTransaction);
        t.on_failure = OnFailure::Halt;
        assert_eq!(Exposure::of(&t, false), Exposure::NoRestore);
        assert_eq!(Exposure::Fenced.note(), None);
    }
}
