//! Property tests of everything that reads migration files or a tool's
//! output: the statement splitter and its lexer, the lint's classifier, the
//! `-- no-transaction` directive, the sqlx and diesel directory readers (file
//! names, contents, `metadata.toml`), the `command` source's `pending` list
//! and the Payload CLI's output parser. None may panic on any input; the
//! splitter also keeps the promises its docs make (statements are slices of
//! the script in order, every token belongs to a statement or is a separating
//! `;`, a statement split again is itself) on multi-byte UTF-8, dollar
//! quotes, comments and unterminated quotes.

use std::path::Path;
use std::time::Instant;

use proptest::prelude::*;
use proptest::test_runner::Config as PropConfig;
use sha2::{Digest, Sha384};

use super::payload::output::{Progress, event, strip_ansi};
use super::split::{self, TokenKind};
use super::{Down, SourceError, command, diesel, payload, sqlx};

/// Pieces that decide where tokens end, and multi-byte text around them.
const SQL_PIECES: &[&str] = &[
    " ",
    "\n",
    "\r\n",
    "\t",
    ";",
    ";;",
    "(",
    ")",
    "'",
    "''",
    "\"",
    "E'",
    "e'\\'",
    "U&'",
    "U&\"",
    "N'",
    "X'",
    "\\",
    "$",
    "$$",
    "$1",
    "$a$",
    "$é$",
    "$日$",
    "$_1$",
    "--",
    "-- no-transaction\n",
    "/*",
    "*/",
    "/* é */",
    "-",
    "*",
    "/",
    "::",
    ":",
    ".",
    "..",
    "1",
    "1.",
    "1.5e+",
    "0x1F",
    "_",
    "a$b",
    "select",
    "SELECT 1",
    "begin",
    "BEGIN ATOMIC",
    "end",
    "END",
    "case",
    "create",
    "CREATE OR REPLACE FUNCTION f() RETURNS int",
    "CREATE PROCEDURE p()",
    "or",
    "replace",
    "function",
    "procedure",
    "é",
    "日本語",
    "🦀",
    "\u{feff}",
    "\u{0}",
    "\u{202e}",
    "naïve",
    "ß",
    "\u{301}",
];

fn sql_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::collection::vec(prop::sample::select(SQL_PIECES), 0..40).prop_map(|v| v.concat()),
        1 => any::<String>(),
        1 => "\\PC{0,80}",
    ]
}

