//! Odd migration files, as editors and operating systems really write them,
//! through `pgrehearse status` and `rehearse` on a live cluster and a SECOND
//! cluster as the shadow server.
//!
//! Handled as the tool itself would (the rehearsal passes):
//! - a UTF-8 BOM at the start of an up and a down file (the BOM is not sent
//!   to PostgreSQL; the checksum is still sqlx's, SHA-384 of the raw bytes);
//! - CRLF line endings, including a `-- no-transaction\r\n` first line
//!   (`CREATE INDEX CONCURRENTLY` then runs outside a transaction);
//! - an empty file, a whitespace-only file and a file of comments only
//!   (applied and recorded, like sqlx does);
//! - spaces in a file name and in the migrations directory's path;
//! - a diesel directory with spaces, a BOM'd CRLF `up.sql` and a BOM'd
//!   `metadata.toml`.
//!
//! Refused with an error that names the file and says what to do (exit 1):
//! Latin-1 bytes, a BOM that hides `-- no-transaction` from sqlx, a `.sql` name that is not `<version>_<name>`, a version
//! that is not a number, two files with one version, a down without its up,
//! a file name that is not UTF-8, a diesel directory without `up.sql`, two
//! diesel directories with one version.
//!
//! Explained: an applied migration checked out again with CRLF (or with a
//! BOM) is drift, as it is for sqlx (which checksums the raw bytes); status
//! says it is only the line endings (or the BOM) and how to fix the checkout.
//!
//! In every case nothing panics, live gets no history table and no changed
//! table, and a refused rehearsal leaves no scratch database on the shadow.
//! Read back with `psql` on both clusters and SHA-384 computed by the test.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::harness::cli::{Run, toml_string};
use crate::harness::migrations::*;
use crate::harness::shadow::scratch_dbs;

const BOM: &str = "\u{feff}";

fn no_panic(r: &Run, what: &str) {
    assert!(!r.stderr.contains("panicked"), "{what}: pgrehearse panicked:\n{}", r.stderr);
}

/// Points the rig's config at `dir` (a path that may hold spaces).
fn use_dir(rig: &Rig, kind: &str, dir: &Path) {
    let line = format!("migrations = {{ kind = \"{kind}\", dir = {} }}", toml_string(&dir.display().to_string()));
    rig.pgr.write_config(&rig.pgr_config_with(&line));
}

fn fresh_dir(rig: &Rig, name: &str) -> PathBuf {
    let d = rig.pgr.dir().join(name);
    std::fs::create_dir_all(&d).expect("create migrations dir");
    d
}

