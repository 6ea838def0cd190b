//! Compatibility with Longhorn's own CRDs (v1.7.2, from `../shared/longhorn/`, test data
//! that is never copied into the project): the objects longhorn-guard's tests create are
//! accepted and stored unchanged by them, and every field our CRDs type is typed the same
//! way in Longhorn's.
//!
//! The test command starts a second control plane for this (one cluster cannot hold two
//! definitions of the same CRD) and exports `LHG_TEST_LONGHORN_KUBECONFIG`. A user's clone
//! has no `../shared`: the tests are `#[ignore]`d, so a plain `cargo nextest run` shows them
//! skipped; `scripts/test.sh` (and CI) runs them (`--run-ignored only`, module
//! `longhorn_data`), and there the missing data fails them.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

mod longhorn_data {
    use super::schema_mismatches;
    use longhorn_guard_testkit::{
        LONGHORN_KUBECONFIG_ENV, TestCluster, crd_cases, longhorn_fixture_objects,
        require_longhorn_crds,
    };
    use longhorn_types::Release;

    /// The second control plane with Longhorn's v1.7.2 CRDs installed; panics naming the file
    /// when this clone has no `../shared/longhorn` (the tests are ignored outside scripts/test.sh).
    async fn longhorn_v1_7_2_cluster() -> TestCluster {
        let crds = require_longhorn_crds();
        assert_eq!(crds.len(), 9, "crds-v1.7.2.yaml holds nine CRDs");
        let cluster = TestCluster::connect_to(LONGHORN_KUBECONFIG_ENV)
            .await
            .expect("second control plane for Longhorn's CRDs (started by scripts/test.sh)");
        cluster
            .ensure_crds(crds)
            .await
            .expect("Longhorn's v1.7.2 CRDs installed and Established");
        cluster
    }

    #[tokio::test]
    #[ignore = "needs the local control plane and Longhorn's CRDs (../shared/longhorn or LHG_TEST_LONGHORN_CRDS): bash scripts/test.sh"]
    async fn longhorn_v1_7_2_crds_accept_our_objects_unchanged() {
        let cluster = longhorn_v1_7_2_cluster().await;
        let ns = cluster.namespace("longhorn-compat").await.unwrap();
        for (obj, status) in longhorn_fixture_objects(&ns) {
            let what = format!("{} {}", obj["kind"], obj["metadata"]["name"]);
            let stored = cluster
                .create_longhorn_object(&ns, obj.clone(), status.clone())
                .await
                .unwrap_or_else(|e| panic!("Longhorn's CRDs refuse {what}: {e:#}"));
            let stored = serde_json::to_value(&stored).unwrap();
            for part in ["spec", "value"] {
                if let Some(sent) = obj.get(part) {
                    assert_eq!(
                        &stored[part], sent,
                        "{what}: {part} pruned or changed by Longhorn's CRD"
                    );
                }
            }
            if let Some(status) = status {
                assert_eq!(
                    stored["status"], status,
                    "{what}: status pruned or changed by Longhorn's CRD"
                );
            }
        }
    }

    /// What the strictness test (`crd_strictness.rs`) expects of our CRDs is what Longhorn's own
    /// v1.7.2 CRDs do: they store every object of `crd_cases::accepted` and refuse every one of
    /// `crd_cases::refused`, naming the field, and serve Backups as v1beta1 too.
    #[tokio::test]
    #[ignore = "needs the local control plane and Longhorn's CRDs (../shared/longhorn or LHG_TEST_LONGHORN_CRDS): bash scripts/test.sh"]
    async fn longhorn_v1_7_2_crds_accept_and_refuse_what_ours_do() {
        let cluster = longhorn_v1_7_2_cluster().await;
        let ns = cluster.namespace("longhorn-strict").await.unwrap();
        crd_cases::expect_accepted(&cluster, Release::V1_7, &ns)
            .await
            .unwrap();
        crd_cases::expect_refused(&cluster, Release::V1_7, &ns)
            .await
            .unwrap();
        assert!(
            crd_cases::backup_served_as_v1beta1(&cluster, &ns)
                .await
                .unwrap()
        );
    }

