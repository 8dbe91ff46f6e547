//! A cursor over the tokens of one statement (or one `ALTER TABLE` action),
//! as `classify` walks them: peek, eat keywords and identifiers, skip
//! parenthesised groups, take the source text of a span. Kept apart from the
//! classification rules so that those read as rules.

use super::split::{Token, TokenKind};

/// An identifier's name: unquoted lower-cased, quoted as written with `""` undoubled.
pub(super) fn ident_of(t: &Token) -> Option<String> {
    match t.kind {
        TokenKind::Word => Some(t.text.to_ascii_lowercase()),
        TokenKind::QuotedIdent => {
            let quoted = t.text.strip_prefix("U&").or_else(|| t.text.strip_prefix("u&")).unwrap_or(t.text);
            let inner = quoted.strip_prefix('"')?;
            Some(inner.strip_suffix('"').unwrap_or(inner).replace("\"\"", "\""))
        }
        _ => None,
    }
}

/// A position in the tokens of one statement (or one `ALTER TABLE` action).
pub(super) struct Cursor<'s, 't> {
    pub(super) sql: &'s str,
    pub(super) toks: &'t [Token<'s>],
    pub(super) pos: usize,
}

impl<'s, 't> Cursor<'s, 't> {
    pub(super) fn peek(&self) -> Option<&Token<'s>> {
        self.toks.get(self.pos)
    }

    pub(super) fn done(&self) -> bool {
        self.pos >= self.toks.len()
    }

    pub(super) fn at_kw(&self, kw: &str) -> bool {
        self.peek().is_some_and(|t| t.is_kw(kw))
    }

    pub(super) fn at_any(&self, kws: &[&str]) -> bool {
        kws.iter().any(|k| self.at_kw(k))
    }

    /// Consumes the keyword `kw` if it is next.
    pub(super) fn kw(&mut self, kw: &str) -> bool {
        let here = self.at_kw(kw);
        self.pos += usize::from(here);
        here
    }

    /// Consumes the keywords `kws` if they are next, in order; consumes nothing otherwise.
    pub(super) fn kws(&mut self, kws: &[&str]) -> bool {
        let here = kws.iter().enumerate().all(|(i, k)| self.toks.get(self.pos + i).is_some_and(|t| t.is_kw(k)));
        if here {
            self.pos += kws.len();
        }
        here
    }

    pub(super) fn punct(&mut self, p: &str) -> bool {
        let here = self.peek().is_some_and(|t| t.is(p));
        self.pos += usize::from(here);
        here
    }

    pub(super) fn ident(&mut self) -> Option<String> {
        let name = ident_of(self.peek()?)?;
        self.pos += 1;
        Some(name)
    }

    /// A possibly qualified name, `a`, `"A"` or `s.a`.
    pub(super) fn name(&mut self) -> Option<String> {
        let mut name = self.ident()?;
        while self.peek().is_some_and(|t| t.is(".")) {
            let Some(part) = self.toks.get(self.pos + 1).and_then(ident_of) else { break };
            name = format!("{name}.{part}");
            self.pos += 2;
        }
        Some(name)
    }

    /// Consumes a parenthesised group if one is next; returns the tokens inside it.
    pub(super) fn parenthesised(&mut self) -> Option<&'t [Token<'s>]> {
        if !self.peek()?.is("(") {
            return None;
        }
        let start = self.pos;
        let mut depth = 0usize;
        while let Some(t) = self.peek() {
            depth = match t.text {
                "(" | "[" if t.kind == TokenKind::Punct => depth + 1,
                ")" | "]" if t.kind == TokenKind::Punct => depth.saturating_sub(1),
                _ => depth,
            };
            self.pos += 1;
            if depth == 0 {
                return Some(&self.toks[start + 1..self.pos - 1]);
            }
        }
        Some(&self.toks[start + 1..])
    }

    /// Advances over one token, or over a whole parenthesised or bracketed group.
    pub(super) fn step(&mut self) {
        let Some(t) = self.peek() else { return };
        if t.is("(") {
            self.parenthesised();
        } else if t.is("[") {
            let mut depth = 0usize;
            while let Some(t) = self.peek() {
                depth = if t.is("[") {
                    depth + 1
                } else if t.is("]") {
                    depth - 1
                } else {
                    depth
                };
                self.pos += 1;
                if depth == 0 {
                    break;
                }
            }
        } else {
            self.pos += 1;
        }
    }

    /// Advances group by group (see [`Cursor::step`]) to the first token outside any group for
    /// which `stop` holds, or to the end.
    pub(super) fn skip_until(&mut self, stop: impl Fn(&Self) -> bool) {
        while !self.done() && !stop(self) {
            self.step();
        }
    }

    /// True when the keywords `kws` follow one another somewhere ahead, outside parentheses.
    pub(super) fn rest_has(&self, kws: &[&str]) -> bool {
        let mut probe = Cursor { sql: self.sql, toks: self.toks, pos: self.pos };
        while !probe.done() {
            if probe.kws(kws) {
                return true;
            }
            probe.step();
        }
        false
    }

    /// The rest of the tokens, cut at commas outside parentheses and brackets.
    pub(super) fn rest_by_commas(&mut self) -> Vec<&'t [Token<'s>]> {
        let mut parts = Vec::new();
        let mut start = self.pos;
        while !self.done() {
            self.skip_until(|c| c.peek().is_some_and(|t| t.is(",")));
            parts.push(&self.toks[start..self.pos]);
            self.punct(",");
            start = self.pos;
        }
        parts
    }

    /// The statement's text from token `from` up to (not including) token `to`, comments within.
    pub(super) fn text(&self, from: usize, to: usize) -> Option<String> {
        (from < to && to <= self.toks.len())
            .then(|| self.sql[self.toks[from].start..self.toks[to - 1].end()].to_string())
    }
}
