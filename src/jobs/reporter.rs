//! Where a job's outcome goes after it ran: mail (the daemon, and the CLI
//! when `[email]` is configured and `--no-mail` is not given) and metrics
//! (the daemon).
//!
//! The mail policy: failures and alerts are mailed at once — a failed
//! job (the daemon; at the CLI the error is printed instead), a drill or
//! rehearsal that found problems, a release that did not apply (its report
//! and an alert), a recovery. A release that applied is mailed at once too:
//! a change of live is news. Drills and rehearsals that passed, and
//! scheduled snapshots, follow `[email] successes`: `each` mails each
//! report (snapshots are never mailed one by one), `digest` notes them in
//! the daemon's digest (the CLI has none: nothing is mailed), `never`.
//! The demo's reporter writes every report (`.eml` files) and keeps where
//! each went for its summary.

use std::sync::{Arc, Mutex};

use super::{Done, Env, is_cancelled};
use crate::config::{Config, SuccessMail};
use crate::metrics::Metrics;
use crate::report::email::{self, Delivered, Digest, Mail, Mailer, digest::Entry};

/// Hands job outcomes to mail and metrics as the edge wants them.
pub struct Reporter {
    mailer: Option<Mailer>,
    successes: SuccessMail,
    digest: Option<Arc<Digest>>,
    metrics: Option<Arc<Metrics>>,
    /// Mail an alert for a job that failed with an error (the daemon: no
    /// one watches it run).
    alert_errors: bool,
    /// Where each message went, or why it did not (the demo's summary).
    sent: Option<Mutex<Vec<Result<Delivered, String>>>>,
}

impl Reporter {
    /// The CLI's: mail as `[email]` says unless `no_mail`; no metrics.
    pub fn cli(config: &Config, no_mail: bool) -> Reporter {
        let mailer =
            (!no_mail && config.email.is_some()).then(|| Mailer::new(config.email.clone(), Arc::new(Metrics::new())));
        Reporter { mailer, successes: successes(config), digest: None, metrics: None, alert_errors: false, sent: None }
    }

    /// The demo's: every report written through `[email]` (its `.eml`
    /// files) whatever the success policy, each delivery kept for
    /// [`Reporter::take_sent`].
    pub fn files(config: &Config) -> Reporter {
        Reporter {
            mailer: Some(Mailer::new(config.email.clone(), Arc::new(Metrics::new()))),
            successes: SuccessMail::Each,
            digest: None,
            metrics: None,
            alert_errors: false,
            sent: Some(Mutex::new(Vec::new())),
        }
    }

    /// The deliveries kept since the last call (the demo's reporter only).
    pub fn take_sent(&self) -> Vec<Result<Delivered, String>> {
        self.sent
            .as_ref()
            .map(|s| std::mem::take(&mut *s.lock().unwrap_or_else(|e| e.into_inner())))
            .unwrap_or_default()
    }

    /// The daemon's: mail (successes into `digest` under the digest
    /// policy) and `metrics`.
    pub fn daemon(config: &Config, metrics: Arc<Metrics>, digest: Arc<Digest>) -> Reporter {
        Reporter {
            mailer: Some(Mailer::new(config.email.clone(), metrics.clone())),
            successes: successes(config),
            digest: Some(digest),
            metrics: Some(metrics),
            alert_errors: true,
            sent: None,
        }
    }

    /// The same, but a job that fails with an error is not alerted: someone
    /// asked for it and gets the error as the answer (the API's approvals).
    pub fn without_error_alerts(self) -> Reporter {
        Reporter { alert_errors: false, ..self }
    }

    /// Mails an alert now: `job` of `target` failed or could not run.
    pub async fn alert(&self, target: &str, job: &str, reason: &str) {
        self.mail(email::alert(target, job, reason)).await;
    }

