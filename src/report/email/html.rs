//! HTML that mail clients show as written: one document with inline styles
//! only (clients drop `<style>` blocks and `<head>` CSS), tables for layout,
//! no scripts, no images, no external resources. The chart is a table of
//! `div`s whose pixel widths are the measured times — every client renders
//! a sized, coloured block, and nothing is fetched.
//!
//! Written by hand rather than with a template engine: a handful of
//! building blocks, and [`escape`] is applied to every text that enters the
//! page here, so a report's content (migration names, SQL, error messages)
//! cannot break or inject markup.

use std::fmt::Write;

use crate::format::secs;

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The colour a verdict, status or finding is shown in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Good,
    Warn,
    Bad,
    Plain,
}

impl Tone {
    fn color(self) -> &'static str {
        match self {
            Tone::Good => "#15803d",
            Tone::Warn => "#b45309",
            Tone::Bad => "#b91c1c",
            Tone::Plain => "#374151",
        }
    }
}

/// One table cell.
pub struct Cell {
    text: String,
    tone: Tone,
    mono: bool,
}

impl Cell {
    pub fn new(text: impl Into<String>) -> Cell {
        Cell { text: text.into(), tone: Tone::Plain, mono: false }
    }
    pub fn tone(text: impl Into<String>, tone: Tone) -> Cell {
        Cell { text: text.into(), tone, mono: false }
    }
    pub fn mono(text: impl Into<String>) -> Cell {
        Cell { text: text.into(), tone: Tone::Plain, mono: true }
    }
}

/// One row of the chart: a migration's duration, and the longest lock it
/// held on an existing table.
pub struct Bar {
    pub label: String,
    pub duration_ms: u64,
    pub lock: Option<LockBar>,
    pub failed: bool,
}

pub struct LockBar {
    pub held_ms: u64,
    /// e.g. `ACCESS EXCLUSIVE on orders`.
    pub label: String,
    /// ACCESS EXCLUSIVE: blocks reads too (drawn red, not orange).
    pub exclusive: bool,
}

/// Width of the longest bar.
const CHART_PX: u64 = 320;
const DURATION: &str = "#2563eb";
const LOCK: &str = "#ea580c";
const EXCLUSIVE: &str = "#dc2626";
const MONO: &str = "font-family:Menlo,Consolas,'DejaVu Sans Mono',monospace;font-size:12px";
const CELL: &str = "padding:4px 10px 4px 0;border-bottom:1px solid #e5e7eb;vertical-align:top;text-align:left";

/// A report page under construction.
pub struct Page {
    out: String,
}

impl Page {
    /// Starts the document with a title and a coloured badge (the verdict).
    pub fn new(title: &str, badge: &str, tone: Tone) -> Page {
        let mut out = String::new();
        let t = escape(title);
        let _ = write!(
            out,
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
             <title>{t}</title></head>\n<body style=\"margin:0;padding:16px;background:#ffffff;color:#1f2937;\
             font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;font-size:14px;line-height:1.45\">\n\
             <div style=\"max-width:820px\">\n<h1 style=\"font-size:18px;margin:0 0 12px\">{t} \
             <span style=\"display:inline-block;padding:1px 8px;border-radius:4px;color:#ffffff;background:{};\
             font-size:13px;vertical-align:middle\">{}</span></h1>\n",
            tone.color(),
            escape(badge)
        );
        Page { out }
    }

    /// A two-column list of facts (name, value).
    pub fn facts(&mut self, rows: &[(&str, String)]) {
        self.out.push_str("<table role=\"presentation\" style=\"border-collapse:collapse;margin:0 0 12px\">\n");
        for (k, v) in rows {
            let _ = writeln!(
                self.out,
                "<tr><td style=\"padding:2px 16px 2px 0;color:#6b7280;vertical-align:top;white-space:nowrap\">{}</td>\
                 <td style=\"padding:2px 0\">{}</td></tr>",
                escape(k),
                escape(v)
            );
        }
        self.out.push_str("</table>\n");
    }

    pub fn heading(&mut self, text: &str) {
        let _ = writeln!(self.out, "<h2 style=\"font-size:15px;margin:20px 0 8px\">{}</h2>", escape(text));
    }

    pub fn para(&mut self, text: &str, tone: Tone) {
        let _ = writeln!(self.out, "<p style=\"margin:6px 0;color:{}\">{}</p>", tone.color(), escape(text));
    }

    pub fn list(&mut self, items: &[String], tone: Tone) {
        if items.is_empty() {
            return;
        }
        let _ = writeln!(self.out, "<ul style=\"margin:4px 0 12px;padding-left:20px;color:{}\">", tone.color());
        for i in items {
            let _ = writeln!(self.out, "<li>{}</li>", escape(i));
        }
        self.out.push_str("</ul>\n");
    }

