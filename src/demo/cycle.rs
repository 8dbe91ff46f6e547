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
use crate::jobs::{self, Done, Env, Job, Reporter};
use crate::release::Outcome;
use crate::report::email::Delivered;
use crate::{progress, rehearsal, snapshot};

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
    // Every stage runs as the CLI's command does: through the job runner,
    // whose reporter writes each report as an .eml file.
    let t0 = Instant::now();
    let reporter = Reporter::files(&config);
    let env = Env::open(Arc::new(config), reporter, CancellationToken::new(), progress::mode())
        .await
        .map_err(halt(p, "snapshot", t0))?;
    let env = &env;
    let snap = match job(env, target, Job::Snapshot { reason: snapshot::Reason::Manual, then_prune: false }, found)
        .await
        .map_err(halt(p, "snapshot", t0))?
    {
        Done::Snapshot(s) => s,
        other => unreachable!("a snapshot job ended in {other:?}"),
    };
    p.stage("snapshot", true, t0, describe::snapshot(&snap), vec![format!("stored at {}", snap.key)]);

    let t0 = Instant::now();
    let verify = Job::Verify { snapshot: snap.id.clone(), full: false, keep: false };
    let drill = match job(env, target, verify, found).await.map_err(halt(p, "verify", t0))? {
        Done::Verified(d) => d,
        other => unreachable!("a verify job ended in {other:?}"),
    };
    p.stage("verify", drill.ok, t0, describe::drill(&drill), drill.mismatches.clone());

    release_stages(p, env, target, "", found).await?;

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
    let duplicate = release_stages(p, env, target, "2", found).await?;

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

    found.snapshots = match job(env, target, Job::Snapshots, found).await {
        Ok(Done::Snapshots(list)) => {
            list.into_iter().map(|l| (l.id, l.reason.as_str().to_string(), l.verified_at.is_some())).collect()
        }
        _ => Vec::new(),
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
    env: &Env,
    target: &Target,
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
    let report = match job(env, target, Job::Rehearse(opts), found).await.map_err(halt(p, rehearse, t0))? {
        Done::Rehearsed(r) => r,
        other => unreachable!("a rehearse job ended in {other:?}"),
    };
    found.rehearsals.push(report.id.clone());
    let mut details = describe::migrations(&report);
    details.push(format!("report: {}", rehearsal::report_key(&target.name, &report.id, "report.md")));
    p.stage(rehearse, report.ok, t0, describe::rehearsal(&report), details);
    if !report.ok {
        return Err(Halt);
    }

    let t0 = Instant::now();
    let approval = Job::Approve { plan: report.plan.clone(), by: Some("pgrehearse demo".into()), note: None };
    let approved = match job(env, target, approval, found).await.map_err(halt(p, approve, t0))? {
        Done::Approved(a) => a,
        other => unreachable!("an approve job ended in {other:?}"),
    };
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
    // As the daemon's, the reporter mails the release and, when it did not
    // apply, an alert.
    let rel = match job(env, target, Job::Apply, found).await.map_err(halt(p, apply, t0))? {
        Done::Released(r) => r,
        other => unreachable!("an apply job ended in {other:?}"),
    };
    found.releases.push((rel.record.id.clone(), rel.record.outcome.to_string()));
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

/// Runs `job` through the job runner and notes the mail its reporter wrote.
async fn job(env: &Env, target: &Target, job: Job, found: &mut Found) -> anyhow::Result<Done> {
    let done = jobs::run(env, target, job).await;
    for sent in env.reporter.take_sent() {
        match sent {
            Ok(d) => found.mails.push(d),
            Err(e) => found.mail_errors.push(e),
        }
    }
    done
}
