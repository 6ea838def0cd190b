//! What the PKI is made of: the names and lifetimes of the CA and the leaves ([`Options`],
//! whose default matches `manifests/base`), and the duration syntax of the flags.

use std::time::Duration;

use crate::pki::{LeafSpec, LeafUsage};
use crate::webhook_config::WebhookSelector;

pub const DAY: Duration = Duration::from_secs(86_400);

/// Names and lifetimes. `Options::default()` matches `manifests/base`.
#[derive(Debug, Clone)]
pub struct Options {
    /// The guard's namespace: Secrets live here, Services are named in it.
    pub namespace: String,
    pub webhook_service: String,
    pub agent_service: String,
    pub cluster_domain: String,
    /// Extra names (DNS or IP) on the webhook serving certificate, for `url` registrations.
    pub webhook_extra_sans: Vec<String>,
    pub validating_webhook_configuration: String,
    /// Patched too when it exists.
    pub mutating_webhook_configuration: Option<String>,
    /// Webhook entry names that are ours even without a `service` client config.
    pub webhook_names: Vec<String>,
    pub ca_secret: String,
    pub webhook_secret: String,
    pub webhook_client_secret: String,
    pub agent_secret: String,
    pub leaf_validity: Duration,
    pub leaf_renew_before: Duration,
    pub ca_validity: Duration,
    pub ca_renew_before: Duration,
    /// Minimum time between staging a next CA and promoting it.
    pub ca_overlap: Duration,
    /// Re-issue every leaf even if it is still good.
    pub force_leaves: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            namespace: "longhorn-guard".into(),
            webhook_service: "longhorn-guard-webhook".into(),
            agent_service: "longhorn-guard-agent".into(),
            cluster_domain: "cluster.local".into(),
            webhook_extra_sans: Vec::new(),
            validating_webhook_configuration: "longhorn-guard".into(),
            mutating_webhook_configuration: Some("longhorn-guard".into()),
            webhook_names: Vec::new(),
            ca_secret: "longhorn-guard-ca".into(),
            webhook_secret: "longhorn-guard-webhook-tls".into(),
            webhook_client_secret: "longhorn-guard-webhook-client-tls".into(),
            agent_secret: "longhorn-guard-agent-tls".into(),
            leaf_validity: 90 * DAY,
            leaf_renew_before: 30 * DAY,
            ca_validity: 3650 * DAY,
            ca_renew_before: 365 * DAY,
            ca_overlap: DAY,
            force_leaves: false,
        }
    }
}

/// The DNS names a Service is reached by: `svc`, `svc.ns`, `svc.ns.svc`, `svc.ns.svc.<domain>`.
pub fn service_dns_names(service: &str, namespace: &str, cluster_domain: &str) -> Vec<String> {
    vec![
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.{cluster_domain}"),
    ]
}

impl Options {
    /// The webhook serving certificate's subject: the Service names plus any extra names.
    pub fn webhook_leaf(&self) -> LeafSpec {
        let mut dns_names =
            service_dns_names(&self.webhook_service, &self.namespace, &self.cluster_domain);
        dns_names.extend(self.webhook_extra_sans.iter().cloned());
        LeafSpec {
            common_name: format!("{}.{}.svc", self.webhook_service, self.namespace),
            dns_names,
            usage: LeafUsage::Server,
        }
    }

    /// The agent serving certificate: the Service names, plus the per-pod names a client can
    /// dial a given node's agent by (`<ip-with-dashes>.<svc>.<ns>.svc.<domain>` of a headless
    /// Service and `<ip-with-dashes>.<ns>.pod.<domain>`). A client dialling a pod IP should
    /// verify the name `<svc>.<ns>.svc`.
    pub fn agent_leaf(&self) -> LeafSpec {
        let (svc, ns, domain) = (&self.agent_service, &self.namespace, &self.cluster_domain);
        let mut dns_names = service_dns_names(svc, ns, domain);
        dns_names.push(format!("*.{svc}.{ns}.svc.{domain}"));
        dns_names.push(format!("*.{ns}.pod.{domain}"));
        LeafSpec {
            common_name: format!("{svc}.{ns}.svc"),
            dns_names,
            usage: LeafUsage::Server,
        }
    }

    /// The webhook's client certificate for mTLS to the agent.
    pub fn webhook_client_leaf(&self) -> LeafSpec {
        let name = format!("{}-client.{}", self.webhook_service, self.namespace);
        LeafSpec {
            common_name: name.clone(),
            dns_names: vec![name],
            usage: LeafUsage::Client,
        }
    }

    pub(super) fn selector(&self) -> WebhookSelector {
        WebhookSelector {
            service_namespace: self.namespace.clone(),
            service_name: self.webhook_service.clone(),
            webhook_names: self.webhook_names.clone(),
        }
    }
}

/// Parses `90d`, `720h`, `30m`, `45s` (one number, one unit).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?}: missing unit (s, m, h, d)"))?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("{s:?}: not a number"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (s, m, h, d)")),
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?}: too large"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90d").unwrap(), 90 * DAY);
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_duration("90").is_err());
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("3w").is_err());
    }

    #[test]
    fn names() {
        let o = Options::default();
        assert_eq!(
            o.webhook_leaf().dns_names,
            [
                "longhorn-guard-webhook",
                "longhorn-guard-webhook.longhorn-guard",
                "longhorn-guard-webhook.longhorn-guard.svc",
                "longhorn-guard-webhook.longhorn-guard.svc.cluster.local",
            ]
        );
        assert!(
            o.agent_leaf()
                .dns_names
                .contains(&"*.longhorn-guard.pod.cluster.local".to_string())
        );
    }
}