    pub fn table(&mut self, header: &[&str], rows: &[Vec<Cell>]) {
        self.out.push_str("<table style=\"border-collapse:collapse;margin:4px 0 12px;font-size:13px\">\n<tr>");
        for h in header {
            let _ = write!(
                self.out,
                "<th style=\"{CELL};border-bottom:2px solid #d1d5db;color:#6b7280\">{}</th>",
                escape(h)
            );
        }
        self.out.push_str("</tr>\n");
        for row in rows {
            self.out.push_str("<tr>");
            for c in row {
                let mono = if c.mono { MONO } else { "" };
                let _ =
                    write!(self.out, "<td style=\"{CELL};color:{};{mono}\">{}</td>", c.tone.color(), escape(&c.text));
            }
            self.out.push_str("</tr>\n");
        }
        self.out.push_str("</table>\n");
    }

    /// Preformatted text (a command, SQL, a diff).
    pub fn code(&mut self, text: &str) {
        let _ = writeln!(
            self.out,
            "<pre style=\"{MONO};background:#f3f4f6;padding:8px 10px;border-radius:4px;white-space:pre-wrap;\
             word-break:break-all;margin:4px 0 12px\">{}</pre>",
            escape(text)
        );
    }

    /// Horizontal bars on one time scale: each migration's duration (blue,
    /// red when it failed) and under it the longest lock it held (orange,
    /// red for ACCESS EXCLUSIVE).
    pub fn chart(&mut self, bars: &[Bar]) {
        if bars.is_empty() {
            return;
        }
        let max = bars.iter().flat_map(|b| [b.duration_ms, b.lock.as_ref().map_or(0, |l| l.held_ms)]).max();
        let max = max.unwrap_or(0).max(1);
        let px = |ms: u64| if ms == 0 { 0 } else { (ms * CHART_PX).div_ceil(max).max(2) };
        let swatch = |c: &str| {
            format!(
                "<span style=\"display:inline-block;width:10px;height:10px;background:{c};vertical-align:middle\"></span>"
            )
        };
        let has_locks = bars.iter().any(|b| b.lock.is_some());
        let _ = writeln!(
            self.out,
            "<table role=\"presentation\" cellpadding=\"0\" cellspacing=\"0\" style=\"border-collapse:collapse;margin:4px 0 12px\">\n\
             <tr><td colspan=\"3\" style=\"font-size:12px;color:#6b7280;padding:0 0 6px\">{} duration{}</td></tr>",
            swatch(DURATION),
            if has_locks {
                format!(
                    " &nbsp; {} longest lock held on an existing table ({} ACCESS EXCLUSIVE)",
                    swatch(LOCK),
                    swatch(EXCLUSIVE)
                )
            } else {
                String::new()
            }
        );
        for b in bars {
            let color = if b.failed { EXCLUSIVE } else { DURATION };
            let mut cell = block(px(b.duration_ms).max(1), 10, color);
            let mut legend = escape(&secs(b.duration_ms));
            if let Some(l) = &b.lock {
                let w = px(l.held_ms);
                if w > 0 {
                    cell.push_str(&block(w, 6, if l.exclusive { EXCLUSIVE } else { LOCK }));
                }
                let _ = write!(legend, "<br>lock {} held {}", escape(&l.label), escape(&secs(l.held_ms)));
            }
            let _ = writeln!(
                self.out,
                "<tr><td style=\"padding:4px 12px 4px 0;font-size:13px;vertical-align:top;white-space:nowrap\">{}</td>\
                 <td style=\"padding:5px 0;width:{CHART_PX}px;vertical-align:top\">{cell}</td>\
                 <td style=\"padding:4px 0 4px 12px;font-size:12px;color:#6b7280;vertical-align:top\">{legend}</td></tr>",
                escape(&b.label)
            );
        }
        self.out.push_str("</table>\n");
    }

    /// Ends the document with a small footer line.
    pub fn finish(mut self, footer: &str) -> String {
        let _ = write!(
            self.out,
            "<p style=\"margin:24px 0 0;color:#9ca3af;font-size:12px\">{}</p>\n</div></body></html>\n",
            escape(footer)
        );
        self.out
    }
}

/// A solid block `w`×`h` pixels. (`font-size:0;line-height:0` keeps clients
/// from growing an empty div to a line of text.)
fn block(w: u64, h: u64, color: &str) -> String {
    format!(
        "<div style=\"width:{w}px;height:{h}px;background:{color};font-size:0;line-height:0;margin:0 0 2px\">&nbsp;</div>"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(escape("<b>\"a\" & 'b'</b>"), "&lt;b&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/b&gt;");
    }

    #[test]
    fn chart_widths_follow_one_time_scale() {
        let mut p = Page::new("t", "PASS", Tone::Good);
        p.chart(&[
            Bar { label: "1 a".into(), duration_ms: 1000, lock: None, failed: false },
            Bar {
                label: "2 b".into(),
                duration_ms: 4000,
                lock: Some(LockBar { held_ms: 2000, label: "ACCESS EXCLUSIVE on t".into(), exclusive: true }),
                failed: false,
            },
        ]);
        let html = p.finish("f");
        assert!(html.contains(&format!("width:{CHART_PX}px;height:10px;background:{DURATION}")), "{html}");
        assert!(html.contains(&format!("width:80px;height:10px;background:{DURATION}")), "{html}");
        assert!(html.contains(&format!("width:160px;height:6px;background:{EXCLUSIVE}")), "{html}");
        assert!(!html.contains("<script") && !html.contains("src=") && !html.contains("<img"), "{html}");
    }
}
