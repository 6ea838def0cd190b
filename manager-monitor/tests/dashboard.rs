//! The Grafana dashboard is valid JSON, has panels for the webhook, the agent and the manager,
//! and every metric name its queries use is a known family.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use serde_json::Value;

fn collect_queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::String(s)) if s.contains('(') => out.push(s.clone()),
                    _ => collect_queries(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_queries(i, out)),
        _ => {}
    }
}

#[test]
fn dashboard_queries_use_only_known_metrics() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests/monitoring/dashboards/longhorn-guard.json");
    let text = std::fs::read_to_string(&path).expect("dashboard file");
    let dash: Value = serde_json::from_str(&text).expect("dashboard is valid JSON");
    assert!(dash["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dash["uid"].as_str().is_some_and(|t| !t.is_empty()));
    let mut queries = Vec::new();
    collect_queries(&dash, &mut queries);
    assert!(queries.len() >= 20, "only {} queries", queries.len());

    let known = common::known_metric_names();
    let mut used = std::collections::BTreeSet::new();
    let mut unknown = Vec::new();
    for q in &queries {
        // label_values(metric, label) is Grafana's: its first argument is a metric, its second a label.
        let is_label_values = q.contains("label_values(");
        for name in common::promql_metric_names(&q.replace("label_values(", "(")) {
            if is_label_values && name == "node" {
                continue;
            }
            if !known.contains(&name) {
                unknown.push(format!("{name:?} in {q}"));
            }
            used.insert(name);
        }
    }
    assert!(
        unknown.is_empty(),
        "unknown metric names:\n{}",
        unknown.join("\n")
    );
    for prefix in [
        "longhorn_guard_manager_",
        "longhorn_guard_webhook_",
        "longhorn_guard_agent_",
    ] {
        assert!(
            used.iter().any(|n| n.starts_with(prefix)),
            "no panel uses {prefix}*"
        );
    }
    for family in [
        "longhorn_guard_manager_im_connections",
        "longhorn_guard_manager_resident_memory_bytes",
        "longhorn_guard_manager_up",
    ] {
        assert!(used.contains(family), "no panel shows {family}");
    }
}
