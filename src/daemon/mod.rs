//! `pgrehearse daemon`: runs every target's schedules — snapshots (each
//! followed by the retention policy), restore drills, rehearsals (scheduled,
//! and after every change of the migration source) and releases of approved
//! plans when their window is open — through the job runner as the CLI
//! does; mails the digest of successes every `[email] digest_every`;
//! serves the HTTP API and metrics;
//! and talks to systemd (`READY=1` after start-up, `STATUS=` lines,
//! `WATCHDOG=1`, `RELOADING=1` on SIGHUP, `STOPPING=1`).
//!
//! One target's jobs never overlap (in this process by a busy set, across
//! processes and hosts by the target's advisory lock); jobs of different
//! targets run side by side up to `[daemon] max_concurrent_jobs`. SIGHUP
//! validates the new configuration first and keeps the old one if it is
//! invalid. SIGTERM stops scheduling, cancels snapshots, drills and
//! rehearsals (they clean up), and waits for a running release to finish
//! or recover, asking systemd for more time while it does.

mod events;
mod jobs;
pub mod notify;
mod schedule;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Target};
use crate::metrics::Metrics;
use jobs::{Ended, Job};
use notify::Notifier;
use schedule::Timer;

/// What the daemon's tasks and the API share.
pub struct Shared {
    pub config_path: PathBuf,
    config: RwLock<Arc<Config>>,
    pub metrics: Arc<Metrics>,
    pub notifier: Notifier,
    pub started: Instant,
    /// Successes noted for the next digest mail (`[email] successes = "digest"`).
    pub digest: Arc<crate::report::email::Digest>,
    running: Mutex<BTreeMap<String, Job>>,
    /// (target, approval id) of releases preflight refused, for the loop.
    refusals: Mutex<Vec<(String, String)>>,
    /// The state store of the configuration in force, for the API.
    state: RwLock<crate::state::State>,
}

impl Shared {
    pub fn new(config_path: &Path, config: Config, notifier: Notifier, state: crate::state::State) -> Shared {
        Shared {
            config_path: config_path.to_path_buf(),
            state: RwLock::new(state),
            config: RwLock::new(Arc::new(config)),
            metrics: Arc::new(Metrics::new()),
            notifier,
            started: Instant::now(),
            digest: Arc::new(crate::report::email::Digest::new(Utc::now())),
            running: Mutex::new(BTreeMap::new()),
            refusals: Mutex::new(Vec::new()),
        }
    }

