//! The one validation pass from `RawConfig` to `Config`. Problems are collected
//! (not returned at the first) and each is located with `locate`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::locate::{self, KeyPath};
use super::raw::*;
use super::schedule::{self, Schedule, Window};
use super::secret::{self, Secret};
use super::*;

#[path = "validate_email.rs"]
mod email;
use email::email;
#[path = "validate_store.rs"]
mod store;
use store::store;
#[path = "validate_queries.rs"]
mod queries;
use queries::queries;
#[path = "validate_policy.rs"]
mod policy;
use policy::{lint, release, watch};

struct Ctx<'a> {
    file: &'a Path,
    src: &'a str,
    dir: PathBuf,
    problems: Vec<Problem>,
}

impl Ctx<'_> {
    fn problem(&mut self, path: &KeyPath, message: impl Into<String>) {
        let (line, column) = match locate::span_of(self.src, path) {
            Some(span) => {
                let (l, c) = locate::line_col(self.src, span.start);
                (Some(l), Some(c))
            }
            None => (Some(1), None),
        };
        self.problems.push(Problem {
            file: self.file.to_path_buf(),
            line,
            column,
            key: path.to_string(),
            message: message.into(),
        });
    }

    fn path(&self, p: &Path) -> PathBuf {
        if p.is_relative() { self.dir.join(p) } else { p.to_path_buf() }
    }

    fn duration(&mut self, path: &KeyPath, v: Option<&str>, default: Option<Duration>) -> Option<Duration> {
        match v {
            None => default,
            Some(s) => match humantime::parse_duration(s.trim()) {
                Ok(d) => Some(d),
                Err(e) => {
                    self.problem(path, format!("`{s}` is not a duration ({e}); write e.g. \"3s\", \"500ms\", \"2h\""));
                    default
                }
            },
        }
    }

    fn secret_file(&mut self, path: &KeyPath, file: &Path) -> Option<Secret> {
        match secret::read_secret_file(file, &self.dir) {
            Ok(s) => Some(s),
            Err(e) => {
                self.problem(path, e);
                None
            }
        }
    }
}

/// The TOML parser's message, or what is wrong when it has none (it says
/// nothing about a control character, even one inside a comment).
fn toml_message(src: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim();
    if !message.is_empty() {
        return message.to_string();
    }
    let found = e.span().and_then(|s| src.get(s.start..)).and_then(|rest| rest.chars().next());
    match found {
        Some(c) if c.is_control() => {
            format!("the control character U+{:04X} is not allowed in TOML, not even in a comment; delete it", c as u32)
        }
        Some(c) => format!("unexpected `{c}`: this is not valid TOML; check the line's syntax"),
        None => "the file ends in the middle of a value; check its last line".to_string(),
    }
}

/// Parses and validates the text of a config file.
pub fn from_source(file: &Path, src: &str) -> Result<Config, Vec<Problem>> {
    let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
    let mut cx = Ctx { file, src, dir, problems: Vec::new() };

    let raw: RawConfig = match toml::from_str(src) {
        Ok(r) => r,
        Err(e) => {
            let (line, column, key) = match e.span() {
                Some(span) => {
                    let (l, c) = locate::line_col(src, span.start);
                    let key = locate::path_at(src, span.start).map(|p| p.to_string()).unwrap_or_default();
                    (Some(l), Some(c), key)
                }
                None => (None, None, String::new()),
            };
            return Err(vec![Problem { file: file.to_path_buf(), line, column, key, message: toml_message(src, &e) }]);
        }
    };

    let root = KeyPath::root();
    let state_dir = cx.path(raw.state_dir.as_deref().unwrap_or(Path::new("/var/lib/pgrehearse")));
    let store = store(&mut cx, &raw.store, &state_dir);
    let stall_timeout = match cx.duration(&root.key("stall_timeout"), raw.stall_timeout.as_deref(), Some(STALL_TIMEOUT))
    {
        Some(d) if d < Duration::from_secs(1) => {
            cx.problem(
                &root.key("stall_timeout"),
                "must be at least 1s (it bounds how long a stalled server can hold a job; 60s is the default)",
            );
            STALL_TIMEOUT
        }
        d => d.unwrap_or(STALL_TIMEOUT),
    };
    let snapshot = SnapshotConfig {
        zstd_level: match raw.snapshot.zstd_level {
            Some(l) if !(1..=19).contains(&l) => {
                cx.problem(&root.key("snapshot").key("zstd_level"), "must be between 1 and 19 (1 is fastest)");
                1
            }
            Some(l) => l,
            None => 1,
        },
        pg_bindir: raw.snapshot.pg_bindir.as_deref().map(|p| cx.path(p)),
    };
    let email = raw.email.as_ref().map(|e| email(&mut cx, e, &state_dir));
    let api = raw.api.as_ref().and_then(|a| api(&mut cx, a));
    let daemon = daemon(&mut cx, &raw.daemon);

    if raw.targets.is_empty() {
        cx.problem(&root.key("targets"), "no target is configured; add a [[targets]] table with name and live_url");
    }
    let mut targets = Vec::new();
    for (i, t) in raw.targets.iter().enumerate() {
        let p = root.key("targets").index(i);
        if let Some(t) = target(&mut cx, &p, t) {
            if targets.iter().any(|o: &Target| o.name == t.name) {
                cx.problem(&p.key("name"), format!("target name `{}` is used twice", t.name));
            }
            targets.push(t);
        }
    }
    for (i, t) in targets.iter().enumerate() {
        if let Some(other) = &t.release.requires_release_on
            && (other == &t.name || !targets.iter().any(|o| &o.name == other))
        {
            let known: Vec<&str> = targets.iter().filter(|o| o.name != t.name).map(|o| o.name.as_str()).collect();
            cx.problem(
                &root.key("targets").index(i).key("requires_release_on"),
                format!("`{other}` is not another target of this config (others: {})", known.join(", ")),
            );
        }
    }

    if !cx.problems.is_empty() {
        return Err(cx.problems);
    }
    let rehearsal = RehearsalConfig {
        strict_column_order: raw.rehearsal.strict_column_order.unwrap_or(false),
        probes: raw.rehearsal.probes.unwrap_or(true),
    };
    Ok(Config { state_dir, stall_timeout, store, snapshot, email, api, daemon, rehearsal, targets })
}

