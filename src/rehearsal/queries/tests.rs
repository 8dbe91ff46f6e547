//! Judging a query's plan after the plan against its plan before.

use super::explain::ScanNode;
use super::*;
use crate::rehearsal::observer::Relation;

fn side(cost: f64, ms: Option<f64>, nodes: &[(&str, Option<&str>, Option<&str>)]) -> Side {
    let nodes: Vec<ScanNode> = nodes
        .iter()
        .map(|(n, r, i)| ScanNode {
            node: n.to_string(),
            relation: r.map(str::to_string),
            index: i.map(str::to_string),
        })
        .collect();
    Side { cost, ms, scan: nodes.iter().map(ScanNode::describe).collect::<Vec<_>>().join("; "), nodes }
}

fn catalog(rows: f64) -> Catalog {
    let mut c = Catalog::default();
    let rel =
        Relation { oid: 1, schema: "public".into(), name: "orders".into(), kind: 'r', filenode: 1, bytes: 0, rows };
    c.0.insert(1, rel);
    c
}

#[test]
fn an_index_scan_turned_seq_scan_on_a_large_table_is_a_finding() {
    let cfg = QueriesConfig::default();
    let before = side(8.4, None, &[("Index Scan", Some("orders"), Some("orders_customer_idx"))]);
    let after = side(8.6, None, &[("Seq Scan", Some("orders"), None)]);
    let (kind, _, why) = judge(&before, &after, &catalog(1e6), &cfg).expect("a finding");
    assert_eq!(kind, FindingKind::SeqScan);
    assert!(
        why.contains("Index Scan using orders_customer_idx on orders became a Seq Scan on `orders` (1000000 rows)"),
        "{why}"
    );
    // On a small table a sequential scan is the planner's right choice.
    assert!(judge(&before, &after, &catalog(500.0), &cfg).is_none());
}

#[test]
fn cost_and_time_past_their_ratios_are_findings_and_noise_is_not() {
    let cfg = QueriesConfig::default();
    let before = side(100.0, Some(20.0), &[("Seq Scan", Some("orders"), None)]);
    let worse = side(250.0, Some(20.0), &[("Seq Scan", Some("orders"), None)]);
    assert_eq!(judge(&before, &worse, &catalog(1e6), &cfg).unwrap().0, FindingKind::CostRatio);
    let slower = side(100.0, Some(45.0), &[("Seq Scan", Some("orders"), None)]);
    assert_eq!(judge(&before, &slower, &catalog(1e6), &cfg).unwrap().0, FindingKind::TimeRatio);
    let fast_noise = (side(100.0, Some(0.1), &[]), side(101.0, Some(0.9), &[]));
    assert!(judge(&fast_noise.0, &fast_noise.1, &catalog(1e6), &cfg).is_none());
}

#[test]
fn the_culprit_is_the_first_migration_after_which_the_plan_got_worse() {
    let cfg = QueriesConfig::default();
    let before = side(8.4, None, &[("Index Scan", Some("orders"), Some("i"))]);
    let same = before.clone();
    let seq = side(20000.0, None, &[("Seq Scan", Some("orders"), None)]);
    let trail = Trail {
        steps: vec![vec![Some(same)], vec![Some(seq.clone())], vec![Some(seq)]],
        per_migration: true,
        ..Trail::default()
    };
    let versions = ["1".to_string(), "2".to_string(), "3".to_string()];
    assert_eq!(trail.culprit(0, &before, &catalog(1e6), &cfg, &versions).as_deref(), Some("2"));
    let one = Trail::default();
    assert_eq!(one.culprit(0, &before, &catalog(1e6), &cfg, &versions[..1]).as_deref(), Some("1"));
}
