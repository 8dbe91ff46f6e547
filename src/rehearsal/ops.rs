//! What one statement does, as far as production safety goes: builds an index, adds a column with a
//! volatile default, changes a column's type, adds a constraint with or without `NOT VALID`, sets a
//! lock timeout... Lint weighs these with the shadow's real table sizes; the rehearsal's measured
//! locks and rewrites say what actually happened.
//!
//! Static and best effort: reads the tokens of `migrations::split`'s lexer, never a database, and
//! recognises only the forms listed on [`Op`]. A call to a function it does not know (a user
//! function, volatile by default in PostgreSQL) is not flagged as a volatile default; the
//! rehearsal's relfilenode check still sees the rewrite.

use serde::Serialize;

use crate::migrations::split::{self, Token, TokenKind};

/// One operation of a statement. Names are normalised as PostgreSQL does: unquoted identifiers
/// lower-cased, quoted ones as written, schema-qualified names kept as `schema.name`. Expression
/// and type texts (`default`, `new_type`, `value`) are as written in the statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    CreateIndex {
        table: String,
        index: Option<String>,
        concurrently: bool,
        unique: bool,
    },
    /// `volatile_default` also covers serial types, identity columns and stored generated columns:
    /// each fills every existing row, rewriting the table. Inline `CHECK`, `UNIQUE` and `PRIMARY
    /// KEY` constraints on the new column follow as [`Op::AddConstraint`]; inline `REFERENCES`
    /// is `references` (the referenced table).
    AddColumn {
        table: String,
        column: String,
        default: Option<String>,
        volatile_default: bool,
        not_null: bool,
        references: Option<String>,
    },
    AlterColumnType {
        table: String,
        column: String,
        new_type: String,
    },
    /// `ALTER COLUMN c SET NOT NULL`, or PostgreSQL 18's `ADD [CONSTRAINT n] NOT NULL c` without
    /// `NOT VALID`: both scan the table under an ACCESS EXCLUSIVE lock.
    SetNotNull {
        table: String,
        column: String,
    },
    /// `check_not_null_of` is the column of a `CHECK (col IS NOT NULL)`, the constraint that lets
    /// a later `SET NOT NULL` skip its scan once validated.
    AddConstraint {
        table: String,
        name: Option<String>,
        kind: ConstraintKind,
        not_valid: bool,
        using_index: bool,
        check_not_null_of: Option<String>,
    },
    ValidateConstraint {
        table: String,
        name: String,
    },
    DropColumn {
        table: String,
        column: String,
    },
    DropTable {
        tables: Vec<String>,
    },
    RenameTable {
        table: String,
        to: String,
    },
    RenameColumn {
        table: String,
        from: String,
        to: String,
    },
    /// `SET [SESSION|LOCAL] lock_timeout`; `value` as written, a quoted literal unquoted (`5s`).
    SetLockTimeout {
        value: String,
    },
    SetStatementTimeout {
        value: String,
    },
    /// The statement does none of the above.
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConstraintKind {
    ForeignKey,
    Check,
    Unique,
    PrimaryKey,
    Exclude,
}

/// The operations of a statement, in the order written; `[Op::Other]` when none is recognised.
/// Meant for one statement of [`split::split`]; a script of several is classified statement by
/// statement.
pub fn classify(sql: &str) -> Vec<Op> {
    let mut ops = Vec::new();
    for statement in split::split(sql) {
        let tokens: Vec<Token> = split::tokens(&statement.sql).collect();
        classify_one(&mut Cursor { sql: &statement.sql, toks: &tokens, pos: 0 }, &mut ops);
    }
    if ops.is_empty() {
        ops.push(Op::Other);
    }
    ops
}

/// Functions whose result changes per row: as a column default they force a table rewrite.
const VOLATILE: &[&str] = &[
    "random",
    "random_normal",
    "setseed",
    "gen_random_uuid",
    "gen_random_bytes",
    "uuidv4",
    "uuidv7",
    "uuid_generate_v1",
    "uuid_generate_v1mc",
    "uuid_generate_v4",
    "clock_timestamp",
    "timeofday",
    "nextval",
    "currval",
    "lastval",
    "setval",
    "txid_current",
    "txid_current_if_assigned",
    "pg_current_xact_id",
    "pg_current_xact_id_if_assigned",
];

