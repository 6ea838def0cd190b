//! The webhook's flags ([`WebhookArgs`], the `longhorn-guard webhook` subcommand) and the
//! [`WebhookConfig`] they give. The defaults are written once, here, and shared by the flags and
//! by [`WebhookConfig::default`], so a config built in code runs like the binary without flags
//! (`cli/tests/config_defaults.rs` checks both against the rendered manifests).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;

use crate::WebhookConfig;
use crate::engine_truth::{AgentDiscovery, DEFAULT_AGENT_SERVER_NAME, EngineTruthConfig};

/// Admission endpoints (HTTPS).
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8443));
/// `/healthz`, `/readyz`, `/metrics` (plain HTTP).
pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 9090));
/// The serving certificate and key (the `longhorn-guard-webhook-tls` Secret's mount).
pub const DEFAULT_TLS_CERT: &str = "/certs/tls.crt";
pub const DEFAULT_TLS_KEY: &str = "/certs/tls.key";
/// The webhook's client certificate and key for mTLS to the agents.
pub const DEFAULT_AGENT_CLIENT_CERT: &str = "/client-certs/tls.crt";
pub const DEFAULT_AGENT_CLIENT_KEY: &str = "/client-certs/tls.key";
/// Where the agent pods are: namespace, label selector, gRPC port.
pub const DEFAULT_AGENT_NAMESPACE: &str = "longhorn-guard";
pub const DEFAULT_AGENT_SELECTOR: &str =
    "app.kubernetes.io/name=longhorn-guard,app.kubernetes.io/component=agent";
pub const DEFAULT_AGENT_PORT: u16 = 9443;

#[derive(Debug, Clone, clap::Args)]
pub struct WebhookArgs {
    /// Admission endpoints (HTTPS).
    #[arg(long, env = "LHG_WEBHOOK_LISTEN", default_value_t = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// `/healthz`, `/readyz`, `/metrics` (plain HTTP).
    #[arg(long, env = "LHG_WEBHOOK_METRICS_LISTEN", default_value_t = DEFAULT_METRICS_LISTEN)]
    pub metrics_listen: SocketAddr,
    #[arg(long, env = "LHG_TLS_CERT", default_value = DEFAULT_TLS_CERT)]
    pub tls_cert: PathBuf,
    #[arg(long, env = "LHG_TLS_KEY", default_value = DEFAULT_TLS_KEY)]
    pub tls_key: PathBuf,
    /// Policy file (YAML); defaults apply when absent.
    #[arg(long, env = "LHG_POLICY")]
    pub policy: Option<PathBuf>,
    /// Namespace of the Longhorn objects to watch; all namespaces when absent.
    #[arg(long, env = "LHG_NAMESPACE")]
    pub namespace: Option<String>,
    /// Judge Backups by this Longhorn release (`1.7`, `1.8`, `1.10` or a version such as
    /// `v1.9.2`) instead of detecting it from the cluster's Setting and CRDs.
    #[arg(long, env = "LHG_LONGHORN_VERSION")]
    pub longhorn_version: Option<longhorn_types::Release>,
    /// CA of the agents' serving certificates. Setting it turns on engine-truth checks
    /// through the agents (policy `engineCheck`), over mTLS with the client certificate below.
    #[arg(long, env = "LHG_AGENT_CA")]
    pub agent_ca: Option<PathBuf>,
    /// The webhook's client certificate and key for mTLS to the agents.
    #[arg(long, env = "LHG_AGENT_CLIENT_CERT", default_value = DEFAULT_AGENT_CLIENT_CERT)]
    pub agent_client_cert: PathBuf,
    #[arg(long, env = "LHG_AGENT_CLIENT_KEY", default_value = DEFAULT_AGENT_CLIENT_KEY)]
    pub agent_client_key: PathBuf,
    /// DNS name the agent certificate must carry (agents are dialled by pod IP).
    #[arg(long, env = "LHG_AGENT_SERVER_NAME", default_value = DEFAULT_AGENT_SERVER_NAME)]
    pub agent_server_name: String,
    /// The guard's namespace, where the agents publish their nodes' verdict Leases (the
    /// manifests pass the pod's own); none = no node verdicts read.
    #[arg(long, env = "LHG_NODE_VERDICT_NAMESPACE")]
    pub node_verdict_namespace: Option<String>,
    /// Agent pods: their namespace, label selector and gRPC port (`spec.nodeName` →
    /// `status.podIP:port`).
    #[arg(long, env = "LHG_AGENT_NAMESPACE", default_value = DEFAULT_AGENT_NAMESPACE)]
    pub agent_namespace: String,
    #[arg(long, env = "LHG_AGENT_SELECTOR", default_value = DEFAULT_AGENT_SELECTOR)]
    pub agent_selector: String,
    #[arg(long, env = "LHG_AGENT_PORT", default_value_t = DEFAULT_AGENT_PORT)]
    pub agent_port: u16,
    /// Instead of pod discovery: an address pattern with `{node}`, e.g.
    /// `https://{node}.agents.example:9443`.
    #[arg(long, env = "LHG_AGENT_ADDRESS_PATTERN")]
    pub agent_address_pattern: Option<String>,
}

