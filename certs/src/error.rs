//! The crate's error type: every variant names the Secret, webhook configuration or file involved.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// rcgen could not generate a key or sign a certificate.
    #[error("generating {what}: {source}")]
    Generate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    /// A Secret exists but its content cannot be used and must not be overwritten silently.
    #[error("Secret {namespace}/{name}: {reason}")]
    SecretInvalid {
        namespace: String,
        name: String,
        reason: String,
    },
    /// A Kubernetes API call on a Secret failed.
    #[error("{action} Secret {namespace}/{name}: {source}")]
    SecretApi {
        action: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    /// A Kubernetes API call on a webhook configuration failed.
    #[error("{action} {kind} {name}: {source}")]
    WebhookConfigApi {
        action: &'static str,
        kind: &'static str,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    /// No Kubernetes client could be built (in-cluster config or kubeconfig).
    #[error("connecting to the Kubernetes API: {0}")]
    Connect(String),
    /// An option is invalid (a duration, a name).
    #[error("invalid option {option}: {reason}")]
    Option {
        option: &'static str,
        reason: String,
    },
}

impl Error {
    /// A short, bounded label for metrics (`reason` label values).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Generate { .. } => "generate",
            Error::SecretInvalid { .. } => "secret_invalid",
            Error::SecretApi { .. } => "secret_api",
            Error::WebhookConfigApi { .. } => "webhook_config_api",
            Error::Connect(_) => "connect",
            Error::Option { .. } => "option",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
