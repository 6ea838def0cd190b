//! Step 3 of a run: each leaf Secret kept (its `ca.crt` brought to the trust bundle) or
//! re-issued by the signing CA.

use time::OffsetDateTime;

use super::ca::{CaState, first_cert, rfc3339};
use super::{Action, Options};
use crate::error::Result;
use crate::pki::{self, LeafSpec};
use crate::secrets::{CA_CRT, NOT_AFTER, SecretStore, StoredSecret, TLS_CRT, TLS_KEY};

pub(super) async fn reconcile_leaf(
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
