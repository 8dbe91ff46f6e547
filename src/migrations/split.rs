//! Splits a SQL script into statements exactly where psql would, so a `-- no-transaction` migration can
//! run (and be measured) one statement at a time, and lint can look at each statement alone.
//!
//! Written by hand because no crate splits the way psql does: SQL parsers reject what their dialect
//! does not know, and generic splitters miss dollar quotes, nested comments or `BEGIN ATOMIC` bodies.
//! The lexer knows only what decides where a token ends (quotes, comments, dollar tags, operators);
//! [`split`] adds psql's two rules on top: a `;` inside parentheses does not end a statement, and
//! neither does one inside the `BEGIN ... END` of a `CREATE [OR REPLACE] {FUNCTION|PROCEDURE}`
//! (psqlscan.l's heuristic, `CASE ... END` included). `classify` reads the same tokens.
//!
//! Assumes `standard_conforming_strings = on` (the default since PostgreSQL 9.1): a backslash only
//! escapes inside `E'...'`. psql meta-commands (`\set`, `:var`) are not SQL and are not interpreted.

/// One statement of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The statement from its first token to its last, without the terminating `;`; comments
    /// before the first and after the last token are left out, comments between tokens are kept.
    pub sql: String,
    /// 1-based line of the statement's first token.
    pub line: usize,
    /// Byte range of `sql` in the script: `script[start..end] == sql`.
    pub start: usize,
    pub end: usize,
}