    /// Reports the outcome of `job` (its name) on `target`.
    pub async fn report(&self, env: &Env, target: &str, job: &'static str, result: &anyhow::Result<Done>) {
        let done = match result {
            Ok(d) => d,
            Err(e) if is_cancelled(e) => return,
            Err(e) => {
                if self.alert_errors {
                    tracing::error!(target = %target, job, error = %e, "Job failed.");
                    self.alert(target, job, &e.to_string()).await;
                }
                return;
            }
        };
        let now = env.clock.now();
        let entry = |summary: String| Entry { at: now, target: target.to_string(), job, summary };
        match done {
            Done::Snapshot(o) => {
                self.snapshot_metrics(target, o);
                let summary = format!(
                    "snapshot {} taken ({} stored, {:.1} s)",
                    o.id,
                    humansize(o.bytes_stored),
                    o.duration_ms as f64 / 1000.0
                );
                if self.successes == SuccessMail::Digest {
                    self.note(entry(summary));
                }
            }
            Done::Verified(r) => {
                self.drill_metrics(target, r);
                if r.ok {
                    let rto =
                        r.restore_duration_ms.map_or(String::new(), |ms| format!(", RTO {:.1} s", ms as f64 / 1000.0));
                    let summary =
                        format!("restore drill of {} passed ({} tables checked{rto})", r.snapshot_id, r.tables_checked);
                    self.success(email::drill(r), entry(summary)).await;
                } else {
                    self.mail(email::drill(r)).await;
                }
            }
            Done::Rehearsed(r) => {
                self.rehearsal_metrics(target, r);
                if r.ok {
                    let summary = format!("rehearsal {} of plan {} passed", r.id, &r.plan[..r.plan.len().min(12)]);
                    self.success(email::rehearsal(r), entry(summary)).await;
                } else {
                    self.mail(email::rehearsal(r)).await;
                }
            }
            Done::Released(rel) => self.release(target, rel).await,
            Done::Watched(w) => self.watch(target, w).await,
            _ => {}
        }
    }

    async fn release(&self, target: &str, rel: &crate::release::Release) {
        let outcome = rel.record.outcome.as_str();
        if let Some(m) = &self.metrics {
            m.add(
                "pgrehearse_release_outcomes_total",
                "Releases by outcome.",
                &[("target", target), ("outcome", outcome)],
                1.0,
            );
        }
        if matches!(outcome, "refused" | "nothing_pending") {
            return;
        }
        self.mail(email::release(rel)).await;
        let stranded = crate::stranded::StrandedWrites::of_record(&rel.record.stranded_writes);
        if let Some(m) = &self.metrics {
            // The latest release's: zeros when it needed no restore.
            let tables = stranded.as_ref().map(|s| s.tables.as_slice()).unwrap_or_default();
            let sum = |f: fn(&crate::stranded::TableWrites) -> u64| tables.iter().map(f).sum::<u64>() as f64;
            for (op, n) in
                [("insert", sum(|t| t.inserted)), ("update", sum(|t| t.updated)), ("delete", sum(|t| t.deleted))]
            {
                m.set(
                    "pgrehearse_stranded_rows",
                    "Rows the latest release's restore stranded in the kept failed database (0 without a restore).",
                    &[("target", target), ("op", op)],
                    n,
                );
            }
            let unknown = stranded.as_ref().map_or(0, |s| s.unknown.len() + usize::from(s.error.is_some()));
            m.set(
                "pgrehearse_stranded_unknown_tables",
                "Tables the latest release's restore could not compare exactly (1 more when the comparison failed).",
                &[("target", target)],
                unknown as f64,
            );
        }
        if outcome != "applied" {
            let mut error = rel.record.reason.clone().unwrap_or_else(|| outcome.to_string());
            if let Some(s) = &stranded {
                error = format!("{error}\n\n{}", s.lines(&rel.record.id).join("\n"));
            }
            self.alert(target, "release", &error).await;
        }
    }

