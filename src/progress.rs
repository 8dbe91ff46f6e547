//! Progress of long byte work: a snapshot (pg_dump's raw bytes into zstd),
//! a download (stored bytes out of the store) and a restore (the restored
//! database's size while `pg_restore` runs).
//!
//! On a terminal (stderr is a TTY, no `--json`) it is an indicatif line with
//! bytes, rate and ETA. A total that is only an estimate is shown with `~`;
//! once the work passes it (or when there is none) the line becomes a spinner
//! with bytes and rate, so it never shows more than 100 % or a negative ETA.
//! Everywhere else (pipes, systemd's journal, CI, `--json`) there are no bars
//! and no control characters: `tracing` INFO events `Progress.` with the
//! fields `phase`, `bytes`, `total`, `percent`, `estimated`, `rate_mib_s`,
//! `eta_s`, at most every 10 s, or when another tenth of the total is done
//! (but not more often than once a second), and a last one when the work
//! ends, if any was logged. `--json`'s stdout stays one document: all of
//! this goes to stderr.
//!
//! The hot path only adds to an `AtomicU64` (and to indicatif's own atomic
//! position, whose drawing indicatif limits; here to 10 redraws a second).
//! Log lines written while a bar is on screen go through [`LogWriter`], which
//! lifts the bar for the line, so the two never garble each other.
//!
//! `PGREHEARSE_PROGRESS_INTERVAL_MS` overrides the 10 s log interval (the
//! integration tests use a short one to see several lines on a small
//! database); it is not meant for operators.

use std::io::{self, IsTerminal, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{BinaryBytes, HumanDuration, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// How progress is shown, for the whole process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A bar when stderr is a terminal, log lines otherwise (the default).
    Auto,
    /// Log lines only (`--json`, the daemon).
    Logs,
    /// Nothing (the demo, which prints its own stages).
    Off,
}

static MODE: AtomicU8 = AtomicU8::new(0);

/// Sets how progress is shown from now on (call before work starts).
pub fn set_mode(mode: Mode) {
    MODE.store(
        match mode {
            Mode::Auto => 0,
            Mode::Logs => 1,
            Mode::Off => 2,
        },
        Ordering::Relaxed,
    );
}

/// Whether progress is shown at all (so that a caller can skip measuring).
pub fn enabled() -> bool {
    mode() != Mode::Off
}

/// How progress is shown now.
pub fn mode() -> Mode {
    match MODE.load(Ordering::Relaxed) {
        0 => Mode::Auto,
        1 => Mode::Logs,
        _ => Mode::Off,
    }
}

/// The bar on screen, if any: log lines lift it while they are written.
static ACTIVE: Mutex<Option<(u64, ProgressBar)>> = Mutex::new(None);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
const MIB: f64 = (1u64 << 20) as f64;

/// One piece of long work. Cheap to clone (the clones count into the same
/// total); dropped without [`Progress::finish`] (a failure), its bar is
/// cleared and no final line is logged.
#[derive(Clone)]
pub struct Progress(Option<Arc<Inner>>);

struct Inner {
    phase: &'static str,
    total: Option<u64>,
    estimated: bool,
    bytes: AtomicU64,
    started: Instant,
    finished: AtomicBool,
    view: View,
    /// The job's span (run id, target), for lines logged from other threads.
    span: tracing::Span,
}

enum View {
    Bar { id: u64, bar: ProgressBar, spinning: AtomicBool },
    Log { interval: Duration, mark: Mutex<Mark> },
}

/// When the last progress line was logged.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Mark {
    at: Duration,
    tenth: u64,
    lines: u32,
}

