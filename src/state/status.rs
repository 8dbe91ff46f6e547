//! Statuses the state store keeps as TEXT: of snapshot runs and of
//! rehearsals. Each is written as its snake_case name and read back with a
//! fallback for a name this version does not know.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Outcome of a snapshot run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Running,
    Ok,
    Failed,
}

impl RunStatus {
    pub(super) fn parse(s: &str) -> RunStatus {
        match s {
            "ok" => RunStatus::Ok,
            "running" => RunStatus::Running,
            _ => RunStatus::Failed,
        }
    }
}

/// Where a rehearsal stands: `running`, `passed`, `problems` (it ran and
/// found problems) or `error` (it could not run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RehearsalStatus {
    Running,
    Passed,
    Problems,
    Error,
}

impl RehearsalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RehearsalStatus::Running => "running",
            RehearsalStatus::Passed => "passed",
            RehearsalStatus::Problems => "problems",
            RehearsalStatus::Error => "error",
        }
    }

    /// Reads a stored status; a name this version does not know reads as
    /// `error` (never as passed).
    pub fn from_stored(s: &str) -> RehearsalStatus {
        match s {
            "running" => RehearsalStatus::Running,
            "passed" => RehearsalStatus::Passed,
            "problems" => RehearsalStatus::Problems,
            _ => RehearsalStatus::Error,
        }
    }
}

impl fmt::Display for RehearsalStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_stored_as_their_names() {
        for s in [RehearsalStatus::Running, RehearsalStatus::Passed, RehearsalStatus::Problems, RehearsalStatus::Error]
        {
            assert_eq!(RehearsalStatus::from_stored(s.as_str()), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(RehearsalStatus::from_stored("someday"), RehearsalStatus::Error);
    }
}
