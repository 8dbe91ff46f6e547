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

use super::cursor::{Cursor, ident_of};
use super::split::{self, Token, TokenKind};

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

/// Every name a script mentions, normalised as [`Op`]'s names are: each identifier on its own,
/// and each dotted pair also as `schema.name`. Meant to be matched against a catalog (the tables
/// a migration may lock): over-inclusive by design, since a keyword or a column that happens to
/// share a table's name only adds a table to look at.
pub fn names(sql: &str) -> Vec<String> {
    let tokens: Vec<Token> = split::tokens(sql).collect();
    let mut out: Vec<String> = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        let Some(name) = ident_of(t) else { continue };
        let dotted = match (tokens.get(i + 1), tokens.get(i + 2)) {
            (Some(dot), Some(next)) if dot.is(".") => ident_of(next).map(|n| format!("{name}.{n}")),
            _ => None,
        };
        for n in [Some(name), dotted].into_iter().flatten() {
            if !out.contains(&n) {
                out.push(n);
            }
        }
    }
    out
}

#[cfg(test)]
#[path = "classify_tests.rs"]
mod tests;
