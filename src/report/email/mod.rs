//! Email reports and alerts: multipart text + HTML messages for rehearsals,
//! restore drills and releases, an alert on every failed job, and the
//! `pgrehearse email test` message — sent through lettre's async SMTP
//! transport (plain, STARTTLS or TLS, with optional login) or written as
//! `.eml` files (`transport = "file"`, the default that needs no server).
//!
//! A report must never cost the job it reports on: [`Mailer::send`] tries
//! each message [`ATTEMPTS`] times with backoff, logs a WARN per failed
//! attempt and an ERROR after the last, counts the result in
//! `pgrehearse_email_deliveries_total{outcome}`, and returns nothing.
//! [`Mailer::try_send`] is the same path with the result, for
//! `pgrehearse email test`.

pub mod digest;
pub(crate) mod html;
mod release;
mod render;
mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Serialize;

use crate::config::{Config, EmailConfig, MailTransport};
use crate::error_class::{Class, Classify};
use crate::metrics::Metrics;

pub use digest::Digest;
pub use release::release;
pub use render::{alert, drill, rehearsal, test_message};
pub use watch::watch_alert;

/// Delivery attempts per message.
pub const ATTEMPTS: usize = 3;
/// Waits between attempts (1 s, then 2 s).
const BACKOFF: [Duration; ATTEMPTS - 1] = [Duration::from_secs(1), Duration::from_secs(2)];

/// One message: a subject, a plain-text body and an HTML body (sent as
/// `multipart/alternative`).
#[derive(Debug, Clone)]
pub struct Mail {
    /// Without `[email] subject_prefix`, which the mailer puts in front.
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Why a message was not delivered; messages say what to check.
#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    #[error(
        "email is not configured: add an [email] section (transport, smtp_url, from, to; see config/pgrehearse.example.toml)"
    )]
    NotConfigured,
    #[error("cannot compose the message: {reason}; check [email] from and to")]
    Compose { reason: String },
    #[error(
        "the mail server {server} is unreachable after {attempts} attempts: {reason}; check that it runs, that smtp_url (host, port, tls) is right and that this host may connect to it"
    )]
    Unreachable { server: String, attempts: usize, reason: String },
    #[error(
        "the mail server {server} refused the message: {reason}; check [email] from, to and the login (user in smtp_url, smtp_password_file)"
    )]
    Rejected { server: String, reason: String },
    #[error(
        "the mail server {server} cannot be used as [email] smtp_url says: {reason}; check tls= in smtp_url (tls=required needs a server that offers STARTTLS; smtps:// is TLS from the start), the server's certificate, and the login"
    )]
    Mismatch { server: String, reason: String },
    #[error(
        "cannot write the message into {} after {attempts} attempts: {reason}; check that [email] dir is writable by pgrehearse", dir.display()
    )]
    File { dir: PathBuf, attempts: usize, reason: String },
}

impl Classify for EmailError {
    fn class(&self) -> Class {
        match self {
            EmailError::NotConfigured => Class::Configuration,
            EmailError::Unreachable { .. } => Class::Unavailable,
            EmailError::Compose { .. }
            | EmailError::Rejected { .. }
            | EmailError::Mismatch { .. }
            | EmailError::File { .. } => Class::Failed,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            EmailError::NotConfigured => "email_not_configured",
            EmailError::Compose { .. } => "email_compose_failed",
            EmailError::Unreachable { .. } => "smtp_unreachable",
            EmailError::Rejected { .. } => "smtp_rejected",
            EmailError::Mismatch { .. } => "smtp_mismatch",
            EmailError::File { .. } => "email_file_unwritable",
        }
    }
}

/// Where a message went.
#[derive(Debug, Clone, Serialize)]
pub struct Delivered {
    /// `smtp` or `file`.
    pub transport: &'static str,
    /// The SMTP server (`smtp://host:port`, no user) or the `.eml` file.
    pub destination: String,
    pub from: String,
    pub to: Vec<String>,
    /// The subject as sent (prefix included).
    pub subject: String,
    pub attempts: usize,
}

/// Sends mail as `[email]` says; without an `[email]` section it sends
/// nothing. Cheap to create: transports are built per message (reports are
/// rare, and a pooled connection would outlive the job's runtime).
#[derive(Clone)]
pub struct Mailer {
    config: Option<EmailConfig>,
    metrics: Arc<Metrics>,
    backoff: Vec<Duration>,
}

