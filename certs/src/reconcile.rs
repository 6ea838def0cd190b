//! `bootstrap` and `rotate`: bring the guard's CA Secret, leaf Secrets and webhook `caBundle`s
//! to the desired state. Both are idempotent; a run with nothing to do writes nothing.
//!
//! Order of writes, so that no client ever meets a certificate it cannot verify:
//! 1. the CA Secret (signing CA, staged next CA, trust bundle `ca.crt`),
//! 2. the webhook configurations' `caBundle` (= the trust bundle),
//! 3. the leaf Secrets (their `ca.crt` = the trust bundle).
//!
//! CA rotation is two-phase (only in `rotate`): when the signing CA has less than
//! `ca_renew_before` left, a next CA is *staged*: added to every trust bundle, signing nothing.
//! A later run, at least `ca_overlap` after staging (time for kubelets to refresh Secret
//! volumes everywhere), *promotes* it: it becomes the signing CA and every leaf is re-issued.
//! The old CA stays in the bundle until it expires.

use std::fmt;
use std::time::Duration;

use kube::Client;
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::{Error, Result};
use crate::pki::{self, KeyedCert, LeafSpec, LeafUsage};
use crate::secrets::{
    CA_CRT, NEXT_CA_STAGED_AT, NEXT_CRT, NEXT_KEY, NOT_AFTER, SecretStore, StoredSecret, TLS_CRT,
    TLS_KEY,
};
use crate::webhook_config::{self, BundleOutcome, ConfigKind, WebhookSelector};

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

    fn selector(&self) -> WebhookSelector {
        WebhookSelector {
            service_namespace: self.namespace.clone(),
            service_name: self.webhook_service.clone(),
            webhook_names: self.webhook_names.clone(),
        }
    }
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Bootstrap,
    Rotate,
}

/// Init step: creates the CA if there is none, issues any leaf that is missing, unusable, not
/// signed by the signing CA, has other DNS names, or is due for renewal, and patches the
/// `caBundle`s. Never starts a CA rotation.
pub async fn bootstrap(client: Client, opts: &Options) -> Result<Report> {
    reconcile(client, opts, Mode::Bootstrap).await
}

/// Periodic step: everything `bootstrap` does, plus the two CA rotation phases.
pub async fn rotate(client: Client, opts: &Options) -> Result<Report> {
    reconcile(client, opts, Mode::Rotate).await
}

/// The CA Secret's content, parsed.
struct CaState {
    signing: KeyedCert,
    signing_der: CertificateDer<'static>,
    next: Option<(KeyedCert, OffsetDateTime)>,
    bundle: Vec<CertificateDer<'static>>,
}

