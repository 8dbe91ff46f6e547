//! The lint's vocabulary: the rules a rehearsal's lint reports, and how
//! severe a finding is. A leaf, because the configuration names rules
//! (`lint.deny`, `lint.allow`) and is validated below the rehearsal that
//! applies them. Serialized as the snake_case ids used in configs and reports
//! (`index_not_concurrent`, `error`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A lint rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LintRule {
    IndexNotConcurrent,
    VolatileDefault,
    TypeChangeRewrite,
    SetNotNull,
    ConstraintValidated,
    MissingLockTimeout,
    DropColumn,
    DropTable,
    Rename,
    TableRewrite,
    /// The probes measured reads or writes of an existing table waiting a
    /// second or more, and no other finding names that table.
    BlocksTraffic,
}

impl LintRule {
    /// Every rule, in the order the docs list them.
    pub const ALL: [LintRule; 11] = [
        LintRule::IndexNotConcurrent,
        LintRule::VolatileDefault,
        LintRule::TypeChangeRewrite,
        LintRule::SetNotNull,
        LintRule::ConstraintValidated,
        LintRule::MissingLockTimeout,
        LintRule::DropColumn,
        LintRule::DropTable,
        LintRule::Rename,
        LintRule::TableRewrite,
        LintRule::BlocksTraffic,
    ];

    /// The rule's id, as written in configs and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            LintRule::IndexNotConcurrent => "index_not_concurrent",
            LintRule::VolatileDefault => "volatile_default",
            LintRule::TypeChangeRewrite => "type_change_rewrite",
            LintRule::SetNotNull => "set_not_null",
            LintRule::ConstraintValidated => "constraint_validated",
            LintRule::MissingLockTimeout => "missing_lock_timeout",
            LintRule::DropColumn => "drop_column",
            LintRule::DropTable => "drop_table",
            LintRule::Rename => "rename",
            LintRule::TableRewrite => "table_rewrite",
            LintRule::BlocksTraffic => "blocks_traffic",
        }
    }
}

impl fmt::Display for LintRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LintRule {
    type Err = String;

    /// Parses a rule id; the error lists every rule.
    fn from_str(s: &str) -> Result<Self, String> {
        LintRule::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| {
            let all: Vec<&str> = LintRule::ALL.iter().map(|r| r.as_str()).collect();
            format!("unknown lint rule `{s}`; rules: {}", all.join(", "))
        })
    }
}

/// How severe a lint finding is: a warning, or an error when the target's
/// `lint.deny` lists its rule (an error fails the rehearsal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_text_and_serde() {
        for r in LintRule::ALL {
            assert_eq!(r.as_str().parse::<LintRule>(), Ok(r));
            assert_eq!(serde_json::to_value(r).unwrap(), serde_json::Value::String(r.as_str().into()));
        }
        assert!("nope".parse::<LintRule>().unwrap_err().contains("index_not_concurrent"));
        assert_eq!(serde_json::to_value(Severity::Error).unwrap(), "error");
    }
}