impl Mailer {
    pub fn new(config: Option<EmailConfig>, metrics: Arc<Metrics>) -> Mailer {
        Mailer { config, metrics, backoff: BACKOFF.to_vec() }
    }

    /// The `[email]` section mail goes by, if any.
    pub fn config(&self) -> Option<&EmailConfig> {
        self.config.as_ref()
    }

    /// Delivers `mail` to every recipient. Never fails: errors are logged
    /// and counted (see the module doc).
    pub async fn send(&self, mail: Mail) {
        if self.config.is_none() {
            tracing::debug!(subject = %mail.subject, "No [email] section: report not mailed.");
            return;
        }
        let _ = self.try_send(&mail).await;
    }

    /// Like [`Mailer::send`], and returns where the message went or why it
    /// did not after the last attempt.
    pub async fn try_send(&self, mail: &Mail) -> Result<Delivered, EmailError> {
        let cfg = self.config.as_ref().ok_or(EmailError::NotConfigured)?;
        let subject = format!("{} {}", cfg.subject_prefix, mail.subject).trim().to_string();
        let result = deliver(cfg, &subject, mail, &self.backoff).await;
        let outcome = if result.is_ok() { "sent" } else { "failed" };
        self.metrics.add(
            "pgrehearse_email_deliveries_total",
            "Email deliveries by outcome (failed: after every retry).",
            &[("outcome", outcome)],
            1.0,
        );
        match &result {
            Ok(d) => tracing::info!(
                subject = %d.subject,
                transport = d.transport,
                to = %d.to.join(", "),
                attempts = d.attempts,
                "Email sent."
            ),
            Err(e) => tracing::error!(subject = %subject, error = %e, "Email not delivered; nothing will resend it."),
        }
        result
    }
}

/// `pgrehearse email test`: one test message through the configured
/// transport, with the retries reports get.
pub async fn send_test(config: &Config) -> Result<Delivered, EmailError> {
    let mailer = Mailer::new(config.email.clone(), Arc::new(Metrics::new()));
    mailer.try_send(&test_message(config)).await
}