impl WebhookArgs {
    /// The webhook's configuration; engine-truth checks are on when `--agent-ca` is given.
    /// Settings without a flag keep [`WebhookConfig::default`]'s values.
    pub fn config(self) -> anyhow::Result<WebhookConfig> {
        let engine_truth = match self.agent_ca {
            None => None,
            Some(ca) => {
                let discovery = match self.agent_address_pattern {
                    Some(pattern) => AgentDiscovery::Pattern(pattern),
                    None => AgentDiscovery::Pods {
                        namespace: self.agent_namespace,
                        selector: self.agent_selector,
                        port: self.agent_port,
                    },
                };
                let mut c = EngineTruthConfig::new(
                    self.agent_client_cert,
                    self.agent_client_key,
                    ca,
                    discovery,
                );
                c.server_name = self.agent_server_name;
                c.validate()
                    .map_err(|m| anyhow::anyhow!("engine-truth flags (--agent-*): {m}"))?;
                Some(c)
            }
        };
        Ok(WebhookConfig {
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            policy_path: self.policy,
            namespace: self.namespace,
            engine_truth,
            longhorn_version: self.longhorn_version,
            node_verdict_namespace: self.node_verdict_namespace,
            ..WebhookConfig::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        webhook: WebhookArgs,
    }

    /// The flags' defaults are `WebhookConfig::default()` (once they disagreed: metrics on
    /// 9080 vs 9090, certificates under /etc/longhorn-guard/tls vs /certs).
    #[test]
    fn the_flags_defaults_are_the_config_default() {
        let Ok(flags) = Flags::try_parse_from(["webhook"]) else {
            panic!("the webhook parses without flags");
        };
        let from_flags = match flags.webhook.config() {
            Ok(c) => c,
            Err(e) => panic!("{e:#}"),
        };
        let default = WebhookConfig::default();
        assert_eq!(from_flags.listen, default.listen);
        assert_eq!(from_flags.metrics_listen, default.metrics_listen);
        assert_eq!(from_flags.tls_cert, default.tls_cert);
        assert_eq!(from_flags.tls_key, default.tls_key);
        assert_eq!(from_flags.policy_path, default.policy_path);
        assert_eq!(from_flags.namespace, default.namespace);
        assert_eq!(from_flags.longhorn_version, default.longhorn_version);
        assert_eq!(
            from_flags.node_verdict_namespace,
            default.node_verdict_namespace
        );
        assert!(from_flags.engine_truth.is_none() && default.engine_truth.is_none());
    }

    #[test]
    fn agent_ca_turns_engine_truth_on_with_the_flags_discovery() {
        let Ok(flags) =
            Flags::try_parse_from(["webhook", "--agent-ca=/ca.crt", "--agent-port=7443"])
        else {
            panic!("the flags parse");
        };
        let config = match flags.webhook.config() {
            Ok(c) => c,
            Err(e) => panic!("{e:#}"),
        };
        let Some(et) = config.engine_truth else {
            panic!("--agent-ca turns engine truth on");
        };
        assert_eq!(et.ca, PathBuf::from("/ca.crt"));
        assert_eq!(et.client_cert, PathBuf::from(DEFAULT_AGENT_CLIENT_CERT));
        assert_eq!(et.server_name, DEFAULT_AGENT_SERVER_NAME);
        assert_eq!(
            et.discovery,
            AgentDiscovery::Pods {
                namespace: DEFAULT_AGENT_NAMESPACE.to_string(),
                selector: DEFAULT_AGENT_SELECTOR.to_string(),
                port: 7443,
            }
        );
    }

    #[test]
    fn an_empty_agent_server_name_is_refused_naming_the_flags() {
        let Ok(flags) =
            Flags::try_parse_from(["webhook", "--agent-ca=/ca.crt", "--agent-server-name= "])
        else {
            panic!("the flags parse");
        };
        let Err(e) = flags.webhook.config() else {
            panic!("an empty agent server name was accepted");
        };
        assert!(format!("{e:#}").contains("--agent-"), "{e:#}");
    }
}
