//! The webhook's TLS as configured (TLS 1.2 and 1.3 only, AEAD suites with forward secrecy)
//! and its request-body limit, against the real listener.
#![allow(clippy::unwrap_used)]

mod common;
mod tls_probe;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Result;
use common::*;
use longhorn_guard_webhook::{NoSnapshotSource, Policy};
use rustls::CipherSuite;
use tls_probe::*;

/// The webhook without a cluster (no watches): enough for the TLS listener and the body
/// limit, which act before any decision.
async fn serve_without_cluster(
    policy: Policy,
) -> Result<(longhorn_guard_webhook::WebhookHandle, TestCert)> {
    let cert = TestCert::new()?;
    let config = cert.config(Some(policy), None);
    let handle =
        longhorn_guard_webhook::start_with_source(config, None, Arc::new(NoSnapshotSource)).await?;
    Ok((handle, cert))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

const STRONG: [CipherSuite; 6] = [
    CipherSuite::TLS13_AES_128_GCM_SHA256,
    CipherSuite::TLS13_AES_256_GCM_SHA384,
    CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_tls_1_2_and_1_3_with_aead_suites_are_accepted() -> Result<()> {
    let (handle, cert) = serve_without_cluster(Policy::default()).await?;
    let addr: SocketAddr = handle.local_addr();

    for (name, version) in [("TLS 1.0", TLS1_0), ("TLS 1.1", TLS1_1)] {
        let outcome =
            blocking(move || probe_raw(addr, &client_hello(version, &LEGACY_SUITES))).await?;
        assert!(
            outcome.refused(),
            "{name} ClientHello was not refused: {outcome:?}"
        );
        // rustls answers an old version with a fatal protocol_version alert (70).
        assert_eq!(outcome, RawOutcome::Alert(2, 70), "{name}");
    }
    // TLS 1.2 offering only RSA-key-exchange / CBC / 3DES / RC4 suites: no suite in common.
    let outcome =
        blocking(move || probe_raw(addr, &client_hello(TLS1_2, &LEGACY_SUITES[..4]))).await?;
    assert_eq!(
        outcome,
        RawOutcome::Alert(2, 40),
        "legacy suites: {outcome:?}"
    );
    // A TLS 1.2 ClientHello with a modern suite gets a ServerHello.
    let outcome =
        blocking(move || probe_raw(addr, &client_hello(TLS1_2, &[0xc02b, 0xc02f]))).await?;
    assert!(matches!(outcome, RawOutcome::Handshake(_)), "{outcome:?}");

    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let pem = cert.pem.clone();
        let n = blocking(move || handshake(addr, "127.0.0.1", &pem, version, None)).await?;
        assert_eq!(n.version, version.version, "{n:?}");
        assert!(STRONG.contains(&n.suite), "weak suite negotiated: {n:?}");
    }
    handle.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_limit_is_the_policys_max_body_bytes() -> Result<()> {
    let policy = Policy {
        max_body_bytes: 4096,
        ..Policy::default()
    };
    let (handle, cert) = serve_without_cluster(policy).await?;
    let served = Served { handle, cert };
    let (status, body) = tls_post(&served, "/validate/backups", vec![b' '; 4097]).await?;
    assert_eq!(status, 413, "{body}");
    assert!(
        body.contains("4096 bytes") && body.contains("maxBodyBytes"),
        "{body}"
    );
    // Just under the limit is read and parsed (and refused as not a review).
    let (status, body) = tls_post(&served, "/validate/backups", vec![b' '; 4000]).await?;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("not a valid admission.k8s.io/v1 AdmissionReview"),
        "{body}"
    );
    let metrics = served.metrics().await?;
    assert_eq!(
        metric(
            &metrics,
            "longhorn_guard_webhook_malformed_reviews_total",
            "body_too_large"
        ),
        1,
        "{metrics}"
    );
    served.stop().await?;
    Ok(())
}
