//! The digest of successes (`[email] successes = "digest"`): the daemon's
//! job runner notes each snapshot, drill and rehearsal that went well here
//! instead of mailing it, and the daemon mails one message every
//! `digest_every` listing what was noted since the last one. Failures never
//! wait for a digest: they are mailed at once.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::Mail;
use super::html::{Cell, Page, Tone};

/// One success.
#[derive(Debug, Clone)]
pub struct Entry {
    pub at: DateTime<Utc>,
    pub target: String,
    /// `snapshot`, `verify`, `rehearse`.
    pub job: &'static str,
    /// One line: what went well, e.g. `restore drill of 2026… passed (RTO 1.2 s)`.
    pub summary: String,
}

/// Successes noted since the last digest. Shared by the daemon's jobs.
#[derive(Debug)]
pub struct Digest {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    since: DateTime<Utc>,
    entries: Vec<Entry>,
}

impl Digest {
    /// An empty digest whose period starts at `now`.
    pub fn new(now: DateTime<Utc>) -> Digest {
        Digest { inner: Mutex::new(Inner { since: now, entries: Vec::new() }) }
    }

    pub fn push(&self, entry: Entry) {
        self.lock().entries.push(entry);
    }

    /// The digest mail when `every` has passed since the period began and
    /// something was noted; starts a new period whenever `every` passed.
    pub fn take_due(&self, now: DateTime<Utc>, every: Duration) -> Option<Mail> {
        let mut inner = self.lock();
        let elapsed = (now - inner.since).to_std().unwrap_or_default();
        if elapsed < every {
            return None;
        }
        take(&mut inner, now)
    }

    /// The digest mail of whatever was noted, due or not (at shutdown).
    pub fn take_all(&self, now: DateTime<Utc>) -> Option<Mail> {
        take(&mut self.lock(), now)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn take(inner: &mut Inner, now: DateTime<Utc>) -> Option<Mail> {
    let since = std::mem::replace(&mut inner.since, now);
    let entries = std::mem::take(&mut inner.entries);
    (!entries.is_empty()).then(|| render(since, now, &entries))
}

/// The digest: one table row per success, oldest first.
pub fn render(since: DateTime<Utc>, until: DateTime<Utc>, entries: &[Entry]) -> Mail {
    let fmt = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    let n = entries.len();
    let jobs = if n == 1 { "1 job".to_string() } else { format!("{n} jobs") };
    let title = format!("Digest: {jobs} succeeded");
    let lead =
        format!("Between {} and {}, these jobs succeeded (failures are mailed at once).", fmt(since), fmt(until));
    let mut text = format!("{title}\n\n{lead}\n\n");
    let mut p = Page::new(&title, "OK", Tone::Good);
    p.para(&lead, Tone::Plain);
    let rows: Vec<Vec<Cell>> = entries
        .iter()
        .map(|e| {
            let _ = writeln!(text, "{}  {:<10} {:<9} {}", fmt(e.at), e.target, e.job, e.summary);
            vec![Cell::new(fmt(e.at)), Cell::new(&e.target), Cell::new(e.job), Cell::new(&e.summary)]
        })
        .collect();
    p.table(&["When", "Target", "Job", "What"], &rows);
    Mail {
        subject: format!("digest: {jobs} succeeded since {}", fmt(since)),
        text,
        html: p.finish(&super::render::footer()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(job: &'static str) -> Entry {
        Entry { at: Utc::now(), target: "app".into(), job, summary: format!("{job} passed") }
    }

    #[test]
    fn a_digest_is_due_once_per_period_and_only_with_entries() {
        let t0 = Utc::now();
        let d = Digest::new(t0);
        let every = Duration::from_secs(60);
        d.push(entry("verify"));
        d.push(entry("verify"));
        assert!(d.take_due(t0 + chrono::Duration::seconds(30), every).is_none(), "not due yet");
        let m = d.take_due(t0 + chrono::Duration::seconds(61), every).expect("due");
        assert!(m.subject.starts_with("digest: 2 jobs succeeded since "), "{}", m.subject);
        assert_eq!(m.text.matches("verify passed").count(), 2, "{}", m.text);
        assert!(d.take_due(t0 + chrono::Duration::seconds(200), every).is_none(), "nothing noted since");
        d.push(entry("snapshot"));
        assert!(d.take_all(t0 + chrono::Duration::seconds(201)).is_some_and(|m| m.subject.contains("1 job ")));
    }
}
