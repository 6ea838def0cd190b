//! bootstrap / rotate against the run's local kube-apiserver: Secrets, caBundle patching of
//! only our webhook entries, idempotence, leaf renewal and the two-phase CA roll.

#![allow(clippy::unwrap_used)]

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;
use longhorn_guard_certs::{Action, Options, bootstrap, pki, rotate};
use longhorn_guard_testkit::{TEST_NAMESPACE_LABEL, TestCluster};
use serde_json::json;

const OTHER_BUNDLE: &[u8] = b"not ours: must stay as it is";

/// A configuration with our entry (service = our Service), our entry by name (url), and a
/// foreign entry; all select only the test's namespace, so they never judge other tests.
async fn webhook_config(cluster: &TestCluster, name: &str, ns: &str) {
    let entry = |wh: &str, client: serde_json::Value| {
        json!({
            "name": wh, "clientConfig": client,
            "rules": [{"apiGroups": ["longhorn.io"], "apiVersions": ["v1beta2"],
                       "resources": ["backups"], "operations": ["CREATE"]}],
            "namespaceSelector": {"matchLabels": {TEST_NAMESPACE_LABEL: ns}},
            "failurePolicy": "Ignore", "sideEffects": "None",
            "admissionReviewVersions": ["v1"], "timeoutSeconds": 5
        })
    };
    let vwc: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": name},
        "webhooks": [
            entry("by-service.longhorn-guard.io", json!({"service": {
                "namespace": ns, "name": "longhorn-guard-webhook", "path": "/validate/backups"}})),
            entry("by-name.longhorn-guard.io", json!({"url": "https://127.0.0.1:1/validate"})),
            entry("foreign.example.io", json!({
                "service": {"namespace": ns, "name": "someone-else"},
                "caBundle": ByteString(OTHER_BUNDLE.to_vec())})),
        ]
    }))
    .unwrap();
    Api::<ValidatingWebhookConfiguration>::all(cluster.client())
        .create(&PostParams::default(), &vwc)
        .await
        .unwrap();
}

fn options(ns: &str, vwc: &str) -> Options {
    Options {
        namespace: ns.to_string(),
        validating_webhook_configuration: vwc.to_string(),
        mutating_webhook_configuration: Some(format!("{vwc}-absent")),
        webhook_names: vec!["by-name.longhorn-guard.io".into()],
        ..Options::default()
    }
}

