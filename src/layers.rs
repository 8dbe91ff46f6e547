//! The layer rule of the README's "Architecture" section, checked: every
//! module dependency in `src/` — `use crate::…` lines (grouped ones
//! included) and inline `crate::…` paths in code — goes from a file's
//! top-level module to a module of a lower layer, or to one of the few
//! same-layer edges the rule names. A top-level module in no layer fails
//! too: a new module must be placed. The rule is data here and prose in the
//! README; a test keeps the two the same.
//!
//! Read by a small lexer rather than `syn`: what is needed is every
//! `crate::` path outside comments and string literals, which a lexer finds
//! without a parser (and without a dependency).

use std::collections::BTreeSet;

/// The layers, lowest first, with their top-level modules.
const LAYERS: &[(&str, &[&str])] = &[
    ("leaf", &["format", "host", "conn_url", "lint_rule", "error_class"]),
    ("infrastructure", &["config", "pg", "store", "state", "metrics", "progress"]),
    ("domain", &["snapshot", "shadow", "migrations", "stranded"]),
    ("operations", &["drill", "restore", "rehearsal", "release", "status", "watch"]),
    ("reports", &["report"]),
    ("jobs", &["jobs"]),
    ("edges", &["main", "cli", "cli_docs", "daemon", "api", "demo"]),
];

/// The only edges allowed between two modules of the same layer (`main`
/// may use every edge module besides: it wires them).
const SAME_LAYER: &[(&str, &str)] = &[
    ("store", "config"),
    ("shadow", "snapshot"),
    ("rehearsal", "drill"),
    ("release", "rehearsal"),
    ("release", "restore"),
    ("status", "release"),
    ("cli_docs", "cli"),
    ("daemon", "api"),
];

/// This file: its strings hold forbidden edges on purpose.
const CHECKER: &str = "layers";

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, mods)| mods.contains(&module))
}

/// Whether `from` may use `to`.
fn allowed(from: &str, to: &str) -> Result<(), String> {
    let (Some(lf), Some(lt)) = (layer_of(from), layer_of(to)) else {
        return Err("a module in no layer".into());
    };
    if from == to || lt < lf || (lt == lf && (from == "main" || SAME_LAYER.contains(&(from, to)))) {
        return Ok(());
    }
    Err(if lt > lf {
        format!("{} uses a higher layer", LAYERS[lf].0)
    } else {
        "a same-layer edge the rule does not list".into()
    })
}

/// The top-level module a file under `src/` belongs to (`x_tests.rs` beside
/// `x.rs` holds the tests of `x`, included with `#[path]`).
fn top_module(rel: &str) -> String {
    let first = rel.split('/').next().unwrap_or(rel);
    let name = first.strip_suffix(".rs").unwrap_or(first);
    name.strip_suffix("_tests").unwrap_or(name).to_string()
}

