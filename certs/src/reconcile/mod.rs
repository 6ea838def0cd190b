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
//!
//! The run's steps are one file each: [`ca`] (step 1), [`leaf`] (step 3); step 2 is
//! [`patch_webhook_configs`] here. [`options`] holds the names and lifetimes, [`report`] what a
//! run did.

use kube::Client;
use time::OffsetDateTime;

use crate::error::Result;
use crate::pki;
use crate::secrets::{CA_CRT, SecretStore};
use crate::webhook_config::{self, BundleOutcome, ConfigKind};

mod ca;
mod leaf;
mod options;
mod report;

pub use options::{DAY, Options, parse_duration, service_dns_names};
pub use report::{Action, Report};

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

async fn reconcile(client: Client, opts: &Options, mode: Mode) -> Result<Report> {
    let now = OffsetDateTime::now_utc();
    let store = SecretStore::new(client.clone(), &opts.namespace);
    let mut report = Report::default();

    // 1. The CA Secret.
    let (mut ca_secret, mut state, mut ca_changed) =
        ca::load_or_create(&store, opts, &mut report).await?;
    if mode == Mode::Rotate {
        ca_changed |= ca::rotate_phases(&mut state, opts, now, &mut report)?;
    }
    let bundle = ca::trust_bundle(&state, opts, now, &mut report)?;
    let bundle_pem = pki::to_pem(&bundle);
    ca_changed |= ca_secret.get(CA_CRT) != Some(bundle_pem.as_str());
    if ca_changed {
        ca::write(&store, &mut ca_secret, &state, &bundle_pem).await?;
    } else {
        report.actions.push(Action::CaSecretUnchanged {
            secret: opts.ca_secret.clone(),
        });
    }

    // 2. The webhook configurations.
    patch_webhook_configs(&client, opts, &bundle_pem, &mut report).await?;

    // 3. The leaves.
    let leaves = [
        (&opts.webhook_secret, opts.webhook_leaf()),
        (&opts.webhook_client_secret, opts.webhook_client_leaf()),
        (&opts.agent_secret, opts.agent_leaf()),
    ];
    for (name, spec) in leaves {
        let action =
            leaf::reconcile_leaf(&store, opts, name, &spec, &state, &bundle_pem, now).await?;
        report.actions.push(action);
    }

    for action in &report.actions {
        tracing::info!(changed = action.is_change(), "{action}");
    }
    report.bundle_pem = bundle_pem;
    Ok(report)
}

/// Step 2: the `caBundle` of the guard's entries in the validating (and mutating) webhook
/// configuration brought to the trust bundle.
async fn patch_webhook_configs(
    client: &Client,
    opts: &Options,
    bundle_pem: &str,
    report: &mut Report,
) -> Result<()> {
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
            webhook_config::patch_ca_bundle(client.clone(), kind, &name, &selector, bundle_pem)
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
    Ok(())
}
