//! What a run did: one [`Action`] per thing done (or found already done), in order.

use std::fmt;

/// One thing a run did (or found already done).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    CaCreated {
        secret: String,
    },
    CaStaged {
        secret: String,
        serial: String,
    },
    CaPromoted {
        secret: String,
        serial: String,
    },
    BundlePruned {
        secret: String,
        removed: usize,
    },
    CaSecretUnchanged {
        secret: String,
    },
    LeafIssued {
        secret: String,
        reason: String,
        not_after: String,
    },
    LeafBundleUpdated {
        secret: String,
    },
    LeafUnchanged {
        secret: String,
        not_after: String,
    },
    CaBundlePatched {
        kind: &'static str,
        name: String,
        webhooks: Vec<String>,
    },
    CaBundleUnchanged {
        kind: &'static str,
        name: String,
        webhooks: Vec<String>,
    },
    WebhookConfigAbsent {
        kind: &'static str,
        name: String,
    },
}

impl Action {
    /// Whether this action wrote to the API server.
    pub fn is_change(&self) -> bool {
        !matches!(
            self,
            Action::CaSecretUnchanged { .. }
                | Action::LeafUnchanged { .. }
                | Action::CaBundleUnchanged { .. }
                | Action::WebhookConfigAbsent { .. }
        )
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::CaCreated { secret } => write!(f, "created a new CA in Secret {secret}"),
            Action::CaStaged { secret, serial } => {
                write!(
                    f,
                    "staged next CA {serial} in Secret {secret} (trusted, not signing yet)"
                )
            }
            Action::CaPromoted { secret, serial } => {
                write!(f, "promoted CA {serial} to signing CA in Secret {secret}")
            }
            Action::BundlePruned { secret, removed } => {
                write!(
                    f,
                    "removed {removed} expired CA(s) from the bundle of Secret {secret}"
                )
            }
            Action::CaSecretUnchanged { secret } => write!(f, "CA Secret {secret} unchanged"),
            Action::LeafIssued {
                secret,
                reason,
                not_after,
            } => {
                write!(
                    f,
                    "issued Secret {secret} ({reason}), valid until {not_after}"
                )
            }
            Action::LeafBundleUpdated { secret } => write!(f, "updated ca.crt of Secret {secret}"),
            Action::LeafUnchanged { secret, not_after } => {
                write!(f, "Secret {secret} unchanged, valid until {not_after}")
            }
            Action::CaBundlePatched {
                kind,
                name,
                webhooks,
            } => {
                write!(
                    f,
                    "patched caBundle of {kind} {name}: {}",
                    webhooks.join(", ")
                )
            }
            Action::CaBundleUnchanged {
                kind,
                name,
                webhooks,
            } => {
                write!(
                    f,
                    "caBundle of {kind} {name} unchanged ({})",
                    webhooks.join(", ")
                )
            }
            Action::WebhookConfigAbsent { kind, name } => write!(f, "{kind} {name} not found"),
        }
    }
}

/// What a run did, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub actions: Vec<Action>,
    /// The trust bundle (PEM) every Secret and webhook configuration now carries.
    pub bundle_pem: String,
}

impl Report {
    pub fn changed(&self) -> bool {
        self.actions.iter().any(Action::is_change)
    }
}
