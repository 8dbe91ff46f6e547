//! The application's writes during a release that ends `restored`: an
//! application session inserts into a `bigserial` table throughout `apply`
//! (snapshot, a migration that commits, a failing one, the restore). Rows it
//! committed after the pre-release snapshot are only in the kept failed
//! database; the restored live must never hand their ids out again — every
//! sequence is set past the failed database's position before live takes
//! connections (the first id written after the swap is above every id the
//! failed database holds).

use crate::harness::migrations::*;
use crate::harness::pg::Session;
use crate::harness::release::*;

const SETUP: &str = "CREATE TABLE t (id int PRIMARY KEY, email text);
    INSERT INTO t SELECT g, 'user' || g || '@example.com' FROM generate_series(1, 2000) g;
    CREATE TABLE events (id bigserial PRIMARY KEY, note text NOT NULL);
    GRANT ALL ON events, events_id_seq TO app;";

/// An application session inserting one row into `events` every 20 ms
/// (`\watch` repeats the insert) until it is killed or its database goes.
fn writer(rig: &Rig) -> Session {
    let script = "SET ROLE app;\nINSERT INTO events (note) VALUES ('written during the release');\n\\watch 0.02\n";
    rig.live.session("app", script)
}

fn max_event_id(rig: &Rig, db: &str) -> i64 {
    rig.live.psql(db, "SELECT coalesce(max(id), 0) FROM events").parse().unwrap()
}

#[test]
fn a_restore_sets_every_sequence_past_the_ids_the_failed_database_handed_out() {
    let rig = Rig::start("sqlx", SETUP);
    configure(&rig, "");
    score_steps(&rig, SLOW_SCORE);
    unique_email_step(&rig);
    rehearse_and_approve(&rig);
    // A duplicate on live only: migration 3 fails there, after 1 committed.
    as_app(&rig.live, "app", "INSERT INTO t VALUES (2001, 'user1@example.com');");

    let rel = restored_while_writing(&rig, writer(&rig));
    let failed = rel["failed_database"].as_str().expect("failed_database").to_string();

    // The writer committed rows after the snapshot: they are only in the
    // failed database (otherwise this test would prove nothing).
    let restored_max = max_event_id(&rig, "app");
    let failed_max = max_event_id(&rig, &failed);
    assert!(
        failed_max > restored_max,
        "no row was written between the snapshot and the swap: live {restored_max}, failed {failed_max}"
    );

    // The next id live hands out is past every id of the failed database.
    let next: i64 = as_app(&rig.live, "app", "INSERT INTO events (note) VALUES ('after the swap') RETURNING id;")
        .lines()
        .find_map(|l| l.trim().parse().ok())
        .expect("the id of the row written after the swap");
    assert!(next > failed_max, "id {next} written after the swap is not above the failed database's {failed_max}");
    let clash = rig.live.psql(&failed, &format!("SELECT count(*) FROM events WHERE id = {next}"));
    assert_eq!(clash, "0");
}