    /// The configuration in force (replaced as a whole on reload).
    pub fn config(&self) -> Arc<Config> {
        self.config.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Jobs running now, by target.
    pub fn running(&self) -> Vec<(String, &'static str)> {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(t, j)| (t.clone(), j.name())).collect()
    }

    fn status_line(&self) -> String {
        let running = self.running();
        if running.is_empty() {
            "idle".into()
        } else {
            let jobs: Vec<String> = running.iter().map(|(t, j)| format!("{j} of {t}")).collect();
            format!("running: {}", jobs.join(", "))
        }
    }
}

impl crate::api::Daemon for Shared {
    fn config(&self) -> Arc<Config> {
        Shared::config(self)
    }
    fn state(&self) -> crate::state::State {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn reporter(&self, config: &Config) -> crate::jobs::Reporter {
        crate::jobs::Reporter::daemon(config, self.metrics.clone(), self.digest.clone()).without_error_alerts()
    }
    fn running(&self) -> Vec<(String, &'static str)> {
        Shared::running(self)
    }
    fn started(&self) -> Instant {
        self.started
    }
    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// Per-target scheduling state.
struct TargetState {
    snapshot: Option<Timer>,
    verify: Option<Timer>,
    rehearse: Option<Timer>,
    /// Checksum of the migration source as last rehearsed (or at start).
    source_sum: Option<String>,
    /// A new checksum seen at the last poll: a change counts once it holds
    /// for a whole poll (files are often written one by one).
    settling: Option<String>,
    next_poll: Instant,
    /// Approval id → when a release of it was last refused (not retried
    /// before `refused_retry_after`).
    refused: HashMap<String, Instant>,
    /// The approval a queued release is for.
    release_approval: Option<String>,
    /// Whether the pending plan was compared with the latest rehearsal yet
    /// (once per start: a plan pending but never rehearsed is rehearsed).
    plan_checked: bool,
    queue: Vec<Job>,
}

impl TargetState {
    fn new(t: &Target, now: chrono::DateTime<Utc>) -> TargetState {
        TargetState {
            snapshot: Timer::new(t.snapshot_schedule.as_ref(), now),
            verify: Timer::new(t.verify_schedule.as_ref(), now),
            rehearse: Timer::new(t.rehearse_schedule.as_ref(), now),
            source_sum: source_checksum(t),
            settling: None,
            next_poll: Instant::now(),
            refused: HashMap::new(),
            release_approval: None,
            plan_checked: false,
            queue: Vec::new(),
        }
    }

    fn enqueue(&mut self, job: Job) {
        if !self.queue.contains(&job) {
            self.queue.push(job);
        }
    }
}

/// Runs the daemon until SIGTERM/SIGINT. Returns the exit code.
pub async fn run(config_path: &Path, config: Config) -> anyhow::Result<u8> {
    let notifier = Notifier::from_env();
    // Start-up checks: the state store opens, interrupted releases are
    // finished, the API listens. Only then READY=1.
    let state = crate::state::State::open(&config.state_dir).await?;
    let shared = Arc::new(Shared::new(config_path, config, notifier.clone(), state));
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();

    let cfg = shared.config();
    jobs::recover_at_start(&shared, &cfg, &cancel).await?;
    // Each source's first checksum is taken now, before READY=1 and before
    // the API answers: a file added after that is a change.
    let now = Utc::now();
    let mut states: HashMap<String, TargetState> =
        cfg.targets.iter().map(|t| (t.name.clone(), TargetState::new(t, now))).collect();
    if let Some(api) = &cfg.api {
        let listener = tokio::net::TcpListener::bind(api.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {} ([api] listen): {e}", api.listen))?;
        tracing::info!(listen = %api.listen, "HTTP API listening.");
        let (s, c) = (shared.clone(), cancel.clone());
        tracker.spawn(async move {
            if let Err(e) = crate::api::serve(listener, s, c).await {
                tracing::error!(error = %e, "The HTTP API stopped.");
            }
        });
    }
    host_metrics(&shared.metrics, &cfg);
    for outcome in ["sent", "failed"] {
        shared.metrics.declare_counter(
            "pgrehearse_email_deliveries_total",
            "Email deliveries by outcome (failed: after every retry).",
            &[("outcome", outcome)],
        );
    }
    tracing::info!(targets = cfg.targets.len(), "Daemon started.");
    notifier.ready(&shared.status_line());

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let watchdog = notify::watchdog_interval();
    let mut last_ping = Instant::now() - watchdog.unwrap_or_default();
    let release_cancel = CancellationToken::new();
    let mut last_status = String::new();
    let mut next_host = Instant::now() + Duration::from_secs(30);
    let tick = watchdog.map_or(Duration::from_millis(250), |w| w.min(Duration::from_millis(250)));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                reload(&shared);
                match crate::state::State::open(&shared.config().state_dir).await {
                    Ok(s) => *shared.state.write().unwrap_or_else(|e| e.into_inner()) = s,
                    Err(e) => tracing::error!(error = %e, "Cannot open the state store of the reloaded configuration."),
                }
                // Schedules restart from the new file; what was seen of the
                // sources is kept, so a reload alone triggers no rehearsal.
                let sums: HashMap<String, Option<String>> = states.drain().map(|(k, v)| (k, v.source_sum)).collect();
                let now = Utc::now();
                for t in &shared.config().targets {
                    let mut st = TargetState::new(t, now);
                    if let Some(sum) = sums.get(&t.name) {
                        st.source_sum = sum.clone();
                    }
                    states.insert(t.name.clone(), st);
                }
            }
        }
        if let Some(w) = watchdog
            && last_ping.elapsed() >= w
        {
            notifier.watchdog();
            last_ping = Instant::now();
        }
        let cfg = shared.config();
        if Instant::now() >= next_host {
            host_metrics(&shared.metrics, &cfg);
            next_host = Instant::now() + Duration::from_secs(30);
        }
        schedule(&cfg, &crate::api::Daemon::state(shared.as_ref()), &mut states).await;
        dispatch(&shared, &cfg, &mut states, &tracker, &cancel, &release_cancel);
        if let Some(email) = &cfg.email
            && let Some(mail) = shared.digest.take_due(Utc::now(), email.digest_every)
        {
            let mailer = crate::report::email::Mailer::new(cfg.email.clone(), shared.metrics.clone());
            tracker.spawn(async move { mailer.send(mail).await });
        }
        let status = shared.status_line();
        if status != last_status {
            notifier.status(&status);
            last_status = status;
        }
    }

