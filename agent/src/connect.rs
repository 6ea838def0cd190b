//! Opening one HTTP/2 channel to an instance manager's engine proxy, the way longhorn-manager does:
//! mTLS + health check when Longhorn's gRPC TLS files are present, otherwise (or when that fails)
//! plaintext h2c + health check.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use longhorn_guard_proto::LONGHORN_GRPC_PEER_NAME;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::config::{MIN_KEEPALIVE_INTERVAL, PoolConfig};

/// How a channel reached the engine proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Plaintext,
    MutualTls,
}

/// Why a channel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("invalid engine-proxy endpoint {endpoint}: {source}")]
    InvalidEndpoint {
        endpoint: String,
        source: tonic::transport::Error,
    },
    #[error("connect to engine proxy {endpoint} ({transport:?}) failed: {message}")]
    Connect {
        endpoint: String,
        transport: Transport,
        message: String,
    },
    #[error("health check of engine proxy {endpoint} ({transport:?}) failed: {message}")]
    Health {
        endpoint: String,
        transport: Transport,
        message: String,
    },
    #[error(
        "engine proxy {endpoint}: mTLS with Longhorn's TLS files failed ({tls}), and the plaintext fallback failed too ({plaintext})"
    )]
    TlsAndPlaintext {
        endpoint: String,
        tls: Box<DialError>,
        plaintext: Box<DialError>,
    },
}

/// A health-checked channel and how it got there.
#[derive(Debug, Clone)]
pub struct Dialed {
    pub channel: Channel,
    pub transport: Transport,
    /// Longhorn's TLS files were present but mTLS failed, so the channel is plaintext.
    pub tls_fallback: bool,
}

/// Longhorn's gRPC TLS material (`longhorn-grpc-tls` Secret mounted at `/tls-files/`), as a
/// client configuration like Longhorn's Go client: TLS 1.3 only, roots = `ca.crt`, client
/// certificate = `tls.crt` / `tls.key`, server name [`LONGHORN_GRPC_PEER_NAME`], ALPN h2.
#[derive(Clone)]
pub(crate) struct LonghornTls {
    config: Arc<rustls::ClientConfig>,
}

impl LonghornTls {
    /// `Ok(None)` when the directory or any of `ca.crt`, `tls.crt`, `tls.key` is absent: Longhorn
    /// then runs its servers without TLS. Unreadable or unusable files are an error naming them.
    pub(crate) fn load(dir: &Path) -> std::io::Result<Option<Self>> {
        let files: [PathBuf; 3] = [dir.join("ca.crt"), dir.join("tls.crt"), dir.join("tls.key")];
        if files.iter().any(|f| !f.exists()) {
            return Ok(None);
        }
        let [ca, cert, key] = files;
        let bad = |path: &Path, what: String| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {what}", path.display()),
            )
        };
        let read =
            |path: &Path| std::fs::read(path).map_err(|e| bad(path, format!("cannot read: {e}")));
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut read(&ca)?.as_slice()) {
            let c = c.map_err(|e| bad(&ca, format!("unparseable PEM: {e}")))?;
            roots
                .add(c)
                .map_err(|e| bad(&ca, format!("unusable CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(bad(&ca, "no CERTIFICATE block".to_string()));
        }
        let chain = rustls_pemfile::certs(&mut read(&cert)?.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(&cert, format!("unparseable PEM: {e}")))?;
        if chain.is_empty() {
            return Err(bad(&cert, "no CERTIFICATE block".to_string()));
        }
        let private_key = rustls_pemfile::private_key(&mut read(&key)?.as_slice())
            .map_err(|e| bad(&key, format!("unparseable PEM: {e}")))?
            .ok_or_else(|| bad(&key, "no PRIVATE KEY block".to_string()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| bad(dir, format!("TLS 1.3: {e}")))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, private_key)
            .map_err(|e| bad(&key, format!("does not fit {}: {e}", cert.display())))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Some(Self {
            config: Arc::new(config),
        }))
    }
}

fn base_endpoint(uri: String, endpoint: &str, config: &PoolConfig) -> Result<Endpoint, DialError> {
    let built = Endpoint::from_shared(uri).map_err(|source| DialError::InvalidEndpoint {
        endpoint: endpoint.to_string(),
        source,
    })?;
    Ok(built
        .connect_timeout(config.connect_timeout)
        // Validated at pool construction; clamped again so no path can ping faster than Longhorn allows.
        .http2_keep_alive_interval(config.keepalive_interval.max(MIN_KEEPALIVE_INTERVAL))
        .keep_alive_timeout(config.keepalive_timeout)
        .keep_alive_while_idle(config.keepalive_while_idle)
        .tcp_nodelay(true))
}

async fn health_check(
    channel: &Channel,
    endpoint: &str,
    transport: Transport,
    timeout: Duration,
) -> Result<(), DialError> {
    let mut client = HealthClient::new(channel.clone());
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    request.set_timeout(timeout);
    let fail = |message: String| DialError::Health {
        endpoint: endpoint.to_string(),
        transport,
        message,
    };
    match tokio::time::timeout(timeout, client.check(request)).await {
        Err(_) => Err(fail(format!("no answer within {timeout:?}"))),
        Ok(Err(status)) => {
            // The useful part (a TLS alert, a refused connection) is in the source chain.
            let mut message = format!("{:?}: {}", status.code(), status.message());
            if let Some(source) = std::error::Error::source(&status) {
                let chain = error_chain(source);
                if !message.contains(&chain) {
                    message = format!("{message}: {chain}");
                }
            }
            Err(fail(message))
        }
        Ok(Ok(response)) => {
            let status = response.into_inner().status;
            if status == ServingStatus::Serving as i32 {
                Ok(())
            } else {
                Err(fail(format!("serving status {status}")))
            }
        }
    }
}

