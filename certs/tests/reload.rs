//! ReloadingCertResolver under load: a steady stream of TLS handshakes from a rustls client on
//! 127.0.0.1 while the certificate files are swapped (atomically, as the kubelet does, and
//! non-atomically, one file after the other); then a corrupt file that must not replace the
//! certificate in force.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use longhorn_guard_certs::pki::{self, KeyedCert, LeafSpec, LeafUsage};
use longhorn_guard_certs::{ServerTlsOptions, server_config};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const DAY: Duration = Duration::from_secs(86_400);

fn leaf(ca: &KeyedCert, usage: LeafUsage, cn: &str) -> KeyedCert {
    let spec = LeafSpec {
        common_name: cn.into(),
        dns_names: vec!["guard.test".into()],
        usage,
    };
    pki::issue_leaf(ca, &spec, 90 * DAY).unwrap()
}

fn der(pem: &str) -> CertificateDer<'static> {
    pki::pem_certs(pem).unwrap().remove(0)
}

/// Writes `content` to `path` atomically (temp file + rename), like a Secret volume update.
fn write_atomic(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Serves TLS on 127.0.0.1: each connection gets one byte back after the handshake.
async fn serve(config: Arc<rustls::ServerConfig>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let _ = tls.write_all(b"k").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    addr
}

fn client_config(ca: &KeyedCert, client: Option<&KeyedCert>) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(&ca.cert_pem)).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(c) => {
            let key = rustls_pemfile::private_key(&mut c.key_pem.as_bytes())
                .unwrap()
                .unwrap();
            builder
                .with_client_auth_cert(vec![der(&c.cert_pem)], key)
                .unwrap()
        }
    };
    // Every handshake is a full one: a resumed session reports the first session's
    // certificate, and the test is about what the server serves now.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// One handshake; returns the server's leaf certificate.
async fn handshake(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> anyhow::Result<CertificateDer<'static>> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let mut tls = connector
        .connect(ServerName::try_from("guard.test")?, tcp)
        .await?;
    let mut byte = [0u8; 1];
    tls.read_exact(&mut byte).await?;
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first().cloned())
        .ok_or_else(|| anyhow::anyhow!("no server certificate"))?;
    Ok(cert.into_owned())
}

struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

/// `n` clients doing back-to-back handshakes until stopped.
fn start_load(addr: std::net::SocketAddr, config: Arc<rustls::ClientConfig>, n: usize) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let tasks = (0..n)
        .map(|_| {
            let (stop, ok, failed, config) =
                (stop.clone(), ok.clone(), failed.clone(), config.clone());
            tokio::spawn(async move {
                let mut errors = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match handshake(addr, config.clone()).await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            errors.push(format!("{e:#}"));
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
                errors
            })
        })
        .collect();
    Load {
        stop,
        ok,
        failed,
        tasks,
    }
}