fn daemon(cx: &mut Ctx, raw: &RawDaemon) -> DaemonConfig {
    let p = KeyPath::root().key("daemon");
    let poll = Duration::from_secs(30);
    let retry = Duration::from_secs(600);
    let max = raw.max_concurrent_jobs.unwrap_or(2);
    if max == 0 {
        cx.problem(&p.key("max_concurrent_jobs"), "must be at least 1");
    }
    DaemonConfig {
        max_concurrent_jobs: max.max(1),
        poll_interval: cx
            .duration(&p.key("poll_interval"), raw.poll_interval.as_deref(), Some(poll))
            .unwrap_or(poll)
            .max(Duration::from_millis(100)),
        refused_retry_after: cx
            .duration(&p.key("refused_retry_after"), raw.refused_retry_after.as_deref(), Some(retry))
            .unwrap_or(retry),
    }
}

fn api(cx: &mut Ctx, raw: &RawApi) -> Option<ApiConfig> {
    let p = KeyPath::root().key("api");
    let listen = raw.listen.as_deref().unwrap_or("127.0.0.1:9187");
    let token = raw.token_file.as_deref().and_then(|f| cx.secret_file(&p.key("token_file"), f));
    match listen.parse() {
        Ok(listen) => Some(ApiConfig { listen, token }),
        Err(_) => {
            cx.problem(&p.key("listen"), format!("`{listen}` is not an address:port such as \"127.0.0.1:9187\""));
            None
        }
    }
}

fn url_secret(
    cx: &mut Ctx,
    p: &KeyPath,
    name: &str,
    key: &str,
    inline: Option<&str>,
    file: Option<&Path>,
) -> Option<ConnUrl> {
    let file_key = format!("{key}_file");
    let text = match (inline, file) {
        (Some(_), Some(_)) => {
            cx.problem(&p.key(&file_key), format!("set either {key} or {file_key}, not both"));
            return None;
        }
        (Some(s), None) => Secret::new(s),
        (None, Some(f)) => cx.secret_file(&p.key(&file_key), f)?,
        (None, None) => match std::env::var(secret::env_name(name, key)) {
            Ok(v) if !v.is_empty() => Secret::new(v),
            _ => return None,
        },
    };
    match ConnUrl::parse(text.expose()) {
        Ok(u) => Some(u),
        Err(e) => {
            let k = if file.is_some() { file_key } else { key.to_string() };
            // Never echo the value: it may hold a password.
            cx.problem(&p.key(&k), format!("the URL is invalid: {e}"));
            None
        }
    }
}