const SERIAL_TYPES: &[&str] = &["serial", "bigserial", "smallserial", "serial2", "serial4", "serial8"];

/// Words that end a column's type or default expression in `ADD COLUMN`: the start of the next
/// column constraint or option.
const COLUMN_CLAUSES: &[&str] = &[
    "constraint",
    "default",
    "not",
    "null",
    "check",
    "unique",
    "primary",
    "references",
    "generated",
    "collate",
    "compression",
    "storage",
    "deferrable",
    "initially",
];

fn classify_one(c: &mut Cursor, ops: &mut Vec<Op>) {
    if c.kws(&["alter", "table"]) {
        c.kws(&["if", "exists"]);
        c.kw("only");
        let Some(table) = c.name() else { return };
        c.punct("*");
        for action in c.rest_by_commas() {
            alter_action(&mut Cursor { sql: c.sql, toks: action, pos: 0 }, &table, ops);
        }
    } else if c.kw("create") {
        let unique = c.kw("unique");
        if c.kw("index") {
            create_index(c, unique, ops);
        }
    } else if c.kws(&["drop", "table"]) {
        c.kws(&["if", "exists"]);
        let tables: Vec<String> =
            c.rest_by_commas().iter().filter_map(|t| Cursor { sql: c.sql, toks: t, pos: 0 }.name()).collect();
        if !tables.is_empty() {
            ops.push(Op::DropTable { tables });
        }
    } else if c.kw("set") {
        set(c, ops);
    }
}

fn create_index(c: &mut Cursor, unique: bool, ops: &mut Vec<Op>) {
    let concurrently = c.kw("concurrently");
    c.kws(&["if", "not", "exists"]);
    let index = if c.at_kw("on") { None } else { c.name() };
    if !c.kw("on") {
        return;
    }
    c.kw("only");
    if let Some(table) = c.name() {
        ops.push(Op::CreateIndex { table, index, concurrently, unique });
    }
}

fn set(c: &mut Cursor, ops: &mut Vec<Op>) {
    let _ = c.kw("session") || c.kw("local");
    let Some(name) = c.ident() else { return };
    // `lock_timeout='5s'` and `lock_timeout=-1` lex `=` into a longer operator.
    let value_start = match c.peek() {
        Some(t) if t.is_kw("to") => c.toks.get(c.pos + 1).map(|t| t.start),
        Some(t) if t.kind == TokenKind::Operator && t.text.starts_with('=') => Some(t.start + 1),
        _ => None,
    };
    let (Some(start), Some(last)) = (value_start, c.toks.last()) else { return };
    let raw = c.sql[start.min(last.end())..last.end()].trim();
    let value = match &c.toks[c.pos..] {
        [_, t] if t.kind == TokenKind::String && t.text.starts_with('\'') => {
            t.text[1..t.text.len() - 1].replace("''", "'")
        }
        _ => raw.to_string(),
    };
    match &*name {
        "lock_timeout" => ops.push(Op::SetLockTimeout { value }),
        "statement_timeout" => ops.push(Op::SetStatementTimeout { value }),
        _ => {}
    }
}

/// One comma-separated action of `ALTER TABLE`.
fn alter_action(c: &mut Cursor, table: &str, ops: &mut Vec<Op>) {
    let table = table.to_string();
    if c.kw("add") {
        let constraint = c.at_any(&["constraint", "check", "unique", "primary", "foreign", "not"])
            || (c.at_kw("exclude") && c.toks.get(c.pos + 1).is_some_and(|t| t.is("(") || t.is_kw("using")));
        if constraint {
            table_constraint(c, table, ops);
        } else {
            c.kw("column");
            c.kws(&["if", "not", "exists"]);
            add_column(c, table, ops);
        }
    } else if c.kw("alter") {
        if c.at_kw("constraint") {
            return;
        }
        c.kw("column");
        let Some(column) = c.ident() else { return };
        if c.kws(&["set", "data", "type"]) || c.kw("type") {
            let start = c.pos;
            c.skip_until(|c| c.at_any(&["collate", "using"]));
            if let Some(new_type) = c.text(start, c.pos) {
                ops.push(Op::AlterColumnType { table, column, new_type });
            }
        } else if c.kws(&["set", "not", "null"]) {
            ops.push(Op::SetNotNull { table, column });
        }
    } else if c.kw("drop") {
        if c.at_kw("constraint") {
            return;
        }
        c.kw("column");
        c.kws(&["if", "exists"]);
        if let Some(column) = c.ident() {
            ops.push(Op::DropColumn { table, column });
        }
    } else if c.kw("rename") {
        if c.kw("to") {
            if let Some(to) = c.name() {
                ops.push(Op::RenameTable { table, to });
            }
        } else if !c.at_kw("constraint") {
            c.kw("column");
            if let (Some(from), true, Some(to)) = (c.ident(), c.kw("to"), c.ident()) {
                ops.push(Op::RenameColumn { table, from, to });
            }
        }
    } else if c.kws(&["validate", "constraint"])
        && let Some(name) = c.ident()
    {
        ops.push(Op::ValidateConstraint { table, name });
    }
}

