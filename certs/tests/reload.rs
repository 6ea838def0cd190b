//! `longhorn_guard_runtime::tls::ReloadingCertResolver` under load (certificates issued with
//! `pki`): a steady stream of TLS handshakes from a rustls client on 127.0.0.1 while the
//! certificate files are swapped (atomically, as the kubelet does, and non-atomically, one file
//! after the other); then a corrupt file that must not replace the certificate in force.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use longhorn_guard_certs::pki::{self, KeyedCert, LeafSpec, LeafUsage};
use longhorn_guard_runtime::tls::{ServerTlsOptions, server_config};
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

/// One handshake of the load, as it went: when it started and ended on the load's clock (one
/// counter ticked at every start and end), the phase of the test at both moments, and the
/// certificate served (or the error).
struct Handshake {
    start: u64,
    end: u64,
    phase_at_start: u8,
    phase_at_end: u8,
    served: Result<CertificateDer<'static>, String>,
}

/// What the files hold, set by the test around each write (see the swap test).
const PHASE_FIRST: u8 = 0;
const PHASE_SECOND: u8 = 1;
const PHASE_THIRD_CERT_ONLY: u8 = 2;
const PHASE_THIRD: u8 = 3;

struct Load {
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicU8>,
    clock: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Handshake>>>,
}

