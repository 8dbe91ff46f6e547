//! Tests of the statement splitter (`split.rs`): psql's splitting rules, line numbers, the no-transaction marker, and generated scripts that must round-trip.

use super::*;

fn sqls(script: &str) -> Vec<String> {
    split(script).into_iter().map(|s| s.sql).collect()
}

#[track_caller]
fn check(script: &str, expected: &[&str]) {
    let got = split(script);
    let texts: Vec<&str> = got.iter().map(|s| s.sql.as_str()).collect();
    assert_eq!(texts, expected, "splitting {script:?}");
    for s in &got {
        assert_eq!(&script[s.start..s.end], s.sql);
    }
}

#[test]
fn simple_statements_and_final_without_semicolon() {
    check("SELECT 1; SELECT 2;\nSELECT 3", &["SELECT 1", "SELECT 2", "SELECT 3"]);
}

#[test]
fn empty_and_comment_only_fragments_are_skipped() {
    check(";;  ;\n-- only a comment\n;/* block */;", &[]);
    check("", &[]);
    check("-- header\n\nSELECT 1;\n-- trailer\n", &["SELECT 1"]);
}

#[test]
fn comments_inside_are_kept_and_ends_are_trimmed() {
    check("/* lead */ SELECT 1 /* mid; */ + -- x;\n 2 -- trail\n;", &["SELECT 1 /* mid; */ + -- x;\n 2"]);
}

#[test]
fn single_quoted_strings_with_doubled_quotes() {
    check("SELECT 'a;b', 'it''s; fine'; SELECT ''';'", &["SELECT 'a;b', 'it''s; fine'", "SELECT ''';'"]);
}

#[test]
fn standard_strings_do_not_escape_with_backslash() {
    check(r"SELECT 'C:\'; SELECT 2", &[r"SELECT 'C:\'", "SELECT 2"]);
}

#[test]
fn escape_strings_use_backslash() {
    check(r"SELECT E'it\'s;', e'\\'; SELECT 2", &[r"SELECT E'it\'s;', e'\\'", "SELECT 2"]);
    // An identifier ending in e is not an E string prefix.
    check(r"SELECT some'\'; SELECT 2", &[r"SELECT some'\'", "SELECT 2"]);
}

#[test]
fn unicode_national_bit_and_hex_strings() {
    check(
        r"SELECT U&'d\0061t;a' UESCAPE '!', N'x;', B'1;0', X'1F;'; SELECT 2",
        &[r"SELECT U&'d\0061t;a' UESCAPE '!', N'x;', B'1;0', X'1F;'", "SELECT 2"],
    );
}

