//! Longhorn's own v1.7.2 CRDs (test data outside the project, never copied into it).

use std::path::PathBuf;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Value, json};

use crate::env::{LONGHORN_CRDS_ENV, test_env};

/// Longhorn's own v1.7.2 CRDs (test data outside the project, never copied into it):
/// `LHG_TEST_LONGHORN_CRDS` ([`crate::TestEnv::longhorn_crds`]), else `../shared/longhorn/crds-v1.7.2.yaml` next to the repository.
pub fn longhorn_crds_file() -> PathBuf {
    test_env().longhorn_crds.clone().unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/longhorn/crds-v1.7.2.yaml")
    })
}

/// Longhorn's CRDs from [`longhorn_crds_file`], with webhook conversion turned off (only
/// v1beta2 is stored, so reading as v1beta2 needs no conversion; the webhook Service does not
/// exist); `None` when the file is absent (a user's clone).
pub fn longhorn_crds() -> Option<Vec<CustomResourceDefinition>> {
    let path = longhorn_crds_file();
    let text = std::fs::read_to_string(&path).ok()?;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let mut v: Value = serde::Deserialize::deserialize(doc).expect("CRD YAML parses");
        if v.is_null() {
            continue;
        }
        if v["spec"]["conversion"]["strategy"] == "Webhook" {
            v["spec"]["conversion"] = json!({ "strategy": "None" });
        }
        out.push(serde_json::from_value(v).expect("a CustomResourceDefinition"));
    }
    Some(out)
}

/// [`longhorn_crds`] for the tests that need them: those are `#[ignore]`d (a plain test run
/// shows them skipped), `scripts/test.sh` (and so CI) runs them with `--run-ignored all`,
/// and then a missing file is a failure naming it.
pub fn require_longhorn_crds() -> Vec<CustomResourceDefinition> {
    longhorn_crds().unwrap_or_else(|| {
        panic!(
            "Longhorn's CRDs are absent ({}): this test needs Longhorn v1.7.2's crds-v1.7.2.yaml in ../shared/longhorn next to the repository, or {LONGHORN_CRDS_ENV} naming it",
            longhorn_crds_file().display()
        )
    })
}
