//! Times in the configuration, parsed once by config validation so that
//! nothing downstream re-parses them: job schedules (a cron expression read
//! in UTC) and maintenance windows (a cron expression for when a window
//! opens, how long it stays open, and the IANA time zone the expression is
//! read in). Every cron expression goes through [`parse_cron`]: six fields
//! (seconds first) or seven (a year last).
//!
//! Window occurrences are computed by croner in the window's zone, which
//! resolves daylight-saving changes (a start in a skipped hour moves to the
//! first real instant after it; a start in a repeated hour happens once);
//! the duration is elapsed time, so a 2 h window across a clock change still
//! lasts two real hours.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use serde::{Serialize, Serializer};

/// Parses a cron expression with seconds (six fields, or seven with a
/// year), the one way schedules and windows read cron.
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    let fields = expr.split_whitespace().count();
    if !(6..=7).contains(&fields) {
        return Err(format!(
            "`{expr}` has {fields} fields; write a cron expression with seconds, e.g. \"0 0 3 * * *\" (03:00 daily)"
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Required)
        .build()
        .parse(expr)
        .map_err(|e| format!("`{expr}` is not a valid cron expression: {e}"))
}

/// Parses an IANA time zone name such as `Europe/Berlin`.
pub fn parse_zone(name: &str) -> Result<Tz, String> {
    Tz::from_str(name).map_err(|_| format!("`{name}` is not an IANA time zone such as \"Europe/Berlin\""))
}

/// A job schedule: a cron expression read in UTC. Serialized as written.
#[derive(Debug, Clone)]
pub struct Schedule {
    expr: String,
    cron: Cron,
}

impl Schedule {
    pub fn parse(expr: &str) -> Result<Schedule, String> {
        Ok(Schedule { expr: expr.to_string(), cron: parse_cron(expr)? })
    }

    /// The first occurrence strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&t, false).ok()
    }
}

impl Serialize for Schedule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.expr)
    }
}

/// A maintenance window. Serialized as configured: `cron`, `duration`,
/// `timezone`.
#[derive(Debug, Clone)]
pub struct Window {
    expr: String,
    cron: Cron,
    duration: Duration,
    tz: Tz,
}

impl Serialize for Window {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Shown<'a> {
            cron: &'a str,
            #[serde(with = "super::humantime_serde_compat")]
            duration: Duration,
            timezone: &'a str,
        }
        Shown { cron: &self.expr, duration: self.duration, timezone: self.tz.name() }.serialize(s)
    }
}

/// One occurrence of a window, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Opening {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Opening {
    /// Time left in it at `now` (zero once it closed).
    pub fn remaining(&self, now: DateTime<Utc>) -> Duration {
        (self.end - now).to_std().unwrap_or_default()
    }
}

impl Window {
    /// A window opening at the occurrences of `cron` (parsed from `expr`
    /// by [`parse_cron`], read in `tz`) for `duration`.
    pub fn parsed(expr: String, cron: Cron, duration: Duration, tz: Tz) -> Window {
        Window { expr, cron, duration, tz }
    }

    /// The opening that contains `now`, if the window is open: the latest
    /// start at or before `now` whose end is after it.
    pub fn open_at(&self, now: DateTime<Utc>) -> Option<Opening> {
        let local = now.with_timezone(&self.tz);
        let start = self.cron.find_previous_occurrence(&local, true).ok()?.with_timezone(&Utc);
        let end = start + chrono::Duration::from_std(self.duration).ok()?;
        (end > now).then_some(Opening { start, end })
    }

    /// The next opening that starts after `now`.
    pub fn next_after(&self, now: DateTime<Utc>) -> Option<Opening> {
        let local = now.with_timezone(&self.tz);
        let start = self.cron.find_next_occurrence(&local, false).ok()?.with_timezone(&Utc);
        let end = start + chrono::Duration::from_std(self.duration).ok()?;
        Some(Opening { start, end })
    }
}

