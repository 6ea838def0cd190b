//! Server TLS that follows its files: [`server_config`] builds a rustls configuration whose
//! certificate (and client CA, for mTLS) are reloaded when the files change, so a certificate
//! renewed by `longhorn-guard certs rotate` or cert-manager is served without a restart, and a
//! bad new pair keeps the last good one serving. [`inspect`] reads what a certificate says.

mod cert_info;
mod client_verifier;
mod files;
mod reload;

pub use cert_info::{CertInfo, inspect};
pub use reload::{
    ReloadHandle, ReloadStats, ReloadingCertResolver, ServerTlsOptions, server_config,
};

use std::path::PathBuf;

/// Why a TLS configuration could not be built or reloaded; names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A certificate, key or CA file could not be read or used.
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    /// The rustls configuration could not be built.
    #[error("TLS configuration: {0}")]
    Tls(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
