//! Step 1 of a run: the CA Secret (signing CA, staged next CA, trust bundle) read, created,
//! rotated in two phases, and written back when it changed.

use std::time::Duration;

use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{Action, Options, Report};
use crate::error::{Error, Result};
use crate::pki::{self, KeyedCert};
use crate::secrets::{
    CA_CRT, NEXT_CA_STAGED_AT, NEXT_CRT, NEXT_KEY, NOT_AFTER, SecretStore, StoredSecret, TLS_CRT,
    TLS_KEY,
};

/// The CA Secret's content, parsed.
pub(super) struct CaState {
    pub(super) signing: KeyedCert,
    pub(super) signing_der: CertificateDer<'static>,
    pub(super) next: Option<(KeyedCert, OffsetDateTime)>,
    pub(super) bundle: Vec<CertificateDer<'static>>,
}

/// The stored CA Secret parsed, or a new CA when there is none (`true`: it must be written).
pub(super) async fn load_or_create(
    store: &SecretStore,
    opts: &Options,
    report: &mut Report,
) -> Result<(StoredSecret, CaState, bool)> {
    match store.read(&opts.ca_secret).await? {
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
            Ok((secret, state, true))
        }
        Some(secret) => {
            let state = parse_ca_secret(&secret, &opts.namespace)?;
            Ok((secret, state, false))
        }
    }
}

/// The two rotation phases: promotes a next CA staged at least `ca_overlap` ago, or stages one
/// when the signing CA has less than `ca_renew_before` left. `true` when the state changed.
pub(super) fn rotate_phases(
    state: &mut CaState,
    opts: &Options,
    now: OffsetDateTime,
    report: &mut Report,
) -> Result<bool> {
    if let Some((next, staged_at)) = state.next.take() {
        if now - staged_at >= opts.ca_overlap {
            let der = first_cert(&next.cert_pem, &opts.namespace, &opts.ca_secret)?;
            report.actions.push(Action::CaPromoted {
                secret: opts.ca_secret.clone(),
                serial: serial(&der),
            });
            state.signing = next;
            state.signing_der = der;
            return Ok(true);
        }
        state.next = Some((next, staged_at));
        return Ok(false);
    }
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
        return Ok(true);
    }
    Ok(false)
}

/// The trust bundle: signing CA, next CA, then every older CA that has not expired.
pub(super) fn trust_bundle(
    state: &CaState,
    opts: &Options,
    now: OffsetDateTime,
    report: &mut Report,
) -> Result<Vec<CertificateDer<'static>>> {
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
    Ok(bundle)
}

/// Writes the CA Secret afresh: signing CA, trust bundle, the staged next CA if any.
pub(super) async fn write(
    store: &SecretStore,
    ca_secret: &mut StoredSecret,
    state: &CaState,
    bundle_pem: &str,
) -> Result<()> {
    ca_secret.data.clear();
    ca_secret
        .data
        .insert(TLS_CRT.into(), state.signing.cert_pem.clone());
    ca_secret
        .data
        .insert(TLS_KEY.into(), state.signing.key_pem.clone());
    ca_secret.data.insert(CA_CRT.into(), bundle_pem.to_string());
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
    store.write(ca_secret).await
}

pub(super) fn parse_ca_secret(secret: &StoredSecret, namespace: &str) -> Result<CaState> {
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

pub(super) fn first_cert(
    pem: &str,
    namespace: &str,
    secret: &str,
) -> Result<CertificateDer<'static>> {
    pki::pem_certs(pem)
        .map(|mut v| v.swap_remove(0))
        .map_err(|reason| Error::SecretInvalid {
            namespace: namespace.to_string(),
            name: secret.to_string(),
            reason: format!("generated certificate unreadable: {reason}"),
        })
}

pub(super) fn serial(der: &CertificateDer<'_>) -> String {
    pki::inspect(der).map(|i| i.serial_hex).unwrap_or_default()
}

pub(super) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}