/// The open window with the most time left at `now`, among `windows`.
pub fn open_now(windows: &[Window], now: DateTime<Utc>) -> Option<Opening> {
    windows.iter().filter_map(|w| w.open_at(now)).max_by_key(|o| o.end)
}

/// The soonest next opening among `windows`.
pub fn next_opening(windows: &[Window], now: DateTime<Utc>) -> Option<Opening> {
    windows.iter().filter_map(|w| w.next_after(now)).min_by_key(|o| o.start)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(cron: &str, duration_s: u64, tz: &str) -> Window {
        Window::parsed(cron.into(), parse_cron(cron).unwrap(), Duration::from_secs(duration_s), parse_zone(tz).unwrap())
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn open_and_next_in_a_time_zone() {
        // Sundays 02:00 Berlin for 2 h; 2026-11-22 is a Sunday (CET, UTC+1).
        let w = window("0 0 2 * * Sun", 7200, "Europe/Berlin");
        let o = w.open_at(utc("2026-11-22T01:30:00Z")).expect("open at 02:30 Berlin");
        assert_eq!(o.start, utc("2026-11-22T01:00:00Z"));
        assert_eq!(o.end, utc("2026-11-22T03:00:00Z"));
        assert_eq!(o.remaining(utc("2026-11-22T01:30:00Z")), Duration::from_secs(5400));
        assert!(w.open_at(utc("2026-11-22T03:00:00Z")).is_none(), "closed at its end");
        assert!(w.open_at(utc("2026-11-24T10:00:00Z")).is_none());
        assert_eq!(w.next_after(utc("2026-11-24T10:00:00Z")).unwrap().start, utc("2026-11-29T01:00:00Z"));
    }

    #[test]
    fn daylight_saving_changes() {
        // Spring forward, Berlin 2026-03-29: 02:00–03:00 does not exist. A
        // 02:30 start happens at the first real instant after the gap
        // (03:00 CEST = 01:00 UTC) and still lasts its full hour.
        let w = window("0 30 2 * * *", 3600, "Europe/Berlin");
        let o = w.next_after(utc("2026-03-28T23:00:00Z")).unwrap();
        assert_eq!(o.start, utc("2026-03-29T01:00:00Z"), "{o:?}");
        assert_eq!(o.end - o.start, chrono::Duration::hours(1));
        // The days around it keep their wall-clock time (UTC+1, then UTC+2).
        assert_eq!(w.next_after(utc("2026-03-27T23:00:00Z")).unwrap().start, utc("2026-03-28T01:30:00Z"));
        assert_eq!(w.next_after(utc("2026-03-29T23:00:00Z")).unwrap().start, utc("2026-03-30T00:30:00Z"));
        // Fall back, Berlin 2026-10-25: 02:30 happens twice on the wall
        // clock; the window opens once.
        let first = w.next_after(utc("2026-10-24T23:00:00Z")).unwrap();
        let second = w.next_after(first.start).unwrap();
        assert!(second.start - first.start >= chrono::Duration::hours(23), "{first:?} then {second:?}");
    }

    #[test]
    fn new_york_daylight_saving_changes() {
        // Spring forward, New York 2026-03-08: 02:00–03:00 EST does not
        // exist. A daily 02:30 window opens at 03:00 EDT (07:00 UTC) that
        // day; the days around it keep 02:30 local (07:30 UTC, then 06:30).
        let w = window("0 30 2 * * *", 1800, "America/New_York");
        assert_eq!(w.next_after(utc("2026-03-07T00:00:00Z")).unwrap().start, utc("2026-03-07T07:30:00Z"));
        let skipped = w.next_after(utc("2026-03-08T00:00:00Z")).unwrap();
        assert_eq!(skipped.start, utc("2026-03-08T07:00:00Z"), "{skipped:?}");
        assert_eq!(skipped.end - skipped.start, chrono::Duration::minutes(30));
        assert_eq!(w.next_after(utc("2026-03-09T00:00:00Z")).unwrap().start, utc("2026-03-09T06:30:00Z"));
        // Open at 03:10 EDT on the day of the change, closed at 03:31.
        assert!(w.open_at(utc("2026-03-08T07:10:00Z")).is_some());
        assert!(w.open_at(utc("2026-03-08T07:31:00Z")).is_none());

        // Fall back, New York 2026-11-01: 01:30 happens twice (EDT, then
        // EST). A 01:30 window opens once, and a 2 h window across the
        // change lasts two real hours.
        let w = window("0 30 1 * * *", 7200, "America/New_York");
        let first = w.next_after(utc("2026-11-01T00:00:00Z")).unwrap();
        assert_eq!(first.start, utc("2026-11-01T05:30:00Z"), "the first 01:30 (EDT): {first:?}");
        assert_eq!(first.end, utc("2026-11-01T07:30:00Z"));
        let next = w.next_after(first.start).unwrap();
        assert_eq!(next.start, utc("2026-11-02T06:30:00Z"), "once that day, then 01:30 EST: {next:?}");
        // Inside the repeated hour (01:45 EST = 06:45 UTC) the window opened
        // at 05:30 UTC is still the open one.
        assert_eq!(w.open_at(utc("2026-11-01T06:45:00Z")).unwrap().start, first.start);
    }

    #[test]
    fn berlin_window_open_across_the_changes() {
        // A Saturday-night window 23:00–05:00 Berlin spanning each change
        // lasts its six real hours and is open at its wall-clock times.
        let w = window("0 0 23 * * Sat", 6 * 3600, "Europe/Berlin");
        let spring = w.next_after(utc("2026-03-28T00:00:00Z")).unwrap();
        assert_eq!(spring.start, utc("2026-03-28T22:00:00Z"), "23:00 CET");
        assert!(w.open_at(utc("2026-03-29T03:30:00Z")).is_some(), "05:30 CEST is 03:30 UTC: inside");
        assert!(w.open_at(utc("2026-03-29T04:01:00Z")).is_none());
        let autumn = w.next_after(utc("2026-10-24T00:00:00Z")).unwrap();
        assert_eq!(autumn.start, utc("2026-10-24T21:00:00Z"), "23:00 CEST");
        assert_eq!(autumn.end, utc("2026-10-25T03:00:00Z"), "six real hours: 04:00 CET");
    }

    #[test]
    fn the_open_window_with_most_time_left_wins() {
        let ws = [window("0 0 * * * *", 600, "UTC"), window("0 0 0 * * *", 4 * 3600, "UTC")];
        let now = utc("2026-11-24T02:05:00Z");
        let o = open_now(&ws, now).unwrap();
        assert_eq!(o.end, utc("2026-11-24T04:00:00Z"));
        assert_eq!(next_opening(&ws, now).unwrap().start, utc("2026-11-24T03:00:00Z"));
    }

    #[test]
    fn one_cron_dialect_with_seconds() {
        assert!(parse_cron("0 0 3 * * *").is_ok());
        assert!(parse_cron("0 0 3 * * * 2027").is_ok(), "a year may follow");
        let five = parse_cron("0 3 * * *").unwrap_err();
        assert!(five.contains("has 5 fields"), "{five}");
        assert!(parse_cron("0 0 25 * * *").unwrap_err().contains("not a valid cron expression"));
        assert!(parse_zone("Mars/Olympus").is_err());
        let s = Schedule::parse("0 0 3 * * *").unwrap();
        assert_eq!(s.next_after(utc("2026-12-01T02:00:00Z")), Some(utc("2026-12-01T03:00:00Z")));
        assert_eq!(serde_json::to_value(&s).unwrap(), "0 0 3 * * *");
        let w = window("0 0 2 * * Sun", 7200, "Europe/Berlin");
        assert_eq!(
            serde_json::to_value(&w).unwrap(),
            serde_json::json!({"cron": "0 0 2 * * Sun", "duration": "2h", "timezone": "Europe/Berlin"})
        );
    }
}