/// Splits a script into its statements, in order. Empty statements (`;;`) and fragments holding
/// only comments are skipped; a last statement without `;` is kept. A leading UTF-8 BOM is ignored.
/// An unterminated string, quoted identifier or comment runs to the end of the script, as in psql.
pub fn split(sql: &str) -> Vec<Statement> {
    let mut out = Vec::new();
    let mut lines = LineCounter::default();
    let mut first: Option<usize> = None;
    let mut last_end = 0;
    let mut parens = 0usize;
    let mut begins = 0usize;
    // psql's `identifiers`: the initials of the statement's first four words when they are
    // CREATE / OR / REPLACE / FUNCTION / PROCEDURE, which is all its BEGIN tracking looks at.
    let mut words = 0usize;
    let mut initials = [0u8; 4];
    for t in tokens(sql) {
        if t.is(";") && parens == 0 && begins == 0 {
            if let Some(start) = first.take() {
                out.push(Statement {
                    sql: sql[start..last_end].to_string(),
                    line: lines.at(sql, start),
                    start,
                    end: last_end,
                });
            }
            words = 0;
            initials = [0; 4];
            continue;
        }
        first.get_or_insert(t.start);
        last_end = t.end();
        match t.kind {
            TokenKind::Punct if t.text == "(" => parens += 1,
            TokenKind::Punct if t.text == ")" => parens = parens.saturating_sub(1),
            TokenKind::Word => {
                let lower = t.text.to_ascii_lowercase();
                if words < initials.len() && matches!(&*lower, "create" | "or" | "replace" | "function" | "procedure") {
                    initials[words] = lower.as_bytes()[0];
                }
                words += 1;
                let routine = initials[0] == b'c'
                    && (matches!(initials[1], b'f' | b'p')
                        || (initials[1] == b'o' && initials[2] == b'r' && matches!(initials[3], b'f' | b'p')));
                if routine && parens == 0 {
                    match &*lower {
                        "begin" => begins += 1,
                        // CASE ... END only matters inside a body, where its END must not close it.
                        "case" if begins > 0 => begins += 1,
                        "end" => begins = begins.saturating_sub(1),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(start) = first {
        out.push(Statement { sql: sql[start..last_end].to_string(), line: lines.at(sql, start), start, end: last_end });
    }
    out
}

/// sqlx's rule for a migration that must run outside a transaction, matched exactly as
/// sqlx-core 0.8 (`migrate/source.rs`) does: the file's text starts with `-- no-transaction`.
/// So a file starting with a BOM, a blank line or `--no-transaction` runs in a transaction.
pub fn no_transaction(sql: &str) -> bool {
    sql.starts_with("-- no-transaction")
}

/// 1-based line of a byte offset (offsets past the end count as the last line). Lines end at
/// `\n`, so CRLF files count like LF files.
pub fn line_of(sql: &str, byte_offset: usize) -> usize {
    let end = byte_offset.min(sql.len());
    sql.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

/// Counts lines forward from the last offset asked, so splitting stays linear in the script size.
#[derive(Default)]
struct LineCounter {
    offset: usize,
    line: usize,
}

impl LineCounter {
    fn at(&mut self, sql: &str, offset: usize) -> usize {
        self.line += line_of(&sql[self.offset..], offset - self.offset) - 1;
        self.offset = offset;
        self.line + 1
    }
}

/// What a token is, as far as statement splitting and classification care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// An unquoted identifier or keyword: `select`, `Orders`, `a$b`, `naïve`.
    Word,
    /// A double-quoted identifier, `"Orders"` or `U&"d\0061ta"`, quotes included in the text.
    QuotedIdent,
    /// A constant string in any form: `'…'`, `E'…'`, `U&'…'`, `N'…'`, `B'…'`, `X'…'`, `$tag$…$tag$`.
    String,
    Number,
    /// A positional parameter, `$1`.
    Param,
    /// A run of operator characters: `=`, `<>`, `->>`, `||`.
    Operator,
    /// `::` or one other character: `(`, `)`, `[`, `]`, `,`, `;`, `.`, `:`, a lone `$`.
    Punct,
}

/// One token: its kind, its text and its byte offset in the lexed string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token<'a> {
    pub kind: TokenKind,
    pub text: &'a str,
    pub start: usize,
}

impl Token<'_> {
    /// Byte offset just past the token.
    pub fn end(&self) -> usize {
        self.start + self.text.len()
    }

    /// True for the punctuation or operator `p`.
    pub fn is(&self, p: &str) -> bool {
        matches!(self.kind, TokenKind::Punct | TokenKind::Operator) && self.text == p
    }

    /// True for the unquoted keyword `kw` (`kw` in lower case); a quoted identifier never is one.
    pub fn is_kw(&self, kw: &str) -> bool {
        self.kind == TokenKind::Word && self.text.eq_ignore_ascii_case(kw)
    }
}

/// The tokens of `sql`, whitespace and comments left out. A leading UTF-8 BOM is skipped.
pub fn tokens(sql: &str) -> Tokens<'_> {
    Tokens { sql, pos: if sql.starts_with('\u{feff}') { 3 } else { 0 } }
}

/// Iterator returned by [`tokens`].
pub struct Tokens<'a> {
    sql: &'a str,
    pos: usize,
}

impl<'a> Iterator for Tokens<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        let b = self.sql.as_bytes();
        loop {
            let i = self.pos;
            let c = *b.get(i)?;
            let next = b.get(i + 1).copied();
            let (kind, end) = match c {
                b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => {
                    self.pos += 1;
                    continue;
                }
                b'-' if next == Some(b'-') => {
                    self.pos = b[i..].iter().position(|&c| c == b'\n' || c == b'\r').map_or(b.len(), |p| i + p);
                    continue;
                }
                b'/' if next == Some(b'*') => {
                    self.pos = comment_end(b, i);
                    continue;
                }
                b'\'' => (TokenKind::String, quoted_end(b, i + 1, b'\'', false)),
                b'"' => (TokenKind::QuotedIdent, quoted_end(b, i + 1, b'"', false)),
                b'e' | b'E' if next == Some(b'\'') => (TokenKind::String, quoted_end(b, i + 2, b'\'', true)),
                b'n' | b'N' | b'b' | b'B' | b'x' | b'X' if next == Some(b'\'') => {
                    (TokenKind::String, quoted_end(b, i + 2, b'\'', false))
                }
                b'u' | b'U' if next == Some(b'&') && matches!(b.get(i + 2), Some(b'\'' | b'"')) => {
                    let kind = if b[i + 2] == b'"' { TokenKind::QuotedIdent } else { TokenKind::String };
                    (kind, quoted_end(b, i + 3, b[i + 2], false))
                }
                b'$' => dollar(self.sql, i),
                c if is_ident_start(c) => (TokenKind::Word, scan(b, i + 1, is_ident_cont)),
                b'0'..=b'9' => (TokenKind::Number, number_end(b, i)),
                b'.' if next.is_some_and(|n| n.is_ascii_digit()) => (TokenKind::Number, number_end(b, i)),
                b':' if next == Some(b':') => (TokenKind::Punct, i + 2),
                c if is_op_char(c) => (TokenKind::Operator, operator_end(b, i)),
                _ => (TokenKind::Punct, i + 1),
            };
            self.pos = end;
            return Some(Token { kind, text: &self.sql[i..end], start: i });
        }
    }
}