proptest! {
    #![proptest_config(PropConfig { cases: 3000, failure_persistence: None, ..PropConfig::default() })]

    /// The splitter's documented contract, on any text.
    #[test]
    fn split_keeps_its_promises(sql in sql_text()) {
        let statements = split::split(&sql);
        let mut prev_end = 0;
        for s in &statements {
            prop_assert!(s.start >= prev_end && s.start < s.end, "out of order or empty: {:?}", statements);
            prop_assert_eq!(&sql[s.start..s.end], s.sql.as_str());
            prop_assert_eq!(s.line, split::line_of(&sql, s.start));
            // (The lexer's blanks are ASCII, as PostgreSQL's: U+2000 is an identifier character.)
            prop_assert!(!s.sql.starts_with(|c: char| c.is_ascii_whitespace()), "{:?}", s);
            prev_end = s.end;
        }
        // Every token is inside a statement, or is a `;` that separates two.
        for t in split::tokens(&sql) {
            let inside = statements.iter().any(|s| s.start <= t.start && t.end() <= s.end);
            prop_assert!(inside || t.is(";"), "token {:?} is in no statement of {:?}", t, statements);
        }
        // A statement on its own is one statement: itself (but for one that
        // begins with U+FEFF, which only the script's first character may be).
        for s in statements.iter().filter(|s| !s.sql.starts_with('\u{feff}')) {
            let again = split::split(&s.sql);
            prop_assert_eq!(again.len(), 1, "{:?} splits again into {:?}", s.sql, again);
            prop_assert_eq!(&again[0].sql, &s.sql);
        }
        // Comments alone make no statement, and the helpers agree.
        prop_assert_eq!(super::is_blank_sql(&sql), statements.is_empty());
        let _ = split::no_transaction(&sql);
        let _ = crate::migrations::classify::classify(&sql);
    }

    /// The lexer: tokens in order, never overlapping, and what lies between
    /// two tokens is only whitespace and comments.
    #[test]
    fn tokens_cover_everything_but_blanks_and_comments(sql in sql_text()) {
        let mut pos = if sql.starts_with('\u{feff}') { 3 } else { 0 };
        for t in split::tokens(&sql) {
            prop_assert!(t.start >= pos && t.end() > t.start, "token {:?} after offset {}", t, pos);
            let gap = sql[pos..t.start].trim_start();
            prop_assert!(
                gap.is_empty() || gap.starts_with("--") || gap.starts_with("/*"),
                "{:?} between tokens is neither blank nor a comment", gap
            );
            if t.kind == TokenKind::Word {
                prop_assert!(!t.text.contains(|c: char| c.is_ascii_whitespace()), "{:?}", t);
            }
            pos = t.end();
        }
        let rest = sql[pos..].trim_start();
        prop_assert!(rest.is_empty() || rest.starts_with("--") || rest.starts_with("/*"), "{:?} left after the last token", rest);
    }

    /// `line_of` accepts any offset, even past the end or inside a character.
    #[test]
    fn line_of_any_offset(sql in sql_text(), at in any::<usize>()) {
        let line = split::line_of(&sql, at);
        prop_assert!(line >= 1 && line <= sql.matches('\n').count() + 1);
    }

    /// The `pending` command's listing: trimmed names, no blanks, no comments.
    #[test]
    fn pending_names_are_trimmed_lines(out in "(\\PC{0,20}(\n|\r\n)|#\\PC{0,5}\n|[ \t]*\n){0,10}") {
        for name in command::pending_names(&out) {
            prop_assert!(!name.is_empty() && !name.starts_with('#') && name.trim() == name);
            prop_assert!(out.contains(name));
        }
    }

    /// Payload CLI output: ANSI stripping and the event parser take any line;
    /// a `Migrated:` line with a number of ms is read back exactly.
    #[test]
    fn payload_output_never_panics(
        lines in prop::collection::vec(
            prop_oneof![
                Just("Migrating: ".to_string()),
                Just("Migrated: ".to_string()),
                Just("Migrated down:".to_string()),
                Just("Error running migration ".to_string()),
                Just("Error migrating down ".to_string()),
                Just("Error: Migration ".to_string()),
                Just(" not found locally".to_string()),
                Just(" (".to_string()),
                Just("ms)".to_string()),
                Just("\u{1b}[".to_string()),
                Just("\u{1b}]".to_string()),
                Just("\u{1b}".to_string()),
                Just("\u{7}".to_string()),
                "\\PC{0,12}",
                "[0-9]{1,25}",
            ],
            0..12,
        ).prop_map(|v| v.concat()),
        name in "[a-z0-9_é日]{1,20}",
        ms in any::<u64>(),
    ) {
        let mut progress = Progress::default();
        let now = Instant::now();
        for line in lines.split('\n') {
            let line = strip_ansi(line);
            let _ = event(&line);
            progress.line(&line, now);
        }
        let done = format!("\u{1b}[32mINFO\u{1b}[39m: Migrated:  {name} ({ms}ms)");
        match event(&strip_ansi(&done)) {
            Some(super::payload::output::Event::Done { name: n, ms: m }) => {
                prop_assert_eq!(n, name);
                prop_assert_eq!(m, ms);
            }
            other => prop_assert!(false, "{:?} read as {:?}", done, other),
        }
    }
}

