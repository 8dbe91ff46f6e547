//! `pgrehearse approve --plan HASH`: only the plan pending on live, only
//! when its latest rehearsal passed and is younger than `approval_max_age`;
//! `status` shows the approval and whether it still holds. Refusals exit 75
//! and write nothing.

use crate::harness::migrations::*;

fn plan_of(rig: &Rig) -> String {
    rig.status().json()["plan"].as_str().expect("plan hash").to_string()
}

#[test]
fn approvals_are_bound_to_a_passing_recent_rehearsal_of_the_current_plan() {
    let rig = Rig::start("sqlx", "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);");
    rig.sqlx("1", "add_a", "ALTER TABLE t ADD COLUMN a int;\n", Some("ALTER TABLE t DROP COLUMN a;\n"));
    let plan = plan_of(&rig);

    // Never rehearsed: refused.
    let r = rig.pgr.run_json(&["approve", "--plan", &plan]);
    r.expect_code(75);
    assert!(r.stderr.contains("never rehearsed"), "{}", r.stderr);

    rig.rehearse(&[]).ok();
    let r = rig.pgr.run_json(&["approve", "--plan", &plan[..12], "--by", "alice", "--note", "CAB-42"]);
    r.ok();
    let a = r.json();
    assert_eq!(a["plan"], plan.as_str(), "a prefix names the full plan");
    assert_eq!(a["approved_by"], "alice");
    assert!(a["approval_id"].as_str().is_some_and(|s| !s.is_empty()) && a["expires_at"].is_string(), "{a:#}");
    let st = rig.status().json();
    assert_eq!(st["approval"]["approved_by"], "alice");
    assert_eq!(st["approval"]["valid"], true, "{st:#}");

    // A file edited after approval: the approval no longer holds, and the
    // old hash cannot be approved again.
    rig.sqlx("1", "add_a", "ALTER TABLE t ADD COLUMN a bigint;\n", Some("ALTER TABLE t DROP COLUMN a;\n"));
    let st = rig.status().json();
    assert_ne!(st["plan"], plan.as_str(), "the edit changed the plan hash");
    assert_eq!(st["approval"]["valid"], false, "{st:#}");
    let r = rig.pgr.run_json(&["approve", "--plan", &plan]);
    r.expect_code(75);
    assert!(r.stderr.contains("is not the plan pending"), "{}", r.stderr);

    // A plan whose latest rehearsal found problems is refused.
    rig.sqlx("2", "broken", "ALTER TABLE missing ADD COLUMN b int;\n", None);
    rig.rehearse(&[]).expect_code(2);
    let r = rig.pgr.run_json(&["approve", "--plan", &plan_of(&rig)]);
    r.expect_code(75);
    assert!(r.stderr.contains("did not pass"), "{}", r.stderr);

    // A passing rehearsal older than approval_max_age is refused.
    std::fs::remove_file(rig.dir.join("2_broken.up.sql")).unwrap();
    rig.configure("approval_max_age = \"1s\"");
    rig.rehearse(&[]).ok();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let r = rig.pgr.run_json(&["approve", "--plan", &plan_of(&rig)]);
    r.expect_code(75);
    assert!(r.stderr.contains("approval_max_age"), "{}", r.stderr);

    // Not a hash at all: a usage error.
    rig.pgr.run_json(&["approve", "--plan", "latest"]).expect_code(64);
    let approvals = rig.status().json()["approval"]["approved_by"].clone();
    assert_eq!(approvals, "alice", "refusals wrote no approval");
}
