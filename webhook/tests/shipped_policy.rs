//! The policy the manifests ship (`manifests/base/policy-configmap.yaml`) is one the webhook
//! accepts at start (parsed with unknown fields refused, validated), and its per-review
//! deadline leaves the API server time to receive the answer before the registration's
//! `timeoutSeconds` (`manifests/base/validatingwebhookconfiguration.yaml`).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use longhorn_guard_webhook::Policy;

fn manifest(file: &str) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests/base")
        .join(file);
    serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[test]
fn the_shipped_policy_loads_and_its_deadline_fits_the_registrations_timeout() {
    let cm = manifest("policy-configmap.yaml");
    let policy = Policy::from_yaml(cm["data"]["policy.yaml"].as_str().unwrap()).unwrap();
    policy.validate().unwrap();
    let vwc = manifest("validatingwebhookconfiguration.yaml");
    let webhooks = vwc["webhooks"].as_array().unwrap();
    assert!(!webhooks.is_empty());
    for wh in webhooks {
        let timeout = Duration::from_secs(wh["timeoutSeconds"].as_u64().unwrap());
        assert!(
            policy.deadline() + Duration::from_secs(1) < timeout,
            "{}: deadline {:?} leaves under 1 s of timeoutSeconds {timeout:?}",
            wh["name"],
            policy.deadline()
        );
    }
    assert_eq!(policy.index_staleness(), Duration::from_secs(30));
}
