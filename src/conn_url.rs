//! PostgreSQL connection URLs: parsing, redaction, and the split that keeps
//! passwords out of argv (the URL without its password goes to pg_dump's
//! `--dbname`, the password goes to the child's `PGPASSWORD`).

use std::fmt;
use std::str::FromStr;

use percent_encoding::percent_decode_str;
use serde::{Serialize, Serializer};
use sqlx::postgres::PgConnectOptions;
use url::Url;

/// A `postgres://` URL that may carry a password. `Display`, `Debug` and
/// `Serialize` show it with the password replaced by `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnUrl(Url);

impl ConnUrl {
    pub fn parse(s: &str) -> Result<Self, String> {
        let url = Url::parse(s.trim()).map_err(|e| format!("not a valid URL ({e})"))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(format!("scheme `{}` is not supported; use postgres://user@host/database", url.scheme()));
        }
        Ok(ConnUrl(url))
    }

    /// The password, percent-decoded.
    pub fn password(&self) -> Option<String> {
        self.0
            .password()
            .map(|p| percent_decode_str(p).decode_utf8_lossy().into_owned())
            .or_else(|| self.query("password"))
    }

    fn query(&self, key: &str) -> Option<String> {
        self.0.query_pairs().find(|(k, _)| k == key).map(|(_, v)| v.into_owned())
    }

    /// The full URL, password included: only for a child's environment
    /// (`DATABASE_URI`), never for argv or logs.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

    /// The URL without any password: safe for argv and logs.
    pub fn without_password(&self) -> String {
        let mut u = self.0.clone();
        let _ = u.set_password(None);
        strip_query_password(&mut u);
        u.to_string()
    }

    /// The URL with its password shown as `***`.
    pub fn redacted(&self) -> String {
        let mut u = self.0.clone();
        if u.password().is_some() {
            let _ = u.set_password(Some("***"));
        }
        if self.query("password").is_some() {
            strip_query_password(&mut u);
            u.query_pairs_mut().append_pair("password", "***");
        }
        u.to_string()
    }

    /// The database name (empty when the URL names none).
    pub fn database(&self) -> String {
        let path = self.0.path().trim_start_matches('/');
        percent_decode_str(path).decode_utf8_lossy().into_owned()
    }

    pub fn user(&self) -> Option<String> {
        let u = self.0.username();
        (!u.is_empty()).then(|| percent_decode_str(u).decode_utf8_lossy().into_owned())
    }

    /// The same server and credentials, another database.
    pub fn with_database(&self, db: &str) -> ConnUrl {
        let mut u = self.0.clone();
        let encoded = percent_encoding::utf8_percent_encode(db, percent_encoding::NON_ALPHANUMERIC).to_string();
        u.set_path(&format!("/{encoded}"));
        ConnUrl(u)
    }

    /// `(host or socket directory, port)` as libpq would resolve it, for a
    /// first, configuration-time comparison of servers. The authoritative check
    /// compares `system_identifier` at run time.
    pub fn server_key(&self) -> (String, u16) {
        let host = self
            .query("host")
            .or_else(|| {
                self.0
                    .host_str()
                    .filter(|h| !h.is_empty())
                    .map(|h| percent_decode_str(h).decode_utf8_lossy().into_owned())
            })
            .unwrap_or_else(|| "/var/run/postgresql".to_string());
        let port = self.query("port").and_then(|p| p.parse().ok()).or(self.0.port()).unwrap_or(5432);
        let host = if host == "127.0.0.1" || host == "::1" { "localhost".to_string() } else { host };
        (host, port)
    }

    /// Options for sqlx, with our `application_name` so operators can see us
    /// in `pg_stat_activity`.
    pub fn connect_options(&self, application_name: &str) -> Result<PgConnectOptions, sqlx::Error> {
        Ok(PgConnectOptions::from_str(self.0.as_str())?.application_name(application_name))
    }
}

fn strip_query_password(u: &mut Url) {
    if u.query().is_none() {
        return;
    }
    let kept: Vec<(String, String)> =
        u.query_pairs().filter(|(k, _)| k != "password").map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    if kept.is_empty() {
        u.set_query(None);
    } else {
        u.query_pairs_mut().clear().extend_pairs(kept);
    }
}

impl fmt::Display for ConnUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for ConnUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnUrl({})", self.redacted())
    }
}

impl Serialize for ConnUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_never_in_child_or_redacted_form() {
        let u = ConnUrl::parse("postgres://app:s%40cret@localhost/app?host=/tmp/s&port=5433").unwrap();
        assert_eq!(u.password().as_deref(), Some("s@cret"));
        assert!(!u.without_password().contains("cret"));
        assert!(!u.redacted().contains("cret"));
        assert!(u.redacted().contains("***"));
        assert_eq!(u.database(), "app");
        assert_eq!(u.server_key(), ("/tmp/s".to_string(), 5433));
        let q = ConnUrl::parse("postgres://app@h/app?password=zz&sslmode=disable").unwrap();
        assert_eq!(q.password().as_deref(), Some("zz"));
        assert!(!q.without_password().contains("zz"));
        assert!(q.without_password().contains("sslmode=disable"));
        assert!(!q.redacted().contains("zz"));
    }

    #[test]
    fn rejects_other_schemes() {
        assert!(ConnUrl::parse("mysql://x@y/z").is_err());
        assert!(ConnUrl::parse("not a url").is_err());
    }
}
