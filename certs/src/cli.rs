//! `longhorn-guard certs bootstrap|rotate`: flags to [`Options`], one run, one report.

use std::time::Duration;

use clap::{Args, Subcommand};

use crate::error::{Error, Result};
use crate::reconcile::{self, Options, Report};

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Init step: create the CA and any missing or unusable certificate, patch caBundles.
    Bootstrap(CertsArgs),
    /// Periodic step (CronJob): renew certificates due for renewal, roll the CA in two phases.
    Rotate(CertsArgs),
}

#[derive(Debug, Clone, Args)]
pub struct CertsArgs {
    /// The guard's namespace (Secrets are written here).
    #[arg(long, env = "POD_NAMESPACE", default_value = "longhorn-guard")]
    pub namespace: String,
    #[arg(long, default_value = "longhorn-guard-webhook")]
    pub webhook_service: String,
    #[arg(long, default_value = "longhorn-guard-agent")]
    pub agent_service: String,
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Extra subject alternative name (DNS name or IP address) for the webhook serving
    /// certificate, for a webhook the API server calls by `url` (host network, out of cluster,
    /// a local control plane). Repeatable.
    #[arg(long = "webhook-san")]
    pub webhook_extra_sans: Vec<String>,
    /// ValidatingWebhookConfiguration whose entries for our Service get the CA bundle.
    #[arg(long, default_value = "longhorn-guard")]
    pub validating_webhook_configuration: String,
    /// MutatingWebhookConfiguration patched too when it exists ("" = none).
    #[arg(long, default_value = "longhorn-guard")]
    pub mutating_webhook_configuration: String,
    /// Webhook entry names that are ours even without a service clientConfig (repeatable).
    #[arg(long = "webhook-name")]
    pub webhook_names: Vec<String>,
    #[arg(long, default_value = "longhorn-guard-ca")]
    pub ca_secret: String,
    #[arg(long, default_value = "longhorn-guard-webhook-tls")]
    pub webhook_secret: String,
    #[arg(long, default_value = "longhorn-guard-webhook-client-tls")]
    pub webhook_client_secret: String,
    #[arg(long, default_value = "longhorn-guard-agent-tls")]
    pub agent_secret: String,
    /// Lifetime of leaf certificates (s, m, h, d).
    #[arg(long, default_value = "90d", value_parser = parse_duration)]
    pub leaf_validity: Duration,
    /// Renew a leaf when less than this is left.
    #[arg(long, default_value = "30d", value_parser = parse_duration)]
    pub leaf_renew_before: Duration,
    #[arg(long, default_value = "3650d", value_parser = parse_duration)]
    pub ca_validity: Duration,
    /// Stage a next CA when the signing CA has less than this left.
    #[arg(long, default_value = "365d", value_parser = parse_duration)]
    pub ca_renew_before: Duration,
    /// Minimum time a staged CA is trusted before it signs (Secret volume refresh everywhere).
    #[arg(long, default_value = "1d", value_parser = parse_duration)]
    pub ca_overlap: Duration,
    /// Re-issue every leaf now.
    #[arg(long)]
    pub force: bool,
}

fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    reconcile::parse_duration(s)
}

impl CertsArgs {
    pub fn options(&self) -> Options {
        Options {
            namespace: self.namespace.clone(),
            webhook_service: self.webhook_service.clone(),
            agent_service: self.agent_service.clone(),
            cluster_domain: self.cluster_domain.clone(),
            webhook_extra_sans: self.webhook_extra_sans.clone(),
            validating_webhook_configuration: self.validating_webhook_configuration.clone(),
            mutating_webhook_configuration: Some(self.mutating_webhook_configuration.clone())
                .filter(|m| !m.is_empty()),
            webhook_names: self.webhook_names.clone(),
            ca_secret: self.ca_secret.clone(),
            webhook_secret: self.webhook_secret.clone(),
            webhook_client_secret: self.webhook_client_secret.clone(),
            agent_secret: self.agent_secret.clone(),
            leaf_validity: self.leaf_validity,
            leaf_renew_before: self.leaf_renew_before,
            ca_validity: self.ca_validity,
            ca_renew_before: self.ca_renew_before,
            ca_overlap: self.ca_overlap,
            force_leaves: self.force,
        }
    }
}

impl CertsCommand {
    /// Connects with the in-cluster config (or `KUBECONFIG` outside a cluster) and runs.
    pub async fn run(&self) -> Result<Report> {
        // kube's rustls client needs a process-wide provider.
        longhorn_guard_runtime::install_crypto_provider();
        let client = kube::Client::try_default()
            .await
            .map_err(|e| Error::Connect(e.to_string()))?;
        self.run_with(client).await
    }

    /// Runs against the cluster of `client`.
    pub async fn run_with(&self, client: kube::Client) -> Result<Report> {
        match self {
            CertsCommand::Bootstrap(args) => reconcile::bootstrap(client, &args.options()).await,
            CertsCommand::Rotate(args) => reconcile::rotate(client, &args.options()).await,
        }
    }
}
