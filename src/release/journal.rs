//! The release journal: every step of a release is written to the state
//! store *before* it is taken, so that after a crash at any point the next
//! pgrehearse knows how far the release got and can finish it safely (see
//! `recovery`). SQLite commits each entry before the step starts; a killed
//! process loses nothing it journaled.
//!
//! Fault injection for tests, compiled only with the `crash-hooks` feature
//! (the test command enables it; a release build has no trace of it): when
//! `PGREHEARSE_CRASH_AT` names a step (`snapshot`, or `migration:2` for one
//! detail), the process kills itself with SIGKILL right after journaling it,
//! exactly like a `kill -9` at that point.

pub use crate::state::Step;
use crate::state::{State, StateError};

/// The journal of one release.
#[derive(Clone)]
pub struct Journal {
    state: State,
    release: String,
}

impl Journal {
    pub fn new(state: &State, release: &str) -> Journal {
        Journal { state: state.clone(), release: release.to_string() }
    }

    /// The release this journal belongs to.
    pub fn release(&self) -> &str {
        &self.release
    }

    /// Records that `step` is about to be taken (with an optional detail:
    /// a version, a database name, a snapshot id).
    pub async fn step(&self, step: Step, detail: Option<&str>) -> Result<(), StateError> {
        self.state.journal_append(&self.release, step, detail).await?;
        tracing::debug!(release = %self.release, step = %step, detail, "Journaled.");
        crash_if_asked(step, detail);
        Ok(())
    }
}

#[cfg(not(feature = "crash-hooks"))]
fn crash_if_asked(_step: Step, _detail: Option<&str>) {}

#[cfg(feature = "crash-hooks")]
fn crash_if_asked(step: Step, detail: Option<&str>) {
    let step = step.as_str();
    let Ok(at) = std::env::var("PGREHEARSE_CRASH_AT") else { return };
    let full = detail.map(|d| format!("{step}:{d}"));
    if at == step || Some(&at) == full.as_ref() {
        eprintln!("PGREHEARSE_CRASH_AT={at}: killing this process at this step");
        // SAFETY: signals our own process; nothing runs after SIGKILL.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}
