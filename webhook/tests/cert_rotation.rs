//! The webhook serves through the certs crate's reloading resolver: a renewed certificate
//! written over its files is served without a restart, and a broken one keeps the old pair.
//! (Handshakes under load across a swap are covered by `certs/tests/reload.rs`.)
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestCert, serve, tls_connect};
use longhorn_guard_testkit::{TestCluster, wait_for};
use longhorn_guard_webhook::Policy;

/// A TLS handshake with the webhook trusting only `pem`.
async fn handshake_trusting(addr: std::net::SocketAddr, pem: &str) -> anyhow::Result<()> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pem.as_bytes()) {
        roots.add(c?)?;
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
    connector.connect(name, tcp).await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn renewed_certificate_is_served_without_restart_and_a_broken_one_is_refused() {
    longhorn_guard_runtime::install_crypto_provider();
    let cluster = TestCluster::connect().await.unwrap();
    let ns = cluster.namespace("cert-rotation").await.unwrap();
    let served = serve(cluster.client(), &ns, Policy::default())
        .await
        .unwrap();
    let addr = served.handle.local_addr();
    tls_connect(&served, &[b"h2"]).await.unwrap();

    // A broken key first: counted as an error, the old pair keeps serving.
    std::fs::write(&served.cert.key, "not a key").unwrap();
    wait_for(
        Duration::from_secs(15),
        "the broken key to be noticed",
        || async { Ok(served.handle.tls_reload_stats().errors_total >= 1) },
    )
    .await
    .unwrap();
    handshake_trusting(addr, &served.cert.pem).await.unwrap();

    // The renewal: both files replaced (renamed into place, as a Secret volume update does).
    let renewed = TestCert::new().unwrap();
    std::fs::rename(&renewed.key, served.cert.dir.join("tls.key.new")).unwrap();
    std::fs::rename(served.cert.dir.join("tls.key.new"), &served.cert.key).unwrap();
    std::fs::rename(&renewed.cert, served.cert.dir.join("tls.crt.new")).unwrap();
    std::fs::rename(served.cert.dir.join("tls.crt.new"), &served.cert.cert).unwrap();
    wait_for(
        Duration::from_secs(15),
        "the renewed pair to be loaded",
        || async { Ok(served.handle.tls_reload_stats().reloads_total >= 1) },
    )
    .await
    .unwrap();
    handshake_trusting(addr, &renewed.pem).await.unwrap();
    assert!(
        handshake_trusting(addr, &served.cert.pem).await.is_err(),
        "the old certificate is still served after the renewal"
    );
    served.stop().await.unwrap();
}