impl Load {
    /// `n` clients doing back-to-back handshakes until stopped, each recorded.
    fn start(addr: std::net::SocketAddr, config: Arc<rustls::ClientConfig>, n: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(AtomicU8::new(PHASE_FIRST));
        let clock = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicU64::new(0));
        let tasks = (0..n)
            .map(|_| {
                let (stop, phase, clock, done, config) = (
                    stop.clone(),
                    phase.clone(),
                    clock.clone(),
                    done.clone(),
                    config.clone(),
                );
                tokio::spawn(async move {
                    let mut log = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        let phase_at_start = phase.load(Ordering::SeqCst);
                        let start = clock.fetch_add(1, Ordering::SeqCst);
                        let served = handshake(addr, config.clone())
                            .await
                            .map_err(|e| format!("{e:#}"));
                        let end = clock.fetch_add(1, Ordering::SeqCst);
                        let phase_at_end = phase.load(Ordering::SeqCst);
                        log.push(Handshake {
                            start,
                            end,
                            phase_at_start,
                            phase_at_end,
                            served,
                        });
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                    log
                })
            })
            .collect();
        Self {
            stop,
            phase,
            clock,
            done,
            tasks,
        }
    }

    fn set_phase(&self, phase: u8) {
        self.phase.store(phase, Ordering::SeqCst);
    }

    /// The load's clock now: handshakes starting later have a larger `start`.
    fn now(&self) -> u64 {
        self.clock.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` handshakes that started after this call have completed (the
    /// load ran against what the files hold now; those in flight at the call do not count);
    /// fails after 10 s.
    async fn wait_for_handshakes(&self, n: u64) {
        let in_flight = self.tasks.len() as u64;
        let target = self.done.load(Ordering::SeqCst) + in_flight + n;
        for _ in 0..2_000 {
            if self.done.load(Ordering::SeqCst) >= target {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the load did not complete {n} more handshakes within 10 s");
    }

    async fn finish(self) -> Vec<Handshake> {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.unwrap());
        }
        all
    }
}

async fn wait_until_served(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
    want: &CertificateDer<'_>,
    handle: &longhorn_guard_runtime::tls::ReloadHandle,
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

/// Handshakes run back to back while the files change; afterwards each one is checked
/// against what the files held while it ran: none fails, the second pair stays served while
/// only the certificate was replaced (a mismatched pair on disk, refused by the reloader), and
/// no handshake gets an older pair than one completed before it started.
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

    let load = Load::start(addr, client.clone(), 4);
    load.wait_for_handshakes(20).await;

    // 1. Atomic swap (kubelet style).
    let second = leaf(&ca, LeafUsage::Server, "second");
    load.set_phase(PHASE_SECOND);
    write_atomic(&cert, &second.cert_pem);
    write_atomic(&key, &second.key_pem);
    wait_until_served(addr, client.clone(), &der(&second.cert_pem), &handle).await;
    let second_served = load.now();
    load.wait_for_handshakes(20).await;

    // 2. Non-atomic swap: the certificate first; the key only once the reloader has refused
    // the mismatched pair and the load has run against it. The old pair stays in force.
    let third = leaf(&ca, LeafUsage::Server, "third");
    std::fs::write(&cert, &third.cert_pem).unwrap();
    load.set_phase(PHASE_THIRD_CERT_ONLY);
    // The poller may have read the file half-written; a forced re-read of the whole
    // mismatched pair is refused now, or already was.
    let recheck = handle.check_now();
    assert!(
        !matches!(recheck, Ok(true)),
        "a mismatched pair was loaded: {recheck:?}"
    );
    assert_eq!(
        handle.resolver().current_leaf().unwrap(),
        der(&second.cert_pem)
    );
    let mismatch_refused = load.now();
    load.wait_for_handshakes(20).await;
    load.set_phase(PHASE_THIRD);
    std::fs::write(&key, &third.key_pem).unwrap();
    wait_until_served(addr, client.clone(), &der(&third.cert_pem), &handle).await;
    let third_served = load.now();
    load.wait_for_handshakes(20).await;

    // 3. A corrupt certificate file: refused, counted once however often it is re-read, and
    // the third pair keeps being served.
    let errors_before = handle.stats().errors_total;
    write_atomic(
        &cert,
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n",
    );
    assert!(handle.check_now().is_err() || handle.stats().errors_total > errors_before);
    for _ in 0..3 {
        assert!(!handle.check_now().unwrap(), "the same bad content again");
    }
    assert_eq!(
        handle.stats().errors_total,
        errors_before + 1,
        "one count per bad content"
    );
    load.wait_for_handshakes(20).await;
    assert_eq!(
        handshake(addr, client.clone()).await.unwrap(),
        der(&third.cert_pem)
    );
    assert_eq!(
        handle.resolver().current_leaf().unwrap(),
        der(&third.cert_pem)
    );

    // Handshake by handshake: 0 = first pair, 1 = second, 2 = third.
    let log = load.finish().await;
    let pairs = [&first, &second, &third].map(|p| der(&p.cert_pem));
    let pair_of = |h: &Handshake| -> usize {
        let served = h
            .served
            .as_ref()
            .unwrap_or_else(|e| panic!("handshake {}..{} failed: {e}", h.start, h.end));
        pairs.iter().position(|p| p == served).unwrap_or_else(|| {
            panic!(
                "handshake {}..{} served an unknown certificate",
                h.start, h.end
            )
        })
    };
    let (mut second_checked, mut during_mismatch) = (0, 0);
    for h in &log {
        let pair = pair_of(h);
        let at = format!("handshake {}..{}", h.start, h.end);
        if h.phase_at_end == PHASE_FIRST {
            assert_eq!(pair, 0, "{at}: before the first swap, the first pair");
        }
        if h.start > second_served && h.phase_at_end <= PHASE_THIRD_CERT_ONLY {
            assert_eq!(
                pair, 1,
                "{at}: the second pair, from when it was served until the third key was written"
            );
            second_checked += 1;
        }
        if h.phase_at_start == PHASE_THIRD_CERT_ONLY
            && h.phase_at_end == PHASE_THIRD_CERT_ONLY
            && h.start > mismatch_refused
        {
            during_mismatch += 1;
        }
        if h.start > third_served {
            assert_eq!(pair, 2, "{at}: the third pair, once served");
        }
    }
    // No handshake gets an older pair than one that completed before it started.
    let mut events: Vec<(u64, bool, usize)> = log
        .iter()
        .flat_map(|h| [(h.start, false, pair_of(h)), (h.end, true, pair_of(h))])
        .collect();
    events.sort_unstable();
    let mut newest_completed = 0;
    for (at, is_end, pair) in events {
        if is_end {
            newest_completed = newest_completed.max(pair);
        } else {
            assert!(
                pair >= newest_completed,
                "the handshake started at {at} got pair {pair} after pair {newest_completed} had been served"
            );
        }
    }
    assert!(
        during_mismatch >= 20,
        "only {during_mismatch} handshakes ran after the reloader refused the mismatched pair"
    );
    assert!(handle.stats().reloads_total >= 2, "{:?}", handle.stats());
    eprintln!(
        "{} handshakes, 0 failed; {second_checked} served the second pair while it was due, {during_mismatch} of them while the mismatched pair was on disk; {:?}",
        log.len(),
        handle.stats()
    );
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