async fn wait_until_served(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
    want: &CertificateDer<'_>,
    handle: &longhorn_guard_certs::ReloadHandle,
) {
    for _ in 0..200 {
        if handshake(addr, config.clone()).await.unwrap() == *want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "the new certificate was never served; {:?}, check_now: {:?}, serving {:?}, want {:?}",
        handle.stats(),
        handle.check_now(),
        pki::inspect(&handle.resolver().current_leaf().unwrap())
            .unwrap()
            .subject,
        pki::inspect(want).unwrap().subject
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_under_load_without_a_failed_handshake_and_keeps_the_old_pair_on_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let ca = pki::new_ca("reload-test-ca", 30 * DAY).unwrap();
    let first = leaf(&ca, LeafUsage::Server, "first");
    write_atomic(&cert, &first.cert_pem);
    write_atomic(&key, &first.key_pem);

    let opts = ServerTlsOptions::new(&cert, &key).with_poll_interval(Duration::from_millis(20));
    let (config, handle) = server_config(&opts).unwrap();
    assert_eq!(
        config.alpn_protocols,
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    );
    let addr = serve(config).await;
    let client = client_config(&ca, None);
    assert_eq!(
        handshake(addr, client.clone()).await.unwrap(),
        der(&first.cert_pem)
    );

    let load = start_load(addr, client.clone(), 4);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // 1. Atomic swap (kubelet style).
    let second = leaf(&ca, LeafUsage::Server, "second");
    write_atomic(&cert, &second.cert_pem);
    write_atomic(&key, &second.key_pem);
    wait_until_served(addr, client.clone(), &der(&second.cert_pem), &handle).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // 2. Non-atomic swap: the certificate first, the key 100 ms later. In between, the pair
    // does not match; the old pair must stay in force.
    let third = leaf(&ca, LeafUsage::Server, "third");
    std::fs::write(&cert, &third.cert_pem).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    std::fs::write(&key, &third.key_pem).unwrap();
    wait_until_served(addr, client.clone(), &der(&third.cert_pem), &handle).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // 3. A corrupt certificate file: refused, counted, the third pair keeps being served.
    let errors_before = handle.stats().errors_total;
    write_atomic(
        &cert,
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n",
    );
    assert!(handle.check_now().is_err() || handle.stats().errors_total > errors_before);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        handle.stats().errors_total,
        errors_before + 1,
        "one count per bad content"
    );
    assert_eq!(
        handshake(addr, client.clone()).await.unwrap(),
        der(&third.cert_pem)
    );
    assert_eq!(
        handle.resolver().current_leaf().unwrap(),
        der(&third.cert_pem)
    );

    load.stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for t in load.tasks {
        errors.extend(t.await.unwrap());
    }
    let (ok, failed) = (
        load.ok.load(Ordering::Relaxed),
        load.failed.load(Ordering::Relaxed),
    );
    assert_eq!(failed, 0, "failed handshakes: {errors:?}");
    assert!(ok > 50, "only {ok} handshakes");
    assert!(handle.stats().reloads_total >= 2, "{:?}", handle.stats());
    eprintln!("{ok} handshakes, 0 failed; {:?}", handle.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_requires_a_client_cert_from_the_client_ca_and_follows_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca_file) = (
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
        dir.path().join("ca.crt"),
    );
    let ca = pki::new_ca("mtls-ca", 30 * DAY).unwrap();
    let other_ca = pki::new_ca("other-ca", 30 * DAY).unwrap();
    let server = leaf(&ca, LeafUsage::Server, "agent");
    write_atomic(&cert, &server.cert_pem);
    write_atomic(&key, &server.key_pem);
    write_atomic(&ca_file, &ca.cert_pem);
    let opts = ServerTlsOptions::new(&cert, &key)
        .with_client_ca(&ca_file)
        .with_poll_interval(Duration::from_secs(3600));
    let (config, handle) = server_config(&opts).unwrap();
    let addr = serve(config).await;

    let good = leaf(&ca, LeafUsage::Client, "webhook-client");
    let foreign = leaf(&other_ca, LeafUsage::Client, "intruder");
    assert!(
        handshake(addr, client_config(&ca, Some(&good)))
            .await
            .is_ok()
    );
    assert!(
        handshake(addr, client_config(&ca, None)).await.is_err(),
        "no client cert"
    );
    assert!(
        handshake(addr, client_config(&ca, Some(&foreign)))
            .await
            .is_err()
    );

    // The bundle gains the other CA (a CA rotation's overlap): both clients are accepted.
    write_atomic(&ca_file, &format!("{}{}", ca.cert_pem, other_ca.cert_pem));
    assert!(handle.check_now().unwrap());
    assert!(
        handshake(addr, client_config(&ca, Some(&good)))
            .await
            .is_ok()
    );
    assert!(
        handshake(addr, client_config(&ca, Some(&foreign)))
            .await
            .is_ok()
    );

    // A broken CA file keeps the bundle in force.
    write_atomic(&ca_file, "garbage");
    assert!(handle.check_now().is_err());
    assert!(
        handshake(addr, client_config(&ca, Some(&foreign)))
            .await
            .is_ok()
    );
}

#[test]
fn start_up_with_a_bad_pair_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let ca = pki::new_ca("ca", DAY).unwrap();
    let a = leaf(&ca, LeafUsage::Server, "a");
    let b = leaf(&ca, LeafUsage::Server, "b");
    std::fs::write(&cert, &a.cert_pem).unwrap();
    std::fs::write(&key, &b.key_pem).unwrap();
    let err = server_config(&ServerTlsOptions::new(&cert, &key)).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("tls.key") && msg.contains("does not match"),
        "{msg}"
    );
    let missing = dir.path().join("missing.crt");
    let msg = server_config(&ServerTlsOptions::new(&missing, &key))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("missing.crt"), "{msg}");
}
