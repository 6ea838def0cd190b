//! The demo's fake instance managers never share an address with anything else: with Longhorn's
//! port 8501 taken on a node address they all serve on one other port (which the agents are told),
//! and with it free they use 8501.
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

use longhorn_guard_demo::world::{Nodes, PREFERRED_PROXY_PORT};
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A loopback /24 of this test's own (127.201-250.x.0), first node at .2.
fn own_base() -> Ipv4Addr {
    let r: u32 = rand::random();
    Ipv4Addr::new(127, 201 + (r % 50) as u8, (r >> 8) as u8, 2)
}

async fn serving(addr: SocketAddr) -> bool {
    let Ok(channel) = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
    else {
        return false;
    };
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_8501_taken_on_a_node_address_every_node_serves_on_one_other_port() {
    let base = own_base();
    let second = Ipv4Addr::from(u32::from(base) + 1);
    // Another process's listener on the second node's 8501.
    let squatter = TcpListener::bind((second, PREFERRED_PROXY_PORT)).unwrap();
    let nodes = Nodes::start(3, base).await.unwrap();
    assert_ne!(nodes.port, PREFERRED_PROXY_PORT);
    for (i, node) in nodes.nodes.iter().enumerate() {
        let addr = node.proxy_addr();
        assert_eq!(
            addr,
            SocketAddr::from((Ipv4Addr::from(u32::from(base) + i as u32), nodes.port))
        );
        assert!(
            serving(addr).await,
            "node {} not serving on {addr}",
            node.name
        );
    }
    // Nothing of the demo took the squatter's address.
    assert_eq!(squatter.local_addr().unwrap().port(), PREFERRED_PROXY_PORT);
    nodes.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_8501_free_the_nodes_use_longhorns_port() {
    let base = own_base();
    let nodes = Nodes::start(2, base).await.unwrap();
    assert_eq!(nodes.port, PREFERRED_PROXY_PORT);
    for node in &nodes.nodes {
        assert!(serving(node.proxy_addr()).await, "{}", node.name);
    }
    nodes.shutdown().await;
}