/// `ADD [CONSTRAINT name] CHECK | UNIQUE | PRIMARY KEY | FOREIGN KEY | EXCLUDE | NOT NULL ...`.
fn table_constraint(c: &mut Cursor, table: String, ops: &mut Vec<Op>) {
    let name = if c.kw("constraint") { c.ident() } else { None };
    let not_valid = c.rest_has(&["not", "valid"]);
    if c.kws(&["not", "null"]) {
        if let Some(column) = c.ident()
            && !not_valid
        {
            ops.push(Op::SetNotNull { table, column });
        }
        return;
    }
    if let Some(op) = constraint(c, table, name, not_valid) {
        ops.push(op);
    }
}

/// The constraint at the cursor (after its optional `CONSTRAINT name`), table or column form.
fn constraint(c: &mut Cursor, table: String, name: Option<String>, not_valid: bool) -> Option<Op> {
    let mut check_not_null_of = None;
    let kind = if c.kw("check") {
        check_not_null_of = c.parenthesised().and_then(is_not_null_of);
        ConstraintKind::Check
    } else if c.kw("unique") {
        ConstraintKind::Unique
    } else if c.kws(&["primary", "key"]) {
        ConstraintKind::PrimaryKey
    } else if c.kws(&["foreign", "key"]) || c.at_kw("references") {
        ConstraintKind::ForeignKey
    } else if c.kw("exclude") {
        ConstraintKind::Exclude
    } else {
        return None;
    };
    c.kws(&["nulls", "not", "distinct"]);
    c.kws(&["nulls", "distinct"]);
    let using_index = c.kws(&["using", "index"]) && !c.at_kw("tablespace");
    Some(Op::AddConstraint { table, name, kind, not_valid, using_index, check_not_null_of })
}

/// `CHECK` contents of the form `col IS NOT NULL`, in any number of parentheses: the column.
fn is_not_null_of(mut toks: &[Token]) -> Option<String> {
    while let [open, inner @ .., close] = toks
        && open.is("(")
        && close.is(")")
    {
        toks = inner;
    }
    match toks {
        [col, is, not, null] if is.is_kw("is") && not.is_kw("not") && null.is_kw("null") => ident_of(col),
        _ => None,
    }
}

/// `ADD [COLUMN] name type [constraints...]`, the cursor on the name.
fn add_column(c: &mut Cursor, table: String, ops: &mut Vec<Op>) {
    let Some(column) = c.ident() else { return };
    let type_start = c.pos;
    c.skip_until(|c| c.at_any(COLUMN_CLAUSES));
    let mut volatile_default = matches!(&c.toks[type_start..c.pos], [t] if SERIAL_TYPES.iter().any(|s| t.is_kw(s)));
    let (mut default, mut not_null, mut references) = (None, false, None);
    let mut constraints = Vec::new();
    let mut constraint_name = None;
    while !c.done() {
        if c.kw("constraint") {
            constraint_name = c.ident();
            continue;
        }
        if c.kw("default") {
            let start = c.pos;
            c.step();
            c.skip_until(|c| {
                let operand_before = c.toks[c.pos - 1].kind != TokenKind::Operator && !c.toks[c.pos - 1].is("(");
                c.at_any(COLUMN_CLAUSES) && (!c.at_kw("null") || operand_before)
            });
            volatile_default |= calls_volatile(&c.toks[start..c.pos]);
            default = c.text(start, c.pos);
        } else if c.kws(&["not", "null"]) {
            not_null = true;
        } else if c.kw("references") {
            references = c.name();
            c.parenthesised();
            skip_references_tail(c);
        } else if c.kw("generated") {
            let _ = c.kw("always") || c.kws(&["by", "default"]);
            c.kw("as");
            if c.kw("identity") {
                volatile_default = true;
                c.parenthesised();
            } else {
                c.parenthesised();
                volatile_default |= c.kw("stored");
            }
        } else if c.at_any(&["check", "unique", "primary"]) {
            let not_valid = c.rest_has(&["not", "valid"]);
            if let Some(op) = constraint(c, table.clone(), constraint_name.take(), not_valid) {
                constraints.push(op);
            }
            c.parenthesised();
        } else {
            c.step();
            c.skip_until(|c| c.at_any(COLUMN_CLAUSES));
        }
        constraint_name = None;
    }
    ops.push(Op::AddColumn { table, column, default, volatile_default, not_null, references });
    ops.extend(constraints);
}

