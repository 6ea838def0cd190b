//! Five webhook replicas coordinating only through the API server, the way a Deployment
//! of five behind one Service runs: one registration (one URL), a round-robin loopback TCP
//! proxy in front of the replicas standing in for kube-proxy (which spreads the API
//! server's connections over the Service's endpoints), Backups created through the real
//! kube-apiserver. Each replica sees the others' admissions only through its own watch; the
//! in-flight maxima must stay within the bound THROTTLING.md documents for R replicas.
//!
//! Size: `LHG_TEST_REPLICAS_BACKUPS` (default 1000), `LHG_TEST_REPLICAS_VOLUMES` (default 60). The
//! full-size storm is `benches/replicas.rs`.
#![allow(clippy::unwrap_used)]

mod common;
mod storm_common;

use anyhow::Result;
use longhorn_guard_testkit::{TestCluster, test_env};
use longhorn_guard_webhook::Policy;
use longhorn_guard_webhook::policy::throttle::{RateLimit, ThrottlePolicy};
use storm_common::{ReplicaStorm, replica_storm};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn five_replicas_behind_one_service_stay_within_the_bound() -> Result<()> {
    let cluster = TestCluster::connect().await?;
    let run = ReplicaStorm {
        replicas: 5,
        backups: test_env().replicas_backups.unwrap_or(1000),
        volumes: test_env().replicas_volumes.unwrap_or(60),
        policy: Policy {
            throttle: ThrottlePolicy {
                max_in_flight_per_volume: 1,
                max_in_flight_per_node: 4,
                max_in_flight_per_cluster: 12,
                cluster_rate: RateLimit::OFF,
                recurring_job_rate: RateLimit::OFF,
                user_rate: RateLimit::OFF,
                ..ThrottlePolicy::default()
            },
            ..Policy::default()
        },
    };
    let f = replica_storm(&cluster, &run).await?;
    eprintln!("{}", f.summary());
    // Five replicas really shared the load: the API server's connections were spread over
    // all of them and each judged Backups.
    assert!(
        f.reviews.iter().all(|n| *n > 0),
        "a replica answered no review: {f:?}"
    );
    assert_eq!(
        f.stale_denied, f.stale,
        "every missing-snapshot Backup denied"
    );
    // The load pushed against the caps, so the bound below is exercised, not vacuous.
    assert!(f.throttled > 0, "nothing was throttled: {f:?}");
    assert!(
        f.max[2] >= f.caps[2],
        "the cluster cap was never reached: {f:?}"
    );
    // The bound: cap + (R − 1) × min(cap, admissions of one replica within the watch
    // window) ≤ R × cap, per scope.
    let bound = f.bound();
    for (scope, i) in [("volume", 0), ("node", 1), ("cluster", 2)] {
        assert!(
            f.max[i] <= bound[i],
            "{scope}: {} in flight, bound {}: {f:?}",
            f.max[i],
            bound[i]
        );
    }
    Ok(())
}