    /// A performance watch: its metrics; an alert when queries got slower
    /// (a watch that found none, or had no `pg_stat_statements`, mails
    /// nothing).
    async fn watch(&self, target: &str, w: &crate::watch::Watched) {
        if let Some(m) = &self.metrics {
            m.set(
                "pgrehearse_watch_slower_queries",
                "Queries slower after the latest watched release (0: none).",
                &[("target", target)],
                w.slower.len() as f64,
            );
            // Only the alerting queries get a series: the labels stay bounded.
            for c in &w.slower {
                m.set(
                    "pgrehearse_watch_slower_query_ratio",
                    "Mean time after / before of each query a release made slower.",
                    &[("target", target), ("release", w.release_id.as_str()), ("queryid", c.queryid.as_str())],
                    c.ratio,
                );
            }
        }
        if !w.slower.is_empty() {
            self.mail(email::watch_alert(w)).await;
        }
    }

    /// A success: mailed, noted in the digest, or dropped, as the policy says.
    async fn success(&self, mail: Mail, entry: Entry) {
        match self.successes {
            SuccessMail::Each => self.mail(mail).await,
            SuccessMail::Digest => self.note(entry),
            SuccessMail::Never => {}
        }
    }

    fn note(&self, entry: Entry) {
        if let (Some(d), true) = (&self.digest, self.mailer.as_ref().is_some_and(|m| m.config().is_some())) {
            d.push(entry);
        }
    }

    async fn mail(&self, mail: Mail) {
        let Some(m) = &self.mailer else { return };
        match &self.sent {
            None => m.send(mail).await,
            Some(sent) => {
                let r = m.try_send(&mail).await.map_err(|e| format!("{}: {e}", mail.subject));
                sent.lock().unwrap_or_else(|e| e.into_inner()).push(r);
            }
        }
    }

    fn snapshot_metrics(&self, target: &str, o: &crate::snapshot::Outcome) {
        let Some(m) = &self.metrics else { return };
        let l = [("target", target)];
        m.set(
            "pgrehearse_snapshot_bytes",
            "Bytes of the latest snapshot, stored (compressed).",
            &l,
            o.bytes_stored as f64,
        );
        m.set("pgrehearse_snapshot_raw_bytes", "Bytes pg_dump wrote for the latest snapshot.", &l, o.bytes_raw as f64);
        m.set(
            "pgrehearse_snapshot_duration_seconds",
            "Duration of the latest snapshot.",
            &l,
            o.duration_ms as f64 / 1000.0,
        );
    }

    fn drill_metrics(&self, target: &str, r: &crate::drill::Report) {
        let Some(m) = &self.metrics else { return };
        let l = [("target", target)];
        if let Some(ms) = r.restore_duration_ms {
            m.set(
                "pgrehearse_restore_duration_seconds",
                "Restore time (RTO) measured by the latest drill.",
                &l,
                ms as f64 / 1000.0,
            );
        }
        m.set("pgrehearse_drill_ok", "1 when the latest restore drill passed.", &l, if r.ok { 1.0 } else { 0.0 });
    }

    fn rehearsal_metrics(&self, target: &str, r: &crate::rehearsal::Report) {
        let Some(m) = &self.metrics else { return };
        let l = [("target", target)];
        m.set("pgrehearse_rehearsal_ok", "1 when the latest rehearsal passed.", &l, if r.ok { 1.0 } else { 0.0 });
        for r in &r.migrations {
            let ml = [("target", target), ("version", r.version.as_str())];
            m.set(
                "pgrehearse_rehearsal_migration_duration_seconds",
                "Duration of each migration in the latest rehearsal.",
                &ml,
                r.duration_ms as f64 / 1000.0,
            );
            let lock = r.locks.iter().map(|l| l.held_ms).max().unwrap_or(0);
            m.set(
                "pgrehearse_rehearsal_migration_lock_seconds",
                "Longest lock held by each migration in the latest rehearsal.",
                &ml,
                lock as f64 / 1000.0,
            );
        }
    }
}

fn successes(config: &Config) -> SuccessMail {
    config.email.as_ref().map_or(SuccessMail::Digest, |e| e.successes)
}

/// Bytes for a digest line (`12.3 MiB`).
fn humansize(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}
