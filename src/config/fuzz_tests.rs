//! Property tests of the configuration loader: whatever bytes an operator (or
//! an editor, or a bad copy) puts into the file, [`Config::load`] — the entry
//! point every command uses — never panics, and a file it refuses gets
//! problems that name the file and a line or a key. The documents are
//! mutations of the shipped examples in `config/` (lines deleted, duplicated,
//! uncommented, swapped, values of other types, stray lines, truncation,
//! inserted unicode), so most cases get past the TOML parser into validation.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::test_runner::Config as PropConfig;

use super::{Config, ConfigError, validate};

fn examples() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut out: Vec<String> = std::fs::read_dir(&dir)
        .expect("config/ holds the examples")
        .map(|e| e.expect("read config/").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| std::fs::read_to_string(p).expect("example is UTF-8"))
        .collect();
    out.sort();
    assert!(out.len() >= 2, "expected the shipped examples in {}", dir.display());
    out
}

/// One edit of a document, by line (indices are taken modulo the line count).
#[derive(Debug, Clone)]
enum Edit {
    Delete(usize),
    Duplicate(usize),
    Uncomment(usize),
    Swap(usize, usize),
    /// Replace the value of a `key = value` line.
    Value(usize, String),
    Insert(usize, String),
}

/// Byte-level damage applied after the line edits (offsets modulo the length,
/// moved back to a character boundary).
#[derive(Debug, Clone)]
enum Damage {
    None,
    Truncate(usize),
    InsertText(usize, String),
}

fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|i| i.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        Just("nan".to_string()),
        Just("-inf".to_string()),
        Just("18446744073709551616".to_string()),
        Just("\"\"".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        Just("[1, \"a\", { x = 1 }]".to_string()),
        Just("{ kind = 5, dir = [] }".to_string()),
        Just("[{ cron = \"x\", duration = \"-1s\", timezone = \"Mars/Olympus\" }]".to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
        Just("\"0\"".to_string()),
        Just("\"999999999999999999999h\"".to_string()),
        Just("\"postgres://\u{0}@/\"".to_string()),
        // Random unicode in basic and literal strings (escapes excluded: the
        // string must stay a string for validation to see it).
        "\\PC{0,24}".prop_map(|s| format!("\"{}\"", s.replace(['\\', '"'], ""))),
        "\\PC{0,24}".prop_map(|s| format!("'{}'", s.replace('\'', ""))),
        // Anything at all, often not TOML.
        "\\PC{0,16}",
    ]
}

fn raw_line() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("[store]".to_string()),
        Just("[email]".to_string()),
        Just("[api]".to_string()),
        Just("[[targets]]".to_string()),
        Just("[targets]".to_string()),
        Just("[daemon]".to_string()),
        "\\[\\[?[a-z_.]{1,12}\\]\\]?",
        ("[a-z_]{1,16}", toml_value()).prop_map(|(k, v)| format!("{k} = {v}")),
        "\\PC{0,40}",
        any::<String>(),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        2 => any::<usize>().prop_map(Edit::Delete),
        1 => any::<usize>().prop_map(Edit::Duplicate),
        3 => any::<usize>().prop_map(Edit::Uncomment),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::Swap(a, b)),
        3 => (any::<usize>(), toml_value()).prop_map(|(i, v)| Edit::Value(i, v)),
        2 => (any::<usize>(), raw_line()).prop_map(|(i, l)| Edit::Insert(i, l)),
    ]
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        6 => Just(Damage::None),
        1 => any::<usize>().prop_map(Damage::Truncate),
        1 => (any::<usize>(), "\\PC{1,8}|[\u{0}-\u{1f}\u{feff}\u{202e}\u{fffd}]{1,4}")
            .prop_map(|(i, s)| Damage::InsertText(i, s)),
    ]
}

fn key_of(line: &str) -> Option<(&str, &str)> {
    let (k, v) = line.split_once('=')?;
    let k = k.trim();
    let ok = !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    ok.then_some((k, v))
}

fn uncomment(line: &str) -> Option<String> {
    let rest = line.trim_start().strip_prefix('#')?.trim_start();
    key_of(rest).map(|_| rest.to_string())
}

fn apply(lines: &mut Vec<String>, e: &Edit) {
    if lines.is_empty() {
        if let Edit::Insert(_, l) = e {
            lines.push(l.clone());
        }
        return;
    }
    let n = lines.len();
    match e {
        Edit::Delete(i) => {
            lines.remove(i % n);
        }
        Edit::Duplicate(i) => {
            let l = lines[i % n].clone();
            lines.insert(i % n, l);
        }
        Edit::Uncomment(i) => {
            if let Some(l) = uncomment(&lines[i % n]) {
                lines[i % n] = l;
            }
        }
        Edit::Swap(a, b) => lines.swap(a % n, b % n),
        Edit::Value(i, v) => {
            let line = &lines[i % n];
            if let Some((k, _)) = key_of(line) {
                lines[i % n] = format!("{k} = {v}");
            }
        }
        Edit::Insert(i, l) => lines.insert(i % (n + 1), l.clone()),
    }
}