impl Progress {
    /// Starts showing progress of `phase` (`snapshot`, `download`,
    /// `restore`, …) towards `total` bytes, if known; `estimated` when the
    /// total is a guess.
    pub fn start(phase: &'static str, total: Option<u64>, estimated: bool) -> Progress {
        let total = total.filter(|t| *t > 0);
        let view = match mode() {
            Mode::Off => return Progress(None),
            Mode::Auto if io::stderr().is_terminal() && std::env::var("TERM").map_or(true, |t| t != "dumb") => {
                // Styled while hidden: nothing is drawn in the default style.
                let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::hidden())
                    .with_style(match total {
                        Some(_) => bar_style(estimated),
                        None => spinner_style(),
                    })
                    .with_prefix(phase);
                bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(10));
                bar.enable_steady_tick(Duration::from_millis(200));
                let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut a) = ACTIVE.lock() {
                    *a = Some((id, bar.clone()));
                }
                View::Bar { id, bar, spinning: AtomicBool::new(total.is_none()) }
            }
            _ => View::Log { interval: log_interval(), mark: Mutex::new(Mark::default()) },
        };
        Progress(Some(Arc::new(Inner {
            phase,
            total,
            estimated,
            bytes: AtomicU64::new(0),
            started: Instant::now(),
            finished: AtomicBool::new(false),
            view,
            span: tracing::Span::current(),
        })))
    }

    /// `n` more bytes done.
    pub fn inc(&self, n: u64) {
        let Some(inner) = &self.0 else { return };
        if n == 0 {
            // A reader's end of file: nothing new to show.
            return;
        }
        let bytes = inner.bytes.fetch_add(n, Ordering::Relaxed) + n;
        inner.update(bytes);
    }

    /// `bytes` done in all (for work measured by polling).
    pub fn set(&self, bytes: u64) {
        let Some(inner) = &self.0 else { return };
        inner.bytes.store(bytes, Ordering::Relaxed);
        inner.update(bytes);
    }

    /// The work is done: the bar is left as a summary line, or a last log
    /// line says how much and how fast (if the work was long enough to log
    /// any progress).
    pub fn finish(&self) {
        let Some(inner) = &self.0 else { return };
        if inner.finished.swap(true, Ordering::Relaxed) {
            return;
        }
        let bytes = inner.bytes.load(Ordering::Relaxed);
        let elapsed = inner.started.elapsed();
        let rate = rate_of(bytes, elapsed);
        match &inner.view {
            View::Bar { bar, .. } => {
                // A line of our own (with its newline) rather than the
                // finished bar, which leaves the cursor at its end.
                bar.finish_and_clear();
                inner.release_bar();
                eprintln!(
                    "{:>9} {} in {:.1} s ({}/s)",
                    inner.phase,
                    BinaryBytes(bytes),
                    elapsed.as_secs_f64(),
                    BinaryBytes(rate as u64)
                );
            }
            View::Log { mark, .. } => {
                let logged = mark.lock().map(|m| m.lines > 0).unwrap_or(false);
                if logged {
                    let _span = inner.span.enter();
                    tracing::info!(
                        phase = inner.phase,
                        bytes,
                        elapsed_ms = elapsed.as_millis() as u64,
                        rate_mib_s = round1(rate / MIB),
                        "Progress: done."
                    );
                }
            }
        }
    }

    /// A reader that counts what passes through it into this progress.
    pub fn reader<R: Read>(&self, inner: R) -> CountingReader<R> {
        CountingReader { inner, progress: self.clone() }
    }
}

impl Inner {
    fn update(&self, bytes: u64) {
        match &self.view {
            View::Bar { bar, spinning, .. } => {
                bar.set_position(bytes);
                let past = self.total.is_some_and(|t| bytes > t);
                if past && !spinning.swap(true, Ordering::Relaxed) {
                    bar.set_style(spinner_style());
                    bar.unset_length();
                }
            }
            View::Log { interval, mark } => {
                let now = self.started.elapsed();
                // Contended only when two threads count at once: skip, the
                // next update will log.
                let Ok(mut m) = mark.try_lock() else { return };
                let st = stats(bytes, self.total, now);
                if let Some(next) = due(&m, now, &st, *interval) {
                    *m = next;
                    drop(m);
                    self.log(&st);
                }
            }
        }
    }

    fn log(&self, st: &Stats) {
        let _span = self.span.enter();
        let rate_mib_s = round1(st.rate / MIB);
        match (st.total, st.percent) {
            (Some(total), Some(percent)) => tracing::info!(
                phase = self.phase,
                bytes = st.bytes,
                total,
                percent = round1(percent),
                estimated = self.estimated,
                rate_mib_s,
                eta_s = st.eta_s,
                "Progress."
            ),
            _ => tracing::info!(
                phase = self.phase,
                bytes = st.bytes,
                estimate_exceeded = self.total.is_some(),
                rate_mib_s,
                "Progress."
            ),
        }
    }