// Bytes of multi-byte UTF-8 characters are identifier characters, as in PostgreSQL's lexer; every
// delimiter is ASCII, so tokens always begin and end on character boundaries.
fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_cont(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

fn is_op_char(c: u8) -> bool {
    b"+-*/<>=~!@#%^&|`?".contains(&c)
}

fn scan(b: &[u8], from: usize, f: impl Fn(u8) -> bool) -> usize {
    b[from..].iter().position(|&c| !f(c)).map_or(b.len(), |p| from + p)
}

/// End of a `/* */` comment starting at `i`; comments nest.
fn comment_end(b: &[u8], i: usize) -> usize {
    let (mut depth, mut j) = (0usize, i);
    while j + 1 < b.len() {
        match (b[j], b[j + 1]) {
            (b'/', b'*') => {
                depth += 1;
                j += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                j += 2;
                if depth == 0 {
                    return j;
                }
            }
            _ => j += 1,
        }
    }
    b.len()
}

/// End of a quoted string or identifier whose body starts at `from`: a doubled quote is part of
/// the body, and with `backslash` (E strings) so is any character after a backslash.
fn quoted_end(b: &[u8], from: usize, quote: u8, backslash: bool) -> usize {
    let mut j = from;
    while j < b.len() {
        if backslash && b[j] == b'\\' {
            j += 2;
        } else if b[j] == quote {
            if b.get(j + 1) != Some(&quote) {
                return j + 1;
            }
            j += 2;
        } else {
            j += 1;
        }
    }
    b.len()
}

/// A `$` at `i`: a parameter (`$1`), a dollar-quoted string (`$$…$$`, `$tag$…$tag$`; a tag is
/// identifier characters without `$`, not starting with a digit), or a lone `$`.
fn dollar(sql: &str, i: usize) -> (TokenKind, usize) {
    let b = sql.as_bytes();
    match b.get(i + 1) {
        Some(c) if c.is_ascii_digit() => (TokenKind::Param, scan(b, i + 1, |c| c.is_ascii_digit())),
        Some(&c) if c == b'$' || is_ident_start(c) => {
            let tag_end = scan(b, i + 1, |c| is_ident_start(c) || c.is_ascii_digit());
            if b.get(tag_end) != Some(&b'$') {
                return (TokenKind::Punct, i + 1);
            }
            let delimiter = &sql[i..=tag_end];
            let body = tag_end + 1;
            let end = sql[body..].find(delimiter).map_or(sql.len(), |p| body + p + delimiter.len());
            (TokenKind::String, end)
        }
        _ => (TokenKind::Punct, i + 1),
    }
}

fn number_end(b: &[u8], i: usize) -> usize {
    let digits = |c: u8| c.is_ascii_digit() || c == b'_';
    let mut j = scan(b, i, digits);
    if b.get(j) == Some(&b'.') && b.get(j + 1) != Some(&b'.') {
        j = scan(b, j + 1, digits);
    }
    if matches!(b.get(j), Some(b'e' | b'E')) {
        let k = if matches!(b.get(j + 1), Some(b'+' | b'-')) { j + 2 } else { j + 1 };
        if b.get(k).is_some_and(u8::is_ascii_digit) {
            j = scan(b, k, digits);
        }
    }
    // Hex/octal/binary literals (0x1F) and trailing junk stay one token, as PostgreSQL lexes them.
    scan(b, j, |c| c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80)
}

/// A run of operator characters, stopped before a `--` or `/*` that starts a comment.
fn operator_end(b: &[u8], i: usize) -> usize {
    let mut j = i + 1;
    while j < b.len() && is_op_char(b[j]) {
        let starts_comment = matches!((b[j], b.get(j + 1)), (b'-', Some(b'-')) | (b'/', Some(b'*')));
        if starts_comment {
            break;
        }
        j += 1;
    }
    j
}

#[cfg(test)]
#[path = "split_tests.rs"]
mod tests;