/// The code of a Rust source with comments and the contents of string and
/// character literals blanked out (lifetimes are kept as code).
fn code_only(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r' && matches!(next, Some('"') | Some('#')) && !prev_is_ident(&b, i) {
            // Raw string: r"…", r#"…"#, …
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            while j < b.len() {
                if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                i += if b[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            if next == Some('\\') {
                let mut j = i + 3;
                while j < b.len() && b[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
                out.push_str("' '");
            } else if b.get(i + 2) == Some(&'\'') {
                i += 3;
                out.push_str("' '");
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn prev_is_ident(b: &[char], i: usize) -> bool {
    i > 0 && (b[i - 1].is_alphanumeric() || b[i - 1] == '_')
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The top-level modules a source names through `crate::` paths: inline
/// paths, `use crate::x::…` and grouped `use crate::{a, b::c}`.
fn uses(src: &str) -> BTreeSet<String> {
    let code = code_only(src);
    let mut found = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate") {
        let before = rest[..at].chars().next_back();
        let after = &rest[at + "crate".len()..];
        rest = after;
        if before.is_some_and(|c| is_ident(c) && c != '$') {
            continue;
        }
        let Some(path) = after.trim_start().strip_prefix("::") else { continue };
        let path = path.trim_start();
        if let Some(group) = path.strip_prefix('{') {
            // Top-level items of the group: split at commas outside braces.
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        push_head(&mut found, &item);
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            push_head(&mut found, &item);
        } else {
            push_head(&mut found, path);
        }
    }
    found
}

fn push_head(found: &mut BTreeSet<String>, path: &str) {
    let head: String = path.trim_start().chars().take_while(|c| is_ident(*c)).collect();
    if !head.is_empty() && head != "self" {
        found.insert(head);
    }
}

/// Every breach of the rule among `files` (path under `src/`, source).
fn violations(files: &[(String, String)]) -> Vec<String> {
    // `crate::x` where `x` is an item of the crate root rather than one of
    // the modules `main.rs` declares (`crate::exit`) belongs to `main`.
    let root_mods: Option<BTreeSet<String>> = files.iter().find(|(rel, _)| rel == "main.rs").map(|(_, src)| {
        code_only(src)
            .lines()
            .filter_map(|l| l.trim().strip_prefix("mod ")?.strip_suffix(';').map(str::to_string))
            .collect()
    });
    let mut out = Vec::new();
    for (rel, src) in files {
        let from = top_module(rel);
        if from == CHECKER {
            continue;
        }
        if layer_of(&from).is_none() {
            out.push(format!("src/{rel}: module `{from}` is in no layer; place it in the README's Architecture section and in src/layers.rs"));
            continue;
        }
        for to in uses(src) {
            let to = match &root_mods {
                Some(mods) if !mods.contains(&to) => "main".to_string(),
                _ => to,
            };
            if let Err(why) = allowed(&from, &to) {
                let layer = |m: &str| layer_of(m).map_or("no layer", |l| LAYERS[l].0);
                out.push(format!("src/{rel}: `{from}` ({}) → `{to}` ({}): {why}", layer(&from), layer(&to)));
            }
        }
    }
    out
}

/// Every `.rs` file under `src/`, as (path relative to `src/`, source).
fn sources() -> Vec<(String, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("src/ is readable").flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
                files.push((rel, std::fs::read_to_string(&path).expect("a source file is readable")));
            }
        }
    }
    files.sort();
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_dependency_follows_the_layer_rule() {
        let files = sources();
        assert!(files.len() > 50, "found only {} source files", files.len());
        let broken = violations(&files);
        assert!(broken.is_empty(), "the layer rule (README, Architecture) is broken:\n  {}", broken.join("\n  "));
    }

    #[test]
    fn the_readme_states_the_same_rule() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let section = readme.split("\n## Architecture\n").nth(1).expect("README has ## Architecture");
        // Lines wrap: compare with every run of whitespace as one space.
        let section = section.split("\n## ").next().unwrap().split_whitespace().collect::<Vec<_>>().join(" ");
        for (i, (name, mods)) in LAYERS.iter().enumerate() {
            let head = format!("{}. **{name}**", i + 1);
            let at = section.find(&head).unwrap_or_else(|| panic!("README's Architecture has no `{head}`"));
            let listed = section[at..].split(':').next().unwrap();
            for m in *mods {
                assert!(listed.contains(&format!("`{m}`")), "README's {name} line does not list `{m}`: {listed}");
            }
        }
        for (from, to) in SAME_LAYER {
            assert!(section.contains(&format!("`{from}` → `{to}`")), "README does not name the edge `{from}` → `{to}`");
        }
    }

    #[test]
    fn finds_grouped_inline_and_plain_paths_but_not_comments_or_strings() {
        let src = r##"
            use crate::config::{Config, Target};
            use crate::{pg::{self, PgError}, store, snapshot::catalog};
            pub(crate) fn f() -> crate::state::State { crate::rehearsal::runner::session(); todo!() }
            // crate::daemon::Shared in a comment
            /* crate::api:: in /* a nested */ block */
            const S: &str = "crate::demo::x";
            const R: &str = r#"crate::report::x"#;
            fn g<'a>(c: char) -> bool { c == '"' || c == 'x' }
            use crate::output::human_bytes;
        "##;
        let got: Vec<String> = uses(src).into_iter().collect();
        assert_eq!(got, ["config", "output", "pg", "rehearsal", "snapshot", "state", "store"]);
    }

    #[test]
    fn a_forbidden_import_fails_with_the_edge_named() {
        let file = |p: &str, s: &str| (p.to_string(), s.to_string());
        let ok = [file("release/mod.rs", "use crate::restore;\nuse crate::config::Target;")];
        assert!(violations(&ok).is_empty(), "{:?}", violations(&ok));
        let bad = [
            file("config/validate.rs", "fn f() { crate::rehearsal::lint::lint(); }"),
            file("restore.rs", "use crate::release::journal::Journal;"),
            file("api/mod.rs", "use crate::{daemon::Shared, config};"),
            file("store/mod.rs", "use crate::state::State;"),
            file("newthing.rs", "use crate::config::Config;"),
            file("pg/mod.rs", "use crate::newthing::X;"),
        ];
        let broken = violations(&bad);
        assert_eq!(broken.len(), 6, "{broken:#?}");
        assert!(
            broken[0]
                .contains("`config` (infrastructure) → `rehearsal` (operations): infrastructure uses a higher layer"),
            "{}",
            broken[0]
        );
        assert!(
            broken[1].contains("`restore` (operations) → `release` (operations): a same-layer edge"),
            "{}",
            broken[1]
        );
        assert!(broken[2].contains("`api` (edges) → `daemon` (edges)"), "{}", broken[2]);
        assert!(broken[3].contains("`store` (infrastructure) → `state` (infrastructure)"), "{}", broken[3]);
        assert!(broken[4].contains("module `newthing` is in no layer"), "{}", broken[4]);
        assert!(broken[5].contains("→ `newthing` (no layer)"), "{}", broken[5]);
    }
}
