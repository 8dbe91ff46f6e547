//! Comparing two `pg_dump --schema-only` texts: noise removed, then equal,
//! different only in column order, or different.
//!
//! A down that re-adds a dropped column puts it at the end of its table
//! (PostgreSQL has no `ADD COLUMN … AFTER`), so the dump lists the table's
//! columns, a composite type's attributes, the column comments and the
//! column grants in another order although every object is back. That is
//! its own class, `column_order_only`: the lines of those blocks are compared
//! as sets, everything else as written. Enum labels, partition keys, index
//! and view column lists keep their order (there, order is meaning).

use similar::TextDiff;

/// How a schema found compares with the one expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Comparison {
    Same,
    /// The same objects, some columns in another order; the diff shows where.
    ColumnOrderOnly(String),
    /// A unified diff (`-` expected, `+` found).
    Differs(String),
}

/// Compares two cleaned dumps; diffs are cut at `max_lines`.
pub fn compare(expected: &str, found: &str, max_lines: usize) -> Comparison {
    match diff(expected, found, max_lines) {
        None => Comparison::Same,
        Some(d) if normalize(expected) == normalize(found) => Comparison::ColumnOrderOnly(d),
        Some(d) => Comparison::Differs(d),
    }
}

/// Removes the lines that differ on every dump.
pub fn clean(dump: &str) -> String {
    dump.lines()
        .filter(|l| {
            !(l.starts_with("\\restrict ")
                || l.starts_with("\\unrestrict ")
                || l.starts_with("-- Dumped from database version")
                || l.starts_with("-- Dumped by pg_dump version"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A unified diff of two schemas (`-` expected, `+` found), at most
/// `max_lines` lines; None when equal.
pub fn diff(expected: &str, found: &str, max_lines: usize) -> Option<String> {
    if expected == found {
        return None;
    }
    let d = TextDiff::from_lines(expected, found);
    let text = d.unified_diff().context_radius(2).header("expected", "found").to_string();
    let mut lines: Vec<&str> = text.lines().collect();
    if lines.len() > max_lines {
        let more = lines.len() - max_lines;
        lines.truncate(max_lines);
        return Some(format!("{}\n… {more} more lines", lines.join("\n")));
    }
    Some(lines.join("\n"))
}

/// One archive entry of a dump: from its `-- Name: …; Type: …;` line to
/// the next one.
struct Block<'a> {
    name: &'a str,
    kind: &'a str,
    lines: Vec<&'a str>,
}

/// The dump with column order made irrelevant: the lines of table,
/// composite-type and table-grant blocks sorted (a trailing comma dropped,
/// as only the last column has none), and each run of per-column blocks
/// (`COLUMN t.c` comments) sorted.
fn normalize(dump: &str) -> Vec<String> {
    let mut blocks: Vec<Block> = vec![Block { name: "", kind: "", lines: Vec::new() }];
    for line in dump.lines() {
        if let Some(header) = line.strip_prefix("-- Name: ") {
            let mut fields = header.split("; ");
            let name = fields.next().unwrap_or_default();
            let kind = fields.find_map(|f| f.strip_prefix("Type: ")).unwrap_or_default();
            blocks.push(Block { name, kind, lines: Vec::new() });
        }
        blocks.last_mut().expect("a first block").lines.push(line);
    }
    let mut texts: Vec<(bool, String)> = blocks
        .into_iter()
        .map(|b| {
            let columns = match b.kind {
                "TABLE" | "FOREIGN TABLE" => true,
                "TYPE" => b.lines.iter().any(|l| l.ends_with(" AS (")),
                "ACL" => b.name.starts_with("TABLE "),
                _ => false,
            };
            let text = if columns {
                let mut lines: Vec<&str> = b.lines.iter().map(|l| l.strip_suffix(',').unwrap_or(l)).collect();
                lines.sort_unstable();
                lines.join("\n")
            } else {
                b.lines.join("\n")
            };
            (b.name.starts_with("COLUMN "), text)
        })
        .collect();
    // Sort each run of consecutive per-column blocks.
    let mut start = 0;
    while start < texts.len() {
        let mut end = start;
        while end < texts.len() && texts[end].0 {
            end += 1;
        }
        if end > start {
            texts[start..end].sort_unstable();
            start = end;
        } else {
            start += 1;
        }
    }
    texts.into_iter().map(|(_, t)| t).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As pg_dump 15 writes it (trimmed): a composite type, a table with a
    /// CHECK constraint and column comments.
    const BEFORE: &str = "\
--
-- Name: pair; Type: TYPE; Schema: public; Owner: app
--

CREATE TYPE public.pair AS (
\tx integer,
\ty integer
);

--
-- Name: mood; Type: TYPE; Schema: public; Owner: app
--

CREATE TYPE public.mood AS ENUM (
    'sad',
    'ok'
);

--
-- Name: t; Type: TABLE; Schema: public; Owner: app
--

CREATE TABLE public.t (
    id integer NOT NULL,
    a text DEFAULT 'x'::text NOT NULL,
    b integer,
    c jsonb,
    CONSTRAINT b_pos CHECK ((b > 0))
);

--
-- Name: COLUMN t.b; Type: COMMENT; Schema: public; Owner: app
--

COMMENT ON COLUMN public.t.b IS 'the b';

--
-- Name: COLUMN t.c; Type: COMMENT; Schema: public; Owner: app
--

COMMENT ON COLUMN public.t.c IS 'the c';

--
-- Name: t_audit; Type: TRIGGER; Schema: public; Owner: app
--

CREATE TRIGGER t_audit AFTER INSERT ON public.t FOR EACH ROW EXECUTE FUNCTION public.audit();
";

    /// `b` dropped and re-added with its constraint and comment, `x` of the
    /// type too: the order pg_dump then writes.
    fn readded() -> String {
        let comment = |c: &str| {
            format!(
                "-- Name: COLUMN t.{c}; Type: COMMENT; Schema: public; Owner: app\n--\n\nCOMMENT ON COLUMN public.t.{c} IS 'the {c}';"
            )
        };
        BEFORE
            .replace("    b integer,\n    c jsonb,\n", "    c jsonb,\n    b integer,\n")
            .replace("\tx integer,\n\ty integer\n", "\ty integer,\n\tx integer\n")
            .replace(&comment("b"), "@b@")
            .replace(&comment("c"), &comment("b"))
            .replace("@b@", &comment("c"))
    }

    #[test]
    fn noise_is_ignored_and_real_differences_shown() {
        let a = "\\restrict abc\n-- Dumped by pg_dump version 15.18\nCREATE TABLE t (a int);\n\\unrestrict abc";
        let b = "\\restrict xyz\n-- Dumped by pg_dump version 15.18\nCREATE TABLE t (a int);\n\\unrestrict xyz";
        assert_eq!(clean(a), clean(b));
        let c = "CREATE TABLE t (a int);\nCREATE TRIGGER x AFTER INSERT ON t EXECUTE FUNCTION f();";
        let d = diff(&clean(a), c, 50).unwrap();
        assert!(d.contains("+CREATE TRIGGER x"), "{d}");
    }

    #[test]
    fn a_readded_column_is_column_order_only() {
        let after = readded();
        assert_ne!(after, BEFORE, "the fixture must move the column");
        assert!(after.contains("c jsonb,\n    b integer,"), "{after}");
        match compare(BEFORE, &after, 60) {
            Comparison::ColumnOrderOnly(d) => assert!(d.contains("b integer"), "{d}"),
            other => panic!("expected column order only, got {other:?}"),
        }
        assert_eq!(compare(BEFORE, BEFORE, 60), Comparison::Same);
    }

    #[test]
    fn a_lost_object_or_changed_column_is_a_difference() {
        let lost = readded().replace(
            "CREATE TRIGGER t_audit AFTER INSERT ON public.t FOR EACH ROW EXECUTE FUNCTION public.audit();\n",
            "",
        );
        assert!(matches!(compare(BEFORE, &lost, 60), Comparison::Differs(d) if d.contains("-CREATE TRIGGER t_audit")));
        let retyped = BEFORE.replace("    b integer,", "    b bigint,");
        assert!(matches!(compare(BEFORE, &retyped, 60), Comparison::Differs(_)));
        // A moved line outside a table is a real difference.
        let swapped = BEFORE.replace("    'sad',\n    'ok'\n", "    'ok',\n    'sad'\n");
        assert_ne!(swapped, BEFORE);
        assert!(matches!(compare(BEFORE, &swapped, 60), Comparison::Differs(_)), "enum label order is meaning");
    }
}