/// Alive for as long as a channel can still reach its engine proxy: the channel's connector (owned
/// by every clone of the [`Channel`], dropped with the last one) and every connection it opened
/// (dropped when the connection closes) hold it. The pool keeps only a `Weak` to it, so a
/// channel the pool has let go of but someone still holds (longhorn-manager v1.7.2's leak) shows.
#[derive(Debug, Default)]
pub(crate) struct ChannelWitness;

/// A connection's byte stream, holding its channel's [`ChannelWitness`] until it is closed.
struct Witnessed<S> {
    io: S,
    _witness: Arc<ChannelWitness>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Witnessed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Witnessed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A TCP connection (no Nagle) to `address` that holds `witness` while open.
async fn connect_tcp(
    address: &str,
    witness: Arc<ChannelWitness>,
) -> std::io::Result<Witnessed<TcpStream>> {
    let tcp = TcpStream::connect(address).await?;
    let _ = tcp.set_nodelay(true);
    Ok(Witnessed {
        io: tcp,
        _witness: witness,
    })
}

async fn dial_once(
    endpoint: &str,
    config: &PoolConfig,
    tls: Option<&LonghornTls>,
    witness: &Arc<ChannelWitness>,
) -> Result<Channel, DialError> {
    let built = base_endpoint(format!("http://{endpoint}"), endpoint, config)?;
    let (witness, address) = (Arc::clone(witness), endpoint.to_string());
    // Both connectors hold the witness (so does every stream they open): see [`ChannelWitness`].
    let (transport, connected) = match tls {
        Some(tls) => {
            // TLS by rustls under tonic: TLS 1.3 only, as Longhorn's client and server.
            let client = Arc::clone(&tls.config);
            let connector = tower::service_fn(move |_: http::Uri| {
                let (client, address, witness) =
                    (Arc::clone(&client), address.clone(), Arc::clone(&witness));
                async move {
                    let tcp = connect_tcp(&address, witness).await?;
                    let name = ServerName::try_from(LONGHORN_GRPC_PEER_NAME)
                        .map_err(std::io::Error::other)?;
                    let stream = tokio_rustls::TlsConnector::from(client)
                        .connect(name, tcp)
                        .await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            });
            (
                Transport::MutualTls,
                built.connect_with_connector(connector).await,
            )
        }
        None => {
            let connector = tower::service_fn(move |_: http::Uri| {
                let (address, witness) = (address.clone(), Arc::clone(&witness));
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(connect_tcp(&address, witness).await?))
                }
            });
            (
                Transport::Plaintext,
                built.connect_with_connector(connector).await,
            )
        }
    };
    let channel = connected.map_err(|e| DialError::Connect {
        endpoint: endpoint.to_string(),
        transport,
        message: error_chain(&e),
    })?;
    health_check(&channel, endpoint, transport, config.connect_timeout).await?;
    Ok(channel)
}

/// Opens a health-checked channel. With TLS material, tries mTLS first and falls back to
/// plaintext, as longhorn-manager does (the IM serves plaintext when its TLS files fail to load).
/// A failed attempt's channel is dropped (closed) before the next one. When both fail, the error
/// carries both reasons.
pub(crate) async fn dial(
    endpoint: &str,
    config: &PoolConfig,
    witness: &Arc<ChannelWitness>,
) -> Result<Dialed, DialError> {
    let tls = match &config.longhorn_tls_dir {
        Some(dir) => match LonghornTls::load(dir) {
            Ok(tls) => tls,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot use Longhorn gRPC TLS files; using plaintext");
                None
            }
        },
        None => None,
    };
    let Some(tls) = tls else {
        let channel = dial_once(endpoint, config, None, witness).await?;
        return Ok(Dialed {
            channel,
            transport: Transport::Plaintext,
            tls_fallback: false,
        });
    };
    let tls_error = match dial_once(endpoint, config, Some(&tls), witness).await {
        Ok(channel) => {
            return Ok(Dialed {
                channel,
                transport: Transport::MutualTls,
                tls_fallback: false,
            });
        }
        Err(e) => e,
    };
    tracing::info!(%endpoint, error = %tls_error, "mTLS to engine proxy failed; retrying in plaintext like longhorn-manager");
    match dial_once(endpoint, config, None, witness).await {
        Ok(channel) => Ok(Dialed {
            channel,
            transport: Transport::Plaintext,
            tls_fallback: true,
        }),
        Err(plaintext) => Err(DialError::TlsAndPlaintext {
            endpoint: endpoint.to_string(),
            tls: Box::new(tls_error),
            plaintext: Box::new(plaintext),
        }),
    }
}

/// One unpooled, health-checked channel opened exactly as longhorn-manager v1.7.2's
/// `NewEngineClientProxy` opens one: mTLS + health check when Longhorn's TLS files are in
/// `config.longhorn_tls_dir`, on failure plaintext + health check. The caller owns (and closes,
/// by dropping) the channel. For baselines and diagnostics only: engine calls go through the
/// [`crate::LeasePool`].
pub async fn open_unpooled_channel(
    endpoint: &str,
    config: &PoolConfig,
) -> Result<Dialed, DialError> {
    dial(endpoint, config, &Arc::new(ChannelWitness)).await
}

/// `e` and its sources, joined: tonic's transport errors hide the useful part in the chain.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
