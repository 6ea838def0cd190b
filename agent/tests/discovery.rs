//! Engine discovery against the real local kube-apiserver (the test command's control plane):
//! Engine and InstanceManager watches in a fresh namespace feed the EngineIndex, which resolves
//! a volume to its engine and the IM proxy the fake engine stands in for.
//! Ignored by a plain test run (needs the local control plane); `scripts/test.sh` runs it.

mod support;

use std::time::Duration;

use longhorn_guard_agent::{EngineIndex, LookupError};
use longhorn_guard_testkit::{TestCluster, wait_for};
use longhorn_types::{Engine, InstanceManager};
use serde_json::json;
use support::*;

fn engine(name: &str, volume: &str, node: &str) -> serde_json::Value {
    json!({
        "apiVersion": "longhorn.io/v1beta2",
        "kind": "Engine",
        "metadata": { "name": name, "labels": { "longhornvolume": volume } },
        "spec": { "volumeName": volume, "nodeID": node, "dataEngine": "v1", "active": true },
    })
}

fn engine_status(im: &str) -> serde_json::Value {
    let (ip, port) = ENGINE_ADDRESS.split_once(':').unwrap_or_default();
    json!({
        "currentState": "running",
        "instanceManagerName": im,
        "storageIP": ip,
        "port": port.parse::<i64>().unwrap_or_default(),
    })
}

fn instance_manager(name: &str, node: &str) -> serde_json::Value {
    json!({
        "apiVersion": "longhorn.io/v1beta2",
        "kind": "InstanceManager",
        "metadata": { "name": name, "labels": { "longhorn.io/node": node } },
        "spec": { "nodeID": node, "type": "aio", "dataEngine": "v1" },
    })
}

fn im_status(state: &str, proxy_api_version: i64) -> serde_json::Value {
    json!({ "currentState": state, "ip": "127.0.0.1", "proxyApiVersion": proxy_api_version })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn watches_feed_the_index_and_calls_reach_the_engine() -> anyhow::Result<()> {
    let cluster = TestCluster::connect().await?;
    let ns = cluster.namespace("agent-discovery").await?;
    let (_fake, server) = start_fake().await?;
    let proxy_port = server.local_addr.port();

    cluster
        .create_longhorn_object(
            &ns,
            instance_manager("im-node-1", "node-1"),
            Some(im_status("running", 1)),
        )
        .await?;
    cluster
        .create_longhorn_object(
            &ns,
            engine(ENGINE_NAME, VOLUME, "node-1"),
            Some(engine_status("im-node-1")),
        )
        .await?;
    cluster
        .create_longhorn_object(
            &ns,
            engine("pvc-2-e-0", "pvc-2", "node-2"),
            Some(engine_status("im-node-2")),
        )
        .await?;

    let index = EngineIndex::new("node-1", ns.clone(), proxy_port);
    let watches = index.spawn_watches(cluster.client());
    tokio::time::timeout(Duration::from_secs(10), index.wait_ready())
        .await
        .map_err(|_| anyhow::anyhow!("Engine/InstanceManager watches in {ns} never synced"))?;

    let target = index.lookup(VOLUME)?;
    assert_eq!(target.engine_name, ENGINE_NAME);
    assert_eq!(target.engine_address, ENGINE_ADDRESS);
    assert_eq!(target.proxy_endpoint, server.local_addr.to_string());
    assert_eq!(index.engine_count(), 1, "only node-1's engines are indexed");
    assert!(matches!(
        index.lookup("pvc-2"),
        Err(LookupError::UnknownVolume { .. })
    ));

    // The call goes through the pool to the (fake) proxy the index found.
    let fx = fixture(test_pool_config()).await?;
    let list = fx
        .client
        .snapshot_list(&target, deadline_in(Duration::from_secs(2)))
        .await?;
    assert!(list.disks.contains_key("snap-a"));

    // An instance manager that stops is no longer dialled.
    cluster
        .set_status::<InstanceManager>(&ns, "im-node-1", im_status("stopped", 1))
        .await?;
    wait_for(Duration::from_secs(10), "index sees the stopped IM", || {
        let index = index.clone();
        async move {
            Ok(matches!(
                index.lookup(VOLUME),
                Err(LookupError::InstanceManagerNotDialable { .. })
            ))
        }
    })
    .await?;

    // A deleted engine disappears from the index.
    let engines: kube::Api<Engine> = kube::Api::namespaced(cluster.client(), &ns);
    engines
        .delete(ENGINE_NAME, &kube::api::DeleteParams::default())
        .await?;
    wait_for(
        Duration::from_secs(10),
        "index drops the deleted engine",
        || {
            let index = index.clone();
            async move { Ok(index.engine_count() == 0) }
        },
    )
    .await?;

    for watch in watches {
        watch.abort();
    }
    server.shutdown().await;
    Ok(())
}
