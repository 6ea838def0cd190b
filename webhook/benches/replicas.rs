//! The v1.7.2-sized storm (4,422 Backups on 300 volumes / 6 nodes, 30 % for missing
//! snapshots, recurring-job Backups, default policy) through the real kube-apiserver against
//! one webhook and then five replicas behind one round-robin loopback proxy (a Service with
//! five endpoints), in the same run: the in-flight maxima per volume / node / cluster as a
//! watch sees them, against the caps and the bound R × cap (THROTTLING.md).
//!
//! Needs the test control plane: `LHG_TEST_KUBECONFIG` (see control-plane/README.md).
//! Sizes: `LHG_BENCH_REPLICAS_BACKUPS` (default 4422), `LHG_BENCH_REPLICAS_VOLUMES` (default 300),
//! replica counts `LHG_BENCH_REPLICAS_COUNTS` (default "1,5").
#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/storm_common/mod.rs"]
mod storm_common;

use longhorn_guard_testkit::TestCluster;
use longhorn_guard_webhook::Policy;
use storm_common::{ReplicaStorm, replica_storm};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    longhorn_guard_runtime::install_crypto_provider();
    let cluster = TestCluster::connect().await.unwrap();
    let env = longhorn_guard_testkit::test_env();
    let counts = env.bench_replicas_counts.clone().unwrap_or(vec![1, 5]);
    let mut rows = Vec::new();
    for replicas in counts {
        let run = ReplicaStorm {
            replicas,
            backups: env.bench_replicas_backups.unwrap_or(4422),
            volumes: env.bench_replicas_volumes.unwrap_or(300),
            policy: Policy::default(),
        };
        let f = replica_storm(&cluster, &run).await.unwrap();
        println!("{}", f.summary());
        rows.push(f);
    }
    println!();
    println!(
        "| replicas | creates/s | admitted / 429 / 404 | reviews per replica | max in flight volume / node / cluster | caps | bound R × cap | overshoot | within bound |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for f in &rows {
        let bound = f.bound();
        let over = [0, 1, 2].map(|i| f.max[i].saturating_sub(f.caps[i]));
        let creates = f.admitted + f.throttled + f.stale_denied;
        println!(
            "| {} | {:.0} | {} / {} / {} | {:?} | {} / {} / {} | {} / {} / {} | {} / {} / {} | {} / {} / {} | {} |",
            f.reviews.len(),
            creates as f64 / f.elapsed.as_secs_f64(),
            f.admitted,
            f.throttled,
            f.stale_denied,
            f.reviews,
            f.max[0],
            f.max[1],
            f.max[2],
            f.caps[0],
            f.caps[1],
            f.caps[2],
            bound[0],
            bound[1],
            bound[2],
            over[0],
            over[1],
            over[2],
            if (0..3).all(|i| f.max[i] <= bound[i]) {
                "yes"
            } else {
                "NO"
            },
        );
    }
}
