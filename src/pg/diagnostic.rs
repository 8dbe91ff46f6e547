//! What PostgreSQL said about an error, in full: sqlx's `Display` of a
//! server error is only its primary message, which drops the part an
//! operator acts on — the DETAIL (`Key (homepage)=(…) is duplicated.`), the
//! HINT and the position in the statement. Every error pgrehearse shows of
//! a server goes through here, so none loses them.

/// One server error's fields (PostgreSQL's `ErrorResponse`), or a client
/// error's text with the rest empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostic {
    pub message: String,
    /// The SQLSTATE, e.g. `23505`.
    pub sqlstate: Option<String>,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// The 1-based character offset into the statement the server points at.
    pub position: Option<usize>,
}

impl Diagnostic {
    pub fn of(e: &sqlx::Error) -> Diagnostic {
        let sqlx::Error::Database(db) = e else {
            return Diagnostic { message: e.to_string(), ..Diagnostic::default() };
        };
        let pg = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>();
        Diagnostic {
            message: db.message().to_string(),
            sqlstate: db.code().map(|c| c.to_string()),
            detail: pg.and_then(|p| p.detail()).map(str::to_string),
            hint: pg.and_then(|p| p.hint()).map(str::to_string),
            position: pg.and_then(|p| match p.position() {
                Some(sqlx::postgres::PgErrorPosition::Original(n)) => Some(n),
                _ => None,
            }),
        }
    }

    /// ` DETAIL: … HINT: …` (empty when the server gave neither), to follow
    /// the message in a sentence.
    pub fn suffix(&self) -> String {
        let mut out = String::new();
        if let Some(d) = &self.detail {
            out.push_str(&format!(" DETAIL: {}", d.trim_end()));
        }
        if let Some(h) = &self.hint {
            out.push_str(&format!(" HINT: {}", h.trim_end()));
        }
        out
    }
}

/// An error as one line with the server's DETAIL and HINT, for messages
/// that wrap a `sqlx::Error`.
pub fn explain(e: &sqlx::Error) -> String {
    format!("{e}{}", Diagnostic::of(e).suffix())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detail_and_hint_follow_the_message() {
        let d = Diagnostic {
            message: "could not create unique index \"sites_homepage_key\"".into(),
            sqlstate: Some("23505".into()),
            detail: Some("Key (homepage)=(https://a.example) is duplicated.".into()),
            hint: Some("Remove the duplicates first.".into()),
            position: None,
        };
        assert_eq!(
            d.suffix(),
            " DETAIL: Key (homepage)=(https://a.example) is duplicated. HINT: Remove the duplicates first."
        );
        assert_eq!(Diagnostic { message: "x".into(), ..Diagnostic::default() }.suffix(), "");
    }

    #[test]
    fn a_client_error_is_its_text() {
        let d = Diagnostic::of(&sqlx::Error::PoolTimedOut);
        assert!(d.message.contains("timed out"), "{d:?}");
        assert_eq!((d.sqlstate, d.detail, d.hint, d.position), (None, None, None, None));
    }
}
