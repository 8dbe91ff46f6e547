//! Validating a target's policies: how a release may run (`window_safety_factor`,
//! the lock retries, `max_transaction_age`, `max_queue_wait`, `fence_writes`),
//! the performance watch after it (`watch_*`) and the lint rules denied or
//! allowed (`lint`).

use std::time::Duration;

use super::super::locate::KeyPath;
use super::super::raw::*;
use super::super::*;
use super::Ctx;

/// The performance watch: on when `watch_after` is set.
pub(super) fn watch(cx: &mut Ctx, p: &KeyPath, raw: &RawTarget) -> Option<WatchPolicy> {
    let after = cx.duration(&p.key("watch_after"), raw.watch_after.as_deref(), None);
    let ratio = raw.watch_slower_ratio.unwrap_or(2.0);
    if !(ratio > 1.0 && ratio.is_finite()) {
        cx.problem(
            &p.key("watch_slower_ratio"),
            "must be a number above 1 (2.0, the default, flags queries twice as slow)",
        );
    }
    let min_increase_ms = raw.watch_min_increase_ms.unwrap_or(1.0);
    if !(min_increase_ms >= 0.0 && min_increase_ms.is_finite()) {
        cx.problem(&p.key("watch_min_increase_ms"), "must be 0 or more milliseconds (1.0 is the default)");
    }
    let min_calls = raw.watch_min_calls.unwrap_or(20).max(1);
    if after.is_none()
        && (raw.watch_min_calls.is_some() || raw.watch_slower_ratio.is_some() || raw.watch_min_increase_ms.is_some())
    {
        cx.problem(&p.key("watch_after"), "is needed by the other watch_ keys: set how long to watch, e.g. \"15m\"");
    }
    let after = after?;
    if after.is_zero() {
        cx.problem(&p.key("watch_after"), "must be longer than 0s, e.g. \"15m\"");
        return None;
    }
    Some(WatchPolicy { after, min_calls, slower_ratio: ratio, min_increase_ms })
}

pub(super) fn release(cx: &mut Ctx, p: &KeyPath, raw: &RawTarget) -> ReleasePolicy {
    let d = ReleasePolicy::default();
    let factor = raw.window_safety_factor.unwrap_or(d.window_safety_factor);
    if !(factor.is_finite() && factor >= 1.0) {
        cx.problem(&p.key("window_safety_factor"), format!("`{factor}`: use a number of at least 1.0, e.g. 1.5"));
    }
    let max_queue_wait = cx
        .duration(&p.key("max_queue_wait"), raw.max_queue_wait.as_deref(), Some(d.max_queue_wait))
        .unwrap_or(d.max_queue_wait);
    if !max_queue_wait.is_zero() && max_queue_wait < Duration::from_millis(100) {
        cx.problem(
            &p.key("max_queue_wait"),
            format!(
                "`{}` is shorter than the lock-queue guard can act on (it looks every 10–50 ms); use at least \"100ms\", or \"0s\" to turn the lock-queue guard off",
                humantime::format_duration(max_queue_wait)
            ),
        );
    }
    ReleasePolicy {
        requires_release_on: raw.requires_release_on.clone(),
        window_safety_factor: factor,
        lock_retries: raw.lock_retries.unwrap_or(d.lock_retries).min(100),
        lock_retry_backoff: cx
            .duration(&p.key("lock_retry_backoff"), raw.lock_retry_backoff.as_deref(), Some(d.lock_retry_backoff))
            .unwrap_or(d.lock_retry_backoff),
        max_transaction_age: cx
            .duration(&p.key("max_transaction_age"), raw.max_transaction_age.as_deref(), Some(d.max_transaction_age))
            .unwrap_or(d.max_transaction_age),
        fence_writes: fence_writes(cx, p, raw),
        max_queue_wait,
    }
}

/// `fence_writes` fences the part of a release that may end in a restore:
/// with another `on_failure` no release restores, so the key would promise
/// something it never does.
fn fence_writes(cx: &mut Ctx, p: &KeyPath, raw: &RawTarget) -> bool {
    let on = raw.fence_writes.unwrap_or(false);
    let on_failure = raw.on_failure.as_deref().unwrap_or("restore");
    if on && on_failure != "restore" {
        cx.problem(
            &p.key("fence_writes"),
            format!(
                "fences writes during a release that may end in a restore, but on_failure = \"{on_failure}\" never restores (live keeps the application's writes): remove fence_writes or set on_failure = \"restore\""
            ),
        );
    }
    on
}

pub(super) fn lint(cx: &mut Ctx, p: &KeyPath, raw: Option<&RawLint>) -> LintConfig {
    let Some(raw) = raw else { return LintConfig::default() };
    let mut rules = |key: &str, list: &[String]| -> Vec<LintRule> {
        let mut out = Vec::new();
        for (i, rule) in list.iter().enumerate() {
            match rule.parse::<LintRule>() {
                Ok(r) => out.push(r),
                Err(e) => cx.problem(&p.key(key).index(i), e),
            }
        }
        out
    };
    let deny = rules("deny", &raw.deny);
    let allow = rules("allow", &raw.allow);
    LintConfig { deny, allow }
}
