//! The chart's `policy` values against the webhook's own policy type
//! (`longhorn_guard_webhook::policy::Policy`, which refuses unknown keys):
//!
//! - `the_schema_and_the_webhook_know_the_same_policy_fields`: every field the webhook reads is
//!   in `values.schema.json` under `policy` (else the schema would refuse a valid setting) and
//!   every field the schema accepts is one the webhook reads (else `helm install` would accept a
//!   policy the webhook refuses at start), at every depth;
//! - `a_policy_setting_every_field_renders_into_what_the_webhook_loads`: values setting every
//!   field to a non-default value pass the schema, render into the ConfigMap, and load in the
//!   webhook with each value in force.
//!
//! Needs `LHG_TEST_HELM` (scripts/test.sh exports it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use longhorn_guard_webhook::policy::Policy;
use serde_json::{Value, json};

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/helm/longhorn-guard")
}

fn helm() -> Command {
    let helm = longhorn_guard_testkit::test_env()
        .helm()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = Command::new(helm);
    cmd.env("KUBECONFIG", "/dev/null");
    cmd
}

/// Every key path of `value` (objects only; arrays and maps keyed by user data excluded).
fn paths(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    if let Value::Object(map) = value {
        for (k, v) in map {
            let p = format!("{prefix}.{k}");
            out.insert(p.clone());
            // `exemptions.labels` is a map of user label keys, not fields.
            if k != "labels" {
                paths(v, &p, out);
            }
        }
    }
}

/// Every property path of a JSON schema node.
fn schema_paths(node: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    if let Some(props) = node["properties"].as_object() {
        for (k, v) in props {
            let p = format!("{prefix}.{k}");
            out.insert(p.clone());
            if k != "labels" {
                schema_paths(v, &p, out);
            }
        }
    }
}

#[test]
fn the_schema_and_the_webhook_know_the_same_policy_fields() {
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(chart().join("values.schema.json")).unwrap())
            .unwrap();
    let policy_schema = &schema["properties"]["policy"];
    assert_eq!(policy_schema["additionalProperties"], false);
    let mut in_schema = BTreeSet::new();
    schema_paths(policy_schema, "policy", &mut in_schema);
    let mut in_webhook = BTreeSet::new();
    paths(
        &serde_json::to_value(Policy::default()).unwrap(),
        "policy",
        &mut in_webhook,
    );
    assert!(in_webhook.len() > 20, "{in_webhook:?}");
    let missing: Vec<_> = in_webhook.difference(&in_schema).collect();
    let unknown: Vec<_> = in_schema.difference(&in_webhook).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "values.schema.json and webhook/src/policy.rs disagree:\n  read by the webhook, \
         refused by the schema: {missing:?}\n  accepted by the schema, refused by the webhook: \
         {unknown:?}"
    );
}

#[test]
#[ignore = "needs helm and kubectl: bash scripts/test.sh"]
fn a_policy_setting_every_field_renders_into_what_the_webhook_loads() {
    let exemptions = json!({
        "labels": {"team": "storage", "longhorn-guard.io/restored-by-prune": "true"},
        "users": ["admin"],
        "serviceAccounts": ["longhorn-system:longhorn-service-account", "*:backup-bot"],
        "groups": ["system:masters"],
    });
    let rate = |per_minute: f64, burst: u32| json!({"perMinute": per_minute, "burst": burst});
    let policy = json!({
        "mode": "warn-only",
        "emptySnapshotName": "deny-unless-longhorn",
        "longhornServiceAccount": "longhorn-sa",
        "liveSnapshotLookup": false,
        "snapshotNotReady": "deny",
        "volumeMissing": "ignore",
        "targetUnavailable": "deny",
        "exemptions": exemptions,
        "deadlineMs": 2500,
        "onDeadline": "closed",
        "maxConcurrentReviews": 7,
        "maxBodyBytes": 65536,
        "fullBackup": {"enabled": true, "volumes": ["db"], "volumeLabel": "backup=full"},
        "throttle": {
            "enabled": true,
            "mode": "warn-only",
            "maxInFlightPerVolume": 2,
            "maxInFlightPerNode": 3,
            "maxInFlightPerCluster": 4,
            "clusterRate": rate(10.0, 5),
            "recurringJobRate": rate(6.0, 3),
            "userRate": rate(2.5, 1),
            "denyDuplicates": false,
            "recurringJobs": {"caps": "warn", "rates": "deny", "duplicates": "warn"},
            "exemptions": exemptions,
            "warnAtPercent": 50,
            "reservationTimeoutSeconds": 45,
            "stuckAfterSeconds": 600,
        },
        "engineCheck": "enforce",
        "engineCheckBudgetMs": 400,
        "indexStalenessMs": 20000,
        "events": {
            "enabled": false,
            "aggregateWindowSeconds": 30,
            "seriesIdleSeconds": 300,
            "writes": rate(60.0, 4),
            "queueCapacity": 256,
            "maxSeries": 512,
        },
        "nodeProtection": {
            "mode": "warn",
            "manualBackups": "allow-with-warning",
            "exemptions": exemptions,
            "thresholds": {
                "windowSeconds": 120,
                "floorSeconds": 30,
                "enterAfterSeconds": 60,
                "recoverAfterSeconds": 180,
                "degrading": {"minConnections": 50, "connectionsPerMinute": 5.5, "minRssMib": 256, "rssMibPerMinute": 2.5},
                "leaking": {"minConnections": 400, "connectionsPerMinute": 40.5, "minRssMib": 768, "rssMibPerMinute": 10.5},
            },
            "leaseWriters": "require-node-identity",
            "agentServiceAccount": "guard-agent",
        },
    });
    let dir = std::env::temp_dir().join(format!("lhg-helm-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let values = dir.join("values.json");
    std::fs::write(&values, json!({ "policy": policy }).to_string()).unwrap();
    let out = helm()
        .args(["template", "longhorn-guard"])
        .arg(chart())
        .args(["--namespace", "longhorn-guard", "--show-only"])
        .arg("templates/policy-configmap.yaml")
        .arg("--values")
        .arg(&values)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        out.status.success(),
        "helm template refused a policy setting every field:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cm: serde_yaml::Value = serde_yaml::from_slice(&out.stdout).unwrap();
    let text = cm["data"]["policy.yaml"]
        .as_str()
        .expect("data policy.yaml");
    let loaded = Policy::from_yaml(text)
        .unwrap_or_else(|e| panic!("the webhook refuses the rendered policy: {e}\n{text}"));
    loaded
        .validate()
        .unwrap_or_else(|e| panic!("the webhook refuses the rendered policy: {e}\n{text}"));
    assert_eq!(
        serde_json::to_value(&loaded).unwrap(),
        policy,
        "the webhook does not hold the values set through the chart"
    );
}
