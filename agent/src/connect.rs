//! Opening one HTTP/2 channel to an instance manager's engine proxy, the way longhorn-manager does:
//! mTLS + health check when Longhorn's gRPC TLS files are present, otherwise (or when that fails)
//! plaintext h2c + health check.

use std::path::{Path, PathBuf};
use std::time::Duration;

use longhorn_guard_proto::LONGHORN_GRPC_PEER_NAME;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
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
}

/// Longhorn's gRPC TLS material (`longhorn-grpc-tls` Secret mounted at `/tls-files/`).
#[derive(Clone)]
pub(crate) struct LonghornTls {
    ca: Certificate,
    identity: Identity,
}

impl LonghornTls {
    /// `Ok(None)` when the directory or any of `ca.crt`, `tls.crt`, `tls.key` is absent: Longhorn
    /// then runs its servers without TLS.
    pub(crate) fn load(dir: &Path) -> std::io::Result<Option<Self>> {
        let files: [PathBuf; 3] = [dir.join("ca.crt"), dir.join("tls.crt"), dir.join("tls.key")];
        if files.iter().any(|f| !f.exists()) {
            return Ok(None);
        }
        let [ca, cert, key] = files;
        Ok(Some(Self {
            ca: Certificate::from_pem(std::fs::read(ca)?),
            identity: Identity::from_pem(std::fs::read(cert)?, std::fs::read(key)?),
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
        Ok(Err(status)) => Err(fail(format!("{:?}: {}", status.code(), status.message()))),
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

async fn dial_once(
    endpoint: &str,
    config: &PoolConfig,
    tls: Option<&LonghornTls>,
) -> Result<Channel, DialError> {
    let (transport, built) = match tls {
        Some(tls) => {
            let tls_config = ClientTlsConfig::new()
                .domain_name(LONGHORN_GRPC_PEER_NAME)
                .ca_certificate(tls.ca.clone())
                .identity(tls.identity.clone());
            let built = base_endpoint(format!("https://{endpoint}"), endpoint, config)?
                .tls_config(tls_config)
                .map_err(|source| DialError::InvalidEndpoint {
                    endpoint: endpoint.to_string(),
                    source,
                })?;
            (Transport::MutualTls, built)
        }
        None => (
            Transport::Plaintext,
            base_endpoint(format!("http://{endpoint}"), endpoint, config)?,
        ),
    };
    let channel = built.connect().await.map_err(|e| DialError::Connect {
        endpoint: endpoint.to_string(),
        transport,
        message: error_chain(&e),
    })?;
    health_check(&channel, endpoint, transport, config.connect_timeout).await?;
    Ok(channel)
}

/// Opens a health-checked channel. With TLS material, tries mTLS first and falls back to
/// plaintext, as longhorn-manager does (the IM serves plaintext when its TLS files fail to load).
/// A failed attempt's channel is dropped (closed) before the next one.
pub(crate) async fn dial(
    endpoint: &str,
    config: &PoolConfig,
) -> Result<(Channel, Transport), DialError> {
    let tls = match &config.longhorn_tls_dir {
        Some(dir) => match LonghornTls::load(dir) {
            Ok(tls) => tls,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot read Longhorn gRPC TLS files; using plaintext");
                None
            }
        },
        None => None,
    };
    if let Some(tls) = tls {
        match dial_once(endpoint, config, Some(&tls)).await {
            Ok(channel) => return Ok((channel, Transport::MutualTls)),
            Err(e) => {
                tracing::info!(%endpoint, error = %e, "mTLS to engine proxy failed; retrying in plaintext like longhorn-manager");
            }
        }
    }
    let channel = dial_once(endpoint, config, None).await?;
    Ok((channel, Transport::Plaintext))
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
