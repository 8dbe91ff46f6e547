//! Maps configuration key paths to lines and back, so every configuration error
//! can name the file, the line and the key. serde forgets where a value came
//! from; `toml_edit` keeps spans, so we parse the text a second time with it.

use std::fmt;
use std::ops::Range;

use toml_edit::{ImDocument, Item, Table, Value};

/// One step of a key path: `targets[0].retention.keep_last`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A dotted key path as written in messages, e.g. `targets[1].lock_timeout`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn root() -> Self {
        KeyPath(Vec::new())
    }
    pub fn key(&self, k: &str) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Key(k.to_string()));
        KeyPath(v)
    }
    pub fn index(&self, i: usize) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Index(i));
        KeyPath(v)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for seg in &self.0 {
            match seg {
                Seg::Key(k) => {
                    if !first {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
            first = false;
        }
        Ok(())
    }
}

/// Line and column (1-based) of a byte offset.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, col)
}

/// The span where `path` is written: its key if present, else the nearest
/// enclosing table (a missing key is reported at the table that lacks it).
pub fn span_of(src: &str, path: &KeyPath) -> Option<Range<usize>> {
    let doc = ImDocument::parse(src).ok()?;
    let mut table: &Table = doc.as_table();
    let mut best: Option<Range<usize>> = None;
    let mut segs = path.0.iter().peekable();
    // Walk tables; values inside inline tables/arrays are walked as `Value`s.
    while let Some(seg) = segs.next() {
        let Seg::Key(k) = seg else { return best };
        let Some((key, item)) = table.get_key_value(k) else { return best };
        best = key.span().or(best);
        match item {
            Item::Table(t) => {
                best = t.span().or(best);
                table = t;
            }
            Item::ArrayOfTables(arr) => {
                let Some(Seg::Index(i)) = segs.next() else { return best };
                let Some(t) = arr.get(*i) else { return best };
                best = t.span().or(best);
                table = t;
            }
            Item::Value(v) => return value_span(v, segs.cloned().collect(), best),
            Item::None => return best,
        }
    }
    best
}

fn value_span(mut v: &Value, rest: Vec<Seg>, mut best: Option<Range<usize>>) -> Option<Range<usize>> {
    best = v.span().or(best);
    for seg in rest {
        match (seg, v) {
            (Seg::Key(k), Value::InlineTable(t)) => {
                match t.get_key_value(&k).and_then(|(key, it)| Some((key, it.as_value()?))) {
                    Some((key, val)) => {
                        best = key.span().or(best);
                        v = val;
                    }
                    None => return best,
                }
            }
            (Seg::Index(i), Value::Array(a)) => match a.get(i) {
                Some(val) => {
                    best = val.span().or(best);
                    v = val;
                }
                None => return best,
            },
            _ => return best,
        }
    }
    best
}

/// The innermost key whose span contains `offset` (used for serde's errors,
/// which carry a span but not always the key).
pub fn path_at(src: &str, offset: usize) -> Option<KeyPath> {
    let doc = ImDocument::parse(src).ok()?;
    let mut found = None;
    walk_table(doc.as_table(), KeyPath::root(), offset, &mut found);
    found
}

fn contains(span: Option<Range<usize>>, offset: usize) -> bool {
    span.is_some_and(|s| s.start <= offset && offset < s.end.max(s.start + 1))
}

fn walk_table(t: &Table, here: KeyPath, offset: usize, found: &mut Option<KeyPath>) {
    for (k, item) in t.iter() {
        let path = here.key(k);
        if let Some((key, _)) = t.get_key_value(k)
            && contains(key.span(), offset)
        {
            *found = Some(path.clone());
        }
        match item {
            Item::Table(sub) => {
                if contains(sub.span(), offset) {
                    *found = Some(path.clone());
                }
                walk_table(sub, path, offset, found);
            }
            Item::ArrayOfTables(arr) => {
                for (i, sub) in arr.iter().enumerate() {
                    if contains(sub.span(), offset) {
                        *found = Some(path.index(i));
                    }
                    walk_table(sub, path.index(i), offset, found);
                }
            }
            Item::Value(v) => walk_value(v, path, offset, found),
            Item::None => {}
        }
    }
}

fn walk_value(v: &Value, here: KeyPath, offset: usize, found: &mut Option<KeyPath>) {
    if contains(v.span(), offset) {
        *found = Some(here.clone());
    }
    match v {
        Value::InlineTable(t) => {
            for (k, val) in t.iter() {
                let path = here.key(k);
                if let Some((key, _)) = t.get_key_value(k)
                    && contains(key.span(), offset)
                {
                    *found = Some(path.clone());
                }
                walk_value(val, path, offset, found);
            }
        }
        Value::Array(a) => {
            for (i, val) in a.iter().enumerate() {
                walk_value(val, here.index(i), offset, found);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "state_dir = \"/x\"\n\n[store]\nkind = \"s3\"\n\n[[targets]]\nname = \"a\"\nretention = { keep_last = 3 }\n\n[[targets]]\nname = \"b\"\nlock_timeout = \"3 parsecs\"\n";

    #[test]
    fn finds_keys_in_tables_arrays_and_inline_tables() {
        let p = KeyPath::root().key("targets").index(1).key("lock_timeout");
        let span = span_of(SRC, &p).unwrap();
        assert_eq!(line_col(SRC, span.start).0, 12);
        let p = KeyPath::root().key("targets").index(0).key("retention").key("keep_last");
        assert_eq!(line_col(SRC, span_of(SRC, &p).unwrap().start).0, 8);
        assert_eq!(p.to_string(), "targets[0].retention.keep_last");
    }

    #[test]
    fn missing_key_points_at_its_table() {
        let p = KeyPath::root().key("store").key("bucket");
        assert_eq!(line_col(SRC, span_of(SRC, &p).unwrap().start).0, 3);
    }

    #[test]
    fn offset_maps_back_to_key() {
        let off = SRC.find("3 parsecs").unwrap();
        assert_eq!(path_at(SRC, off).unwrap().to_string(), "targets[1].lock_timeout");
    }
}
