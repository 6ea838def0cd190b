//! longhorn-guard-certs: the guard's own PKI. It bootstraps and rotates a CA, the webhook's
//! serving certificate and the webhook<->agent mTLS pair, stores them in `kubernetes.io/tls`
//! Secrets of the guard's namespace and keeps the `caBundle` of the guard's webhook entries in
//! step. Servers load the files it writes through `longhorn_guard_runtime::tls`, which follows
//! them as they change.
//!
//! It must not touch anything that is not the guard's: no Secret outside the guard's
//! namespace, no webhook entry that does not point at the guard's Service, no Longhorn object.
//! It must never replace a working certificate with one that fails to load.

mod cli;
mod error;
pub mod pki;
mod reconcile;
mod secrets;
mod webhook_config;

pub use cli::{CertsArgs, CertsCommand};
pub use error::{Error, Result};
pub use reconcile::{
    Action, DAY, Options, Report, bootstrap, parse_duration, rotate, service_dns_names,
};
pub use secrets::{CA_CRT, NEXT_CA_STAGED_AT, NEXT_CRT, NEXT_KEY, TLS_CRT, TLS_KEY};
pub use webhook_config::{BundleOutcome, ConfigKind, WebhookSelector, patch_ca_bundle};