/// One failed attempt.
struct Failure {
    reason: String,
    kind: FailKind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FailKind {
    /// Worth retrying: connection refused or reset, a timeout, a 4xx reply.
    Transient,
    /// A 5xx reply (bad recipient, login refused): retrying cannot help.
    Refused,
    /// Server and `smtp_url` do not fit (no STARTTLS for `tls=required`, no
    /// common login mechanism, a TLS handshake or certificate failure).
    Mismatch,
}

async fn deliver(cfg: &EmailConfig, subject: &str, mail: &Mail, backoff: &[Duration]) -> Result<Delivered, EmailError> {
    let message = compose(cfg, subject, mail)?;
    let transport = Transport::new(cfg)?;
    let attempts = backoff.len() + 1;
    let mut last = String::new();
    for attempt in 1..=attempts {
        match transport.send(message.clone()).await {
            Ok(destination) => {
                transport.shutdown().await;
                return Ok(Delivered {
                    transport: transport.name(),
                    destination,
                    from: cfg.from.clone(),
                    to: cfg.to.clone(),
                    subject: subject.to_string(),
                    attempts: attempt,
                });
            }
            Err(f) if f.kind != FailKind::Transient => {
                transport.shutdown().await;
                let (server, reason) = (transport.destination(), f.reason);
                return Err(match f.kind {
                    FailKind::Mismatch => EmailError::Mismatch { server, reason },
                    _ => EmailError::Rejected { server, reason },
                });
            }
            Err(f) => {
                if let Some(wait) = backoff.get(attempt - 1) {
                    tracing::warn!(
                        subject = %subject,
                        attempt,
                        attempts,
                        retry_in_ms = wait.as_millis() as u64,
                        error = %f.reason,
                        "Email delivery failed; retrying."
                    );
                    tokio::time::sleep(*wait).await;
                }
                last = f.reason;
            }
        }
    }
    transport.shutdown().await;
    Err(match &transport {
        Transport::File { dir, .. } => EmailError::File { dir: dir.clone(), attempts, reason: last },
        Transport::Smtp { .. } => EmailError::Unreachable { server: transport.destination(), attempts, reason: last },
    })
}

/// The MIME message: From, To, Subject, Date, Message-ID,
/// `Auto-Submitted: auto-generated` (RFC 3834: no vacation replies), and
/// the text and HTML alternatives.
fn compose(cfg: &EmailConfig, subject: &str, mail: &Mail) -> Result<Message, EmailError> {
    let parse = |a: &str| a.parse::<Mailbox>().map_err(|e| EmailError::Compose { reason: format!("`{a}`: {e}") });
    let mut b = Message::builder()
        .from(parse(&cfg.from)?)
        .subject(subject)
        .message_id(None)
        .raw_header(HeaderValue::new(HeaderName::new_from_ascii_str("Auto-Submitted"), "auto-generated".into()));
    for to in &cfg.to {
        b = b.to(parse(to)?);
    }
    b.multipart(MultiPart::alternative_plain_html(mail.text.clone(), mail.html.clone()))
        .map_err(|e| EmailError::Compose { reason: e.to_string() })
}

enum Transport {
    Smtp { inner: AsyncSmtpTransport<Tokio1Executor>, server: String },
    File { inner: AsyncFileTransport<Tokio1Executor>, dir: PathBuf },
}

impl Transport {
    fn new(cfg: &EmailConfig) -> Result<Transport, EmailError> {
        match cfg.transport {
            MailTransport::File => {
                Ok(Transport::File { inner: AsyncFileTransport::new(&cfg.dir), dir: cfg.dir.clone() })
            }
            MailTransport::Smtp => {
                let url = cfg.smtp_url.as_deref().unwrap_or_default();
                let server = server_of(url);
                // Fails only on TLS set-up (e.g. no usable root certificates).
                let mut b = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .map_err(|e| EmailError::Mismatch { server: server.clone(), reason: smtp_reason(&e) })?
                    .timeout(Some(cfg.timeout));
                if let Some(pw) = &cfg.smtp_password {
                    let user = url::Url::parse(url).map(|u| u.username().to_string()).unwrap_or_default();
                    let user = percent_encoding::percent_decode_str(&user).decode_utf8_lossy().into_owned();
                    b = b.credentials(Credentials::new(user, pw.expose().to_string()));
                }
                Ok(Transport::Smtp { inner: b.build(), server })
            }
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Transport::Smtp { .. } => "smtp",
            Transport::File { .. } => "file",
        }
    }

    fn destination(&self) -> String {
        match self {
            Transport::Smtp { server, .. } => server.clone(),
            Transport::File { dir, .. } => dir.display().to_string(),
        }
    }

    /// One attempt; returns the server, or the `.eml` file written.
    async fn send(&self, message: Message) -> Result<String, Failure> {
        match self {
            Transport::Smtp { inner, server } => match inner.send(message).await {
                Ok(_) => Ok(server.clone()),
                Err(e) => {
                    let kind = if e.is_permanent() {
                        FailKind::Refused
                    } else if e.is_client() || e.is_tls() {
                        FailKind::Mismatch
                    } else {
                        FailKind::Transient
                    };
                    Err(Failure { reason: smtp_reason(&e), kind })
                }
            },
            Transport::File { inner, dir } => {
                // Created on demand: the default <state_dir>/mail need not exist.
                if let Err(e) = tokio::fs::create_dir_all(dir).await {
                    return Err(Failure { reason: e.to_string(), kind: FailKind::Transient });
                }
                match inner.send(message).await {
                    Ok(id) => Ok(dir.join(format!("{id}.eml")).display().to_string()),
                    Err(e) => Err(Failure { reason: e.to_string(), kind: FailKind::Transient }),
                }
            }
        }
    }

    /// Closes pooled SMTP connections (QUIT) before the transport is dropped.
    async fn shutdown(&self) {
        if let Transport::Smtp { inner, .. } = self {
            inner.shutdown().await;
        }
    }
}

/// lettre's error with its causes (the cause says "Connection refused").
fn smtp_reason(e: &lettre::transport::smtp::Error) -> String {
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !reason.contains(&s_text) {
            reason.push_str(": ");
            reason.push_str(&s_text);
        }
        source = s.source();
    }
    reason
}

