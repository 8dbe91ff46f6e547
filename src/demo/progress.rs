//! The demo's output: a line per stage as it ends (what it did, how long
//! it took), indented details under it, a live counter while the sample
//! data loads (on a terminal only), and the final report — printed, written
//! to `report.txt` in the sandbox, or, with `--json`, one JSON document.

use std::io::{IsTerminal, Write};
use std::time::Instant;

use serde::Serialize;

/// One stage as it ended.
#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    pub stage: &'static str,
    /// Did what the demo expects of it (a failed release that was restored
    /// is `ok`: that is what it should do).
    pub ok: bool,
    pub duration_ms: u64,
    pub summary: String,
    pub details: Vec<String>,
}

pub struct Progress {
    json: bool,
    tty: bool,
    pub stages: Vec<Stage>,
    /// Everything printed, for `report.txt`.
    pub text: String,
}

impl Progress {
    pub fn new(json: bool) -> Progress {
        Progress { json, tty: std::io::stdout().is_terminal(), stages: Vec::new(), text: String::new() }
    }

    /// A line of text (not a stage).
    pub fn say(&mut self, line: &str) {
        self.text.push_str(line);
        self.text.push('\n');
        if !self.json {
            println!("{line}");
        }
    }

    /// Records and prints a stage that started at `t0`.
    pub fn stage(&mut self, stage: &'static str, ok: bool, t0: Instant, summary: String, details: Vec<String>) {
        let s = Stage { stage, ok, duration_ms: t0.elapsed().as_millis() as u64, summary, details };
        let n = self.stages.len() + 1;
        let mark = if s.ok { "ok  " } else { "FAIL" };
        self.say(&format!("[{n:>2}] {mark} {:<12} {:>7}  {}", s.stage, secs(s.duration_ms), s.summary));
        for d in &s.details {
            self.say(&format!("                               {d}"));
        }
        self.stages.push(s);
    }

    /// Overwrites one line in place on a terminal (a counter); silent
    /// otherwise, so logs and pipes stay clean.
    pub fn tick(&self, text: &str) {
        if self.tty && !self.json {
            print!("\r     {text}\x1b[K");
            let _ = std::io::stdout().flush();
        }
    }

    /// Clears the counter line.
    pub fn tick_done(&self) {
        if self.tty && !self.json {
            print!("\r\x1b[K");
            let _ = std::io::stdout().flush();
        }
    }

    pub fn all_ok(&self) -> bool {
        !self.stages.is_empty() && self.stages.iter().all(|s| s.ok)
    }

    pub fn json(&self) -> bool {
        self.json
    }
}

/// `1.2 s`, `340 ms`.
pub fn secs(ms: u64) -> String {
    if ms < 1000 { format!("{ms} ms") } else { format!("{:.1} s", ms as f64 / 1000.0) }
}