    // Shutdown: no new jobs; cancel what can stop cleanly; a release
    // finishes (or recovers) first.
    tracing::info!("Stopping: cancelling snapshots, drills and rehearsals; a running release is finished first.");
    notifier.stopping(&format!("stopping; {}", shared.status_line()));
    cancel.cancel();
    tracker.close();
    let mut waited = Instant::now();
    loop {
        let done = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await.is_ok();
        if done {
            break;
        }
        if shared.running().iter().any(|(_, j)| *j == "release") && waited.elapsed() >= Duration::from_secs(5) {
            notifier.extend_timeout(Duration::from_secs(30));
            notifier.status(&format!("stopping after the release finishes; {}", shared.status_line()));
            waited = Instant::now();
        }
    }
    // Successes noted since the last digest are not lost with the process.
    let cfg = shared.config();
    if let Some(mail) = shared.digest.take_all(Utc::now())
        && cfg.email.is_some()
    {
        crate::report::email::Mailer::new(cfg.email.clone(), shared.metrics.clone()).send(mail).await;
    }
    tracing::info!("Daemon stopped.");
    Ok(0)
}

/// SIGHUP: validate the file again; apply it only if valid.
fn reload(shared: &Shared) {
    shared.notifier.reloading();
    match Config::load(&shared.config_path) {
        Ok(new) => {
            tracing::info!(path = %shared.config_path.display(), targets = new.targets.len(), "Configuration reloaded.");
            *shared.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
        }
        Err(e) => {
            tracing::error!(path = %shared.config_path.display(), error = %e, "The new configuration is invalid; keeping the old one.");
            shared.metrics.add(
                "pgrehearse_config_reload_failures_total",
                "Reloads refused because the new configuration was invalid.",
                &[],
                1.0,
            );
        }
    }
    shared.notifier.ready(&shared.status_line());
}

/// Queues what is due: cron schedules, a changed migration source, an
/// approved plan in an open window.
async fn schedule(cfg: &Config, state: &crate::state::State, states: &mut HashMap<String, TargetState>) {
    let now = Utc::now();
    for t in &cfg.targets {
        let st = states.entry(t.name.clone()).or_insert_with(|| TargetState::new(t, now));
        for (job, timer) in
            [(Job::Snapshot, &mut st.snapshot), (Job::Verify, &mut st.verify), (Job::Rehearse, &mut st.rehearse)]
        {
            if timer.as_mut().is_some_and(|tm| tm.due(now)) && !st.queue.contains(&job) {
                st.queue.push(job);
            }
        }
        if Instant::now() < st.next_poll {
            continue;
        }
        st.next_poll = Instant::now() + cfg.daemon.poll_interval;
        let sum = source_checksum(t);
        if sum.is_some() && sum != st.source_sum {
            if st.settling == sum {
                tracing::info!(target = %t.name, "The migration source changed: rehearsing.");
                st.source_sum = sum;
                st.settling = None;
                st.enqueue(Job::RehearseChanged);
            } else {
                st.settling = sum;
            }
        } else if !st.plan_checked && t.migrations.is_some() && t.shadow_url.is_some() {
            st.plan_checked = true;
            if unrehearsed(state, t).await == Some(true) {
                tracing::info!(target = %t.name, "The pending plan was never rehearsed: rehearsing.");
                st.enqueue(Job::RehearseChanged);
                // The queued rehearsal reads the files when it runs, so it
                // covers them as they are now: this is the new baseline.
                st.source_sum = source_checksum(t);
                st.settling = None;
            }
        }
        if release_due(cfg, state, t, st).await {
            st.enqueue(Job::Release);
        }
        // Watches whose period ended (also those a restart left pending).
        if t.watch.is_some() && state.watches_due(&t.name, now).await.is_ok_and(|due| !due.is_empty()) {
            st.enqueue(Job::Watch);
        }
    }
}

/// Whether a plan is pending whose hash no rehearsal has (one read of
/// live's history); `None` when the source, live or the state store cannot
/// be read.
pub(super) async fn unrehearsed(state: &crate::state::State, t: &Target) -> Option<bool> {
    let source = crate::migrations::Source::of(t).ok()?;
    let plan = tokio::time::timeout(Duration::from_secs(10), crate::migrations::plan_for(state, &source, &t.live_url));
    let plan = plan.await.ok()?.ok()?;
    if plan.pending.is_empty() {
        return Some(false);
    }
    Some(state.latest_rehearsal(&t.name, Some(&plan.hash)).await.ok()?.is_none())
}

/// An approved, unspent, unexpired plan and an open window.
async fn release_due(cfg: &Config, state: &crate::state::State, t: &Target, st: &mut TargetState) -> bool {
    if t.migrations.is_none() || t.windows.is_empty() {
        return false;
    }
    let now = Utc::now();
    if crate::config::schedule::open_now(&t.windows, now).is_none() {
        return false;
    }
    let Ok(Some(a)) = state.latest_approval(&t.name, None).await else { return false };
    // Whether it names the plan pending now is preflight's to say (it reads live).
    if !crate::release::approval::usability(state, &a, None, now).await.is_ok_and(|u| u.usable()) {
        return false;
    }
    if st.refused.get(&a.id).is_some_and(|at| at.elapsed() < cfg.daemon.refused_retry_after) {
        return false;
    }
    st.release_approval = Some(a.id);
    true
}

/// Starts queued jobs of targets that are not busy, up to the limit.
fn dispatch(
    shared: &Arc<Shared>,
    cfg: &Arc<Config>,
    states: &mut HashMap<String, TargetState>,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
    release_cancel: &CancellationToken,
) {
    for (name, st) in states.iter_mut() {
        if st.queue.is_empty() {
            continue;
        }
        {
            let running = shared.running.lock().unwrap_or_else(|e| e.into_inner());
            if running.contains_key(name) || running.len() >= cfg.daemon.max_concurrent_jobs {
                continue;
            }
        }
        // Releases first: a window is short.
        st.queue.sort_by_key(|j| std::cmp::Reverse(*j == Job::Release));
        let job = st.queue.remove(0);
        shared.running.lock().unwrap_or_else(|e| e.into_inner()).insert(name.clone(), job);
        let (s, c, target) = (shared.clone(), cfg.clone(), name.clone());
        let token = if job == Job::Release { release_cancel.clone() } else { cancel.clone() };
        let approval = if job == Job::Release { st.release_approval.take() } else { None };
        // The job's span (run_id, target, job) is the job runner's.
        tracker.spawn(async move {
            let ended = jobs::run_on_thread(s.clone(), c, target.clone(), job, token).await;
            // A held lock is retried at the next poll; other refusals wait.
            if let (Ended::Refused(kind), Some(id)) = (&ended, approval)
                && kind != "lock_held"
            {
                s.refusals.lock().unwrap_or_else(|e| e.into_inner()).push((target.clone(), id));
            }
            s.running.lock().unwrap_or_else(|e| e.into_inner()).remove(&target);
        });
    }
    // Refusals noted by finished release jobs.
    let noted: Vec<(String, String)> = std::mem::take(&mut *shared.refusals.lock().unwrap_or_else(|e| e.into_inner()));
    for (target, id) in noted {
        if let Some(st) = states.get_mut(&target) {
            st.refused.insert(id, Instant::now());
        }
    }
}

/// A checksum of the migration source's files (names and bytes), to see
/// it change; `None` when the target has no file-based source.
fn source_checksum(t: &Target) -> Option<String> {
    use sha2::{Digest, Sha256};
    let m = t.migrations.as_ref()?;
    let dir = m.dir.as_ref()?;
    let root = match m.kind {
        crate::config::MigrationKind::Payload => crate::migrations::payload::migration_dir(dir),
        _ => dir.clone(),
    };
    let mut files = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let name = e.file_name();
            if name == "node_modules" || name.to_string_lossy().starts_with('.') {
                continue;
            }
            match e.file_type() {
                Ok(ft) if ft.is_dir() => stack.push(e.path()),
                Ok(ft) if ft.is_file() => files.push(e.path()),
                _ => {}
            }
        }
    }
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        h.update(f.strip_prefix(&root).unwrap_or(&f).to_string_lossy().as_bytes());
        h.update([0]);
        h.update(std::fs::read(&f).unwrap_or_default());
        h.update([0]);
    }
    Some(hex::encode(h.finalize()))
}

/// Host gauges: free space where staging lives, available memory.
fn host_metrics(m: &Metrics, cfg: &Config) {
    use sysinfo::Disks;
    let (available, total) = crate::host::memory();
    m.set("pgrehearse_host_memory_available_bytes", "Memory available on the host.", &[], available as f64);
    m.set("pgrehearse_host_memory_total_bytes", "Memory of the host.", &[], total as f64);
    let staging = cfg.staging_dir();
    let probe = if staging.exists() { staging.clone() } else { cfg.state_dir.clone() };
    if let Ok(free) = crate::host::free_bytes(&probe) {
        m.set(
            "pgrehearse_host_staging_free_bytes",
            "Free space in the staging directory's filesystem.",
            &[],
            free as f64,
        );
    }
    let disks = Disks::new_with_refreshed_list();
    let mut seen = HashSet::new();
    for d in disks.list() {
        let mount = d.mount_point().display().to_string();
        if seen.insert(mount.clone()) && probe.starts_with(d.mount_point()) {
            m.set(
                "pgrehearse_host_disk_free_bytes",
                "Free space of the filesystem holding state_dir.",
                &[("mount", mount.as_str())],
                d.available_space() as f64,
            );
        }
    }
}