/// `smtp://host:port` as lettre will connect (its default ports), without
/// the user name.
fn server_of(url: &str) -> String {
    let Ok(u) = url::Url::parse(url) else { return url.to_string() };
    let tls = u.query_pairs().any(|(k, _)| k == "tls");
    let port = u.port().unwrap_or(match (u.scheme(), tls) {
        ("smtps", _) => 465,
        (_, true) => 587,
        _ => 25,
    });
    format!("{}://{}:{port}", u.scheme(), u.host_str().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(transport: MailTransport, dir: PathBuf, smtp_url: Option<String>) -> EmailConfig {
        EmailConfig {
            transport,
            smtp_url,
            smtp_password: None,
            dir,
            from: "pgrehearse <pgr@example.com>".into(),
            to: vec!["dba@example.com".into(), "oncall@example.com".into()],
            subject_prefix: "[pgrehearse]".into(),
            timeout: Duration::from_secs(5),
            successes: crate::config::SuccessMail::Each,
            digest_every: Duration::from_secs(3600),
        }
    }

    fn mail() -> Mail {
        Mail { subject: "app: test".into(), text: "plain body".into(), html: "<p>html body</p>".into() }
    }

    #[tokio::test]
    async fn file_transport_writes_a_multipart_message_and_counts_it() {
        let dir = tempfile::tempdir().unwrap();
        let maildir = dir.path().join("mail/nested");
        let metrics = Arc::new(Metrics::new());
        let mailer = Mailer::new(Some(config(MailTransport::File, maildir.clone(), None)), metrics.clone());
        let d = mailer.try_send(&mail()).await.unwrap();
        assert_eq!((d.transport, d.attempts), ("file", 1));
        assert_eq!(d.subject, "[pgrehearse] app: test");
        let eml = std::fs::read_to_string(&d.destination).unwrap();
        for needle in [
            "Subject: [pgrehearse] app: test",
            "To: dba@example.com, oncall@example.com",
            "Auto-Submitted: auto-generated",
            "Message-ID: <",
            "multipart/alternative",
            "text/plain",
            "text/html",
            "plain body",
        ] {
            assert!(eml.contains(needle), "missing {needle:?} in\n{eml}");
        }
        assert_eq!(metrics.get("pgrehearse_email_deliveries_total", &[("outcome", "sent")]), Some(1.0));
    }

    #[tokio::test]
    async fn an_unreachable_server_is_retried_then_counted_as_failed() {
        // A port nothing listens on: bound, then released.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("smtp://127.0.0.1:{port}");
        let metrics = Arc::new(Metrics::new());
        let mut mailer = Mailer::new(Some(config(MailTransport::Smtp, PathBuf::new(), Some(url))), metrics.clone());
        mailer.backoff = vec![Duration::from_millis(10), Duration::from_millis(20)];
        let t0 = std::time::Instant::now();
        let err = mailer.try_send(&mail()).await.unwrap_err();
        assert!(t0.elapsed() >= Duration::from_millis(30), "both backoffs were waited");
        assert_eq!(err.class(), Class::Unavailable, "{err}");
        let text = err.to_string();
        assert!(text.contains(&format!("smtp://127.0.0.1:{port}")) && text.contains("3 attempts"), "{text}");
        assert_eq!(metrics.get("pgrehearse_email_deliveries_total", &[("outcome", "failed")]), Some(1.0));
        // `send` swallows the error: the job goes on.
        mailer.send(mail()).await;
        assert_eq!(metrics.get("pgrehearse_email_deliveries_total", &[("outcome", "failed")]), Some(2.0));
    }

    #[tokio::test]
    async fn no_email_section_sends_nothing() {
        let metrics = Arc::new(Metrics::new());
        let mailer = Mailer::new(None, metrics.clone());
        mailer.send(mail()).await;
        assert!(matches!(mailer.try_send(&mail()).await, Err(EmailError::NotConfigured)));
        assert_eq!(metrics.get("pgrehearse_email_deliveries_total", &[("outcome", "sent")]), None);
    }

    #[test]
    fn server_names_use_lettres_default_ports_and_drop_the_user() {
        assert_eq!(server_of("smtp://relay.example.com"), "smtp://relay.example.com:25");
        assert_eq!(server_of("smtp://u@relay.example.com?tls=required"), "smtp://relay.example.com:587");
        assert_eq!(server_of("smtps://u@relay.example.com"), "smtps://relay.example.com:465");
        assert_eq!(server_of("smtp://127.0.0.1:2525"), "smtp://127.0.0.1:2525");
    }
}
