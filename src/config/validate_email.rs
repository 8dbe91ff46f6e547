//! Validation of `[email]`: the transport, an `smtp_url` lettre can read
//! (and that holds no password), the password file that goes with a user
//! name, and mailboxes lettre accepts — so that a mail that cannot be sent
//! is a config error at start-up, not a lost alert at 3 a.m.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use super::{Ctx, KeyPath};
use crate::config::raw::RawEmail;
use crate::config::{EmailConfig, MailTransport, SuccessMail};

pub(super) fn email(cx: &mut Ctx, raw: &RawEmail, state_dir: &Path) -> EmailConfig {
    let p = KeyPath::root().key("email");
    let transport = match raw.transport.as_deref().unwrap_or("file") {
        "smtp" => MailTransport::Smtp,
        "file" => MailTransport::File,
        other => {
            cx.problem(&p.key("transport"), format!("`{other}`: use \"smtp\" or \"file\""));
            MailTransport::File
        }
    };
    let user = match (&raw.smtp_url, transport) {
        (Some(u), _) => smtp_url(cx, &p.key("smtp_url"), u),
        (None, MailTransport::Smtp) => {
            cx.problem(&p.key("smtp_url"), "transport = \"smtp\" needs smtp_url");
            None
        }
        (None, MailTransport::File) => None,
    };
    let smtp_password = raw.smtp_password_file.as_deref().and_then(|f| cx.secret_file(&p.key("smtp_password_file"), f));
    match (&user, raw.smtp_password_file.is_some()) {
        (Some(u), false) => cx.problem(
            &p.key("smtp_url"),
            format!(
                "names the user `{u}` but smtp_password_file is not set; add it (a file holding only the password)"
            ),
        ),
        (None, true) => cx.problem(
            &p.key("smtp_password_file"),
            "needs a user name in smtp_url to log in with, e.g. smtp://user@host:587?tls=required",
        ),
        _ => {}
    }
    let from = raw.from.clone().unwrap_or_else(|| "pgrehearse@localhost".into());
    for (i, addr) in std::iter::once(&from).chain(raw.to.iter()).enumerate() {
        if lettre::message::Mailbox::from_str(addr).is_err() {
            let key = if i == 0 { p.key("from") } else { p.key("to").index(i - 1) };
            cx.problem(&key, format!("`{addr}` is not an email address (write addr@host or \"Name <addr@host>\")"));
        }
    }
    if raw.to.is_empty() {
        cx.problem(&p.key("to"), "no recipient: add to = [\"dba@example.com\"]");
    }
    let timeout = Duration::from_secs(30);
    let successes = match raw.successes.as_deref().unwrap_or("digest") {
        "each" => SuccessMail::Each,
        "digest" => SuccessMail::Digest,
        "never" => SuccessMail::Never,
        other => {
            cx.problem(&p.key("successes"), format!("`{other}`: use \"each\", \"digest\" or \"never\""));
            SuccessMail::Digest
        }
    };
    let day = Duration::from_secs(24 * 3600);
    let digest_every = cx.duration(&p.key("digest_every"), raw.digest_every.as_deref(), Some(day)).unwrap_or(day);
    if digest_every.is_zero() {
        cx.problem(&p.key("digest_every"), "must be longer than zero, e.g. \"24h\"");
    }
    EmailConfig {
        successes,
        digest_every,
        transport,
        smtp_url: raw.smtp_url.clone(),
        smtp_password,
        dir: raw.dir.as_deref().map(|d| cx.path(d)).unwrap_or_else(|| state_dir.join("mail")),
        from,
        to: raw.to.clone(),
        subject_prefix: raw.subject_prefix.clone().unwrap_or_else(|| "[pgrehearse]".into()),
        timeout: cx.duration(&p.key("timeout"), raw.timeout.as_deref(), Some(timeout)).unwrap_or(timeout),
    }
}

