//! Running a job on a thread of its own, with a single-threaded runtime,
//! from a multi-threaded one (the daemon's scheduler, the API's handlers).
//! The operations are written for the CLI's `block_on`; rustc cannot prove
//! their deep async chains `Send` for a multi-threaded `spawn`
//! (rust-lang/rust#110338), and a job is one long-running unit of work
//! anyway.

use std::future::Future;

use crate::error_class::{Class, Classify};

/// Why a job's thread gave no result.
#[derive(Debug, thiserror::Error)]
pub enum ThreadError {
    #[error("cannot start a thread or runtime for the job: {0}; the host may be out of threads or memory")]
    Runtime(std::io::Error),
    #[error("the job's thread panicked; see the log above for where")]
    Panicked,
}

impl Classify for ThreadError {
    fn class(&self) -> Class {
        match self {
            ThreadError::Runtime(_) | ThreadError::Panicked => Class::Failed,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            ThreadError::Runtime(_) => "runtime_failed",
            ThreadError::Panicked => "job_panicked",
        }
    }
}

/// Runs the future `work` makes on a new thread named `name` (inside the
/// caller's span), and waits for it without blocking the caller's runtime.
pub async fn on_thread<T, F>(name: String, work: impl FnOnce() -> F + Send + 'static) -> Result<T, ThreadError>
where
    F: Future<Output = T>,
    T: Send + 'static,
{
    let span = tracing::Span::current();
    let handle = std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let _entered = span.enter();
            let rt =
                tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(ThreadError::Runtime)?;
            Ok(rt.block_on(work()))
        })
        .map_err(ThreadError::Runtime)?;
    tokio::task::spawn_blocking(move || handle.join())
        .await
        .map_err(|_| ThreadError::Panicked)?
        .map_err(|_| ThreadError::Panicked)?
}