async fn reconcile(client: Client, opts: &Options, mode: Mode) -> Result<Report> {
    let now = OffsetDateTime::now_utc();
    let store = SecretStore::new(client.clone(), &opts.namespace);
    let mut report = Report::default();

    // 1. The CA Secret.
    let stored = store.read(&opts.ca_secret).await?;
    let (mut ca_secret, mut state, mut ca_changed) = match stored {
        None => {
            let ca = pki::new_ca("longhorn-guard-ca", opts.ca_validity)?;
            let der = first_cert(&ca.cert_pem, &opts.namespace, &opts.ca_secret)?;
            report.actions.push(Action::CaCreated {
                secret: opts.ca_secret.clone(),
            });
            let secret = StoredSecret {
                name: opts.ca_secret.clone(),
                ..StoredSecret::default()
            };
            let state = CaState {
                signing: ca,
                signing_der: der.clone(),
                next: None,
                bundle: vec![der],
            };
            (secret, state, true)
        }
        Some(secret) => {
            let state = parse_ca_secret(&secret, &opts.namespace)?;
            (secret, state, false)
        }
    };

    if mode == Mode::Rotate {
        if let Some((next, staged_at)) = state.next.take() {
            if now - staged_at >= opts.ca_overlap {
                let der = first_cert(&next.cert_pem, &opts.namespace, &opts.ca_secret)?;
                report.actions.push(Action::CaPromoted {
                    secret: opts.ca_secret.clone(),
                    serial: serial(&der),
                });
                state.signing = next;
                state.signing_der = der;
                ca_changed = true;
            } else {
                state.next = Some((next, staged_at));
            }
        } else {
            let left = pki::inspect(&state.signing_der)
                .map(|i| i.remaining(now))
                .unwrap_or(Duration::ZERO);
            if left < opts.ca_renew_before {
                let next = pki::new_ca("longhorn-guard-ca", opts.ca_validity)?;
                let der = first_cert(&next.cert_pem, &opts.namespace, &opts.ca_secret)?;
                report.actions.push(Action::CaStaged {
                    secret: opts.ca_secret.clone(),
                    serial: serial(&der),
                });
                state.next = Some((next, now));
                ca_changed = true;
            }
        }
    }

    // The trust bundle: signing CA, next CA, then every older CA that has not expired.
    let mut bundle = vec![state.signing_der.clone()];
    if let Some((next, _)) = &state.next {
        bundle.push(first_cert(
            &next.cert_pem,
            &opts.namespace,
            &opts.ca_secret,
        )?);
    }
    let mut pruned = 0;
    for old in &state.bundle {
        if bundle.contains(old) {
            continue;
        }
        match pki::inspect(old) {
            Ok(info) if info.not_after > now => bundle.push(old.clone()),
            _ => pruned += 1,
        }
    }
    if pruned > 0 {
        report.actions.push(Action::BundlePruned {
            secret: opts.ca_secret.clone(),
            removed: pruned,
        });
    }
    let bundle_pem = pki::to_pem(&bundle);
    ca_changed |= ca_secret.get(CA_CRT) != Some(bundle_pem.as_str());

    if ca_changed {
        ca_secret.data.clear();
        ca_secret
            .data
            .insert(TLS_CRT.into(), state.signing.cert_pem.clone());
        ca_secret
            .data
            .insert(TLS_KEY.into(), state.signing.key_pem.clone());
        ca_secret.data.insert(CA_CRT.into(), bundle_pem.clone());
        ca_secret.annotations.remove(NEXT_CA_STAGED_AT);
        if let Some((next, staged_at)) = &state.next {
            ca_secret
                .data
                .insert(NEXT_CRT.into(), next.cert_pem.clone());
            ca_secret.data.insert(NEXT_KEY.into(), next.key_pem.clone());
            ca_secret
                .annotations
                .insert(NEXT_CA_STAGED_AT.into(), rfc3339(*staged_at));
        }
        if let Ok(info) = pki::inspect(&state.signing_der) {
            ca_secret
                .annotations
                .insert(NOT_AFTER.into(), rfc3339(info.not_after));
        }
        store.write(&ca_secret).await?;
    } else {
        report.actions.push(Action::CaSecretUnchanged {
            secret: opts.ca_secret.clone(),
        });
    }

    // 2. The webhook configurations.
    let selector = opts.selector();
    let mut configs = vec![(
        ConfigKind::Validating,
        opts.validating_webhook_configuration.clone(),
    )];
    if let Some(m) = &opts.mutating_webhook_configuration {
        configs.push((ConfigKind::Mutating, m.clone()));
    }
    for (kind, name) in configs {
        let outcome =
            webhook_config::patch_ca_bundle(client.clone(), kind, &name, &selector, &bundle_pem)
                .await?;
        let kind = kind.as_str();
        report.actions.push(match outcome {
            BundleOutcome::Absent => Action::WebhookConfigAbsent { kind, name },
            BundleOutcome::Unchanged(webhooks) => Action::CaBundleUnchanged {
                kind,
                name,
                webhooks,
            },
            BundleOutcome::Patched(webhooks) => Action::CaBundlePatched {
                kind,
                name,
                webhooks,
            },
        });
    }

    // 3. The leaves.
    let leaves = [
        (&opts.webhook_secret, opts.webhook_leaf()),
        (&opts.webhook_client_secret, opts.webhook_client_leaf()),
        (&opts.agent_secret, opts.agent_leaf()),
    ];
    for (name, spec) in leaves {
        let action = reconcile_leaf(&store, opts, name, &spec, &state, &bundle_pem, now).await?;
        report.actions.push(action);
    }

    for action in &report.actions {
        tracing::info!(changed = action.is_change(), "{action}");
    }
    report.bundle_pem = bundle_pem;
    Ok(report)
}

async fn reconcile_leaf(
    store: &SecretStore,
    opts: &Options,
    name: &str,
    spec: &LeafSpec,
    ca: &CaState,
    bundle_pem: &str,
    now: OffsetDateTime,
) -> Result<Action> {
    let existing = store.read(name).await?;
    let verdict = match &existing {
        None => Err("missing".to_string()),
        Some(secret) => judge_leaf(secret, spec, ca, opts, now),
    };
    let mut secret = existing.unwrap_or_else(|| StoredSecret {
        name: name.to_string(),
        ..StoredSecret::default()
    });
    match verdict {
        Ok(not_after) if !opts.force_leaves => {
            if secret.get(CA_CRT) == Some(bundle_pem) {
                return Ok(Action::LeafUnchanged {
                    secret: name.to_string(),
                    not_after,
                });
            }
            secret.data.insert(CA_CRT.into(), bundle_pem.to_string());
            store.write(&secret).await?;
            Ok(Action::LeafBundleUpdated {
                secret: name.to_string(),
            })
        }
        other => {
            let reason = match other {
                Err(reason) => reason,
                Ok(_) => "forced".to_string(),
            };
            let leaf = pki::issue_leaf(&ca.signing, spec, opts.leaf_validity)?;
            let der = first_cert(&leaf.cert_pem, &opts.namespace, name)?;
            let not_after = pki::inspect(&der)
                .map(|i| rfc3339(i.not_after))
                .unwrap_or_default();
            secret.data.clear();
            secret.data.insert(TLS_CRT.into(), leaf.cert_pem);
            secret.data.insert(TLS_KEY.into(), leaf.key_pem);
            secret.data.insert(CA_CRT.into(), bundle_pem.to_string());
            secret
                .annotations
                .insert(NOT_AFTER.into(), not_after.clone());
            store.write(&secret).await?;
            Ok(Action::LeafIssued {
                secret: name.to_string(),
                reason,
                not_after,
            })
        }
    }
}

