//! `manifests/local/longhorn-crds.yaml` is what `longhorn_types::crds::yaml()` generates.
//! Regenerate with `LHG_TEST_UPDATE_MANIFESTS=1 cargo test -p longhorn-types --test crd_manifest`.

use std::path::PathBuf;

#[test]
fn local_crd_manifest_is_in_sync_with_the_types() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/local/longhorn-crds.yaml");
    let generated = longhorn_types::crds::yaml().unwrap();
    if longhorn_guard_testkit::test_env().update_manifests {
        std::fs::write(&path, &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "{} is stale: run LHG_TEST_UPDATE_MANIFESTS=1 cargo test -p longhorn-types --test crd_manifest",
        path.display()
    );
    assert_eq!(
        generated.matches("kind: CustomResourceDefinition").count(),
        8
    );
}
