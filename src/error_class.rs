//! What kind of failure an error is, said by the error itself: every domain
//! error enum implements [`Classify`] next to its definition, with an
//! exhaustive match, so a new variant does not compile until someone decides
//! its class. The edges only translate: `main` a [`Class`] into an exit code,
//! the API into an HTTP status, the daemon a [`Classify::kind`] into the
//! `error_kind` label of its job metrics.
//!
//! A leaf: it knows no other module of the crate.

/// The classes of failure an operator (or a script) acts on differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// The command line or request asks for something that cannot be:
    /// change the request.
    Usage,
    /// Not now: a rule refuses it (window, approval, a heavy job running,
    /// backups failing); retry later or satisfy the rule.
    Refused,
    /// A dependency is unreachable or missing (PostgreSQL, S3, SMTP, a
    /// client program): fix or install it, then retry as is.
    Unavailable,
    /// The configuration is wrong, or the database rejected the configured
    /// role, password or database name: fix the configuration.
    Configuration,
    /// The operation ran and found problems (a drill or a restore check).
    Problems,
    /// The operation failed; the message says why and what to do.
    Failed,
}

impl Class {
    /// Every class, for exhaustive tests of the edges' mappings.
    #[cfg(test)]
    pub const ALL: [Class; 6] =
        [Class::Usage, Class::Refused, Class::Unavailable, Class::Configuration, Class::Problems, Class::Failed];
}

/// An error that knows its class and a bounded label for it.
pub trait Classify {
    /// How an edge should treat it (exit code, HTTP status, retry).
    fn class(&self) -> Class;

    /// A short `snake_case` name of what went wrong, from a fixed set: safe
    /// as a metric label and in the state store (never free text). Errors
    /// that wrap another delegate both methods to it.
    fn kind(&self) -> &'static str;
}

/// Defines `fn NAME(cause) -> Option<&dyn Classify>`, which finds which of
/// the listed error types `cause` (one link of an `anyhow` chain) is, and,
/// in tests, `LIST`: the listed types' names.
macro_rules! classifier {
    ($(#[$m:meta])* $vis:vis fn $name:ident; $list:ident = [$($t:ty),* $(,)?]) => {
        $(#[$m])*
        $vis fn $name<'a>(
            cause: &'a (dyn std::error::Error + 'static),
        ) -> Option<&'a dyn $crate::error_class::Classify> {
            $(if let Some(e) = cause.downcast_ref::<$t>() {
                return Some(e);
            })*
            None
        }
        #[cfg(test)]
        $vis const $list: &[&str] = &[$(stringify!($t)),*];
    };
}
pub(crate) use classifier;

/// Kinds are bounded labels: lower-case ASCII words joined by `_`.
#[cfg(test)]
pub fn is_label(kind: &str) -> bool {
    !kind.is_empty()
        && !kind.starts_with('_')
        && !kind.ends_with('_')
        && !kind.contains("__")
        && kind.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_snake_case() {
        for ok in ["pg_unreachable", "store_unavailable", "lock_held", "tool_missing"] {
            assert!(is_label(ok), "{ok}");
        }
        for bad in ["", "Pg", "pg unreachable", "_pg", "pg_", "pg__x", "pg-x"] {
            assert!(!is_label(bad), "{bad:?}");
        }
    }
}