fn target(cx: &mut Ctx, p: &KeyPath, raw: &RawTarget) -> Option<Target> {
    let name = match raw.name.as_deref() {
        Some(n)
            if !n.is_empty()
                && n.len() <= 40
                && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-') =>
        {
            n.to_string()
        }
        Some(n) => {
            cx.problem(&p.key("name"), format!("`{n}`: use 1–40 characters of a-z, 0-9, '_' and '-' (it becomes part of object keys and database names)"));
            n.to_string()
        }
        None => {
            cx.problem(&p.key("name"), "every target needs a name");
            String::new()
        }
    };
    let live_url = url_secret(cx, p, &name, "live_url", raw.live_url.as_deref(), raw.live_url_file.as_deref());
    if live_url.is_none() && raw.live_url.is_none() && raw.live_url_file.is_none() {
        cx.problem(
            &p.key("live_url"),
            format!(
                "missing; set live_url, live_url_file, or the environment variable {}",
                secret::env_name(&name, "live_url")
            ),
        );
    }
    if let Some(u) = &live_url
        && u.database().is_empty()
    {
        cx.problem(&p.key("live_url"), "the URL names no database; write postgres://user@host/DATABASE");
    }
    let shadow_url = url_secret(cx, p, &name, "shadow_url", raw.shadow_url.as_deref(), raw.shadow_url_file.as_deref());
    let shadow_on_live_server = raw.shadow_on_live_server.unwrap_or(false);
    let admin_url = url_secret(cx, p, &name, "admin_url", raw.admin_url.as_deref(), raw.admin_url_file.as_deref());
    if let (Some(live), Some(shadow)) = (&live_url, &shadow_url) {
        let same_server = live.server_key() == shadow.server_key();
        let key = if raw.shadow_url.is_some() { "shadow_url" } else { "shadow_url_file" };
        if same_server && (live.database() == shadow.database() || shadow.database().is_empty()) {
            cx.problem(&p.key(key), "points at the live database itself; the shadow must be another server (scratch databases are created and dropped there)");
        } else if same_server && !shadow_on_live_server {
            cx.problem(&p.key(key), "is on the live server: restores and rehearsals would load production; use another server or set shadow_on_live_server = true");
        }
    }
    let migrations = raw.migrations.as_ref().and_then(|m| migrations(cx, &p.key("migrations"), m));
    let mut parse_schedule = |key: &str, expr: &Option<String>| -> Option<Schedule> {
        match Schedule::parse(expr.as_deref()?) {
            Ok(s) => Some(s),
            Err(msg) => {
                cx.problem(&p.key(key), msg);
                None
            }
        }
    };
    let snapshot_schedule = parse_schedule("snapshot_schedule", &raw.snapshot_schedule);
    let verify_schedule = parse_schedule("verify_schedule", &raw.verify_schedule);
    let rehearse_schedule = parse_schedule("rehearse_schedule", &raw.rehearse_schedule);
    let mut windows = Vec::new();
    for (i, w) in raw.windows.iter().enumerate() {
        let wp = p.key("windows").index(i);
        let cron = w.cron.clone().unwrap_or_default();
        let cron = match schedule::parse_cron(&cron) {
            Ok(parsed) => Some((cron, parsed)),
            Err(msg) => {
                cx.problem(&wp.key("cron"), msg);
                None
            }
        };
        let duration = match cx.duration(&wp.key("duration"), w.duration.as_deref(), None) {
            Some(d) => d,
            None => {
                if w.duration.is_none() {
                    cx.problem(&wp.key("duration"), "a window needs a duration, e.g. \"2h\"");
                }
                Duration::ZERO
            }
        };
        let zone = match schedule::parse_zone(w.timezone.as_deref().unwrap_or("UTC")) {
            Ok(tz) => Some(tz),
            Err(msg) => {
                cx.problem(&wp.key("timezone"), msg);
                None
            }
        };
        // A window with a problem is left out; the problem fails validation.
        if let (Some((expr, cron)), Some(tz)) = (cron, zone) {
            windows.push(Window::parsed(expr, cron, duration, tz));
        }
    }
    let lock_timeout = cx
        .duration(&p.key("lock_timeout"), raw.lock_timeout.as_deref(), Some(Duration::from_secs(3)))
        .unwrap_or(Duration::from_secs(3));
    let statement_timeout = cx.duration(&p.key("statement_timeout"), raw.statement_timeout.as_deref(), None);
    let on_failure = match raw.on_failure.as_deref().unwrap_or("restore") {
        "restore" => OnFailure::Restore,
        "down" => OnFailure::Down,
        "halt" => OnFailure::Halt,
        other => {
            cx.problem(&p.key("on_failure"), format!("`{other}`: use \"restore\", \"down\" or \"halt\""));
            OnFailure::Restore
        }
    };
    let mut checks = Vec::new();
    for (i, c) in raw.checks.iter().enumerate() {
        let cp = p.key("checks").index(i);
        match (&c.name, &c.sql, &c.expect) {
            (Some(name), Some(sql), Some(expect)) => {
                checks.push(Check { name: name.clone(), sql: sql.clone(), expect: expect.clone() })
            }
            _ => cx.problem(
                &cp,
                "a check needs name, sql and expect (the expected first column of the first row, as text)",
            ),
        }
    }
    let d = Retention::default();
    let retention = raw.retention.as_ref().map_or(d, |r| Retention {
        keep_last: r.keep_last.unwrap_or(d.keep_last),
        keep_daily: r.keep_daily.unwrap_or(d.keep_daily),
        keep_weekly: r.keep_weekly.unwrap_or(d.keep_weekly),
        keep_monthly: r.keep_monthly.unwrap_or(d.keep_monthly),
        keep_verified_min: r.keep_verified_min.unwrap_or(d.keep_verified_min),
    });
    Some(Target {
        name,
        live_url: live_url?,
        shadow_url,
        admin_url,
        shadow_on_live_server,
        migrations,
        snapshot_schedule,
        verify_schedule,
        rehearse_schedule,
        windows,
        lock_timeout,
        statement_timeout,
        on_failure,
        retention,
        dump_globals: raw.dump_globals.unwrap_or(false),
        restore_jobs: raw
            .restore_jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
            .clamp(1, 64),
        restore_no_owner: raw.restore_no_owner,
        migration_role: raw.migration_role.clone().filter(|r| {
            let ok = !r.trim().is_empty();
            if !ok {
                cx.problem(
                    &p.key("migration_role"),
                    "is empty; name a role, or leave it out to run as live_url's role",
                );
            }
            ok
        }),
        amcheck: raw.amcheck.unwrap_or(false),
        checks,
        seeds: raw.seeds.iter().map(|s| cx.path(s)).collect(),
        approval_max_age: cx
            .duration(&p.key("approval_max_age"), raw.approval_max_age.as_deref(), Some(WEEK))
            .unwrap_or(WEEK),
        approval_expires_after: cx
            .duration(&p.key("approval_expires_after"), raw.approval_expires_after.as_deref(), Some(WEEK))
            .unwrap_or(WEEK),
        lint: lint(cx, &p.key("lint"), raw.lint.as_ref()),
        queries: queries(cx, &p.key("queries"), raw.queries.as_ref()),
        release: release(cx, p, raw),
        watch: watch(cx, p, raw),
        pg_bindir: raw.pg_bindir.as_deref().map(|d| cx.path(d)),
    })
}