    /// Our 1.7 CRDs (`crds::all()`) type every field as Longhorn 1.7.2 does and declare nothing
    /// it lacks, restrict the fields they declare to the same enums, require the same fields
    /// and serve the same versions; our 1.8 CRDs differ from 1.7.2 by exactly the fields `crds::SINCE_1_8` lists
    /// (the reference's **[1.8+]** tags), so version detection's 1.8 markers are absent on 1.7.2.
    #[test]
    #[ignore = "needs Longhorn's CRDs (../shared/longhorn or LHG_TEST_LONGHORN_CRDS): bash scripts/test.sh"]
    fn our_crds_type_fields_as_longhorn_does() {
        let theirs = require_longhorn_crds();
        let (mismatches, compared) = schema_mismatches(&theirs, longhorn_types::crds::all());
        assert!(compared > 80, "compared only {compared} fields");
        assert!(
            mismatches.is_empty(),
            "our 1.7 CRDs disagree with Longhorn 1.7.2's:\n{}",
            mismatches.join("\n")
        );

        let (mut later, _) = schema_mismatches(
            &theirs,
            longhorn_types::crds::for_release(longhorn_types::Release::V1_8),
        );
        let mut expected: Vec<String> = longhorn_types::crds::SINCE_1_8
            .iter()
            .map(|(crd, path)| format!("{crd}: .{} not in Longhorn's schema", path.join(".")))
            .collect();
        later.sort();
        expected.sort();
        assert_eq!(later, expected, "1.8 fields vs Longhorn 1.7.2");
    }
}

fn schema_mismatches(
    theirs: &[CustomResourceDefinition],
    ours: Vec<CustomResourceDefinition>,
) -> (Vec<String>, usize) {
    let mut mismatches = Vec::new();
    let mut compared = 0;
    for ours in ours {
        let name = ours.metadata.name.clone().unwrap_or_default();
        let Some(lh) = theirs
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(name.as_str()))
        else {
            mismatches.push(format!("{name}: not among Longhorn's CRDs"));
            continue;
        };
        assert_eq!(ours.spec.group, lh.spec.group);
        assert_eq!(ours.spec.scope, lh.spec.scope, "{name} scope");
        assert_eq!(ours.spec.names.kind, lh.spec.names.kind);
        let schema = |c: &CustomResourceDefinition| {
            let v = c
                .spec
                .versions
                .iter()
                .find(|v| v.name == "v1beta2")
                .expect("v1beta2");
            assert!(
                v.subresources
                    .as_ref()
                    .and_then(|s| s.status.as_ref())
                    .is_some(),
                "{name}: status subresource"
            );
            serde_json::to_value(&v.schema.as_ref().expect("schema").open_api_v3_schema)
                .expect("schema serializes")
        };
        let versions = |c: &CustomResourceDefinition| -> Vec<(String, bool, bool)> {
            c.spec
                .versions
                .iter()
                .map(|v| (v.name.clone(), v.served, v.storage))
                .collect()
        };
        if versions(&ours) != versions(lh) {
            mismatches.push(format!(
                "{name}: versions (name, served, storage) {:?} here, {:?} in Longhorn's",
                versions(&ours),
                versions(lh)
            ));
        }
        let (o, l) = (schema(&ours), schema(lh));
        compare(&name, "", &o, &l, &mut mismatches, &mut compared);
    }
    (mismatches, compared)
}

/// Every property ours declares must exist in Longhorn's with the same type, the same enum
/// and (for objects) the same required fields.
fn compare(
    crd: &str,
    path: &str,
    ours: &Value,
    theirs: &Value,
    out: &mut Vec<String>,
    n: &mut usize,
) {
    let sorted = |v: &Value, key: &str| -> Vec<String> {
        let mut items: Vec<String> = v
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(Value::to_string)
            .collect();
        items.sort();
        items
    };
    for key in ["enum", "required"] {
        let (o, t) = (sorted(ours, key), sorted(theirs, key));
        if o != t {
            out.push(format!(
                "{crd}: {} {key} {o:?} here, {t:?} in Longhorn's",
                if path.is_empty() { "(root)" } else { path }
            ));
        }
    }
    let Some(props) = ours.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (key, o) in props {
        if path.is_empty() && (key == "metadata" || key == "apiVersion" || key == "kind") {
            continue;
        }
        let p = format!("{path}.{key}");
        let Some(t) = theirs.get("properties").and_then(|p| p.get(key)) else {
            out.push(format!("{crd}: {p} not in Longhorn's schema"));
            continue;
        };
        *n += 1;
        if o.get("type") != t.get("type") {
            out.push(format!(
                "{crd}: {p} is {:?} here, {:?} in Longhorn's",
                o.get("type"),
                t.get("type")
            ));
        }
        if let (Some(oa), Some(ta)) = (o.get("additionalProperties"), t.get("additionalProperties"))
        {
            if oa.get("type") != ta.get("type") {
                out.push(format!("{crd}: {p} map values differ"));
            }
            compare(crd, &format!("{p}.*"), oa, ta, out, n);
        }
        compare(crd, &p, o, t, out, n);
    }
}