#[test]
fn sqlx_bom_crlf_empty_and_spaces_are_handled() {
    let rig = Rig::start("sqlx", "CREATE TABLE base (id integer PRIMARY KEY); INSERT INTO base VALUES (1), (2);");
    let dir = fresh_dir(&rig, "my migrations");
    use_dir(&rig, "sqlx", &dir);
    let files: Vec<(&str, &str, String, Option<String>)> = vec![
        ("1", "bom", format!("{BOM}CREATE TABLE bom_t (id integer);\n"), Some(format!("{BOM}DROP TABLE bom_t;\n"))),
        (
            "2",
            "crlf",
            "CREATE TABLE crlf_t (\r\n    id integer,\r\n    note text\r\n);\r\nINSERT INTO crlf_t VALUES (1, 'a\r\nb');\r\n"
                .to_string(),
            Some("DROP TABLE crlf_t;\r\n".to_string()),
        ),
        (
            "3",
            "crlf_concurrently",
            "-- no-transaction\r\nCREATE INDEX CONCURRENTLY crlf_idx ON crlf_t (id);\r\n".to_string(),
            Some("-- no-transaction\r\nDROP INDEX CONCURRENTLY crlf_idx;\r\n".to_string()),
        ),
        ("4", "empty", String::new(), None),
        ("5", "blank", "  \n\t\r\n\n".to_string(), None),
        ("6", "comments_only", "-- nothing to do yet\n/* really\n   nothing */\n".to_string(), None),
        (
            "7",
            "with space",
            "CREATE TABLE \"with space\" (id integer);\n".to_string(),
            Some("DROP TABLE \"with space\";\n".to_string()),
        ),
    ];
    let mut ups = Vec::new();
    for (v, name, up, down) in &files {
        ups.push((*v, *name, sqlx_migration(&dir, v, name, up, down.as_deref())));
    }

    let st = rig.status();
    no_panic(&st, "status");
    st.ok();
    let st = st.json();
    let pending = st["pending"].as_array().expect("pending");
    let versions: Vec<&str> = pending.iter().map(|p| p["version"].as_str().unwrap()).collect();
    assert_eq!(versions, ["1", "2", "3", "4", "5", "6", "7"], "status: {st:#}");
    assert_eq!(pending[2]["transactional"], false, "-- no-transaction with CRLF: {}", pending[2]);
    assert_eq!(pending[0]["transactional"], true, "{}", pending[0]);
    assert_eq!(pending[6]["name"], "with space", "{}", pending[6]);

    let snap = rig.snapshot();
    let r = rig.rehearse(&["--snapshot", &snap, "--keep"]);
    no_panic(&r, "rehearse");
    let report = r.json();
    r.ok();
    assert_eq!(report["ok"], true, "{}", r.stdout);
    for m in report["migrations"].as_array().unwrap() {
        assert_eq!(m["status"], "applied", "migration {}: {}", m["version"], r.stdout);
    }

    let kept = kept_db(&rig, &report);
    let sh = &rig.shadow;
    assert!(table_exists(sh, &kept, "bom_t"), "the BOM'd migration did not create its table");
    assert_eq!(
        sh.psql(&kept, "SELECT note = E'a\\r\\nb' FROM crlf_t"),
        "t",
        "the CRLF inside a string literal changed"
    );
    assert_eq!(
        sh.psql(&kept, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'crlf_idx'::regclass"),
        "t",
        "CREATE INDEX CONCURRENTLY of the CRLF file"
    );
    assert!(table_exists(sh, &kept, "\"with space\""), "the table of the file with a space in its name");
    let history = rows(
        sh,
        &kept,
        "SELECT version || '|' || description || '|' || success || '|' || encode(checksum, 'hex')
           FROM _sqlx_migrations ORDER BY version",
    );
    assert_eq!(history.len(), ups.len(), "_sqlx_migrations: {history:#?}");
    for ((v, name, path), row) in ups.iter().zip(&history) {
        let f: Vec<&str> = row.split('|').collect();
        assert_eq!((f[0], f[1], f[2]), (*v, sqlx_description(name).as_str(), "true"), "{row}");
        assert_eq!(f[3], sha384_hex(path), "checksum of {v} is not SHA-384 of the file's raw bytes");
    }

    // Live was only read.
    assert!(!table_exists(&rig.live, "app", "_sqlx_migrations"), "the rehearsal wrote history on live");
    assert!(!table_exists(&rig.live, "app", "bom_t"), "the rehearsal ran a migration on live");
    assert_eq!(rig.live.psql("app", "SELECT count(*) FROM base"), "2");
}

/// sqlx checksums the raw bytes, so an applied file checked out again with
/// CRLF (git's `core.autocrlf`) is drift for sqlx too; status says it is
/// only the line endings (and only the BOM, for a BOM), and what to do.
#[test]
fn an_applied_file_checked_out_with_crlf_is_explained() {
    let rig = Rig::start("sqlx", "");
    let lf = "CREATE TABLE things (\n    id integer PRIMARY KEY\n);\n";
    let up1 = rig.sqlx("1", "create_things", lf, Some("DROP TABLE things;\n"));
    let up2 = rig.sqlx("2", "create_others", "CREATE TABLE others (id integer);\n", None);
    sqlx_apply(&rig.live, "app", &up1, "1", "create_things");
    sqlx_apply(&rig.live, "app", &up2, "2", "create_others");
    let (recorded1, recorded2) = (sha384_hex(&up1), sha384_hex(&up2));
    rig.status().ok();

    std::fs::write(&up1, lf.replace('\n', "\r\n")).unwrap();
    std::fs::write(&up2, format!("{BOM}CREATE TABLE others (id integer);\n")).unwrap();
    let st = rig.status();
    no_panic(&st, "status");
    st.expect_code(2);
    let v = st.json();
    assert_eq!(
        v["drift"],
        serde_json::json!([
            { "kind": "changed", "version": "1", "recorded": recorded1, "current": sha384_hex(&up1), "only": "line_endings" },
            { "kind": "changed", "version": "2", "recorded": recorded2, "current": sha384_hex(&up2), "only": "bom" },
        ]),
        "{v:#}"
    );
    let human = rig.pgr.run(&["status"]);
    no_panic(&human, "status (text)");
    assert!(
        human.stdout.contains("migration 1 differs from the applied file only in its line endings")
            && human.stdout.contains("eol=lf"),
        "status does not explain the CRLF checkout:\n{}",
        human.stdout
    );
    assert!(
        human.stdout.contains("migration 2 differs from the applied file only by a UTF-8 byte order mark"),
        "{}",
        human.stdout
    );

    // A real edit is still an edit.
    std::fs::write(&up1, "CREATE TABLE things (id bigint PRIMARY KEY);\n").unwrap();
    let v = rig.status().json();
    assert!(v["drift"][0].get("only").is_none(), "{v:#}");
    assert_eq!(rig.live.psql("app", "SELECT count(*) FROM _sqlx_migrations"), "2", "status wrote to live");
}

/// One refused layout: the files to write, and what the error must say.
struct Bad {
    case: &'static str,
    files: Vec<(Vec<u8>, Vec<u8>)>,
    /// File names (or parts) the error must name, and a hint it must give.
    names: Vec<&'static str>,
    hint: &'static str,
}

fn bad(case: &'static str, files: &[(&[u8], &[u8])], names: &[&'static str], hint: &'static str) -> Bad {
    Bad { case, files: files.iter().map(|(n, c)| (n.to_vec(), c.to_vec())).collect(), names: names.to_vec(), hint }
}

