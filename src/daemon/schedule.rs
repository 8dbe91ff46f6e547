//! When jobs are due. Schedules are cron expressions with seconds, read in
//! UTC and parsed by config validation (`config::schedule`, which parses
//! the windows too, with the same croner set-up). The daemon's loop asks
//! each timer whether it is due and runs what is; no second scheduler crate
//! with its own job store.

use chrono::{DateTime, Utc};

use crate::config::schedule::Schedule;

/// A schedule and when it fires next.
#[derive(Debug, Clone)]
pub struct Timer {
    pub schedule: Schedule,
    pub next: Option<DateTime<Utc>>,
}

impl Timer {
    pub fn new(schedule: Option<&Schedule>, now: DateTime<Utc>) -> Option<Timer> {
        let schedule = schedule?.clone();
        let next = schedule.next_after(now);
        Some(Timer { schedule, next })
    }

    /// True once when the timer is due at `now` (then it moves on to the
    /// next occurrence after `now`: a daemon that was busy or asleep runs a
    /// missed occurrence once, not once per missed tick).
    pub fn due(&mut self, now: DateTime<Utc>) -> bool {
        match self.next {
            Some(t) if t <= now => {
                self.next = self.schedule.next_after(now);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(expr: &str) -> Schedule {
        Schedule::parse(expr).unwrap()
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn fires_once_per_occurrence_in_utc() {
        let now = utc("2026-12-01T02:59:59Z");
        let mut t = Timer::new(Some(&sched("0 0 3 * * *")), now).unwrap();
        assert_eq!(t.next, Some(utc("2026-12-01T03:00:00Z")));
        assert!(!t.due(now));
        assert!(t.due(utc("2026-12-01T03:00:00Z")));
        assert!(!t.due(utc("2026-12-01T03:00:01Z")), "once");
        assert_eq!(t.next, Some(utc("2026-12-02T03:00:00Z")));
        // Asleep for three days: one run, then the next future occurrence.
        assert!(t.due(utc("2026-12-05T10:00:00Z")));
        assert_eq!(t.next, Some(utc("2026-12-06T03:00:00Z")));
        let mut every2 = Timer::new(Some(&sched("*/2 * * * * *")), utc("2026-12-01T00:00:00Z")).unwrap();
        assert_eq!(every2.next, Some(utc("2026-12-01T00:00:02Z")));
        assert!(every2.due(utc("2026-12-01T00:00:02Z")));
        assert!(Timer::new(None, now).is_none());
    }
}