fn floor_boundary(s: &str, i: usize) -> usize {
    let mut i = i % (s.len() + 1);
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn mutate(base: &str, edits: &[Edit], dmg: &Damage) -> String {
    let mut lines: Vec<String> = base.lines().map(str::to_string).collect();
    for e in edits {
        apply(&mut lines, e);
    }
    let mut doc = lines.join("\n");
    doc.push('\n');
    match dmg {
        Damage::None => {}
        Damage::Truncate(i) => doc.truncate(floor_boundary(&doc, *i)),
        Damage::InsertText(i, s) => doc.insert_str(floor_boundary(&doc, *i), s),
    }
    doc
}

/// The refusal contract: every problem names this file, says something, and
/// has a line or a key path; the printed error names the file too.
fn assert_located(path: &Path, err: &ConfigError) -> Result<(), TestCaseError> {
    match err {
        ConfigError::Invalid { problems } => {
            prop_assert!(!problems.is_empty(), "Invalid without problems");
            for p in problems {
                prop_assert_eq!(&p.file, path);
                prop_assert!(!p.message.trim().is_empty(), "problem without a message: {:?}", p);
                prop_assert!(p.line.is_some() || !p.key.is_empty(), "problem with neither line nor key: {:?}", p);
            }
            let shown = err.to_string();
            prop_assert!(shown.contains(&path.display().to_string()), "message does not name the file: {}", shown);
        }
        ConfigError::Read { path: p, .. } => {
            prop_assert_eq!(p.as_path(), path);
            prop_assert!(err.to_string().contains(&path.display().to_string()));
        }
        other => prop_assert!(false, "load returned a target-selection error: {other}"),
    }
    Ok(())
}

/// A config file in a fresh temp dir (relative paths in it resolve there).
fn write_config(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pgrehearse.toml");
    std::fs::write(&path, bytes).expect("write config");
    (dir, path)
}

proptest! {
    #![proptest_config(PropConfig { cases: 1000, failure_persistence: None, ..PropConfig::default() })]

    /// Any bytes at all, through the CLI's own entry point (file read included).
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let (_dir, path) = write_config(&bytes);
        if let Err(e) = Config::load(&path) {
            assert_located(&path, &e)?;
        }
    }

    /// Arbitrary text, often near-TOML.
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}|(\\[\\[?[a-z]{0,8}\\]?\\]?\n|[a-z_]{1,12} = \\PC{0,12}\n){0,12}") {
        let path = Path::new("/etc/pgrehearse/fuzz.toml");
        if let Err(problems) = validate::from_source(path, &text) {
            assert_located(path, &ConfigError::Invalid { problems })?;
        }
    }
}

proptest! {
    #![proptest_config(PropConfig { cases: 5000, failure_persistence: None, ..PropConfig::default() })]

    /// Mutated shipped examples: load or a located refusal, never a panic.
    #[test]
    fn mutated_examples_never_panic(
        which in any::<usize>(),
        edits in prop::collection::vec(edit(), 0..8),
        dmg in damage(),
    ) {
        let bases = examples();
        let doc = mutate(&bases[which % bases.len()], &edits, &dmg);
        let path = Path::new("/etc/pgrehearse/fuzz.toml");
        match validate::from_source(path, &doc) {
            Ok(cfg) => {
                // A loaded config must also print (`config check`).
                prop_assert!(serde_json::to_string(&cfg).is_ok());
            }
            Err(problems) => assert_located(path, &ConfigError::Invalid { problems })?,
        }
    }
}

proptest! {
    #![proptest_config(PropConfig { cases: 300, failure_persistence: None, ..PropConfig::default() })]

    /// A value of the wrong type (a string where the key takes a number, a
    /// table, a list or a boolean, or a number where it takes a string) is
    /// refused, and a problem points at the very line of the edit.
    #[test]
    fn type_swap_is_refused_at_its_line(which in any::<usize>(), at in any::<usize>()) {
        let bases = examples();
        let base = &bases[which % bases.len()];
        let mut lines: Vec<String> = base.lines().map(str::to_string).collect();
        let candidates: Vec<usize> = (0..lines.len())
            .filter(|&i| key_of(&lines[i]).is_some() || uncomment(&lines[i]).is_some())
            .collect();
        prop_assume!(!candidates.is_empty());
        let i = candidates[at % candidates.len()];
        if let Some(l) = uncomment(&lines[i]) {
            lines[i] = l;
        }
        let (key, value) = key_of(&lines[i]).map(|(k, v)| (k.to_string(), v.to_string())).expect("a key line");
        // Multi-line values (`checks = [`) are not whole on their line.
        let original = toml::from_str::<toml::Table>(&format!("v = {value}"));
        prop_assume!(original.is_ok());
        let original = original.expect("checked");
        let swapped = if original["v"].is_str() { "42" } else { "\"not-the-right-type\"" };
        lines[i] = format!("{key} = {swapped}");
        let doc = lines.join("\n");
        let path = Path::new("/etc/pgrehearse/fuzz.toml");
        match validate::from_source(path, &doc) {
            Ok(_) => prop_assert!(false, "`{key} = {swapped}` at line {} was accepted", i + 1),
            Err(problems) => {
                assert_located(path, &ConfigError::Invalid { problems: problems.clone() })?;
                prop_assert!(
                    problems.iter().any(|p| p.line == Some(i + 1)),
                    "`{key} = {swapped}` at line {} but problems are {:?}", i + 1, problems
                );
            }
        }
    }
}