/// Runs `status` and `rehearse` on a directory holding only `b`'s files.
fn expect_refused(rig: &Rig, kind: &str, snap: &str, b: &Bad, i: usize) {
    let dir = fresh_dir(rig, &format!("bad {i}"));
    for (name, content) in &b.files {
        let path = dir.join(std::ffi::OsStr::from_bytes(name));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create parent");
        }
        std::fs::write(&path, content).expect("write file");
    }
    use_dir(rig, kind, &dir);
    let scratch_before = scratch_dbs(&rig.shadow);
    for args in [vec!["status"], vec!["rehearse", "--snapshot", snap]] {
        let r = rig.pgr.run_json(&args);
        let what = format!("{} ({}): {args:?}", b.case, kind);
        eprintln!("{what}: exit {}\n{}", r.code, tail(&r.stderr, 2000));
        no_panic(&r, &what);
        assert_eq!(r.code, 1, "{what}: expected exit 1\nstdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
        for n in &b.names {
            assert!(r.stderr.contains(n), "{what}: the error does not name `{n}`:\n{}", r.stderr);
        }
        assert!(r.stderr.contains(b.hint), "{what}: the error does not say `{}`:\n{}", b.hint, r.stderr);
    }
    assert_eq!(scratch_dbs(&rig.shadow), scratch_before, "{}: a refused rehearsal left a scratch database", b.case);
    for t in ["_sqlx_migrations", "__diesel_schema_migrations", "t"] {
        assert!(!table_exists(&rig.live, "app", t), "{}: live got {t}", b.case);
    }
}

#[test]
fn sqlx_files_it_cannot_run_are_refused_by_name() {
    let rig = Rig::start("sqlx", "CREATE TABLE base (id integer PRIMARY KEY);");
    let snap = rig.snapshot();
    let ok: &[u8] = b"CREATE TABLE t (id integer);\n";
    let cases = [
        bad(
            "Latin-1 bytes",
            &[(b"1_latin.up.sql", b"CREATE TABLE t (n text);\nINSERT INTO t VALUES ('caf\xe9');\n")],
            &["1_latin.up.sql", "line 2"],
            "save the file as UTF-8",
        ),
        bad("no version", &[(b"add_users.sql", ok)], &["add_users.sql"], "is not a version number"),
        bad(
            "no underscore",
            &[(b"20240101-add-users.sql", ok)],
            &["20240101-add-users.sql"],
            "<version>_<name>.up.sql",
        ),
        bad(
            "duplicate versions",
            &[(b"1_a.up.sql", ok), (b"1_b.up.sql", ok)],
            &["1_a.up.sql", "1_b.up.sql"],
            "give one of them another version",
        ),
        bad("down without up", &[(b"1_a.up.sql", ok), (b"2_b.down.sql", ok)], &["2_b.down.sql"], "without its up"),
        bad(
            "BOM before -- no-transaction",
            &[(
                b"1_idx.up.sql",
                "\u{feff}-- no-transaction\nCREATE INDEX CONCURRENTLY base_idx ON base (id);\n".as_bytes(),
            )],
            &["1_idx.up.sql"],
            "without a BOM",
        ),
        bad("non-UTF-8 file name", &[(b"1_caf\xe9.up.sql", ok)], &["1_caf"], "not valid UTF-8; rename it"),
    ];
    for (i, b) in cases.iter().enumerate() {
        expect_refused(&rig, "sqlx", &snap, b, i);
    }
}