#[test]
fn double_quoted_identifiers() {
    check(r#"SELECT 1 AS "a;""b"; SELECT U&"x;y""#, &[r#"SELECT 1 AS "a;""b""#, r#"SELECT U&"x;y""#]);
}

#[test]
fn dollar_quotes_with_and_without_tags() {
    check(
        "DO $$ BEGIN PERFORM 1; END $$; SELECT $fn$ a; $$ ; $x$ $fn$; SELECT 3",
        &["DO $$ BEGIN PERFORM 1; END $$", "SELECT $fn$ a; $$ ; $x$ $fn$", "SELECT 3"],
    );
    // Tags are case-sensitive.
    check("SELECT $A$ ; $a$ ; $A$; SELECT 2", &["SELECT $A$ ; $a$ ; $A$", "SELECT 2"]);
}

#[test]
fn parameters_and_dollar_in_identifiers_are_not_dollar_quotes() {
    check(
        "PREPARE p AS SELECT $1; SELECT a$b$ FROM t; SELECT $2",
        &["PREPARE p AS SELECT $1", "SELECT a$b$ FROM t", "SELECT $2"],
    );
    // `$1$` is a parameter followed by a lone `$`, not a delimiter.
    check("SELECT $1$; SELECT 2", &["SELECT $1$", "SELECT 2"]);
}

#[test]
fn nested_block_comments() {
    check("SELECT /* a /* b; */ c; */ 1; SELECT 2", &["SELECT /* a /* b; */ c; */ 1", "SELECT 2"]);
}

#[test]
fn line_comments_hide_semicolons_and_quotes() {
    check("SELECT 1 -- it's; \"x\n, 2;\nSELECT 3", &["SELECT 1 -- it's; \"x\n, 2", "SELECT 3"]);
}

#[test]
fn comment_starts_inside_an_operator() {
    check("SELECT 1 +-- ;\n 2; SELECT 3 */* ; */ 4", &["SELECT 1 +-- ;\n 2", "SELECT 3 */* ; */ 4"]);
}

#[test]
fn semicolons_inside_parentheses_do_not_split() {
    check(
        "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); INSERT INTO b VALUES (2)); SELECT 1",
        &["CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); INSERT INTO b VALUES (2))", "SELECT 1"],
    );
}

#[test]
fn begin_atomic_bodies() {
    let f = "CREATE FUNCTION f(a int) RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n  INSERT INTO t VALUES (a);\n  \
             SELECT CASE WHEN a > 0 THEN 1 ELSE 0 END;\nEND";
    let p = "create or replace procedure p() begin atomic select 1; end";
    check(&format!("{f};\n{p};\nSELECT 2;"), &[f, p, "SELECT 2"]);
}

#[test]
fn begin_outside_routines_is_a_statement() {
    check("BEGIN; CREATE TABLE t (a int); COMMIT;", &["BEGIN", "CREATE TABLE t (a int)", "COMMIT"]);
    check("CREATE TABLE t (begin int); SELECT 1", &["CREATE TABLE t (begin int)", "SELECT 1"]);
    // Only FUNCTION / PROCEDURE start the tracking, as in psql.
    check(
        "CREATE OR REPLACE TRIGGER x BEFORE INSERT ON t EXECUTE FUNCTION f(); SELECT 1",
        &["CREATE OR REPLACE TRIGGER x BEFORE INSERT ON t EXECUTE FUNCTION f()", "SELECT 1"],
    );
}

#[test]
fn case_outside_a_begin_body_does_not_nest() {
    let f = "CREATE FUNCTION sign(a int) RETURNS int LANGUAGE sql RETURN CASE WHEN a > 0 THEN 1 ELSE 0 END";
    check(&format!("{f}; SELECT 2"), &[f, "SELECT 2"]);
}

#[test]
fn plpgsql_functions_in_dollar_quotes() {
    let f = "CREATE OR REPLACE FUNCTION trg() RETURNS trigger AS $body$\nBEGIN\n  NEW.at := now();\n  \
             RETURN NEW;\nEND;\n$body$ LANGUAGE plpgsql";
    check(
        &format!("{f};\nCREATE TRIGGER t BEFORE UPDATE ON x FOR EACH ROW EXECUTE FUNCTION trg();"),
        &[f, "CREATE TRIGGER t BEFORE UPDATE ON x FOR EACH ROW EXECUTE FUNCTION trg()"],
    );
}

#[test]
fn crlf_lines_and_bom() {
    let script = "\u{feff}-- no-transaction\r\nCREATE INDEX CONCURRENTLY i ON t (a);\r\n\r\nSELECT 'x;\r\ny';\r\n";
    let got = split(script);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].sql, "CREATE INDEX CONCURRENTLY i ON t (a)");
    assert_eq!(got[0].line, 2);
    assert_eq!(got[1].sql, "SELECT 'x;\r\ny'");
    assert_eq!(got[1].line, 4);
    assert_eq!(&script[got[1].start..got[1].end], got[1].sql);
}

#[test]
fn non_ascii_everywhere() {
    check(
        "SELECT 'ünï;cødé' AS \"naïve;\", café FROM «t»; SELECT $é$ ; $é$; SELECT /* ☃; */ 1",
        &["SELECT 'ünï;cødé' AS \"naïve;\", café FROM «t»", "SELECT $é$ ; $é$", "SELECT /* ☃; */ 1"],
    );
}