/// The mutations reach validation, not only the TOML parser: deleting the
/// target's `live_url` is reported at that target with the key path.
#[test]
fn deleting_a_required_key_names_it() {
    let base = &examples().into_iter().find(|e| e.contains("[email]")).expect("the full example");
    let lines: Vec<&str> = base.lines().filter(|l| !l.starts_with("live_url")).collect();
    let problems = validate::from_source(Path::new("/x/p.toml"), &lines.join("\n")).expect_err("live_url is required");
    assert!(problems.iter().any(|p| p.key == "targets[0].live_url"), "{problems:?}");
}

/// Found by `mutated_examples_never_panic`: the TOML parser reports a control
/// character in a comment with an empty message; the problem must say what
/// is wrong.
#[test]
fn control_character_in_a_comment_is_explained() {
    let problems = validate::from_source(Path::new("/x/p.toml"), "#\u{b} a comment\nstate_dir = \"/x\"\n")
        .expect_err("a control character is not TOML");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!((problems[0].line, problems[0].column), (Some(1), Some(2)));
    assert!(problems[0].message.contains("U+000B"), "{problems:?}");
}

/// A Latin-1 config is refused with the line and column of its first bad
/// byte (and a BOM'd UTF-8 one loads).
#[test]
fn latin1_config_is_located() {
    let (_dir, path) = write_config(b"state_dir = \"/x\"\n# caf\xe9\n");
    match Config::load(&path) {
        Err(ConfigError::Invalid { problems }) => {
            assert_eq!((problems[0].line, problems[0].column), (Some(2), Some(6)), "{problems:?}");
            assert!(problems[0].message.contains("0xE9"), "{problems:?}");
        }
        other => panic!("expected a located problem, got {other:?}"),
    }
    let (_dir, path) = write_config(b"\xef\xbb\xbf[[targets]]\nname = \"a\"\nlive_url = \"postgres://u@h/db\"\n");
    assert!(Config::load(&path).is_ok(), "a UTF-8 BOM at the start is fine");
}

/// The mutations are worth running: a fair share of them is valid TOML that
/// reaches validation (and some still load), not only parser errors.
#[test]
fn mutations_reach_validation() {
    use proptest::strategy::ValueTree;
    let bases = examples();
    let strategy = (any::<usize>(), prop::collection::vec(edit(), 0..8), damage());
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut toml_errors, mut refused, mut loaded) = (0, 0, 0);
    for _ in 0..500 {
        let (which, edits, dmg) = strategy.new_tree(&mut runner).expect("a case").current();
        let doc = mutate(&bases[which % bases.len()], &edits, &dmg);
        if toml::from_str::<toml::Table>(&doc).is_err() {
            toml_errors += 1;
        } else if validate::from_source(Path::new("/x/p.toml"), &doc).is_err() {
            refused += 1;
        } else {
            loaded += 1;
        }
    }
    eprintln!("500 mutations: {toml_errors} not TOML, {refused} refused by validation, {loaded} loaded");
    assert!(refused >= 50 && loaded >= 25 && toml_errors >= 25, "{toml_errors} / {refused} / {loaded}");
}

/// A `*_file` key pointing at something that is not a small regular file
/// (a device, a FIFO, a huge file) is refused at once, naming the key: never
/// a hang or memory filled.
#[test]
fn secret_files_that_are_not_secrets_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'x'; 100 * 1024]).expect("write");
    for (file, says) in [
        (Path::new("/dev/zero"), "not a regular file"),
        (fifo.as_path(), "not a regular file"),
        (big.as_path(), "larger than 64 KiB"),
    ] {
        let src = format!("[[targets]]\nname = \"a\"\nlive_url_file = {:?}\n", file.display().to_string());
        let t0 = std::time::Instant::now();
        let problems = validate::from_source(&dir.path().join("p.toml"), &src).expect_err("refused");
        assert!(t0.elapsed() < std::time::Duration::from_secs(5), "{file:?} took {:?}", t0.elapsed());
        assert!(
            problems.iter().any(|p| p.key == "targets[0].live_url_file" && p.message.contains(says)),
            "{file:?}: {problems:?}"
        );
    }
}
