//! `pgrehearse salvage`: after a release that ends `restored` while an
//! application writes to two tables (`events` with a `bigserial` key: inserts;
//! `t`: updates and deletes; `audit`, without a key: inserts), `salvage`
//! puts every stranded insert, update and delete into live — checked with
//! psql against the kept database —, refuses rows with a value in a column
//! live dropped since, skips a row live changed since (never overwritten),
//! names the table without a key and exports its rows for a person; `-o`
//! writes one transaction that psql runs on a copy of live; a second
//! `--apply` changes nothing; `releases ID` shows the salvage; and each
//! refusal has its message and exit code.
//!
//! The list salvage reads is the finding's (`src/stranded/`): the test's own
//! primary-key comparison of the kept and the live database, done with psql,
//! must give the counts `stranded_writes` reports.

use crate::harness::migrations::*;
use crate::harness::release::*;
use crate::harness::wait_for;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

const SETUP: &str = "CREATE TABLE t (id int PRIMARY KEY, email text);
    INSERT INTO t SELECT g, 'user' || g || '@example.com' FROM generate_series(1, 2000) g;
    CREATE TABLE events (id bigserial PRIMARY KEY, note text NOT NULL, tag text);
    CREATE TABLE audit (note text);";

/// One application transaction every 50 ms: an event (every fifth one
/// tagged), the update of row `t.id = event id`, the delete of row
/// `t.id = 1000 + event id`, and an `audit` line.
const WRITER: &str = "SET ROLE app;
WITH i AS (INSERT INTO events (note, tag) SELECT 'written during the release', CASE WHEN count(*) % 5 = 0 THEN 'tagged' END FROM events RETURNING id),
     u AS (UPDATE t SET email = 'changed' || i.id || '@example.com' FROM i WHERE t.id = i.id RETURNING t.id),
     a AS (INSERT INTO audit SELECT 'event ' || i.id FROM i RETURNING 1)
DELETE FROM t USING i WHERE t.id = 1000 + i.id;
\\watch 0.05
";

/// The row digest of the contract (`stranded::digest_sql`), written out here.
fn digest(cols: &str) -> String {
    format!(
        "md5(coalesce((SELECT jsonb_object_agg(e.key, e.value) FROM jsonb_each(to_jsonb(x.*)) e \
         WHERE e.key = ANY('{{{cols}}}'::text[])), '{{}}'::jsonb)::text)"
    )
}

/// `id → digest` of every row of `table` in `db`.
fn digests(rig: &Rig, db: &str, table: &str, cols: &str) -> BTreeMap<i64, String> {
    rows(&rig.live, db, &format!("SELECT id || '|' || {} FROM {table} x", digest(cols)))
        .iter()
        .map(|l| {
            let (id, d) = l.split_once('|').unwrap();
            (id.parse().unwrap(), d.to_string())
        })
        .collect()
}

/// Stranded keys of one table: inserted, updated (with the restored
/// digest), deleted (with the restored digest).
#[derive(Default, Debug)]
struct Stranded {
    inserted: Vec<i64>,
    updated: Vec<(i64, String)>,
    deleted: Vec<(i64, String)>,
}

fn compare(rig: &Rig, failed: &str, table: &str, cols: &str) -> Stranded {
    let (old, new) = (digests(rig, "app", table, cols), digests(rig, failed, table, cols));
    let mut s = Stranded::default();
    for (id, d) in &new {
        match old.get(id) {
            None => s.inserted.push(*id),
            Some(o) if o != d => s.updated.push((*id, o.clone())),
            Some(_) => {}
        }
    }
    s.deleted = old.iter().filter(|(id, _)| !new.contains_key(id)).map(|(id, d)| (*id, d.clone())).collect();
    s
}

/// Runs `sql` in `postgres`, retrying while the sessions of a client that
/// just exited are still ending (CREATE DATABASE … TEMPLATE, DROP DATABASE).
fn sql_until_it_runs(rig: &Rig, sql: &str) {
    wait_for(sql, Duration::from_secs(20), Duration::from_millis(100), || {
        rig.live.psql_output("postgres", sql).status.success().then_some(())
    });
}

