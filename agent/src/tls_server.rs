//! TLS of the agent's own gRPC server: a rustls configuration from
//! [`longhorn_guard_runtime::tls::server_config`], whose certificate (and client CA) follow the files as
//! they are rotated, and an accept loop that runs each handshake in its own task so a slow or
//! silent client cannot hold up the others.
//!
//! Handshakes in progress are capped (`AgentConfig::max_tls_handshakes`): a connection flood
//! costs a bounded number of tasks and sockets. At the cap the loop keeps accepting and the
//! longest-waiting handshake gives way to the new connection, so silent connections cannot
//! lock real clients out (a real client's handshake takes milliseconds; a silent one would
//! otherwise hold its slot for the whole handshake timeout).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use longhorn_guard_runtime::tls::{ReloadHandle, ServerTlsOptions};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::AbortHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::config::AgentConfig;
use crate::metrics::encode_const_counter;

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
    longhorn_guard_runtime::tls::server_config(&options).with_context(|| {
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

/// Accepts TCP connections on `listener` and yields those whose TLS handshake succeeded, with
/// at most `max_handshakes` handshakes in progress (see the module docs). The accept task ends
/// when the returned stream is dropped (the gRPC server stopped).
pub(crate) fn tls_incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    max_handshakes: usize,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
    let slots = Arc::new(Semaphore::new(max_handshakes.max(1)));
    tokio::spawn(async move {
        // Handshake tasks, oldest first (finished ones are dropped from the front lazily).
        let mut handshakes: VecDeque<AbortHandle> = VecDeque::new();
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    handshakes.retain(|h| !h.is_finished());
                    let slot = match Arc::clone(&slots).try_acquire_owned() {
                        Ok(slot) => slot,
                        Err(_) => {
                            if let Some(oldest) = handshakes.pop_front() {
                                tracing::debug!(%peer, "agent gRPC: {max_handshakes} TLS handshakes in progress; the longest-waiting one gives way");
                                oldest.abort();
                            }
                            // Freed as soon as the aborted task is dropped.
                            match Arc::clone(&slots).acquire_owned().await {
                                Ok(slot) => slot,
                                Err(_) => return,
                            }
                        }
                    };
                    let (acceptor, tx) = (acceptor.clone(), tx.clone());
                    let handshake = tokio::spawn(async move {
                        let _slot = slot;
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
                    handshakes.push_back(handshake.abort_handle());
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
            encode_const_counter(&mut encoder, name, help, value)?;
        }
        Ok(())
    }
}
