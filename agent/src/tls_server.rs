//! TLS of the agent's own gRPC server: a rustls configuration from
//! [`longhorn_guard_certs::server_config`], whose certificate (and client CA) follow the files as
//! they are rotated, and an accept loop that runs each handshake in its own task so a slow or
//! silent client cannot hold up the others.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use longhorn_guard_certs::{ReloadHandle, ServerTlsOptions};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::config::AgentConfig;

/// Longest TLS handshake the server waits for.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the gRPC server to pick them up.
const ACCEPT_QUEUE: usize = 64;

/// The reloadable server configuration: ALPN `h2` only (gRPC), TLS 1.2+; with `client_ca`, a
/// client certificate chaining to it is required.
pub(crate) fn reloadable_server_config(
    config: &AgentConfig,
) -> anyhow::Result<(Arc<rustls::ServerConfig>, ReloadHandle)> {
    let mut options = ServerTlsOptions::new(&config.server_cert, &config.server_key)
        .with_poll_interval(config.tls_reload_interval);
    options.alpn_protocols = vec![b"h2".to_vec()];
    if let Some(ca) = &config.client_ca {
        options = options.with_client_ca(ca);
    }
    longhorn_guard_certs::server_config(&options).with_context(|| {
        format!(
            "agent gRPC TLS: certificate {}, key {}{}",
            config.server_cert.display(),
            config.server_key.display(),
            config
                .client_ca
                .as_ref()
                .map(|ca| format!(", client CA {}", ca.display()))
                .unwrap_or_default()
        )
    })
}

/// Accepts TCP connections on `listener` and yields those whose TLS handshake succeeded. The
/// accept task ends when the returned stream is dropped (the gRPC server stopped).
pub(crate) fn tls_incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    let (acceptor, tx) = (acceptor.clone(), tx.clone());
                    tokio::spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => {
                                let _ = tx.send(Ok(tls)).await;
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "agent gRPC: TLS handshake failed");
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "agent gRPC: TLS handshake timed out after {HANDSHAKE_TIMEOUT:?}");
                            }
                        }
                    });
                }
                Err(e) => {
                    // e.g. EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "agent gRPC: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

/// `tls_reloads_total` / `tls_reload_errors_total` of the serving certificate, read at scrape time.
#[derive(Debug)]
pub(crate) struct TlsReloadCollector {
    pub(crate) handle: Arc<ReloadHandle>,
}

impl Collector for TlsReloadCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.handle.stats();
        for (name, help, value) in [
            (
                "tls_reloads",
                "Rotated serving certificates or client CAs of the agent's gRPC server loaded without a restart",
                stats.reloads_total,
            ),
            (
                "tls_reload_errors",
                "New serving certificate / client CA contents refused (the one in force stays)",
                stats.errors_total,
            ),
        ] {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}