fn data(secret: &Secret, key: &str) -> String {
    String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

fn bundles(vwc: &ValidatingWebhookConfiguration) -> Vec<(String, Option<Vec<u8>>)> {
    vwc.webhooks
        .clone()
        .unwrap()
        .into_iter()
        .map(|w| (w.name, w.client_config.ca_bundle.map(|b| b.0)))
        .collect()
}

/// The leaf in `secret` is signed by a CA of its own `ca.crt` bundle.
fn verifies_against_bundle(secret: &Secret) -> bool {
    let leaf = pki::pem_certs(&data(secret, "tls.crt")).unwrap().remove(0);
    pki::pem_certs(&data(secret, "ca.crt"))
        .unwrap()
        .iter()
        .any(|ca| pki::is_signed_by(&leaf, ca))
}

#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn bootstrap_is_idempotent_patches_only_our_entries_and_rotation_keeps_trust() {
    let cluster = TestCluster::connect().await.unwrap();
    let ns = cluster.namespace("certs").await.unwrap();
    let vwc_name = format!("lhg-certs-{ns}");
    webhook_config(&cluster, &vwc_name, &ns).await;
    let opts = options(&ns, &vwc_name);
    let secrets: Api<Secret> = Api::namespaced(cluster.client(), &ns);
    let vwcs: Api<ValidatingWebhookConfiguration> = Api::all(cluster.client());
    let names = [
        "longhorn-guard-ca",
        "longhorn-guard-webhook-tls",
        "longhorn-guard-webhook-client-tls",
        "longhorn-guard-agent-tls",
    ];

    // First run: everything created, our two entries patched, the foreign one untouched.
    let report = bootstrap(cluster.client(), &opts).await.unwrap();
    assert!(report.changed());
    for name in names {
        let s = secrets.get(name).await.unwrap();
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"), "{name}");
        for key in ["ca.crt", "tls.crt", "tls.key"] {
            assert!(!data(&s, key).is_empty(), "{name} {key}");
        }
        assert_eq!(data(&s, "ca.crt"), report.bundle_pem, "{name}");
        if name != "longhorn-guard-ca" {
            assert!(verifies_against_bundle(&s), "{name}");
        }
    }
    let webhook = secrets.get("longhorn-guard-webhook-tls").await.unwrap();
    let info = pki::inspect(&pki::pem_certs(&data(&webhook, "tls.crt")).unwrap()[0]).unwrap();
    assert!(
        info.dns_names
            .contains(&format!("longhorn-guard-webhook.{ns}.svc"))
    );
    let vwc = vwcs.get(&vwc_name).await.unwrap();
    let bundle = Some(report.bundle_pem.as_bytes().to_vec());
    assert_eq!(
        bundles(&vwc),
        vec![
            ("by-service.longhorn-guard.io".into(), bundle.clone()),
            ("by-name.longhorn-guard.io".into(), bundle.clone()),
            ("foreign.example.io".into(), Some(OTHER_BUNDLE.to_vec())),
        ]
    );
    assert!(report.actions.contains(&Action::WebhookConfigAbsent {
        kind: "MutatingWebhookConfiguration",
        name: format!("{vwc_name}-absent"),
    }));

    // Second run: nothing written (resourceVersions unchanged).
    let rv = |o: &kube::api::ObjectMeta| o.resource_version.clone().unwrap();
    let mut before = Vec::new();
    for name in names {
        before.push(rv(&secrets.get(name).await.unwrap().metadata));
    }
    let vwc_rv = rv(&vwc.metadata);
    let again = bootstrap(cluster.client(), &opts).await.unwrap();
    assert!(!again.changed(), "{:#?}", again.actions);
    for (name, rv_before) in names.iter().zip(&before) {
        assert_eq!(
            &rv(&secrets.get(name).await.unwrap().metadata),
            rv_before,
            "{name}"
        );
    }
    assert_eq!(rv(&vwcs.get(&vwc_name).await.unwrap().metadata), vwc_rv);

    // Forced leaf rotation: new leaves, same CA, still verifying against the bundle.
    let forced = rotate(
        cluster.client(),
        &Options {
            force_leaves: true,
            ..opts.clone()
        },
    )
    .await
    .unwrap();
    assert!(forced.changed());
    let renewed = secrets.get("longhorn-guard-webhook-tls").await.unwrap();
    assert_ne!(data(&renewed, "tls.crt"), data(&webhook, "tls.crt"));
    assert_eq!(data(&renewed, "ca.crt"), report.bundle_pem);
    assert!(verifies_against_bundle(&renewed));

    // CA roll, phase 1: a next CA is staged; it is trusted everywhere, leaves stay as they are.
    let staging = Options {
        ca_renew_before: 20 * 365 * longhorn_guard_certs::DAY,
        ca_overlap: std::time::Duration::from_secs(3600),
        ..opts.clone()
    };
    let staged = rotate(cluster.client(), &staging).await.unwrap();
    assert!(
        staged
            .actions
            .iter()
            .any(|a| matches!(a, Action::CaStaged { .. }))
    );
    assert_eq!(pki::pem_certs(&staged.bundle_pem).unwrap().len(), 2);
    let after_stage = secrets.get("longhorn-guard-webhook-tls").await.unwrap();
    assert_eq!(data(&after_stage, "tls.crt"), data(&renewed, "tls.crt"));
    assert_eq!(data(&after_stage, "ca.crt"), staged.bundle_pem);
    let vwc = vwcs.get(&vwc_name).await.unwrap();
    assert_eq!(
        bundles(&vwc)[0].1.as_deref(),
        Some(staged.bundle_pem.as_bytes())
    );
    // Within the overlap, a second run promotes nothing.
    let waiting = rotate(cluster.client(), &staging).await.unwrap();
    assert!(!waiting.changed(), "{:#?}", waiting.actions);

    // Phase 2 (overlap elapsed): the staged CA signs new leaves; the old CA stays trusted.
    let promoting = Options {
        ca_overlap: std::time::Duration::ZERO,
        ..staging.clone()
    };
    let promoted = rotate(cluster.client(), &promoting).await.unwrap();
    assert!(
        promoted
            .actions
            .iter()
            .any(|a| matches!(a, Action::CaPromoted { .. }))
    );
    let new_leaf = secrets.get("longhorn-guard-webhook-tls").await.unwrap();
    assert_ne!(data(&new_leaf, "tls.crt"), data(&renewed, "tls.crt"));
    assert!(verifies_against_bundle(&new_leaf));
    let bundle_certs = pki::pem_certs(&data(&new_leaf, "ca.crt")).unwrap();
    let old_ca = pki::pem_certs(&report.bundle_pem).unwrap().remove(0);
    assert!(
        bundle_certs.contains(&old_ca),
        "the old CA left the bundle too early"
    );
    let new_der = pki::pem_certs(&data(&new_leaf, "tls.crt"))
        .unwrap()
        .remove(0);
    assert!(!pki::is_signed_by(&new_der, &old_ca));
    // The leaf before promotion (old CA) still verifies against the new bundle: no client
    // holding it fails during the swap.
    let old_der = pki::pem_certs(&data(&renewed, "tls.crt"))
        .unwrap()
        .remove(0);
    assert!(
        bundle_certs
            .iter()
            .any(|ca| pki::is_signed_by(&old_der, ca))
    );
}

#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn a_corrupt_ca_secret_is_an_error_naming_it_and_is_not_overwritten() {
    let cluster = TestCluster::connect().await.unwrap();
    let ns = cluster.namespace("certs-corrupt").await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(cluster.client(), &ns);
    let corrupt: Secret = serde_json::from_value(json!({
        "metadata": {"name": "longhorn-guard-ca"},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": "garbage", "tls.key": "garbage"}
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &corrupt)
        .await
        .unwrap();
    let err = bootstrap(cluster.client(), &options(&ns, "lhg-none"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("Secret {ns}/longhorn-guard-ca")),
        "{err}"
    );
    assert_eq!(
        data(&secrets.get("longhorn-guard-ca").await.unwrap(), "tls.crt"),
        "garbage"
    );
}
