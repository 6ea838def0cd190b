//! `doctor`'s check of the guard's own policy, through the real kube-apiserver: the policy
//! ConfigMap is read (one GET) and an exemption of Longhorn's own service account is a
//! finding; a safe policy, an invalid one and a missing ConfigMap are told apart.

#![allow(clippy::unwrap_used)]

use longhorn_guard_stuck_backups::guard_policy::{POLICY_KEY, check_policy_text};
use longhorn_guard_stuck_backups::{GuardPolicyCheck, GuardPolicyOptions, check_guard_policy};
use longhorn_guard_testkit::TestCluster;

async fn put_policy(cluster: &TestCluster, ns: &str, text: &str) {
    cluster
        .put_config_map(ns, "longhorn-guard-policy", POLICY_KEY, text)
        .await
        .unwrap();
}

#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn an_exemption_of_longhorns_service_account_is_a_finding() {
    let cluster = TestCluster::connect().await.unwrap();
    let guard_ns = cluster.namespace("guard-policy").await.unwrap();
    let options = GuardPolicyOptions {
        namespace: guard_ns.clone(),
        ..GuardPolicyOptions::new("longhorn-system")
    };

    assert_eq!(
        check_guard_policy(cluster.client(), &options).await,
        GuardPolicyCheck::NotFound {
            configmap: format!("{guard_ns}/longhorn-guard-policy")
        }
    );

    // The example webhook/README.md once showed.
    put_policy(
        &cluster,
        &guard_ns,
        "mode: enforce\nexemptions:\n  serviceAccounts: ['*:longhorn-service-account']\n",
    )
    .await;
    let check = check_guard_policy(cluster.client(), &options).await;
    assert_eq!(check.findings().len(), 1, "{check:?}");
    let finding = &check.findings()[0];
    assert!(
        finding.contains("exemptions.serviceAccounts: \"*:longhorn-service-account\"")
            && finding.contains("exempts Longhorn's own service account"),
        "{finding}"
    );
    assert!(
        check.describe().contains("1 finding(s)"),
        "{}",
        check.describe()
    );

    // A dedicated account, and Longhorn's account name in another namespace: nothing.
    put_policy(
        &cluster,
        &guard_ns,
        "exemptions:\n  serviceAccounts: ['backup-ops:restore-bot', 'other:longhorn-service-account']\n",
    )
    .await;
    let check = check_guard_policy(cluster.client(), &options).await;
    assert!(
        matches!(&check, GuardPolicyCheck::Checked { findings, .. } if findings.is_empty()),
        "{check:?}"
    );

    // A policy the webhook would refuse is a finding too.
    put_policy(&cluster, &guard_ns, "snapshotNotRedy: deny\n").await;
    let check = check_guard_policy(cluster.client(), &options).await;
    assert!(
        check.findings().len() == 1 && check.findings()[0].contains("snapshotNotRedy"),
        "{check:?}"
    );
}

#[test]
fn the_throttle_exemptions_and_the_validation_are_checked_too() {
    let options = GuardPolicyOptions::new("longhorn-system");
    let check = check_policy_text(
        &options,
        "throttle:\n  exemptions:\n    groups: ['system:serviceaccounts:longhorn-system']\n",
    );
    assert!(
        check.findings().len() == 1
            && check.findings()[0].contains("throttle.exemptions.groups")
            && check.findings()[0].contains("the throttle is off"),
        "{check:?}"
    );
    let check = check_policy_text(&options, "deadlineMs: 0\n");
    assert!(
        check.findings().len() == 1 && check.findings()[0].contains("deadlineMs must be > 0"),
        "{check:?}"
    );
    assert!(check_policy_text(&options, "").findings().is_empty());
}