#[test]
fn unterminated_constructs_run_to_the_end() {
    check("SELECT 1; SELECT 'oops; SELECT 2", &["SELECT 1", "SELECT 'oops; SELECT 2"]);
    check("SELECT 1; SELECT $$ x; SELECT 2", &["SELECT 1", "SELECT $$ x; SELECT 2"]);
    check("SELECT 1; SELECT 2 /* x; /* y */ ; SELECT 3", &["SELECT 1", "SELECT 2"]);
    check(r"SELECT E'\", &[r"SELECT E'\"]);
}

#[test]
fn lines_are_those_of_the_first_token() {
    let script = "-- a\n\n/* b\n c */ SELECT 1;\n\n\n  ALTER TABLE t\n ADD COLUMN a int;";
    let lines: Vec<usize> = split(script).iter().map(|s| s.line).collect();
    assert_eq!(lines, [4, 7]);
}

#[test]
fn line_of_offsets() {
    let s = "a\nb\r\nc";
    assert_eq!(line_of(s, 0), 1);
    assert_eq!(line_of(s, 1), 1);
    assert_eq!(line_of(s, 2), 2);
    assert_eq!(line_of(s, 5), 3);
    assert_eq!(line_of(s, 999), 3);
}

#[test]
fn no_transaction_matches_sqlx() {
    assert!(no_transaction("-- no-transaction\nCREATE INDEX CONCURRENTLY i ON t (a);"));
    assert!(no_transaction("-- no-transaction"));
    assert!(no_transaction("-- no-transaction\r\nSELECT 1"));
    // sqlx checks a prefix of the file, nothing more.
    assert!(no_transaction("-- no-transactions please"));
    assert!(!no_transaction("--no-transaction\n"));
    assert!(!no_transaction(" -- no-transaction\n"));
    assert!(!no_transaction("\n-- no-transaction\n"));
    assert!(!no_transaction("\u{feff}-- no-transaction\n"));
    assert!(!no_transaction("-- No-Transaction\n"));
    assert!(!no_transaction("SELECT 1; -- no-transaction"));
}

#[test]
fn tokens_of_a_statement() {
    let kinds: Vec<(TokenKind, &str)> =
        tokens(r#"ALTER TABLE "My""T" ADD x numeric(10,2) DEFAULT E'a\'b'::text || $1 -- c"#)
            .map(|t| (t.kind, t.text))
            .collect();
    use TokenKind::*;
    assert_eq!(
        kinds,
        [
            (Word, "ALTER"),
            (Word, "TABLE"),
            (QuotedIdent, r#""My""T""#),
            (Word, "ADD"),
            (Word, "x"),
            (Word, "numeric"),
            (Punct, "("),
            (Number, "10"),
            (Punct, ","),
            (Number, "2"),
            (Punct, ")"),
            (Word, "DEFAULT"),
            (String, r"E'a\'b'"),
            (Punct, "::"),
            (Word, "text"),
            (Operator, "||"),
            (Param, "$1"),
        ]
    );
}

/// A deterministic xorshift generator: the property test needs variety, not a new dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

#[test]
fn generated_scripts_round_trip() {
    // Pieces that each hide a `;` or a quote from a naive splitter; none starts or ends with a comment.
    let pieces = [
        "'a;b'",
        "'it''s;'",
        r"E'it\'s;'",
        r"E'\\'",
        r"U&'\0041;'",
        "\"col;\"\"x\"",
        "$$ ; ' \" $$",
        "$t$ $$ ; $t$",
        "$é$ ; $é$",
        "1 /* ; /* ; */ ' */ + 2",
        "1 -- ; '\n + 2",
        "1 -- ; \r\n + 2",
        "(1; 2)",
        "$1",
        "a$b",
        "'ünï;'",
        "x::text",
        "CASE WHEN true THEN 'end;' END",
    ];
    let heads = ["SELECT", "select", "INSERT INTO t VALUES (", "DO"];
    let separators = [";", "; ", ";\n", ";\r\n", "\n;\n", ";-- c;'\n", ";/* c; */", ";;\n", " ;\t"];
    let routine = "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT CASE WHEN \
                   true THEN 2 END; END";
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..500 {
        let mut expected = Vec::new();
        for _ in 0..1 + rng.below(6) {
            let stmt = match rng.below(8) {
                0 => routine.to_string(),
                _ => {
                    let head = rng.pick(&heads);
                    let body: Vec<&str> = (0..1 + rng.below(4)).map(|_| rng.pick(&pieces)).collect();
                    let tail = if head.ends_with('(') { ")" } else { "" };
                    format!("{head} {}{tail}", body.join(" || "))
                }
            };
            expected.push(stmt);
        }
        let mut script = String::from(rng.pick(&["", "\u{feff}", "-- head;\n", "/* x; */\r\n"]));
        for (k, stmt) in expected.iter().enumerate() {
            script.push_str(stmt);
            if k + 1 < expected.len() || rng.below(2) == 0 {
                script.push_str(rng.pick(&separators));
            }
        }
        assert_eq!(sqls(&script), expected, "script {script:?}");
        for s in split(&script) {
            assert_eq!(&script[s.start..s.end], s.sql);
            assert_eq!(s.line, line_of(&script, s.start));
        }
    }
}
