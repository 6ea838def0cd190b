//! longhorn-guard's CRDs of each release (`longhorn_types::crds::for_release`, what
//! `longhorn-guard crds` prints for 1.7) are as strict as Longhorn's: installed on a control
//! plane of this test's own, they store every Longhorn-shaped object the tests use and
//! refuse what Longhorn's CRDs refuse (`crd_cases`; `longhorn_compat.rs` checks the same
//! refusals against Longhorn's own v1.7.2 CRDs). 1.7 and 1.8 also serve v1beta1; 1.10 does not.

use longhorn_guard_testkit::crd_cases::{
    backup_served_as_v1beta1, expect_accepted, expect_refused,
};
use longhorn_guard_testkit::{ControlPlane, TestCluster, control_plane};
use longhorn_types::{Release, crds};

async fn check(cp: &ControlPlane, release: Release) -> anyhow::Result<()> {
    let cluster = TestCluster::connect_kubeconfig(&cp.kubeconfig()).await?;
    cluster.ensure_crds(crds::for_release(release)).await?;
    let ns = cluster
        .namespace(&format!("crd-strict-{}", release.as_str()))
        .await?;
    expect_accepted(&cluster, release, &ns).await?;
    expect_refused(&cluster, release, &ns).await?;
    let served = backup_served_as_v1beta1(&cluster, &ns).await?;
    anyhow::ensure!(
        served == (release < Release::V1_10),
        "{release}: v1beta1 Backups served: {served}"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn each_release_accepts_longhorn_shaped_objects_and_refuses_what_longhorn_refuses() {
    for release in Release::ALL {
        let state = std::env::temp_dir().join(format!(
            "lhg-crd-strict-{}-{}-{:08x}",
            release.as_str(),
            std::process::id(),
            rand::random::<u32>()
        ));
        let mut cp = ControlPlane::start(&control_plane::scripts_dir(), &state)
            .await
            .expect("own control plane (control-plane/up.sh)");
        let result = check(&cp, release).await;
        cp.stop().await;
        let _ = std::fs::remove_dir_all(&state);
        if let Err(e) = result {
            panic!("{release}: {e:#}");
        }
    }
}
