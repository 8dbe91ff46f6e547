//! Release records written by earlier versions of pgrehearse, read as this
//! version writes them, so that `releases ID --json`, the API and reports
//! see one shape whatever version recorded a release.

/// Records written before the error object (issue 14) hold a migration's
/// `error` as the sentence the release told: it reads as the same object
/// new records hold, with that sentence as its `message`.
pub(super) fn upgrade_migrations(mut migrations: serde_json::Value) -> serde_json::Value {
    for m in migrations.as_array_mut().into_iter().flatten() {
        if let Some(text) = m.get("error").and_then(|e| e.as_str()).map(str::to_string) {
            m["error"] = serde_json::json!({
                "message": text, "detail": null, "hint": null, "position": null, "sqlstate": null,
                "file": null, "statement": null, "line": null, "sql": null,
            });
        }
    }
    migrations
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_stored_as_a_sentence_reads_as_the_error_object() {
        let old = serde_json::json!([
            {"version": "1", "status": "applied", "error": null},
            {"version": "2", "status": "failed", "error": "migration 2 (2_b.up.sql) failed at line 1: duplicate key"},
        ]);
        let new = upgrade_migrations(old);
        assert_eq!(new[0]["error"], serde_json::Value::Null);
        assert_eq!(new[1]["error"]["message"], "migration 2 (2_b.up.sql) failed at line 1: duplicate key");
        assert!(new[1]["error"].as_object().unwrap().contains_key("detail"), "{new}");
        // A record already in the new shape is left as it is.
        let current = serde_json::json!([{"version": "3", "error": {"message": "m", "detail": "d"}}]);
        assert_eq!(upgrade_migrations(current.clone()), current);
    }
}