/// `Ok(notAfter)` when the stored leaf can stay, else `Err(why it must be re-issued)`.
fn judge_leaf(
    secret: &StoredSecret,
    spec: &LeafSpec,
    ca: &CaState,
    opts: &Options,
    now: OffsetDateTime,
) -> Result<String, String> {
    let cert_pem = secret.get(TLS_CRT).ok_or("no tls.crt")?;
    let key_pem = secret.get(TLS_KEY).ok_or("no tls.key")?;
    let certs = pki::pem_certs(cert_pem).map_err(|e| format!("tls.crt: {e}"))?;
    let leaf = &certs[0];
    let info = pki::inspect(leaf).map_err(|e| format!("tls.crt: {e}"))?;
    if !pki::key_matches(leaf, key_pem) {
        return Err("tls.key does not match tls.crt".into());
    }
    if !pki::is_signed_by(leaf, &ca.signing_der) {
        return Err("not signed by the signing CA".into());
    }
    let mut have = info.dns_names.clone();
    let mut want = spec.dns_names.clone();
    have.sort();
    want.sort();
    if have != want {
        return Err(format!("names {have:?} differ from {want:?}"));
    }
    let left = info.remaining(now);
    if left < opts.leaf_renew_before {
        return Err(format!(
            "expires in {}h, renewal window is {}h",
            left.as_secs() / 3600,
            opts.leaf_renew_before.as_secs() / 3600
        ));
    }
    Ok(rfc3339(info.not_after))
}

fn parse_ca_secret(secret: &StoredSecret, namespace: &str) -> Result<CaState> {
    let invalid = |reason: String| Error::SecretInvalid {
        namespace: namespace.to_string(),
        name: secret.name.clone(),
        reason: format!(
            "{reason}; the CA cannot be used. Delete the Secret to start a new CA \
             (every leaf is then re-issued and caBundles re-patched)"
        ),
    };
    let cert_pem = secret
        .get(TLS_CRT)
        .ok_or_else(|| invalid("no tls.crt".into()))?;
    let key_pem = secret
        .get(TLS_KEY)
        .ok_or_else(|| invalid("no tls.key".into()))?;
    let signing_der = pki::pem_certs(cert_pem)
        .map_err(|e| invalid(format!("tls.crt: {e}")))?
        .swap_remove(0);
    let info = pki::inspect(&signing_der).map_err(|e| invalid(format!("tls.crt: {e}")))?;
    if !info.is_ca {
        return Err(invalid("tls.crt is not a CA certificate".into()));
    }
    if !pki::key_matches(&signing_der, key_pem) {
        return Err(invalid("tls.key does not match tls.crt".into()));
    }
    let next = match (secret.get(NEXT_CRT), secret.get(NEXT_KEY)) {
        (Some(c), Some(k)) => {
            let der = pki::pem_certs(c)
                .map_err(|e| invalid(format!("next.crt: {e}")))?
                .swap_remove(0);
            if !pki::key_matches(&der, k) {
                return Err(invalid("next.key does not match next.crt".into()));
            }
            let staged_at = secret
                .annotations
                .get(NEXT_CA_STAGED_AT)
                .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
                // Unknown staging time: treat as staged now, i.e. wait a full overlap.
                .unwrap_or_else(OffsetDateTime::now_utc);
            Some((
                KeyedCert {
                    cert_pem: c.to_string(),
                    key_pem: k.to_string(),
                },
                staged_at,
            ))
        }
        _ => None,
    };
    // An unreadable bundle is rebuilt from the signing (and next) CA.
    let bundle = secret
        .get(CA_CRT)
        .and_then(|b| pki::pem_certs(b).ok())
        .unwrap_or_default();
    Ok(CaState {
        signing: KeyedCert {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        },
        signing_der,
        next,
        bundle,
    })
}

fn first_cert(pem: &str, namespace: &str, secret: &str) -> Result<CertificateDer<'static>> {
    pki::pem_certs(pem)
        .map(|mut v| v.swap_remove(0))
        .map_err(|reason| Error::SecretInvalid {
            namespace: namespace.to_string(),
            name: secret.to_string(),
            reason: format!("generated certificate unreadable: {reason}"),
        })
}

fn serial(der: &CertificateDer<'_>) -> String {
    pki::inspect(der).map(|i| i.serial_hex).unwrap_or_default()
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
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
