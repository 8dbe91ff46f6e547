//! Email reports and alerts. (Interface in place; the SMTP/file transports,
//! retries and the multipart text + HTML bodies are being written.)

use std::sync::Arc;

use crate::config::EmailConfig;
use crate::metrics::Metrics;

/// One message: a subject, a plain-text body and an HTML body.
#[derive(Debug, Clone)]
pub struct Mail {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Sends mail as `[email]` says; never fails the job it reports on.
#[derive(Clone)]
pub struct Mailer {
    config: Option<EmailConfig>,
    metrics: Arc<Metrics>,
}

impl Mailer {
    pub fn new(config: Option<EmailConfig>, metrics: Arc<Metrics>) -> Mailer {
        Mailer { config, metrics }
    }

    /// Delivers `mail` to every recipient; errors are logged and counted.
    pub async fn send(&self, mail: Mail) {
        let Some(_cfg) = &self.config else { return };
        let _ = &self.metrics;
        tracing::info!(subject = %mail.subject, "Mail queued.");
    }
}

/// A rehearsal report.
pub fn rehearsal(r: &crate::rehearsal::Report) -> Mail {
    Mail {
        subject: format!("[pgrehearse] {}: rehearsal {} — {}", r.target, r.id, r.verdict),
        text: crate::report::rehearsal::markdown(r),
        html: String::new(),
    }
}

/// A restore drill's report.
pub fn drill(r: &crate::drill::Report) -> Mail {
    Mail {
        subject: format!(
            "[pgrehearse] {}: restore drill of {} — {}",
            r.target,
            r.snapshot_id,
            if r.ok { "ok" } else { "PROBLEMS" }
        ),
        text: format!("{r:?}"),
        html: String::new(),
    }
}

/// A release's report.
pub fn release(r: &crate::release::Release) -> Mail {
    Mail {
        subject: format!("[pgrehearse] {}: release {} — {}", r.record.target, r.record.id, r.record.outcome),
        text: format!("{:?}", r.record),
        html: String::new(),
    }
}

/// An alert: a job failed.
pub fn alert(target: &str, job: &str, error: &str) -> Mail {
    Mail { subject: format!("[pgrehearse] ALERT {target}: {job} failed"), text: error.to_string(), html: String::new() }
}
