//! Rehearsals of a `command` migration source: any tool pgrehearse does not
//! know, driven by the configured `pending` and `apply` commands. Here the
//! "tool" is a few lines of shell around psql that keeps its own history
//! table, the way dbmate or goose do. The commands get the scratch copy's
//! URL in `DATABASE_URL` (never live's) and the target's `lock_timeout` in
//! `PGOPTIONS`; the run is measured as one step with sampled locks.

use crate::harness::migrations::*;

pub(crate) const PENDING: &str = r#"psql -XAtq "$DATABASE_URL" -c "CREATE TABLE IF NOT EXISTS tool_log (name text PRIMARY KEY)" >/dev/null && for f in *.sql; do [ "$(psql -XAtq "$DATABASE_URL" -c "SELECT count(*) FROM tool_log WHERE name = '$f'")" = 0 ] && echo "$f"; done; true"#;
pub(crate) const APPLY: &str = r#"psql -XAtq "$DATABASE_URL" -c "SHOW lock_timeout" > applied_with_lock_timeout.txt && psql -XAtq "$DATABASE_URL" -c "CREATE TABLE IF NOT EXISTS tool_log (name text PRIMARY KEY)" && for f in *.sql; do if [ "$(psql -XAtq "$DATABASE_URL" -c "SELECT count(*) FROM tool_log WHERE name = '$f'")" = 0 ]; then psql -XAtq -v ON_ERROR_STOP=1 "$DATABASE_URL" -1 -f "$f" -c "INSERT INTO tool_log VALUES ('$f')" || exit 1; fi; done"#;

#[test]
fn command_source_is_rehearsed_as_one_measured_step() {
    let rig = Rig::start(
        "command",
        "CREATE TABLE orders (id int PRIMARY KEY, amount int); INSERT INTO orders SELECT g, g FROM generate_series(1, 50000) g;",
    );
    let toml = |s: &str| crate::harness::cli::toml_string(s);
    let extra = format!(
        "lock_timeout = \"2s\"\nmigrations = {{ kind = \"command\", dir = {}, pending = {}, apply = {} }}\n",
        toml(&rig.dir.display().to_string()),
        toml(PENDING),
        toml(APPLY)
    );
    rig.pgr.write_config(&rig.pgr_config_with(&extra));
    std::fs::write(rig.dir.join("001_add_note.sql"), "ALTER TABLE orders ADD COLUMN note text;\n").unwrap();
    std::fs::write(
        rig.dir.join("002_slow.sql"),
        "LOCK TABLE orders IN ACCESS EXCLUSIVE MODE;\nSELECT pg_sleep(0.3);\n",
    )
    .unwrap();

    let st = rig.status();
    st.ok();
    let pending: Vec<String> =
        st.json()["pending"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(pending, ["001_add_note.sql", "002_slow.sql"], "status lists what the pending command prints");

    rig.snapshot();
    let counters = write_counters(&rig.live, "app");
    let r = rig.rehearse(&[]);
    r.ok();
    let report = r.json();
    assert_eq!(report["mode"], "command");
    let steps = report["migrations"].as_array().unwrap();
    assert_eq!(steps.len(), 1, "one measured step for the tool's run: {report:#}");
    let step = &steps[0];
    assert_eq!(step["status"], "applied");
    assert!(step["duration_ms"].as_u64().unwrap() >= 300, "{step:#}");
    let locks = locks_on(step, "orders");
    assert!(
        locks.iter().any(|l| l["mode"] == "AccessExclusiveLock" && l["sampled"] == true),
        "the sampler saw the tool's ACCESS EXCLUSIVE on orders: {step:#}"
    );
    assert_eq!(step["reversible"]["result"], "not_reversible", "no down command configured: {step:#}");
    assert_eq!(
        std::fs::read_to_string(rig.dir.join("applied_with_lock_timeout.txt")).unwrap().trim(),
        "2s",
        "the tool's sessions ran with the target's lock_timeout"
    );
    // Live: the pending command created its table there (it is the tool's
    // own doing), but the plan never ran on live.
    assert_eq!(write_counters(&rig.live, "app"), counters, "rows written on live during the rehearsal");
    assert!(
        !rows(&rig.live, "app", "SELECT column_name FROM information_schema.columns WHERE table_name = 'orders'")
            .contains(&"note".to_string()),
        "the plan never ran on live"
    );
}