    fn release_bar(&self) {
        if let View::Bar { id, .. } = &self.view
            && let Ok(mut a) = ACTIVE.lock()
            && a.as_ref().is_some_and(|(active, _)| active == id)
        {
            *a = None;
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let View::Bar { bar, .. } = &self.view {
            if !self.finished.load(Ordering::Relaxed) {
                bar.finish_and_clear();
            }
            self.release_bar();
        }
    }
}

fn bar_style(estimated: bool) -> ProgressStyle {
    let template = if estimated {
        "{prefix:>9} [{wide_bar}] {binary_bytes} of ~{binary_total_bytes}  {binary_bytes_per_sec}  ETA ~{eta}"
    } else {
        "{prefix:>9} [{wide_bar}] {binary_bytes} of {binary_total_bytes}  {binary_bytes_per_sec}  ETA {eta}"
    };
    ProgressStyle::with_template(template)
        .expect("valid template")
        .progress_chars("=> ")
        // Until a byte has moved there is no rate to extrapolate: `?`, not `0s`.
        .with_key("eta", |st: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = if st.pos() == 0 || st.per_sec() <= 0.0 {
                w.write_str("?")
            } else {
                write!(w, "{:#}", HumanDuration(st.eta()))
            };
        })
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:>9} {spinner} {binary_bytes}  {binary_bytes_per_sec}  {elapsed}")
        .expect("valid template")
}

/// How often to measure work that is polled rather than counted (a
/// restore's database size): every second, or more often when the log
/// interval is shorter.
pub fn poll_interval() -> Duration {
    log_interval().min(Duration::from_secs(1))
}

fn log_interval() -> Duration {
    std::env::var("PGREHEARSE_PROGRESS_INTERVAL_MS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map_or(DEFAULT_INTERVAL, Duration::from_millis)
}

/// Where work stands, as logged.
#[derive(Debug, Clone, PartialEq)]
struct Stats {
    bytes: u64,
    /// The total, while the work has not passed it.
    total: Option<u64>,
    percent: Option<f64>,
    /// Bytes per second, averaged since the start.
    rate: f64,
    /// Seconds left at that rate; only with a total and a rate.
    eta_s: Option<u64>,
}

fn rate_of(bytes: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { bytes as f64 / secs } else { 0.0 }
}

fn stats(bytes: u64, total: Option<u64>, elapsed: Duration) -> Stats {
    let rate = rate_of(bytes, elapsed);
    // Past an estimate, the total is unknown: no percent over 100, no ETA.
    let total = total.filter(|t| *t > 0 && bytes <= *t);
    let percent = total.map(|t| bytes as f64 * 100.0 / t as f64);
    let eta_s = match total {
        Some(t) if rate > 0.0 => Some(((t - bytes) as f64 / rate).ceil() as u64),
        _ => None,
    };
    Stats { bytes, total, percent, rate, eta_s }
}

/// Whether to log now, and the new mark if so: every `interval`, or when
/// another tenth of the total is done, but at most once per tenth of the
/// interval (a fast small download must not log ten lines in a second).
fn due(mark: &Mark, now: Duration, st: &Stats, interval: Duration) -> Option<Mark> {
    let since = now.saturating_sub(mark.at);
    let tenth = st.percent.map_or(mark.tenth, |p| (p / 10.0).floor() as u64);
    let by_time = since >= interval;
    let by_share = tenth > mark.tenth && since >= interval / 10;
    (by_time || by_share).then(|| Mark { at: now, tenth: tenth.max(mark.tenth), lines: mark.lines + 1 })
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Counts the bytes read through it (see [`Progress::reader`]).
pub struct CountingReader<R> {
    inner: R,
    progress: Progress,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.inc(n as u64);
        Ok(n)
    }
}

/// The `tracing` writer for stderr: a line written while a bar is on
/// screen lifts the bar, is written, and the bar is drawn again below it.
pub struct LogWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;
    fn make_writer(&'a self) -> LogLine {
        LogLine
    }
}

pub struct LogLine;

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let bar = ACTIVE.lock().ok().and_then(|a| a.as_ref().map(|(_, b)| b.clone()));
        match bar {
            Some(bar) => bar.suspend(|| io::stderr().write_all(buf)).map(|()| buf.len()),
            None => io::stderr().write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

#[cfg(test)]
#[path = "progress_tests.rs"]
mod tests;