fn migrations(cx: &mut Ctx, p: &KeyPath, raw: &RawMigrations) -> Option<MigrationsConfig> {
    let kind = match raw.kind.as_deref() {
        Some("sqlx" | "sql") => MigrationKind::Sqlx,
        Some("diesel") => MigrationKind::Diesel,
        Some("payload") => MigrationKind::Payload,
        Some("command") => MigrationKind::Command,
        Some(other) => {
            cx.problem(&p.key("kind"), format!("`{other}`: use \"sqlx\", \"diesel\", \"payload\" or \"command\""));
            return None;
        }
        None => {
            cx.problem(&p.key("kind"), "missing; use \"sqlx\", \"diesel\", \"payload\" or \"command\"");
            return None;
        }
    };
    let dir = raw.dir.as_deref().map(|d| cx.path(d));
    if kind != MigrationKind::Command && dir.is_none() {
        cx.problem(&p.key("dir"), "missing: the directory of the project's migrations");
    }
    if kind != MigrationKind::Command && raw.password_in_url.is_some() {
        cx.problem(&p.key("password_in_url"), "only a kind = \"command\" source takes it; remove it");
    }
    if kind == MigrationKind::Command && raw.apply.is_none() {
        cx.problem(&p.key("apply"), "kind = \"command\" needs the command that applies migrations");
    }
    let timeout = cx
        .duration(&p.key("timeout"), raw.timeout.as_deref(), Some(Duration::from_secs(3600)))
        .unwrap_or(Duration::from_secs(3600));
    Some(MigrationsConfig {
        kind,
        dir,
        table: raw.table.clone(),
        apply: raw.apply.clone(),
        pending: raw.pending.clone(),
        down: raw.down.clone(),
        timeout,
        password_in_url: raw.password_in_url.unwrap_or(false),
    })
}

/// The default `stall_timeout`: long enough for a loaded server to accept a
/// connection, short enough that a stalled one does not hold a window.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