/// A name for a file in a migrations directory: sometimes sqlx's or diesel's
/// layout, often not.
fn file_name() -> impl Strategy<Value = String> {
    let pieces: &[&str] = &[
        "1",
        "20240101120000",
        "-5",
        "+7",
        "0",
        "99999999999999999999",
        "2024-01-02-000000",
        "_",
        "__",
        "a",
        "add users",
        " ",
        "é",
        "日本",
        ".",
        ".up.sql",
        ".down.sql",
        ".sql",
        ".up",
        "sql",
        "-",
        "\u{301}",
    ];
    let random = prop::collection::vec(prop::sample::select(pieces), 1..6)
        .prop_map(|v| v.concat())
        .prop_filter("a file name", |n| n != "." && n != ".." && !n.contains('/'));
    // Names in the tools' layouts, so that many directories also load.
    let layout = "(-|\\+)?[0-9]{1,3}_[a-z é_]{1,8}(\\.up|\\.down)?\\.sql|2024-0[12]-0[1-3]-00000[0-2]_[a-z é]{1,6}";
    prop_oneof![1 => random, 2 => layout]
}

fn file_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        sql_text().prop_map(String::into_bytes),
        sql_text().prop_map(|s| format!("\u{feff}{s}").into_bytes()),
        sql_text().prop_map(|s| s.replace('\n', "\r\n").into_bytes()),
        prop::collection::vec(any::<u8>(), 0..64),
        Just(b"SELECT 'caf\xe9';".to_vec()),
        Just(Vec::new()),
    ]
}

/// An error from a directory reader must name something in the directory.
fn assert_names_a_path(e: &SourceError, dir: &Path) -> Result<(), TestCaseError> {
    let shown = e.to_string();
    prop_assert!(shown.contains(&dir.display().to_string()), "error names no path: {}", shown);
    Ok(())
}

