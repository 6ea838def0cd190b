//! The alerting manifests: promtool accepts the rule file and its unit tests pass; the
//! PrometheusRule holds exactly the same groups; every alert is documented in docs/runbook.md,
//! uses only known metric names, and has a firing and a quiet unit-test case.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

fn rules_path() -> PathBuf {
    repo().join("manifests/monitoring/rules/longhorn-guard.rules.yaml")
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn test_files() -> Vec<PathBuf> {
    let dir = repo().join("manifests/monitoring/rules/tests");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no promtool tests in {}", dir.display());
    files
}

fn alerts(rules: &Value) -> Vec<&Value> {
    rules["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").iter())
        .filter(|r| r.get("alert").is_some())
        .collect()
}

fn run(args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new(common::promtool())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run promtool");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn promtool_check_rules_accepts_the_rule_file() {
    let path = rules_path();
    let (ok, out) = run(
        &["check", "rules", path.to_str().expect("utf-8 path")],
        &repo(),
    );
    assert!(ok, "promtool check rules failed:\n{out}");
    let n = alerts(&yaml(&path)).len();
    assert!(out.contains(&format!("SUCCESS: {n} rules found")), "{out}");
}

#[test]
fn promtool_unit_tests_pass() {
    let files = test_files();
    let dir = repo().join("manifests/monitoring/rules/tests");
    let mut args = vec!["test".to_owned(), "rules".to_owned()];
    args.extend(
        files
            .iter()
            .map(|f| f.file_name().expect("name").to_string_lossy().into_owned()),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out) = run(&args, &dir);
    assert!(ok, "promtool test rules failed:\n{out}");
    assert_eq!(out.matches("SUCCESS").count(), files.len(), "{out}");
}

#[test]
fn prometheus_rule_wraps_exactly_the_same_groups() {
    let plain = yaml(&rules_path());
    let wrapped = yaml(&repo().join("manifests/monitoring/prometheusrule.yaml"));
    assert_eq!(
        wrapped["apiVersion"].as_str(),
        Some("monitoring.coreos.com/v1")
    );
    assert_eq!(wrapped["kind"].as_str(), Some("PrometheusRule"));
    assert!(
        wrapped["metadata"]["name"]
            .as_str()
            .is_some_and(|n| !n.is_empty())
    );
    assert_eq!(
        wrapped["spec"]["groups"], plain["groups"],
        "prometheusrule.yaml spec.groups differs from rules/longhorn-guard.rules.yaml groups: regenerate it"
    );
}

/// GitHub's heading anchor: lowercase, spaces to '-', punctuation other than '-' and '_' dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_alert_is_documented_uses_known_metrics_and_has_firing_and_quiet_tests() {
    let rules = yaml(&rules_path());
    let runbook_path = repo().join("docs/runbook.md");
    let runbook = std::fs::read_to_string(&runbook_path).expect("docs/runbook.md");
    let anchors: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## ").or_else(|| l.strip_prefix("### ")))
        .map(anchor)
        .collect();
    let known = common::known_metric_names();

    let mut firing = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for file in test_files() {
        let doc = yaml(&file);
        for t in doc["tests"].as_sequence().expect("tests") {
            for case in t["alert_rule_test"].as_sequence().into_iter().flatten() {
                let name = case["alertname"].as_str().expect("alertname").to_owned();
                if case["exp_alerts"]
                    .as_sequence()
                    .is_some_and(|a| !a.is_empty())
                {
                    firing.insert(name);
                } else {
                    quiet.insert(name);
                }
            }
        }
    }

    let mut problems = Vec::new();
    let all = alerts(&rules);
    assert!(
        all.len() >= 10,
        "expected the full alert set, found {}",
        all.len()
    );
    for rule in all {
        let name = rule["alert"].as_str().expect("alert name");
        for key in ["summary", "description", "runbook_url"] {
            if rule["annotations"][key]
                .as_str()
                .is_none_or(|v| v.trim().is_empty())
            {
                problems.push(format!("{name}: no {key}"));
            }
        }
        if rule["labels"]["severity"].as_str().is_none() {
            problems.push(format!("{name}: no severity label"));
        }
        let url = rule["annotations"]["runbook_url"].as_str().unwrap_or("");
        match url.split_once("docs/runbook.md#") {
            Some((_, a)) if anchors.contains(a) => {}
            _ => problems.push(format!(
                "{name}: runbook_url {url:?} is not an anchor of a docs/runbook.md heading"
            )),
        }
        for metric in common::promql_metric_names(rule["expr"].as_str().expect("expr")) {
            if !known.contains(&metric) {
                problems.push(format!("{name}: unknown metric {metric:?}"));
            }
        }
        if !firing.contains(name) {
            problems.push(format!("{name}: no promtool case where it fires"));
        }
        if !quiet.contains(name) {
            problems.push(format!("{name}: no promtool case where it stays quiet"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn promql_metric_name_extraction() {
    let names = common::promql_metric_names(
        r#"sum by (node) (deriv(a_b{remote_port="8501",state=~"x|y"}[30m])) * 3600 > 1e9 and on (node) max(kube_x{c="{}"}) unless absent(up{job=~".*"}) or time() - c:d_total offset 5m"#,
    );
    assert_eq!(names, vec!["a_b", "kube_x", "up", "c:d_total"]);
}