/// `[MATCH ...] [ON DELETE|UPDATE action]...` after `REFERENCES table [(cols)]`, where an action's
/// `SET NULL` / `SET DEFAULT` must not read as column clauses.
fn skip_references_tail(c: &mut Cursor) {
    loop {
        if c.kw("match") {
            c.pos += 1;
        } else if c.kw("on") {
            c.pos += 1;
            if c.kw("set") || c.kw("no") {
                c.pos += 1;
                c.parenthesised();
            } else {
                c.pos += 1;
            }
        } else {
            return;
        }
    }
}

fn calls_volatile(toks: &[Token]) -> bool {
    toks.windows(2).any(|w| w[1].is("(") && ident_of(&w[0]).is_some_and(|name| VOLATILE.contains(&name.as_str())))
}

/// An identifier's name: unquoted lower-cased, quoted as written with `""` undoubled.
fn ident_of(t: &Token) -> Option<String> {
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
struct Cursor<'s, 't> {
    sql: &'s str,
    toks: &'t [Token<'s>],
    pos: usize,
}

impl<'s, 't> Cursor<'s, 't> {
    fn peek(&self) -> Option<&Token<'s>> {
        self.toks.get(self.pos)
    }

    fn done(&self) -> bool {
        self.pos >= self.toks.len()
    }

    fn at_kw(&self, kw: &str) -> bool {
        self.peek().is_some_and(|t| t.is_kw(kw))
    }

    fn at_any(&self, kws: &[&str]) -> bool {
        kws.iter().any(|k| self.at_kw(k))
    }

    /// Consumes the keyword `kw` if it is next.
    fn kw(&mut self, kw: &str) -> bool {
        let here = self.at_kw(kw);
        self.pos += usize::from(here);
        here
    }

    /// Consumes the keywords `kws` if they are next, in order; consumes nothing otherwise.
    fn kws(&mut self, kws: &[&str]) -> bool {
        let here = kws.iter().enumerate().all(|(i, k)| self.toks.get(self.pos + i).is_some_and(|t| t.is_kw(k)));
        if here {
            self.pos += kws.len();
        }
        here
    }

    fn punct(&mut self, p: &str) -> bool {
        let here = self.peek().is_some_and(|t| t.is(p));
        self.pos += usize::from(here);
        here
    }

    fn ident(&mut self) -> Option<String> {
        let name = ident_of(self.peek()?)?;
        self.pos += 1;
        Some(name)
    }

    /// A possibly qualified name, `a`, `"A"` or `s.a`.
    fn name(&mut self) -> Option<String> {
        let mut name = self.ident()?;
        while self.peek().is_some_and(|t| t.is(".")) {
            let Some(part) = self.toks.get(self.pos + 1).and_then(ident_of) else { break };
            name = format!("{name}.{part}");
            self.pos += 2;
        }
        Some(name)
    }

    /// Consumes a parenthesised group if one is next; returns the tokens inside it.
    fn parenthesised(&mut self) -> Option<&'t [Token<'s>]> {
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
    fn step(&mut self) {
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
    fn skip_until(&mut self, stop: impl Fn(&Self) -> bool) {
        while !self.done() && !stop(self) {
            self.step();
        }
    }

    /// True when the keywords `kws` follow one another somewhere ahead, outside parentheses.
    fn rest_has(&self, kws: &[&str]) -> bool {
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
    fn rest_by_commas(&mut self) -> Vec<&'t [Token<'s>]> {
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
    fn text(&self, from: usize, to: usize) -> Option<String> {
        (from < to && to <= self.toks.len())
            .then(|| self.sql[self.toks[from].start..self.toks[to - 1].end()].to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(sql: &str) -> Op {
        let ops = classify(sql);
        assert_eq!(ops.len(), 1, "{sql}: {ops:?}");
        ops.into_iter().next().unwrap()
    }

    fn s(x: &str) -> String {
        x.to_string()
    }

    fn add_column(table: &str, column: &str) -> Op {
        Op::AddColumn {
            table: s(table),
            column: s(column),
            default: None,
            volatile_default: false,
            not_null: false,
            references: None,
        }
    }

    fn with_default(op: Op, expr: &str, volatile: bool) -> Op {
        match op {
            Op::AddColumn { table, column, not_null, references, .. } => Op::AddColumn {
                table,
                column,
                default: Some(s(expr)),
                volatile_default: volatile,
                not_null,
                references,
            },
            other => other,
        }
    }

    fn constraint(table: &str, name: Option<&str>, kind: ConstraintKind) -> Op {
        Op::AddConstraint {
            table: s(table),
            name: name.map(s),
            kind,
            not_valid: false,
            using_index: false,
            check_not_null_of: None,
        }
    }

    #[test]
    fn create_index_forms() {
        assert_eq!(
            one("CREATE INDEX orders_created_idx ON orders (created_at)"),
            Op::CreateIndex {
                table: s("orders"),
                index: Some(s("orders_created_idx")),
                concurrently: false,
                unique: false,
            }
        );
        assert_eq!(
            one(
                "create unique index concurrently if not exists \"Idx\" on only public.\"Orders\" using btree (lower(email));"
            ),
            Op::CreateIndex { table: s("public.Orders"), index: Some(s("Idx")), concurrently: true, unique: true }
        );
        assert_eq!(
            one("CREATE INDEX CONCURRENTLY ON t USING gin (doc)"),
            Op::CreateIndex { table: s("t"), index: None, concurrently: true, unique: false }
        );
    }

    #[test]
    fn add_column_plain_and_constant_defaults() {
        assert_eq!(one("ALTER TABLE orders ADD COLUMN note text"), add_column("orders", "note"));
        assert_eq!(one("ALTER TABLE orders ADD note varchar(20)"), add_column("orders", "note"));
        assert_eq!(
            one("ALTER TABLE IF EXISTS ONLY orders ADD COLUMN IF NOT EXISTS status text DEFAULT 'new'::text NOT NULL"),
            Op::AddColumn {
                table: s("orders"),
                column: s("status"),
                default: Some(s("'new'::text")),
                volatile_default: false,
                not_null: true,
                references: None,
            }
        );
        assert_eq!(
            one("ALTER TABLE t ADD COLUMN n int DEFAULT NULL"),
            with_default(add_column("t", "n"), "NULL", false)
        );
        assert_eq!(
            one("ALTER TABLE t ADD COLUMN n numeric(10, 2) DEFAULT 1 + NULL NULL"),
            with_default(add_column("t", "n"), "1 + NULL", false)
        );
        assert_eq!(
            one("ALTER TABLE t ADD COLUMN tags text[] DEFAULT ARRAY['a', 'b']"),
            with_default(add_column("t", "tags"), "ARRAY['a', 'b']", false)
        );
    }

    #[test]
    fn stable_defaults_are_not_volatile() {
        for expr in ["now()", "CURRENT_TIMESTAMP", "statement_timestamp()", "transaction_timestamp()", "'{}'::jsonb"] {
            let op = one(&format!("ALTER TABLE t ADD COLUMN at timestamptz DEFAULT {expr}"));
            assert_eq!(op, with_default(add_column("t", "at"), expr, false), "{expr}");
        }
    }

    #[test]
    fn volatile_defaults() {
        for expr in [
            "gen_random_uuid()",
            "public.uuid_generate_v4()",
            "uuid_generate_v1mc()",
            "random()",
            "(random() * 100)::int",
            "clock_timestamp()",
            "timeofday()::timestamptz",
            "nextval('s'::regclass)",
            "txid_current()",
            "pg_current_xact_id()",
            "\"random\"()",
        ] {
            let op = one(&format!("ALTER TABLE t ADD COLUMN v text DEFAULT {expr} NOT NULL"));
            let Op::AddColumn { default, volatile_default, not_null, .. } = op else { panic!("{expr}: {op:?}") };
            assert_eq!(default.as_deref(), Some(expr));
            assert!(volatile_default, "{expr}");
            assert!(not_null, "{expr}");
        }
    }

    #[test]
    fn serial_identity_and_stored_generated_columns_rewrite() {
        for sql in [
            "ALTER TABLE t ADD COLUMN id bigserial",
            "ALTER TABLE t ADD COLUMN id SERIAL",
            "ALTER TABLE t ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY",
            "ALTER TABLE t ADD COLUMN id bigint GENERATED BY DEFAULT AS IDENTITY (START WITH 10)",
            "ALTER TABLE t ADD COLUMN total numeric GENERATED ALWAYS AS (price * qty) STORED",
        ] {
            let Op::AddColumn { volatile_default, default, .. } = one(sql) else { panic!("{sql}") };
            assert!(volatile_default, "{sql}");
            assert_eq!(default, None, "{sql}");
        }
        // PostgreSQL 18's virtual generated columns are computed on read.
        let Op::AddColumn { volatile_default, .. } =
            one("ALTER TABLE t ADD COLUMN total numeric GENERATED ALWAYS AS (price * qty) VIRTUAL")
        else {
            panic!()
        };
        assert!(!volatile_default);
    }

    #[test]
    fn add_column_inline_references_and_constraints() {
        assert_eq!(
            one("ALTER TABLE orders ADD COLUMN customer_id bigint REFERENCES public.customers (id) ON DELETE SET NULL"),
            Op::AddColumn {
                table: s("orders"),
                column: s("customer_id"),
                default: None,
                volatile_default: false,
                not_null: false,
                references: Some(s("public.customers")),
            }
        );
        let ops = classify(
            "ALTER TABLE t ADD COLUMN code text NOT NULL DEFAULT 'x' CONSTRAINT code_uniq UNIQUE CHECK (code <> '')",
        );
        assert_eq!(
            ops,
            [
                Op::AddColumn {
                    table: s("t"),
                    column: s("code"),
                    default: Some(s("'x'")),
                    volatile_default: false,
                    not_null: true,
                    references: None,
                },
                constraint("t", Some("code_uniq"), ConstraintKind::Unique),
                constraint("t", None, ConstraintKind::Check),
            ]
        );
        assert_eq!(
            classify("ALTER TABLE t ADD COLUMN id bigserial PRIMARY KEY")[1],
            constraint("t", None, ConstraintKind::PrimaryKey)
        );
    }

    #[test]
    fn default_expressions_end_at_the_next_clause_only_outside_groups() {
        assert_eq!(
            one("ALTER TABLE t ADD COLUMN f int DEFAULT (CASE WHEN random() IS NOT NULL THEN 1 END) NOT NULL"),
            Op::AddColumn {
                table: s("t"),
                column: s("f"),
                default: Some(s("(CASE WHEN random() IS NOT NULL THEN 1 END)")),
                volatile_default: true,
                not_null: true,
                references: None,
            }
        );
        assert_eq!(
            one("ALTER TABLE ONLY t * ADD c int REFERENCES p ON DELETE SET DEFAULT ON UPDATE NO ACTION NOT NULL"),
            Op::AddColumn {
                table: s("t"),
                column: s("c"),
                default: None,
                volatile_default: false,
                not_null: true,
                references: Some(s("p")),
            }
        );
    }

    #[test]
    fn alter_column_type() {
        assert_eq!(
            one("ALTER TABLE t ALTER COLUMN id TYPE bigint"),
            Op::AlterColumnType { table: s("t"), column: s("id"), new_type: s("bigint") }
        );
        assert_eq!(
            one("ALTER TABLE t ALTER amount SET DATA TYPE numeric(12, 2) USING amount::numeric(12, 2)"),
            Op::AlterColumnType { table: s("t"), column: s("amount"), new_type: s("numeric(12, 2)") }
        );
        assert_eq!(
            one("ALTER TABLE t ALTER COLUMN name TYPE varchar(50) COLLATE \"C\""),
            Op::AlterColumnType { table: s("t"), column: s("name"), new_type: s("varchar(50)") }
        );
        // A column may be called `type`.
        assert_eq!(
            one("ALTER TABLE t ALTER COLUMN type TYPE text"),
            Op::AlterColumnType { table: s("t"), column: s("type"), new_type: s("text") }
        );
    }

    #[test]
    fn set_not_null_and_postgres_18_not_null_constraints() {
        assert_eq!(
            one("ALTER TABLE \"Orders\" ALTER COLUMN \"Email\" SET NOT NULL"),
            Op::SetNotNull { table: s("Orders"), column: s("Email") }
        );
        assert_eq!(one("ALTER TABLE t ADD CONSTRAINT nn NOT NULL c"), Op::SetNotNull { table: s("t"), column: s("c") });
        assert_eq!(one("ALTER TABLE t ADD CONSTRAINT nn NOT NULL c NOT VALID"), Op::Other);
    }

    #[test]
    fn foreign_keys_with_and_without_not_valid() {
        assert_eq!(
            one(
                "ALTER TABLE orders ADD CONSTRAINT orders_customer_fk FOREIGN KEY (customer_id) REFERENCES customers (id) ON DELETE CASCADE NOT VALID"
            ),
            Op::AddConstraint {
                table: s("orders"),
                name: Some(s("orders_customer_fk")),
                kind: ConstraintKind::ForeignKey,
                not_valid: true,
                using_index: false,
                check_not_null_of: None,
            }
        );
        assert_eq!(
            one("ALTER TABLE orders ADD FOREIGN KEY (customer_id) REFERENCES customers"),
            constraint("orders", None, ConstraintKind::ForeignKey)
        );
    }

    #[test]
    fn check_constraints_and_not_null_checks() {
        assert_eq!(
            one("ALTER TABLE t ADD CONSTRAINT email_nn CHECK (email IS NOT NULL) NOT VALID"),
            Op::AddConstraint {
                table: s("t"),
                name: Some(s("email_nn")),
                kind: ConstraintKind::Check,
                not_valid: true,
                using_index: false,
                check_not_null_of: Some(s("email")),
            }
        );
        let Op::AddConstraint { check_not_null_of, not_valid, .. } =
            one("ALTER TABLE t ADD CHECK ((\"Email\" is not null))")
        else {
            panic!()
        };
        assert_eq!((check_not_null_of.as_deref(), not_valid), (Some("Email"), false));
        let Op::AddConstraint { check_not_null_of, .. } = one("ALTER TABLE t ADD CHECK (a IS NOT NULL AND b > 0)")
        else {
            panic!()
        };
        assert_eq!(check_not_null_of, None);
    }

    #[test]
    fn unique_primary_key_and_exclude() {
        assert_eq!(
            one("ALTER TABLE t ADD CONSTRAINT t_email_key UNIQUE USING INDEX t_email_idx"),
            Op::AddConstraint {
                table: s("t"),
                name: Some(s("t_email_key")),
                kind: ConstraintKind::Unique,
                not_valid: false,
                using_index: true,
                check_not_null_of: None,
            }
        );
        let Op::AddConstraint { using_index, kind, .. } = one("ALTER TABLE t ADD PRIMARY KEY USING INDEX t_pkey_idx")
        else {
            panic!()
        };
        assert!(using_index && kind == ConstraintKind::PrimaryKey);
        assert_eq!(
            one("ALTER TABLE t ADD UNIQUE NULLS NOT DISTINCT (a, b) USING INDEX TABLESPACE fast"),
            constraint("t", None, ConstraintKind::Unique)
        );
        assert_eq!(
            one("ALTER TABLE rooms ADD CONSTRAINT no_overlap EXCLUDE USING gist (room WITH =, during WITH &&)"),
            constraint("rooms", Some("no_overlap"), ConstraintKind::Exclude)
        );
        // A column called `exclude` is a column.
        assert_eq!(one("ALTER TABLE t ADD exclude boolean"), add_column("t", "exclude"));
    }

    #[test]
    fn validate_drop_and_rename() {
        assert_eq!(
            one("ALTER TABLE orders VALIDATE CONSTRAINT orders_customer_fk"),
            Op::ValidateConstraint { table: s("orders"), name: s("orders_customer_fk") }
        );
        assert_eq!(
            one("ALTER TABLE orders DROP COLUMN IF EXISTS legacy CASCADE"),
            Op::DropColumn { table: s("orders"), column: s("legacy") }
        );
        assert_eq!(one("ALTER TABLE orders DROP legacy"), Op::DropColumn { table: s("orders"), column: s("legacy") });
        assert_eq!(one("ALTER TABLE orders DROP CONSTRAINT orders_fk"), Op::Other);
        assert_eq!(
            one("ALTER TABLE IF EXISTS public.orders RENAME TO orders_old"),
            Op::RenameTable { table: s("public.orders"), to: s("orders_old") }
        );
        assert_eq!(
            one("ALTER TABLE orders RENAME COLUMN \"Total\" TO total"),
            Op::RenameColumn { table: s("orders"), from: s("Total"), to: s("total") }
        );
        assert_eq!(
            one("ALTER TABLE orders RENAME amount TO total"),
            Op::RenameColumn { table: s("orders"), from: s("amount"), to: s("total") }
        );
        assert_eq!(one("ALTER TABLE orders RENAME CONSTRAINT a TO b"), Op::Other);
    }

    #[test]
    fn drop_tables() {
        assert_eq!(
            one("DROP TABLE IF EXISTS a, public.\"B\" CASCADE"),
            Op::DropTable { tables: vec![s("a"), s("public.B")] }
        );
        assert_eq!(one("drop table legacy;"), Op::DropTable { tables: vec![s("legacy")] });
    }

    #[test]
    fn several_actions_in_one_alter_table() {
        let ops = classify(
            "ALTER TABLE public.\"Orders\" ADD COLUMN a numeric(10,2) DEFAULT 0, ALTER COLUMN b TYPE bigint USING \
             coalesce(b, 0), ALTER COLUMN c SET NOT NULL, ALTER COLUMN d SET DEFAULT 1, DROP COLUMN e",
        );
        let t = "public.Orders";
        assert_eq!(
            ops,
            [
                with_default(add_column(t, "a"), "0", false),
                Op::AlterColumnType { table: s(t), column: s("b"), new_type: s("bigint") },
                Op::SetNotNull { table: s(t), column: s("c") },
                Op::DropColumn { table: s(t), column: s("e") },
            ]
        );
    }

    #[test]
    fn timeouts() {
        assert_eq!(one("SET lock_timeout = '5s'"), Op::SetLockTimeout { value: s("5s") });
        assert_eq!(one("SET LOCAL lock_timeout TO 3000"), Op::SetLockTimeout { value: s("3000") });
        assert_eq!(one("set session lock_timeout='2s';"), Op::SetLockTimeout { value: s("2s") });
        assert_eq!(one("SET statement_timeout TO DEFAULT"), Op::SetStatementTimeout { value: s("DEFAULT") });
        assert_eq!(one("SET search_path TO app, public"), Op::Other);
        assert_eq!(one("RESET lock_timeout"), Op::Other);
    }

    #[test]
    fn comments_and_strings_do_not_confuse() {
        assert_eq!(
            one(
                "-- ALTER TABLE x DROP COLUMN y;\n/* CREATE INDEX i ON x (a) */ ALTER TABLE t ADD COLUMN note text DEFAULT 'random()' -- random()\n"
            ),
            with_default(add_column("t", "note"), "'random()'", false)
        );
    }

    #[test]
    fn other_statements() {
        for sql in [
            "SELECT 1",
            "INSERT INTO orders (id) VALUES (1)",
            "UPDATE orders SET status = 'x'",
            "CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id bigint REFERENCES customers)",
            "COMMENT ON TABLE orders IS 'ALTER TABLE x DROP COLUMN y'",
            "DROP INDEX CONCURRENTLY orders_idx",
            "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END",
            "DO $$ BEGIN ALTER TABLE t DROP COLUMN c; END $$",
            "ALTER TABLE t OWNER TO app",
            "ALTER INDEX i RENAME TO j",
            "",
            "-- only a comment",
        ] {
            assert_eq!(classify(sql), [Op::Other], "{sql}");
        }
    }

    #[test]
    fn several_statements_are_classified_in_turn() {
        assert_eq!(
            classify("SET lock_timeout = '1s'; DROP TABLE a; SELECT 1"),
            [Op::SetLockTimeout { value: s("1s") }, Op::DropTable { tables: vec![s("a")] },]
        );
    }

    #[test]
    fn serialises_tagged() {
        let json = serde_json::to_value(constraint("t", Some("fk"), ConstraintKind::ForeignKey)).unwrap();
        assert_eq!(json["op"], "add_constraint");
        assert_eq!(json["kind"], "foreign_key");
        assert_eq!(serde_json::to_value(Op::Other).unwrap(), serde_json::json!({ "op": "other" }));
    }
}