fn ids(v: &[i64]) -> String {
    v.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
}

fn table<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["tables"].as_array().unwrap().iter().find(|t| t["table"] == name).unwrap_or_else(|| panic!("{name} in {doc:#}"))
}

/// `id|column` of the rows of `table` with these ids in `db`.
fn values(rig: &Rig, db: &str, table: &str, col: &str, which: &[i64]) -> Vec<String> {
    rows(&rig.live, db, &format!("SELECT id || '|' || {col} FROM {table} WHERE id IN ({}) ORDER BY id", ids(which)))
}

#[test]
fn salvage_puts_stranded_writes_into_live_skips_what_it_must_and_changes_nothing_twice() {
    let rig = Rig::start("sqlx", SETUP);
    configure(&rig, "");
    score_steps(&rig, SLOW_SCORE);
    unique_email_step(&rig);
    // A release refused before approval: not restored, nothing to salvage.
    let refused = apply(&rig);
    refused.expect_code(75);
    let refused_id = refused.json()["release_id"].as_str().unwrap().to_string();
    rehearse_and_approve(&rig);
    // A duplicate on live only: migration 3 fails there, after 1 and 2 committed.
    as_app(&rig.live, "app", "INSERT INTO t VALUES (2001, 'user1999@example.com');");

    let rel = restored_while_writing(&rig, rig.live.session("app", WRITER));
    let id = rel["release_id"].as_str().unwrap().to_string();
    let failed = rel["failed_database"].as_str().expect("failed_database").to_string();
    // The writer's session is gone before the comparison.
    wait_for("the writer's session to end", Duration::from_secs(20), Duration::from_millis(20), || {
        (rig.live.psql("postgres", "SELECT count(*) FROM pg_stat_activity WHERE datname = 'app'") == "0").then_some(())
    });

    let t = compare(&rig, &failed, "t", "email,id");
    let events = compare(&rig, &failed, "events", "id,note,tag");
    eprintln!(
        "stranded: t {} updated, {} deleted; events {} inserted",
        t.updated.len(),
        t.deleted.len(),
        events.inserted.len()
    );
    assert!(
        t.updated.len() >= 5 && t.deleted.len() >= 5 && events.inserted.len() >= 5,
        "too few stranded: {t:?} {events:?}"
    );
    assert!(t.inserted.is_empty() && events.updated.is_empty() && events.deleted.is_empty(), "{t:?} {events:?}");
    // The finding's list (end to end): its counts are the comparison's.
    let sw = &rel["stranded_writes"];
    eprintln!("stranded_writes: {sw:#}");
    let counted =
        |name: &str| sw["tables"].as_array().unwrap().iter().find(|x| x["table"] == name).cloned().unwrap_or_default();
    assert_eq!(
        (&counted("public.t")["updated"], &counted("public.t")["deleted"]),
        (&json!(t.updated.len()), &json!(t.deleted.len())),
        "{sw:#}"
    );
    assert_eq!(counted("public.events")["inserted"], events.inserted.len(), "{sw:#}");
    let audit_kept: i64 = rig.live.psql(&failed, "SELECT count(*) FROM audit").parse().unwrap();
    let audit_live: i64 = rig.live.psql("app", "SELECT count(*) FROM audit").parse().unwrap();
    assert!(audit_kept > audit_live);

    // Made on purpose after the restore: live drops `events.tag` (the tagged
    // stranded events cannot go back), and changes one stranded update's row.
    let tagged = rows(
        &rig.live,
        &failed,
        &format!("SELECT id FROM events WHERE tag IS NOT NULL AND id IN ({}) ORDER BY id", ids(&events.inserted)),
    );
    let tagged: Vec<i64> = tagged.iter().map(|s| s.parse().unwrap()).collect();
    assert!(!tagged.is_empty());
    let plain: Vec<i64> = events.inserted.iter().copied().filter(|i| !tagged.contains(i)).collect();
    rig.live.psql("app", "ALTER TABLE events DROP COLUMN tag");
    let conflict = t.updated[0].0;
    rig.live.psql("app", &format!("UPDATE t SET email = 'changed on live after the restore' WHERE id = {conflict}"));

    // -o: one transaction that psql runs on a copy of live.
    let sql_path = rig.pgr.dir().join("salvage.sql");
    let sql_arg = sql_path.to_str().unwrap();
    let written = rig.pgr.run_json(&["salvage", &id, "-o", sql_arg]);
    written.expect_code(2);
    assert_eq!(written.json()["applied"], false);
    let sql = std::fs::read_to_string(&sql_path).unwrap();
    let statement_lines: Vec<&str> = sql.lines().filter(|l| !l.starts_with("--") && !l.trim().is_empty()).collect();
    assert_eq!(statement_lines.first(), Some(&"BEGIN;"), "{sql}");
    assert_eq!(statement_lines.last(), Some(&"COMMIT;"), "{sql}");
    assert_eq!(statement_lines.iter().filter(|l| **l == "BEGIN;" || **l == "COMMIT;").count(), 2, "{sql}");
    assert!(!sql.contains(PASSWORD), "the password is in the SQL file");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&sql_path).unwrap().permissions().mode() & 0o777,
        0o600,
        "the rows are the owner's only"
    );
    let audit_lines = sql.lines().filter(|l| l.starts_with("-- {\"note\": \"event ")).count() as i64;
    assert_eq!(audit_lines, audit_kept - audit_live, "audit's kept-only rows exported as data:\n{sql}");
    sql_until_it_runs(&rig, "CREATE DATABASE salvage_copy TEMPLATE app");
    let ran = rig
        .live
        .client("psql")
        .args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-d", "salvage_copy", "-f", sql_arg])
        .output()
        .unwrap();
    assert!(ran.status.success(), "psql -f: {}", String::from_utf8_lossy(&ran.stderr));
    assert_eq!(values(&rig, "salvage_copy", "events", "note", &plain), values(&rig, &failed, "events", "note", &plain));
    rig.live.psql("postgres", "DROP DATABASE salvage_copy");
    let again = rig.pgr.run_json(&["salvage", &id, "-o", sql_arg]);
    again.expect_code(64);
    assert!(again.stdout.contains("already exists") || again.stderr.contains("already exists"), "{again:?}");

    // While another heavy job holds the target's lock, --apply is refused
    // (75) and live is untouched.
    let key = {
        use sha2::{Digest, Sha256};
        i64::from_be_bytes(Sha256::digest(b"pgrehearse:heavy:app")[..8].try_into().unwrap())
    };
    let count_events = || rig.live.psql("app", "SELECT count(*) FROM events");
    let events_before = count_events();
    let holder = rig.live.session("postgres", &format!("SELECT pg_advisory_lock({key});\n"));
    wait_for("the lock holder", Duration::from_secs(20), Duration::from_millis(20), || {
        let held = format!(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND ((classid::bigint << 32) | objid::bigint) = {key}"
        );
        (rig.live.psql("postgres", &held) == "1").then_some(())
    });
    let busy = rig.pgr.run_json(&["salvage", &id, "--apply"]);
    busy.expect_code(75);
    assert!(busy.stdout.contains("heavy job") || busy.stderr.contains("heavy job"), "{busy:?}");
    assert_eq!(count_events(), events_before, "a refused salvage wrote to live");
    drop(holder);

    // --apply: every stranded insert, update and delete in live but the skipped.
    let applied = rig.pgr.run_json(&["salvage", &id, "--apply"]);
    applied.expect_code(2);
    let doc = applied.json();
    eprintln!("salvage --apply: {doc:#}");
    assert_eq!(doc["applied"], true);
    assert_eq!(table(&doc, "public.events")["inserted"], plain.len());
    assert_eq!(table(&doc, "public.t")["updated"], t.updated.len() - 1);
    assert_eq!(table(&doc, "public.t")["deleted"], t.deleted.len());
    let skipped = doc["skipped"].as_array().unwrap();
    let mut missing: Vec<i64> = skipped
        .iter()
        .filter(|s| s["reason"] == "columns_missing" && s["table"] == "public.events" && s["op"] == "insert")
        .map(|s| s["key"]["id"].as_i64().unwrap())
        .collect();
    missing.sort();
    assert_eq!(missing, tagged, "{doc:#}");
    let conflicts: Vec<&Value> = skipped.iter().filter(|s| s["reason"] == "conflict").collect();
    assert_eq!(conflicts.len(), 1, "{doc:#}");
    assert_eq!((&conflicts[0]["table"], &conflicts[0]["key"]), (&json!("public.t"), &json!({ "id": conflict })));
    assert_eq!(skipped.len(), tagged.len() + 1, "{doc:#}");
    assert_eq!(doc["unknown"][0]["table"], "public.audit", "{doc:#}");
    assert_eq!(doc["unknown"][0]["rows_only_in_kept"], audit_kept - audit_live);

    // Read back with psql: live now holds what the kept database holds.
    assert_eq!(values(&rig, "app", "events", "note", &plain), values(&rig, &failed, "events", "note", &plain));
    assert_eq!(values(&rig, "app", "events", "note", &tagged), Vec::<String>::new(), "refused rows stay out");
    let updated: Vec<i64> = t.updated.iter().map(|(i, _)| *i).filter(|i| *i != conflict).collect();
    assert_eq!(values(&rig, "app", "t", "email", &updated), values(&rig, &failed, "t", "email", &updated));
    assert_eq!(
        values(&rig, "app", "t", "email", &[conflict]),
        [format!("{conflict}|changed on live after the restore")],
        "a row live changed is never overwritten"
    );
    let deleted: Vec<i64> = t.deleted.iter().map(|(i, _)| *i).collect();
    assert_eq!(values(&rig, "app", "t", "email", &deleted), Vec::<String>::new());

    // A second --apply changes nothing.
    let before = rig.live.psql("app", &format!("SELECT (SELECT md5(string_agg({}, ',' ORDER BY id)) FROM t x) || (SELECT md5(string_agg({}, ',' ORDER BY id)) FROM events x)", digest("email,id"), digest("id,note")));
    let second = rig.pgr.run_json(&["salvage", &id, "--apply"]);
    second.expect_code(2);
    for t in second.json()["tables"].as_array().unwrap() {
        assert_eq!((&t["inserted"], &t["updated"], &t["deleted"]), (&json!(0), &json!(0), &json!(0)), "{t:#}");
    }
    let after = rig.live.psql("app", &format!("SELECT (SELECT md5(string_agg({}, ',' ORDER BY id)) FROM t x) || (SELECT md5(string_agg({}, ',' ORDER BY id)) FROM events x)", digest("email,id"), digest("id,note")));
    assert_eq!(before, after, "the second salvage changed live");

    // The release says it was salvaged: when, how many.
    let runs = release(&rig, &id)["salvaged"].clone();
    assert_eq!(runs.as_array().map(Vec::len), Some(2), "{runs:#}");
    assert_eq!(runs[0]["inserted"], plain.len());
    assert_eq!(runs[0]["updated"], t.updated.len() - 1);
    assert_eq!(runs[1]["inserted"], 0);
    assert!(runs[0]["at"].as_str().is_some_and(|a| !a.is_empty()), "{runs:#}");
    let text = rig.pgr.run(&["releases", &id]);
    text.ok();
    let line = format!(
        "{} inserted, {} updated, {} deleted, {} skipped.",
        plain.len(),
        t.updated.len() - 1,
        t.deleted.len(),
        tagged.len() + 1
    );
    assert!(text.stdout.contains(&line), "`releases ID` should say {line:?}:\n{}", text.stdout);

    // Refusals: clear errors and exit 64.
    let refuse = |args: &[&str], says: &str| {
        let r = rig.pgr.run(args);
        r.expect_code(64);
        assert!(r.stderr.contains(says), "`{args:?}` should say {says:?}: {}", r.stderr);
    };
    refuse(&["salvage", "r-does-not-exist"], "was not found");
    refuse(&["salvage", &refused_id], "not `restored`");
    rig.live.psql(&failed, "DROP SCHEMA pgrehearse_stranded CASCADE");
    refuse(&["salvage", &id], "earlier version of pgrehearse");
    sql_until_it_runs(&rig, &format!("DROP DATABASE \"{failed}\""));
    refuse(&["salvage", &id, "--apply"], "is gone");
}
