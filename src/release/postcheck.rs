//! Post-checks after a release applied: no invalid index on live, no NOT
//! VALID constraint the plan did not leave on its rehearsal copy, and the
//! live schema equal to the schema the rehearsal ended with. A finding is
//! a warning on an applied release (the migrations did commit), stated with
//! what to look at.

use crate::conn_url::ConnUrl;
use crate::pg;
use crate::pg::tools::Tool;
use crate::rehearsal::reversibility;
use crate::state::Evidence;

/// The warnings of the post-checks of live at `url`. `before` holds the NOT
/// VALID constraints live had before the release.
pub async fn run(url: &ConnUrl, pg_dump: &Tool, table: &str, evidence: &Evidence, before: &[String]) -> Vec<String> {
    let mut warnings = Vec::new();
    match pg::connect(url, "pgrehearse-postcheck").await {
        Err(e) => warnings.push(format!("post-checks could not connect to live: {e}")),
        Ok(mut conn) => {
            match pg::invalid_indexes(&mut conn).await {
                Ok(list) => warnings.extend(list.into_iter().map(|i| {
                    format!(
                        "index {i} is invalid on live (an interrupted concurrent build?); drop it and build it again"
                    )
                })),
                Err(e) => warnings.push(format!("cannot list invalid indexes on live: {e}")),
            }
            match pg::not_valid_constraints(&mut conn).await {
                Ok(list) => warnings.extend(
                    list.into_iter().filter(|c| !before.contains(c) && !evidence.not_valid.contains(c)).map(|c| {
                        format!(
                            "constraint {c} is NOT VALID on live but the rehearsal did not leave it so; VALIDATE it"
                        )
                    }),
                ),
                Err(e) => warnings.push(format!("cannot list NOT VALID constraints on live: {e}")),
            }
        }
    }
    match &evidence.schema_after {
        None => warnings.push("the rehearsal kept no schema to compare live with; the schema was not compared".into()),
        Some(expected) => match reversibility::portable_schema(pg_dump, url, table).await {
            Err(e) => warnings.push(format!("cannot dump live's schema to compare it: {e}")),
            Ok(found) => {
                if let Some(d) = reversibility::diff(expected, &found, 40) {
                    warnings.push(format!(
                        "live's schema differs from the schema the rehearsal ended with (- rehearsed, + live):\n{d}"
                    ));
                }
            }
        },
    }
    warnings
}
