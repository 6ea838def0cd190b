//! The serving TLS configuration: rustls with the ring provider, TLS 1.2 and 1.3, ALPN h2
//! and http/1.1. The webhook serves through [`reloading_server_config`], so certificates
//! renewed by `longhorn-guard certs rotate` (or cert-manager) are picked up without a restart;
//! a bad new pair keeps the last good one serving.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub use longhorn_guard_runtime::install_crypto_provider;

/// The server config over `longhorn_guard_runtime::tls`' reloading resolver: the files are polled
/// every `poll_interval` and swapped atomically. Keep the handle alive as long as the server.
pub fn reloading_server_config(
    cert_path: &Path,
    key_path: &Path,
    poll_interval: std::time::Duration,
) -> anyhow::Result<(Arc<ServerConfig>, longhorn_guard_runtime::tls::ReloadHandle)> {
    let opts = longhorn_guard_runtime::tls::ServerTlsOptions::new(cert_path, key_path)
        .with_poll_interval(poll_interval);
    longhorn_guard_runtime::tls::server_config(&opts).map_err(|e| {
        anyhow::anyhow!(
            "TLS certificate {} / key {}: {e}",
            cert_path.display(),
            key_path.display()
        )
    })
}

/// Builds a fixed (non-reloading) server config from PEM files.
pub fn server_config(cert_path: &Path, key_path: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let cert_pem = std::fs::read(cert_path)
        .with_context(|| format!("cannot read TLS certificate {}", cert_path.display()))?;
    let key_pem = std::fs::read(key_path)
        .with_context(|| format!("cannot read TLS key {}", key_path.display()))?;
    server_config_from_pem(&cert_pem, &key_pem).with_context(|| {
        format!(
            "TLS certificate {} / key {}",
            cert_path.display(),
            key_path.display()
        )
    })
}

/// Builds the server config from PEM bytes.
pub fn server_config_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> anyhow::Result<Arc<ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .context("certificate PEM is not valid")?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in the certificate PEM");
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_pem[..])
        .context("key PEM is not valid")?
        .context("no private key in the key PEM")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS 1.2/1.3 with the ring provider")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("certificate and key do not form a usable pair")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