proptest! {
    #![proptest_config(PropConfig { cases: 300, failure_persistence: None, ..PropConfig::default() })]

    /// sqlx directories of random names and bytes: either a plan in version
    /// order whose checksums are sqlx's (SHA-384 of the raw bytes), or an
    /// error naming the offending file.
    #[test]
    fn sqlx_dir_never_panics(files in prop::collection::vec((file_name(), file_bytes()), 0..6)) {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, bytes) in &files {
            std::fs::write(dir.path().join(name), bytes).expect("write");
        }
        match sqlx::files(dir.path()) {
            Ok(ms) => {
                let versions: Vec<i64> = ms.iter().map(|m| m.version.parse().expect("numeric")).collect();
                prop_assert!(versions.windows(2).all(|w| w[0] < w[1]), "not in version order: {:?}", versions);
                for m in &ms {
                    let bytes = std::fs::read(&m.path).expect("read back");
                    prop_assert_eq!(&m.checksum, &hex::encode(Sha384::digest(&bytes)));
                    prop_assert_eq!(m.up_sql.as_bytes(), &bytes[..]);
                    prop_assert_eq!(m.transactional, !bytes.starts_with(b"-- no-transaction"));
                    if let Down::Sql { sql, .. } = &m.down {
                        prop_assert!(!sql.is_empty(), "a zero-byte down is Down::Empty");
                    }
                }
            }
            Err(e) => assert_names_a_path(&e, dir.path())?,
        }
    }

    /// diesel directories of random names, files and `metadata.toml`.
    #[test]
    fn diesel_dir_never_panics(
        migs in prop::collection::vec(
            (file_name(), prop::option::of(file_bytes()), prop::option::of(file_bytes()), prop::option::of(prop_oneof![
                Just("run_in_transaction = false\n".to_string()),
                Just("run_in_transaction = \"no\"\n".to_string()),
                Just("run_in_transaction = false\nrun_in_transaction = true\n".to_string()),
                "\\PC{0,30}",
            ])),
            0..5,
        ),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, up, down, meta) in &migs {
            let d = dir.path().join(name);
            if std::fs::create_dir(&d).is_err() {
                continue; // the same name twice
            }
            if let Some(b) = up { std::fs::write(d.join("up.sql"), b).expect("write"); }
            if let Some(b) = down { std::fs::write(d.join("down.sql"), b).expect("write"); }
            if let Some(m) = meta { std::fs::write(d.join("metadata.toml"), m).expect("write"); }
        }
        match diesel::files(dir.path()) {
            Ok(ms) => {
                let versions: Vec<&str> = ms.iter().map(|m| m.version.as_str()).collect();
                prop_assert!(versions.windows(2).all(|w| w[0] < w[1]), "not in diesel order: {:?}", versions);
                for m in &ms {
                    let name = m.path.file_name().and_then(|n| n.to_str()).expect("utf-8 name");
                    prop_assert_eq!(&m.version, &diesel::version_of(name));
                }
            }
            Err(e) => assert_names_a_path(&e, dir.path())?,
        }
    }

    /// Payload migration directories of random names: files in JavaScript's
    /// order (UTF-16 code units), one per name, `index.*` left out; or an
    /// error naming the path.
    #[test]
    fn payload_dir_never_panics(
        names in prop::collection::vec(
            prop_oneof![
                file_name(),
                "[0-9]{8}_[0-9]{6}(_[a-zé日🦀 ]{0,8})?(\\.[a-z]{0,3})?\\.(ts|js)",
                Just("index.ts".to_string()),
                Just("a.b.ts".to_string()),
                Just("a.ts".to_string()),
                Just("a.js".to_string()),
            ],
            0..6,
        ),
        project in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mdir = if project {
            std::fs::write(dir.path().join("package.json"), "{}").expect("write");
            dir.path().join("src/migrations")
        } else {
            dir.path().to_path_buf()
        };
        std::fs::create_dir_all(&mdir).expect("mkdir");
        for n in &names {
            std::fs::write(mdir.join(n), "export async function up() {}\n").expect("write");
        }
        match payload::files(dir.path()) {
            Ok(files) => {
                let file_names: Vec<String> =
                    files.iter().map(|f| f.path.file_name().unwrap().to_str().unwrap().to_string()).collect();
                prop_assert!(
                    file_names.windows(2).all(|w| w[0].encode_utf16().cmp(w[1].encode_utf16()).is_lt()),
                    "not in JavaScript's order: {:?}", file_names
                );
                for (f, n) in files.iter().zip(&file_names) {
                    prop_assert!(n.ends_with(".ts") || n.ends_with(".js"));
                    prop_assert!(n != "index.ts" && n != "index.js");
                    prop_assert_eq!(&f.name, n.split('.').next().unwrap());
                }
                let mut unique: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
                unique.sort();
                unique.dedup();
                prop_assert_eq!(unique.len(), files.len());
            }
            Err(e) => {
                let shown = e.to_string();
                prop_assert!(shown.contains(&dir.path().display().to_string()), "error names no path: {}", shown);
            }
        }
    }
}

/// The directory generators are worth running: many sqlx and diesel
/// directories load with migrations in them, many are refused.
#[test]
fn directory_fuzzing_reaches_both_outcomes() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let files = prop::collection::vec((file_name(), file_bytes()), 1..6);
    let (mut loaded, mut refused) = ((0, 0), (0, 0));
    for _ in 0..150 {
        let case = files.new_tree(&mut runner).expect("a case").current();
        let (sqlx_dir, diesel_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for (name, bytes) in &case {
            std::fs::write(sqlx_dir.path().join(name), bytes).unwrap();
            let d = diesel_dir.path().join(name);
            if std::fs::create_dir(&d).is_ok() {
                std::fs::write(d.join("up.sql"), bytes).unwrap();
            }
        }
        match sqlx::files(sqlx_dir.path()) {
            Ok(ms) if !ms.is_empty() => loaded.0 += 1,
            Ok(_) => {}
            Err(_) => refused.0 += 1,
        }
        match diesel::files(diesel_dir.path()) {
            Ok(ms) if !ms.is_empty() => loaded.1 += 1,
            Ok(_) => {}
            Err(_) => refused.1 += 1,
        }
    }
    eprintln!("150 directories: loaded (sqlx, diesel) {loaded:?}, refused {refused:?}");
    assert!(loaded.0 >= 15 && refused.0 >= 15 && loaded.1 >= 15 && refused.1 >= 15, "{loaded:?} {refused:?}");
}
