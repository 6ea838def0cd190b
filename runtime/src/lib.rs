//! longhorn-guard-runtime: the process plumbing every executable of the guard shares, so the
//! webhook, the agent, the certs tool and the cli are siblings over one base instead of
//! borrowing it from each other:
//!
//! - [`process`]: log setup ([`LogFormat`], [`init_logs`]) and the shutdown signal;
//! - [`install_crypto_provider`]: ring as the process-wide rustls provider;
//! - [`kube_client`]: the Kubernetes client from kubectl's `--kubeconfig` / `--context`;
//! - [`event_note`]: an Event's text within what the API server accepts;
//! - [`breaker`]: the circuit breaker of one remote endpoint (agent → engine proxy,
//!   webhook → agent);
//! - [`tls`]: a server TLS configuration that follows its certificate files as they are
//!   rotated, and the certificate facts it checks.
//!
//! Nothing here knows Longhorn, the guard's policy or its PKI.

pub mod breaker;
pub mod event_note;
pub mod kube_client;
pub mod process;
pub mod tls;

pub use kube_client::{KubeArgs, kube_client};
pub use process::{LogFormat, init_logs, shutdown_signal};

/// Installs ring as the process-wide rustls provider, before anything builds a TLS config
/// (kube's client needs one); a no-op when one is installed already.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
