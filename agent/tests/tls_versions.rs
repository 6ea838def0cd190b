//! The agent's gRPC listener: TLS 1.0/1.1 refused (raw ClientHellos: a rustls client cannot
//! offer them), TLS 1.2 and 1.3 accepted with AEAD suites, and with a client CA each version
//! still requires a client certificate from that CA (the tonic clients' view of mTLS is in
//! agent_api.rs).
#![allow(clippy::unwrap_used)]

mod support;
#[path = "../../webhook/tests/tls_probe/mod.rs"]
mod tls_probe;

use std::net::SocketAddr;

use longhorn_guard_agent::{Agent, AgentConfig};
use support::{files_dir, leaf, make_ca};
use tls_probe::*;
use tokio::net::TcpListener;

struct Running {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// Removed when dropped.
    _dir: tempfile::TempDir,
}

async fn start(ca_pem: &str, server: &(String, String), mtls: bool) -> anyhow::Result<Running> {
    let dir = files_dir(&[
        ("tls.crt", &server.0),
        ("tls.key", &server.1),
        ("ca.crt", ca_pem),
    ])?;
    let path = dir.path();
    let mut config = AgentConfig::new("node-1");
    config.server_cert = path.join("tls.crt");
    config.server_key = path.join("tls.key");
    config.client_ca = mtls.then(|| path.join("ca.crt"));
    let agent = Agent::new(config)?;
    let grpc = TcpListener::bind("127.0.0.1:0").await?;
    let http = TcpListener::bind("127.0.0.1:0").await?;
    let addr = grpc.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(agent.serve(grpc, http, async move {
        let _ = stopped.await;
    }));
    Ok(Running {
        addr,
        stop,
        task,
        _dir: dir,
    })
}

impl Running {
    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await??;
        Ok(())
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_tls_is_refused_and_mtls_holds_on_every_version() -> anyhow::Result<()> {
    longhorn_guard_runtime::install_crypto_provider();
    let ca = make_ca("agent test CA")?;
    let foreign = make_ca("foreign CA")?;
    let server = leaf(&["localhost", "127.0.0.1"], &ca)?;
    let client = leaf(&["longhorn-guard-webhook"], &ca)?;
    let stranger = leaf(&["longhorn-guard-webhook"], &foreign)?;
    let ca_pem = ca.pem();

    for mtls in [false, true] {
        let running = start(&ca_pem, &server, mtls).await?;
        let addr = running.addr;
        for (name, version) in [("TLS 1.0", TLS1_0), ("TLS 1.1", TLS1_1)] {
            let outcome =
                blocking(move || probe_raw(addr, &client_hello(version, &LEGACY_SUITES))).await?;
            assert_eq!(
                outcome,
                RawOutcome::Alert(2, 70),
                "{name} (mtls {mtls}): {outcome:?}"
            );
        }
        let outcome =
            blocking(move || probe_raw(addr, &client_hello(TLS1_2, &LEGACY_SUITES[..4]))).await?;
        assert_eq!(
            outcome,
            RawOutcome::Alert(2, 40),
            "legacy suites (mtls {mtls})"
        );

        for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
            let (pem, c) = (ca_pem.clone(), client.clone());
            let ok =
                blocking(move || handshake(addr, "localhost", &pem, version, Some((&c.0, &c.1))))
                    .await;
            let n = ok.unwrap_or_else(|e| {
                panic!(
                    "{:?} with the right cert (mtls {mtls}): {e:#}",
                    version.version
                )
            });
            assert_eq!(n.version, version.version);

            let pem = ca_pem.clone();
            let anonymous =
                blocking(move || handshake(addr, "localhost", &pem, version, None)).await;
            let (pem, s) = (ca_pem.clone(), stranger.clone());
            let foreign_cert =
                blocking(move || handshake(addr, "localhost", &pem, version, Some((&s.0, &s.1))))
                    .await;
            if mtls {
                assert!(
                    anonymous.is_err(),
                    "{:?}: no client cert accepted",
                    version.version
                );
                assert!(
                    foreign_cert.is_err(),
                    "{:?}: foreign CA accepted",
                    version.version
                );
            } else {
                assert!(anonymous.is_ok(), "{:?}: {anonymous:?}", version.version);
            }
        }
        running.stop().await?;
    }
    Ok(())
}
