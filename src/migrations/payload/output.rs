//! Reading the Payload CLI's output: pino-pretty lines with ANSI colours,
//! turned into events (`Migrating:`, `Migrated: <name> (<ms>ms)`, errors, the
//! dev-mode prompt) stamped with when they arrived.

use std::time::Instant;

use super::{Migrated, TAIL_BYTES};
use crate::pg;

/// Removes ANSI escape sequences (pino-pretty colours every line whether or
/// not stdout is a terminal; `prompts` moves the cursor).
pub(in crate::migrations) fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some('[') => {
                chars.next();
                // CSI: parameters and intermediates, then one final byte 0x40–0x7E.
                for c in chars.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&c) {
                        break;
                    }
                }
            }
            Some(']') => {
                // OSC: up to BEL or ESC \.
                chars.next();
                while let Some(c) = chars.next() {
                    if c == '\u{7}' || (c == '\u{1b}' && chars.peek() == Some(&'\\')) {
                        if c == '\u{1b}' {
                            chars.next();
                        }
                        break;
                    }
                }
            }
            Some(_) => {
                chars.next();
            }
            None => {}
        }
    }
    out
}

/// What one line of the CLI's output says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::migrations) enum Event {
    /// `Migrating: <name>` / `Migrating down: <name>`.
    Start(String),
    /// `Migrated:  <name> (<ms>ms)` / `Migrated down:  <name> (<ms>ms)`.
    Done { name: String, ms: u64 },
    /// `Error running migration <name> <message>.`,
    /// `Error migrating down <name>. Rolling back. <message>.`,
    /// `Migration <name> not found locally.`; the name is the first word.
    Error(String),
    /// The dev-mode push prompt (`migrate` with a batch = -1 row).
    DevPrompt,
}

pub(in crate::migrations) fn event(line: &str) -> Option<Event> {
    fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
        line.find(marker).map(|i| line[i + marker.len()..].trim())
    }
    fn first_word(s: &str) -> String {
        s.split_whitespace().next().unwrap_or_default().trim_end_matches('.').to_string()
    }
    // Payload writes "Migrated:  <name> (<n>ms)"; in JSON logs the message
    // is followed by `"` and more fields, so search for "ms)" from the end.
    fn done(rest: &str) -> Option<Event> {
        let close = rest.rfind("ms)")?;
        let open = rest[..close].rfind(" (")?;
        let ms = rest[open + 2..close].trim().parse().ok()?;
        Some(Event::Done { name: rest[..open].trim().to_string(), ms })
    }
    if let Some(rest) = after(line, "Migrated down:") {
        return done(rest);
    }
    if let Some(rest) = after(line, "Migrated:") {
        return done(rest);
    }
    if let Some(rest) = after(line, "Migrating down:").or_else(|| after(line, "Migrating:")) {
        let name = rest.trim_end_matches(['"', '}', ',']).trim();
        return (!name.is_empty()).then(|| Event::Start(name.to_string()));
    }
    if let Some(rest) = after(line, "Error running migration ").or_else(|| after(line, "Error migrating down ")) {
        return Some(Event::Error(first_word(rest)));
    }
    // Uncaught, so Node prints it on stderr after echoing the source line
    // (which holds `${migration.name}`, not the name).
    if let Some(rest) = after(line, "Error: Migration ")
        && rest.contains(" not found locally")
    {
        return Some(Event::Error(first_word(rest)));
    }
    if line.contains("you've run Payload in dev mode") {
        return Some(Event::DevPrompt);
    }
    None
}

/// The CLI's progress, fed line by line as output arrives.
#[derive(Debug, Default)]
pub(in crate::migrations) struct Progress {
    pub(in crate::migrations) migrated: Vec<Migrated>,
    /// The migration started and not reported done.
    pub(in crate::migrations) running: Option<(String, Instant)>,
    /// The migration an error line named, and when that line arrived.
    pub(in crate::migrations) failed: Option<String>,
    pub(in crate::migrations) failed_at: Option<Instant>,
    pub(in crate::migrations) prompt: bool,
    /// The last part of the output (bounded).
    pub(in crate::migrations) tail: String,
}

impl Progress {
    /// When the migration that did not finish ran: from its `Migrating:`
    /// line to its error line, or to `end` (the CLI's exit or kill) when
    /// none came. Payload logs no time for it, but its lines are stamped.
    pub(in crate::migrations) fn unfinished(&self, end: Instant) -> Option<(Instant, Instant)> {
        let (name, from) = self.running.as_ref()?;
        let to = match (&self.failed, self.failed_at) {
            (Some(failed), Some(at)) if failed == name => at,
            _ => end,
        };
        Some((*from, to.max(*from)))
    }

    pub(in crate::migrations) fn line(&mut self, line: &str, at: Instant) {
        self.tail.push_str(line);
        if !line.ends_with('\n') {
            self.tail.push('\n');
        }
        if self.tail.len() > 8 * TAIL_BYTES {
            self.tail = pg::tools::tail(&self.tail, 2 * TAIL_BYTES);
            self.tail.push('\n');
        }
        match event(line) {
            Some(Event::Start(name)) => self.running = Some((name, at)),
            Some(Event::Done { name, ms }) => {
                let started_at = match self.running.take() {
                    Some((n, t)) if n == name => Some(t),
                    other => {
                        self.running = other;
                        None
                    }
                };
                self.migrated.push(Migrated { name, duration_ms: ms, started_at, finished_at: at });
            }
            Some(Event::Error(word)) => {
                // Prefer the running migration's full name (names may hold spaces).
                let name = match &self.running {
                    Some((n, _)) if line.contains(n.as_str()) => n.clone(),
                    _ => word,
                };
                if self.failed.is_none() {
                    self.failed = Some(name);
                    self.failed_at = Some(at);
                }
            }
            Some(Event::DevPrompt) => self.prompt = true,
            None => {}
        }
    }
}
