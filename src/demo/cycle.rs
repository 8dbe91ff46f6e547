//! The demo's stages, in order, each through the same library function as
//! its command, and the final report. A stage that errors ends the cycle
//! (what follows needs it); a stage that ran but did not do what the demo
//! expects is marked FAIL and the cycle goes on, so the report shows as
//! much as possible.

use std::fmt::Display;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::cluster::{Cluster, Postgres, RunAs};
use super::describe;
use super::progress::Progress;
use super::sample::{self, Dataset};
use super::sandbox::Sandbox;
use super::{Clusters, DemoError};
use crate::config::{Config, Target};
use crate::release::{self, Outcome};
use crate::report::email::{self, Delivered, Mail, Mailer};
use crate::{drill, rehearsal, snapshot};

/// What the stages produced, for the final report.
#[derive(Debug, Default)]
pub struct Found {
    /// Every stage ran (none errored).
    pub completed: bool,
    pub dataset: Option<Dataset>,
    pub snapshots: Vec<(String, String, bool)>,
    pub rehearsals: Vec<String>,
    pub releases: Vec<(String, String)>,
    pub mails: Vec<Delivered>,
    pub mail_errors: Vec<String>,
    pub target: Option<String>,
}

/// A stage errored: it is recorded, and the cycle stops.
struct Halt;

fn halt<E: Display>(p: &mut Progress, stage: &'static str, t0: Instant) -> impl FnOnce(E) -> Halt {
    move |e| {
        p.stage(stage, false, t0, format!("error: {e}"), Vec::new());
        Halt
    }
}

pub async fn run(
    p: &mut Progress,
    pg: &Postgres,
    run_as: Option<RunAs>,
    sandbox: &Sandbox,
    clusters: &mut Clusters,
    size_mb: u64,
    found: &mut Found,
) {
    found.completed = stages(p, pg, run_as, sandbox, clusters, size_mb, found).await.is_ok();
}

#[allow(clippy::too_many_arguments)]
async fn stages(
    p: &mut Progress,
    pg: &Postgres,
    run_as: Option<RunAs>,
    sandbox: &Sandbox,
    clusters: &mut Clusters,
    size_mb: u64,
    found: &mut Found,
) -> Result<(), Halt> {
    // Clusters: initdb of both at once, then start both.
    let t0 = Instant::now();
    let (live, shadow) = tokio::try_join!(
        Cluster::create(pg, run_as, &sandbox.clusters, "live", &sandbox.key),
        Cluster::create(pg, run_as, &sandbox.clusters, "shadow", &sandbox.key),
    )
    .map_err(halt(p, "clusters", t0))?;
    let (live, shadow) = (clusters.live.insert(live), clusters.shadow.insert(shadow));
    tokio::try_join!(live.start(), shadow.start()).map_err(halt(p, "clusters", t0))?;
    let as_user = run_as.map_or(String::new(), |_| " as the postgres user".into());
    p.stage(
        "clusters",
        true,
        t0,
        format!("started a live and a shadow cluster{as_user} (unix sockets only, fsync off)"),
        vec![
            format!("live    {}  socket in {}", live.data().display(), live.socket_dir.display()),
            format!("shadow  {}  socket in {}", shadow.data().display(), shadow.socket_dir.display()),
        ],
    );

    let t0 = Instant::now();
    let loaded =
        sample::load(live, size_mb, |mb| p.tick(&format!("loading the sample shop: {mb} / {size_mb} MiB"))).await;
    p.tick_done();
    let data = loaded.map_err(halt(p, "sample data", t0))?;
    p.stage("sample data", true, t0, describe::dataset(&data), Vec::new());
    found.dataset = Some(data);

    let t0 = Instant::now();
    let (config, target) = configure(sandbox, pg, live, shadow).map_err(halt(p, "config", t0))?;
    let target = &target;
    found.target = Some(target.name.clone());
    p.stage(
        "config",
        true,
        t0,
        "wrote pgrehearse.toml and 3 migrations (a failing release waits in migrations-failing/)".into(),
        vec![
            "local store, .eml mail, a window that is always open, on_failure = \"restore\"".into(),
            "20250101000001 add a column with a constant default   (safe)".into(),
            "20250101000002 ALTER COLUMN quantity TYPE bigint       (rewrites order_items)".into(),
            "20250101000003 CREATE INDEX CONCURRENTLY (-- no-transaction)".into(),
        ],
    );
    let mailer = Mailer::new(config.email.clone(), Arc::new(crate::metrics::Metrics::new()));
    let cancel = CancellationToken::new();

    let t0 = Instant::now();
    let snap =
        snapshot::take(&config, target, snapshot::Reason::Manual, &cancel).await.map_err(halt(p, "snapshot", t0))?;
    p.stage("snapshot", true, t0, describe::snapshot(&snap), vec![format!("stored at {}", snap.key)]);

    let t0 = Instant::now();
    let drill = drill::verify(&config, target, &snap.id, false, false).await.map_err(halt(p, "verify", t0))?;
    mail(&mailer, email::drill(&drill), found).await;
    p.stage("verify", drill.ok, t0, describe::drill(&drill), drill.mismatches.clone());

    release_stages(p, &config, target, &mailer, &cancel, "", found).await?;

    let t0 = Instant::now();
    sample::queue_failing_release(sandbox).map_err(halt(p, "next release", t0))?;
    p.stage(
        "next release",
        true,
        t0,
        "copied migrations-failing/ into migrations/: 2 migrations pending".into(),
        vec![
            "20250201000001 add a column email_verified".into(),
            "20250201000002 CREATE UNIQUE INDEX CONCURRENTLY on lower(email) (-- no-transaction)".into(),
        ],
    );
    let duplicate = release_stages(p, &config, target, &mailer, &cancel, "2", found).await?;

    let t0 = Instant::now();
    let (versions, kept_row, failed_dbs) = sample::live_state(
        &target.live_url,
        duplicate.as_deref().unwrap_or_default(),
    )
    .await
    .map_err(halt(p, "check live", t0))?;
    let first: Vec<String> =
        sample::RELEASE_1.iter().filter(|(n, _)| n.ends_with(".up.sql")).map(|(n, _)| n[..14].to_string()).collect();
    let ok = versions == first && kept_row && !failed_dbs.is_empty();
    p.stage(
        "check live",
        ok,
        t0,
        format!(
            "live has the first release ({} migrations) and none of the failed one{}",
            versions.len(),
            if kept_row { "; the customer who signed up before it is still there: nothing lost" } else { "" }
        ),
        vec![format!("the failed database is kept as {}", failed_dbs.join(", "))],
    );

    found.snapshots = match snapshot::catalog::list(&config, target).await {
        Ok(list) => list.into_iter().map(|l| (l.id, l.reason.as_str().to_string(), l.verified_at.is_some())).collect(),
        Err(_) => Vec::new(),
    };
    let t0 = Instant::now();
    let errors = found.mail_errors.len();
    p.stage(
        "emails",
        errors == 0,
        t0,
        format!("{} reports written as .eml files to {}", found.mails.len(), sandbox.mail().display()),
        found.mail_errors.clone(),
    );
    Ok(())
}

