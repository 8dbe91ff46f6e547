//! The stranded writes as sentences: one wording for apply's text,
//! `releases ID`, the release mail, the alert and the status page, so that
//! every place tells the same facts (per table inserted/updated/deleted, the
//! time range, the kept database, the exact next command).

use super::StrandedWrites;

impl StrandedWrites {
    /// Rows stranded in all tables.
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|t| t.inserted + t.updated + t.deleted).sum()
    }

    /// Whether nothing is known to be stranded and nothing is in doubt.
    pub fn nothing(&self) -> bool {
        self.tables.is_empty() && self.unknown.is_empty() && self.error.is_none()
    }

    /// The headline: what happened to writes made during the release.
    pub fn headline(&self) -> String {
        let range = format!("between {} and {}", self.since, self.until);
        if let Some(e) = &self.error {
            return format!(
                "Stranded writes UNKNOWN: the comparison failed ({e}). Every write other sessions made on live {range} is only in `{}`, not in live: compare it with live by hand before dropping it.",
                self.kept_in
            );
        }
        if self.nothing() {
            return format!(
                "No write by other sessions was stranded: `{}` and the restored live differ only by the plan's own changes ({range}).",
                self.kept_in
            );
        }
        let mut s = format!(
            "Stranded writes: {} row(s) other sessions wrote on live {range} are NOT in live; they are kept in `{}`.",
            self.rows(),
            self.kept_in
        );
        if !self.unknown.is_empty() {
            s.push_str(&format!(
                " {} table(s) could not be compared exactly (below): check them by hand.",
                self.unknown.len()
            ));
        }
        s
    }

    /// One line per table: counts, then the tables in doubt with why.
    pub fn table_lines(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .tables
            .iter()
            .map(|t| format!("{}: inserted {}, updated {}, deleted {}", t.table, t.inserted, t.updated, t.deleted))
            .collect();
        out.extend(self.unknown.iter().map(|u| format!("{}: unknown ({})", u.table, u.reason)));
        out
    }

    /// The commands that review and put back the stranded rows; none when
    /// there is nothing to put back.
    pub fn next_commands(&self, release_id: &str) -> Vec<String> {
        if self.tables.is_empty() {
            return Vec::new();
        }
        vec![
            format!("Review them: pgrehearse salvage {release_id} -o salvage.sql"),
            format!("Put them back into live: pgrehearse salvage {release_id} --apply"),
        ]
    }

    /// Headline, tables and next commands as lines of text.
    pub fn lines(&self, release_id: &str) -> Vec<String> {
        let mut out = vec![self.headline()];
        out.extend(self.table_lines().into_iter().map(|l| format!("  {l}")));
        out.extend(self.next_commands(release_id));
        out
    }

    /// Reads the release record's `stranded_writes` (null when no restore
    /// happened).
    pub fn of_record(v: &serde_json::Value) -> Option<StrandedWrites> {
        if v.is_null() {
            return None;
        }
        serde_json::from_value(v.clone()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{TableWrites, UnknownTable};
    use super::*;

    fn some() -> StrandedWrites {
        StrandedWrites {
            since: "2026-01-01T02:00:00Z".into(),
            until: "2026-01-01T02:01:00Z".into(),
            kept_in: "app_failed_r_1".into(),
            tables: vec![TableWrites { table: "public.orders".into(), inserted: 40, updated: 3, deleted: 0 }],
            unknown: vec![UnknownTable { table: "public.log".into(), reason: "no primary key".into() }],
            error: None,
        }
    }

    #[test]
    fn the_lines_name_counts_range_kept_database_and_next_commands() {
        let text = some().lines("r-1").join("\n");
        assert!(text.contains("43 row(s)"), "{text}");
        assert!(text.contains("between 2026-01-01T02:00:00Z and 2026-01-01T02:01:00Z"), "{text}");
        assert!(text.contains("`app_failed_r_1`"), "{text}");
        assert!(text.contains("public.orders: inserted 40, updated 3, deleted 0"), "{text}");
        assert!(text.contains("public.log: unknown (no primary key)"), "{text}");
        assert!(text.contains("pgrehearse salvage r-1 -o salvage.sql"), "{text}");
        assert!(text.contains("pgrehearse salvage r-1 --apply"), "{text}");
    }

    #[test]
    fn nothing_stranded_says_so_without_commands() {
        let s = StrandedWrites { tables: vec![], unknown: vec![], ..some() };
        assert!(s.nothing());
        assert_eq!(s.lines("r-1").len(), 1);
        assert!(s.headline().starts_with("No write by other sessions was stranded"));
    }

    #[test]
    fn a_failed_comparison_is_unknown() {
        let s = StrandedWrites { error: Some("boom".into()), tables: vec![], unknown: vec![], ..some() };
        assert!(s.headline().contains("UNKNOWN"), "{}", s.headline());
        assert!(s.headline().contains("boom"));
    }
}
