//! Test support for longhorn-guard's integration and end-to-end tests.
//!
//! The test command (`scripts/test.sh`) owns ONE local control plane (a real kube-apiserver
//! and etcd on loopback) for the whole run and exports `LHG_TEST_KUBECONFIG`. Tests connect
//! to it through [`TestCluster::connect`], which installs the Longhorn CRDs once, and each
//! test works in its own labelled namespace from [`TestCluster::namespace`].
//!
//! Tests share that one cluster; only a test that must install cluster-scoped objects that
//! would clash with the others (Longhorn CRDs of another release) starts its own through
//! [`ControlPlane`], which stops it on drop. This crate never reads `KUBECONFIG`, so a
//! developer's real cluster cannot be touched by a test.
//!
//! Every environment variable a test, bench or example reads is a field of [`TestEnv`]
//! ([`test_env`]); nothing else here or in the tests reads `LHG_*` variables itself.

#![allow(clippy::unwrap_used)]

pub mod admission;
mod cluster;
pub mod control_plane;
pub mod crd_cases;
pub mod env;
mod fixtures;
mod longhorn_crds;
pub mod manager_stand_in;
mod objects;

pub use cluster::TestCluster;
pub use control_plane::ControlPlane;
pub use env::{KUBECONFIG_ENV, LONGHORN_KUBECONFIG_ENV, TestEnv, test_env};
pub use fixtures::{admissible_backup_objects, longhorn_fixture_objects, typed_with_status};
pub use longhorn_crds::{longhorn_crds, longhorn_crds_file, require_longhorn_crds};
pub use objects::longhorn_api_resource;

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// Label every test namespace carries, value = the namespace name. Webhook configurations
/// registered by a test select on it so parallel tests never judge each other's objects.
pub const TEST_NAMESPACE_LABEL: &str = "longhorn-guard.io/test";

/// Polls `check` every 50 ms until it returns `Ok(true)`, failing after `timeout` with
/// `what` and the last error in the message.
pub async fn wait_for<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let start = Instant::now();
    let mut last_err = None;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() > timeout {
            match last_err {
                Some(e) => {
                    bail!("timed out after {timeout:?} waiting for {what}; last error: {e:#}")
                }
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
