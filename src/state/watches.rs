//! The performance watches of releases in the state store: the samples of
//! live's `pg_stat_statements` a release took at its start and end (JSON
//! the `watch` operation writes and reads; this module does not look
//! inside), when the watch period ends, and the result once compared.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;

use super::{State, StateError};

/// Where a release's watch stands (stored as TEXT, snake_case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchStatus {
    /// The release is running; the start sample is taken.
    Started,
    /// The release applied; the period runs until `until`.
    Pending,
    /// Compared; the result is kept.
    Done,
    /// Live has no usable `pg_stat_statements` (the note says why).
    Unavailable,
    /// A stored name this version does not know.
    Unknown,
}

impl WatchStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            WatchStatus::Started => "started",
            WatchStatus::Pending => "pending",
            WatchStatus::Done => "done",
            WatchStatus::Unavailable => "unavailable",
            WatchStatus::Unknown => "unknown",
        }
    }

    fn from_stored(s: &str) -> WatchStatus {
        [WatchStatus::Started, WatchStatus::Pending, WatchStatus::Done, WatchStatus::Unavailable]
            .into_iter()
            .find(|w| w.as_str() == s)
            .unwrap_or(WatchStatus::Unknown)
    }
}

/// A release's watch as stored.
#[derive(Debug, Clone)]
pub struct WatchRow {
    pub release_id: String,
    pub target: String,
    pub status: WatchStatus,
    pub note: Option<String>,
    pub start_sample: Option<serde_json::Value>,
    pub end_sample: Option<serde_json::Value>,
    pub until: Option<DateTime<Utc>>,
    pub result: Option<serde_json::Value>,
}

/// One fixed format, so that `until` compares as text.
fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn json(s: Option<String>) -> Option<serde_json::Value> {
    s.and_then(|s| serde_json::from_str(&s).ok())
}

impl State {
    /// Records the watch of a release that is starting: `started` with the
    /// start sample, or `unavailable` with `note` when there is none.
    pub async fn watch_started(
        &self,
        release_id: &str,
        target: &str,
        start: Option<&serde_json::Value>,
        note: Option<&str>,
    ) -> Result<(), StateError> {
        let status = if start.is_some() { WatchStatus::Started } else { WatchStatus::Unavailable };
        sqlx::query(
            "INSERT OR REPLACE INTO release_watches (release_id, target, status, note, start_sample, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(release_id)
        .bind(target)
        .bind(status.as_str())
        .bind(note)
        .bind(start.map(|v| v.to_string()))
        .bind(Utc::now().to_rfc3339())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The release applied: the watch of a `started` one is `pending` until
    /// `until`, with the end sample.
    pub async fn watch_armed(
        &self,
        release_id: &str,
        end: &serde_json::Value,
        until: DateTime<Utc>,
    ) -> Result<(), StateError> {
        sqlx::query(
            "UPDATE release_watches SET status = 'pending', end_sample = ?, until = ?, updated_at = ? \
             WHERE release_id = ? AND status = 'started'",
        )
        .bind(end.to_string())
        .bind(stamp(until))
        .bind(Utc::now().to_rfc3339())
        .bind(release_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets the watch of a release that did not apply (nothing to watch).
    pub async fn watch_dropped(&self, release_id: &str) -> Result<(), StateError> {
        sqlx::query("DELETE FROM release_watches WHERE release_id = ?").bind(release_id).execute(&self.pool).await?;
        Ok(())
    }

    /// Keeps the compared result (`done`), or a note (`unavailable`).
    pub async fn watch_finished(
        &self,
        release_id: &str,
        status: WatchStatus,
        result: Option<&serde_json::Value>,
        note: Option<&str>,
    ) -> Result<(), StateError> {
        sqlx::query(
            "UPDATE release_watches SET status = ?, result = ?, note = COALESCE(?, note), updated_at = ? \
             WHERE release_id = ?",
        )
        .bind(status.as_str())
        .bind(result.map(|v| v.to_string()))
        .bind(note)
        .bind(Utc::now().to_rfc3339())
        .bind(release_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn watch(&self, release_id: &str) -> Result<Option<WatchRow>, StateError> {
        let row = sqlx::query(
            "SELECT release_id, target, status, note, start_sample, end_sample, until, result \
             FROM release_watches WHERE release_id = ?",
        )
        .bind(release_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| WatchRow {
            release_id: r.get("release_id"),
            target: r.get("target"),
            status: WatchStatus::from_stored(r.get::<String, _>("status").as_str()),
            note: r.get("note"),
            start_sample: json(r.get("start_sample")),
            end_sample: json(r.get("end_sample")),
            until: r
                .get::<Option<String>, _>("until")
                .and_then(|u| DateTime::parse_from_rfc3339(&u).ok())
                .map(|u| u.with_timezone(&Utc)),
            result: json(r.get("result")),
        }))
    }

    /// The releases of `target` whose watch period ended by `now` and
    /// that are not compared yet, oldest first (what the daemon runs; a
    /// restart finds them here).
    pub async fn watches_due(&self, target: &str, now: DateTime<Utc>) -> Result<Vec<String>, StateError> {
        let rows = sqlx::query_scalar(
            "SELECT release_id FROM release_watches WHERE target = ? AND status = 'pending' AND until <= ? \
             ORDER BY until",
        )
        .bind(target)
        .bind(stamp(now))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }
}
