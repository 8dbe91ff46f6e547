//! The project's queries file: named SQL, with parameter values or without
//! (then its generic plan is compared), in TOML:
//!
//! ```toml
//! [[query]]
//! id = "orders_of_customer"
//! sql = "SELECT * FROM orders WHERE customer_id = $1 ORDER BY id DESC LIMIT 20"
//! params = [42]
//! ```
//!
//! Parameters are TOML strings, integers, floats or booleans, passed to the
//! prepared statement as literals (PostgreSQL infers their types).

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;

use super::{Origin, Query};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    query: Vec<RawQuery>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuery {
    id: String,
    sql: String,
    params: Option<Vec<toml::Value>>,
}

/// Reads and checks the queries file at `path`; the error says what to fix.
pub fn read(path: &Path) -> Result<Vec<Query>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    parse(&text)
}

pub fn parse(text: &str) -> Result<Vec<Query>, String> {
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        format!(
            "{}; each query is `[[query]]` with `id = \"…\"`, `sql = \"…\"` and optional `params = [...]`",
            e.message()
        )
    })?;
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(raw.query.len());
    for (i, q) in raw.query.into_iter().enumerate() {
        let at = format!("query {} (`{}`)", i + 1, q.id);
        if q.id.trim().is_empty() || q.id.chars().any(char::is_whitespace) {
            return Err(format!("query {}: `id` must be a non-empty name without spaces", i + 1));
        }
        if !seen.insert(q.id.clone()) {
            return Err(format!("{at}: the id is used twice; give each query its own id"));
        }
        let sql = q.sql.trim().trim_end_matches(';').trim().to_string();
        if sql.is_empty() {
            return Err(format!("{at}: `sql` is empty"));
        }
        if sql.contains(';') && !sql.contains('\'') {
            return Err(format!("{at}: `sql` holds more than one statement; list each as its own query"));
        }
        let placeholders = placeholders(&sql);
        let params = match q.params {
            None => None,
            Some(values) => {
                if values.len() != placeholders {
                    return Err(format!(
                        "{at}: `params` has {} values but the SQL uses {placeholders} parameters ($1…${placeholders})",
                        values.len()
                    ));
                }
                let mut lits = Vec::with_capacity(values.len());
                for (j, v) in values.iter().enumerate() {
                    lits.push(literal(v).map_err(|e| format!("{at}: parameter ${}: {e}", j + 1))?);
                }
                Some(lits)
            }
        };
        out.push(Query { id: q.id, sql, placeholders, params, origin: Origin::File });
    }
    Ok(out)
}

/// The highest `$n` the statement uses (dollar quotes start with a letter or `$`).
pub fn placeholders(sql: &str) -> usize {
    let b = sql.as_bytes();
    let mut max = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' {
            let start = i + 1;
            let mut j = start;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            if j > start {
                max = max.max(sql[start..j].parse::<usize>().unwrap_or(0));
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    max
}

/// A parameter as an SQL literal of unknown type (`'text'`, `42`, `true`).
fn literal(v: &toml::Value) -> Result<String, String> {
    Ok(match v {
        toml::Value::String(s) => format!("'{}'", s.replace('\'', "''")),
        toml::Value::Integer(n) => n.to_string(),
        toml::Value::Float(f) if f.is_finite() => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => format!("'{d}'"),
        _ => return Err("use a string, a number or a boolean (write an array as a string, e.g. \"{1,2}\")".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_with_values_and_one_without() {
        let q = parse(
            "[[query]]\nid = \"a\"\nsql = \"SELECT * FROM t WHERE x = $1 AND y = $2;\"\nparams = [\"o'k\", 3]\n\
             [[query]]\nid = \"b\"\nsql = \"SELECT $1::int\"\n",
        )
        .unwrap();
        assert_eq!(q[0].params.as_deref(), Some(&["'o''k'".to_string(), "3".to_string()][..]));
        assert_eq!(q[0].sql, "SELECT * FROM t WHERE x = $1 AND y = $2");
        assert_eq!((q[1].placeholders, q[1].params.is_none()), (1, true));
    }

    #[test]
    fn bad_files_say_what_to_fix() {
        let e = parse("[[query]]\nid = \"a\"\nsql = \"SELECT $1\"\nparams = []\n").unwrap_err();
        assert!(e.contains("`params` has 0 values but the SQL uses 1 parameters"), "{e}");
        let e = parse("[[query]]\nid = \"a\"\nsql = \"SELECT 1\"\n[[query]]\nid = \"a\"\nsql = \"SELECT 2\"\n")
            .unwrap_err();
        assert!(e.contains("used twice"), "{e}");
        let e = parse("[[query]]\nname = \"a\"\nsql = \"SELECT 1\"\n").unwrap_err();
        assert!(e.contains("unknown field `name`") && e.contains("[[query]]"), "{e}");
        let e = parse("[[query]]\nid = \"a\"\nsql = \"SELECT $1\"\nparams = [[1]]\n").unwrap_err();
        assert!(e.contains("parameter $1: use a string"), "{e}");
    }

    #[test]
    fn dollar_quotes_are_not_parameters() {
        assert_eq!(placeholders("SELECT $$a$$, $tag$b$tag$, $12 + $3"), 12);
    }
}