#[test]
fn diesel_odd_directories() {
    let rig = Rig::start("diesel", "CREATE TABLE base (id integer PRIMARY KEY);");
    let dir = fresh_dir(&rig, "diesel migrations");
    use_dir(&rig, "diesel", &dir);
    let d = diesel_migration(
        &dir,
        "2024-01-01-000000_add things table",
        &format!("{BOM}-- things\r\nCREATE TABLE things (\r\n    id integer\r\n);\r\n"),
        Some(&format!("{BOM}DROP TABLE things;\r\n")),
        None,
    );
    diesel_migration(
        &dir,
        "2024-01-02-000000_things idx",
        "CREATE INDEX CONCURRENTLY things_idx ON things (id);\r\n",
        Some("DROP INDEX CONCURRENTLY things_idx;\r\n"),
        Some(&format!("{BOM}run_in_transaction = false\r\n")),
    );
    // Files beside the directories are not migrations, for diesel either.
    std::fs::write(dir.join("README.md"), "notes\n").unwrap();

    let st = rig.status();
    no_panic(&st, "diesel status");
    st.ok();
    let st = st.json();
    let pending = st["pending"].as_array().expect("pending");
    let versions: Vec<&str> = pending.iter().map(|p| p["version"].as_str().unwrap()).collect();
    assert_eq!(versions, ["20240101000000", "20240102000000"], "{st:#}");
    assert_eq!(pending[0]["name"], "add things table", "{st:#}");
    assert_eq!(pending[1]["transactional"], false, "a BOM'd CRLF metadata.toml: {st:#}");
    assert!(d.join("up.sql").is_file());

    let snap = rig.snapshot();
    let r = rig.rehearse(&["--snapshot", &snap, "--keep"]);
    no_panic(&r, "diesel rehearse");
    let report = r.json();
    r.ok();
    assert_eq!(report["reversible"], true, "{}", r.stdout);
    let kept = kept_db(&rig, &report);
    assert_eq!(
        rig.shadow.psql(&kept, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'things_idx'::regclass"),
        "t"
    );
    assert_eq!(
        rows(&rig.shadow, &kept, "SELECT version FROM __diesel_schema_migrations ORDER BY version"),
        ["20240101000000", "20240102000000"]
    );
    assert!(!table_exists(&rig.live, "app", "things"), "the rehearsal ran a migration on live");

    let ok: &[u8] = b"CREATE TABLE t (id integer);\n";
    let cases = [
        bad("no up.sql", &[(b"2024-01-01-000000_a/down.sql", ok)], &["2024-01-01-000000_a"], "needs an up.sql"),
        bad(
            "one version twice",
            &[(b"2024-01-01-000000_a/up.sql", ok), (b"20240101000000_b/up.sql", ok)],
            &["2024-01-01-000000_a", "20240101000000_b"],
            "give one of them another version",
        ),
        bad(
            "Latin-1 up.sql",
            &[(b"2024-01-01-000000_a/up.sql", b"SELECT 'caf\xe9';\n")],
            &["up.sql"],
            "save the file as UTF-8",
        ),
        bad(
            "bad metadata.toml",
            &[
                (b"2024-01-01-000000_a/up.sql", ok),
                (b"2024-01-01-000000_a/metadata.toml", b"run_in_transaction = \"no\"\n"),
            ],
            &["metadata.toml"],
            "run_in_transaction must be true or false",
        ),
    ];
    for (i, b) in cases.iter().enumerate() {
        expect_refused(&rig, "diesel", &snap, b, i);
    }
}