/// Rehearse → approve → (for the second release: live changes) → apply.
/// `n` is "" for the first release (expected `applied`), "2" for the
/// failing one (expected `restored`). Returns the duplicate address the
/// second release trips over.
async fn release_stages(
    p: &mut Progress,
    config: &Config,
    target: &Target,
    mailer: &Mailer,
    cancel: &CancellationToken,
    n: &str,
    found: &mut Found,
) -> Result<Option<String>, Halt> {
    let second = !n.is_empty();
    let (rehearse, approve, apply) =
        if second { ("rehearse 2", "approve 2", "apply 2") } else { ("rehearse", "approve", "apply") };

    let t0 = Instant::now();
    // The second release is rehearsed on a fresh snapshot: live changed
    // with the first one.
    let choice = if second { rehearsal::Choice::Fresh } else { rehearsal::Choice::Latest };
    let opts = rehearsal::Options { snapshot: choice, keep: false, reverse: true };
    let report = rehearsal::rehearse(config, target, &opts, cancel).await.map_err(halt(p, rehearse, t0))?;
    mail(mailer, email::rehearsal(&report), found).await;
    found.rehearsals.push(report.id.clone());
    let mut details = describe::migrations(&report);
    details.push(format!("report: {}", rehearsal::report_key(&target.name, &report.id, "report.md")));
    p.stage(rehearse, report.ok, t0, describe::rehearsal(&report), details);
    if !report.ok {
        return Err(Halt);
    }

    let t0 = Instant::now();
    let approved = release::approval::approve(config, target, &report.plan, Some("pgrehearse demo"), None)
        .await
        .map_err(halt(p, approve, t0))?;
    p.stage(
        approve,
        true,
        t0,
        format!(
            "plan {} approved by {}, bound to rehearsal {}",
            &approved.plan[..12],
            approved.approved_by,
            approved.rehearsal_id
        ),
        vec![format!("approval {} expires {}", approved.approval_id, approved.expires_at)],
    );

    let duplicate = if second {
        let t0 = Instant::now();
        let email = sample::sign_up_again(&target.live_url).await.map_err(halt(p, "live changes", t0))?;
        p.stage(
            "live changes",
            true,
            t0,
            format!("after the rehearsal a customer signs up again on live as {email}"),
            vec!["a duplicate of customer 1's address the rehearsed copy never saw; the approval still holds (it is bound to the migration files and live's history, not to its data)".into()],
        );
        Some(email)
    } else {
        None
    };

    let t0 = Instant::now();
    let rel = release::apply(config, target).await.map_err(halt(p, apply, t0))?;
    mail(mailer, email::release(&rel), found).await;
    if rel.outcome() != Outcome::Applied {
        // As the daemon does: a release that did not apply also alerts.
        let reason = rel.record.reason.clone().unwrap_or_else(|| rel.record.outcome.clone());
        mail(mailer, email::alert(&target.name, "release", &reason), found).await;
    }
    found.releases.push((rel.record.id.clone(), rel.record.outcome.clone()));
    let expected = if second { Outcome::Restored } else { Outcome::Applied };
    p.stage(apply, rel.outcome() == expected, t0, describe::release(&rel), describe::release_details(&rel));
    Ok(duplicate)
}

fn configure(
    sandbox: &Sandbox,
    pg: &Postgres,
    live: &Cluster,
    shadow: &Cluster,
) -> Result<(Config, Target), DemoError> {
    sample::write_migrations(sandbox)?;
    let path = sandbox.config();
    std::fs::write(&path, sample::config_text(sandbox, pg, live, shadow)).map_err(|e| DemoError::io(&path, e))?;
    let config =
        Config::load(&path).map_err(|e| DemoError::Setup(format!("the demo's configuration is invalid: {e}")))?;
    let target = config.target(None).map_err(|e| DemoError::Setup(e.to_string()))?.clone();
    Ok((config, target))
}

async fn mail(mailer: &Mailer, m: Mail, found: &mut Found) {
    match mailer.try_send(&m).await {
        Ok(d) => found.mails.push(d),
        Err(e) => found.mail_errors.push(format!("{}: {e}", m.subject)),
    }
}