/// Checks `smtp_url` as lettre will read it; returns the user name in it.
fn smtp_url(cx: &mut Ctx, p: &KeyPath, u: &str) -> Option<String> {
    let hint = "write smtp://host:port, smtp://host:587?tls=required (STARTTLS) or smtps://host:465 (TLS)";
    let url = match url::Url::parse(u) {
        Ok(url) if matches!(url.scheme(), "smtp" | "smtps") && url.host_str().is_some_and(|h| !h.is_empty()) => url,
        _ => {
            cx.problem(p, format!("`{u}`: {hint}"));
            return None;
        }
    };
    if url.password().is_some() {
        // The URL is printed by `config check` and may reach logs.
        cx.problem(p, "holds a password; put it in smtp_password_file instead (the URL is printed and logged)");
    }
    match url.query_pairs().find(|(k, _)| k == "tls").map(|(_, v)| v.into_owned()) {
        Some(t) if url.scheme() == "smtp" && t != "required" && t != "opportunistic" => {
            cx.problem(p, format!("tls=`{t}`: use tls=required (STARTTLS) or tls=opportunistic"))
        }
        _ => {}
    }
    (!url.username().is_empty()).then(|| url.username().to_string())
}

#[cfg(test)]
mod tests {
    use super::super::from_source;
    use super::*;

    fn email(section: &str) -> Result<EmailConfig, Vec<String>> {
        let src = format!(
            "state_dir = \"/var/lib/pgr\"\n[email]\n{section}\n[[targets]]\nname = \"a\"\nlive_url = \"postgres://u@h/db\"\n"
        );
        from_source(Path::new("/etc/pgrehearse/t.toml"), &src)
            .map(|c| c.email.unwrap())
            .map_err(|p| p.iter().map(|p| format!("{}: {}", p.key, p.message)).collect())
    }

    #[test]
    fn defaults_write_files_into_the_state_dir() {
        let e = email("to = [\"dba@example.com\"]").unwrap();
        assert_eq!(e.transport, MailTransport::File);
        assert_eq!(e.dir, Path::new("/var/lib/pgr/mail"));
        assert_eq!((e.subject_prefix.as_str(), e.timeout), ("[pgrehearse]", Duration::from_secs(30)));
    }

    #[test]
    fn smtp_settings_are_checked_as_lettre_reads_them() {
        let to = "to = [\"dba@example.com\"]\ntransport = \"smtp\"";
        let p = email(&format!("{to}\nsmtp_url = \"smtp://u:hunter2@mail:587?tls=required\"")).unwrap_err();
        assert!(p.iter().any(|p| p.contains("smtp_password_file instead")), "{p:?}");
        assert!(p.iter().all(|p| !p.contains("hunter2")), "{p:?}");
        let p = email(&format!("{to}\nsmtp_url = \"smtp://u@mail:587?tls=required\"")).unwrap_err();
        assert!(p.iter().any(|p| p.contains("smtp_password_file is not set")), "{p:?}");
        let p = email(&format!("{to}\nsmtp_url = \"smtp://mail?tls=always\"")).unwrap_err();
        assert!(p.iter().any(|p| p.contains("tls=`always`")), "{p:?}");
        let p = email(&format!("{to}\nsmtp_url = \"http://mail\"\ntimeout = \"soon\"")).unwrap_err();
        assert_eq!(p.len(), 2, "{p:?}");
        let e = email(&format!("{to}\nsmtp_url = \"smtps://mail.example.com\"\ntimeout = \"10s\"")).unwrap();
        assert_eq!((e.transport, e.timeout), (MailTransport::Smtp, Duration::from_secs(10)));
    }

    #[test]
    fn addresses_must_be_mailboxes_and_someone_must_receive() {
        let p = email("from = \"pgrehearse\"").unwrap_err();
        assert!(p.iter().any(|p| p.starts_with("email.from:")), "{p:?}");
        assert!(p.iter().any(|p| p.starts_with("email.to:") && p.contains("no recipient")), "{p:?}");
        let e = email("from = \"pgrehearse <pgr@db1.example.com>\"\nto = [\"DBA <dba@example.com>\"]").unwrap();
        assert_eq!(e.to, ["DBA <dba@example.com>"]);
    }
}
