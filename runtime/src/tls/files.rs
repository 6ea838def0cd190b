//! Reading what the certificate, key and client CA files say, checked before anything is
//! served: PEM parses, the key matches the leaf, the leaf is valid now, the CA bundle builds a
//! verifier. Each error names the file.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;

use super::cert_info::inspect;
use super::{Error, Result};

/// Accepted clock difference for a new certificate's `notBefore`.
const NOT_BEFORE_SKEW: time::Duration = time::Duration::minutes(5);

/// (serial, notAfter) of a certificate for log lines.
pub(super) fn describe(cert: Option<&CertificateDer<'_>>) -> (String, String) {
    match cert.map(|c| inspect(c)) {
        Some(Ok(i)) => (i.serial_hex, i.not_after.to_string()),
        _ => ("?".into(), "?".into()),
    }
}

pub(super) fn unreachable_files<T>(path: &Path) -> Result<T> {
    Err(Error::File {
        path: path.to_path_buf(),
        reason: "could not be read".into(),
    })
}

/// Parses and checks a certificate/key pair: PEM, key matches the leaf, leaf currently valid.
pub(super) fn load_pair(
    cert_path: &Path,
    key_path: &Path,
    contents: &[Vec<u8>],
    provider: &CryptoProvider,
) -> Result<CertifiedKey> {
    let cert_err = |reason: String| Error::File {
        path: cert_path.to_path_buf(),
        reason,
    };
    let key_err = |reason: String| Error::File {
        path: key_path.to_path_buf(),
        reason,
    };
    let (cert_pem, key_pem) = match contents {
        [c, k] => (c.as_slice(), k.as_slice()),
        _ => return Err(cert_err("internal: expected two files".into())),
    };
    let certs = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| cert_err(format!("unparseable PEM: {e}")))?;
    let leaf = certs
        .first()
        .ok_or_else(|| cert_err("no CERTIFICATE block".into()))?;
    let info = inspect(leaf).map_err(cert_err)?;
    let now = OffsetDateTime::now_utc();
    if info.not_after <= now {
        return Err(cert_err(format!(
            "certificate {} expired at {}",
            info.serial_hex, info.not_after
        )));
    }
    if info.not_before > now + NOT_BEFORE_SKEW {
        return Err(cert_err(format!(
            "certificate {} not valid before {}",
            info.serial_hex, info.not_before
        )));
    }
    let key_der = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| key_err(format!("unparseable PEM: {e}")))?
        .ok_or_else(|| key_err("no PRIVATE KEY block".into()))?;
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| key_err(format!("unusable private key: {e}")))?;
    let key = CertifiedKey::new(certs, signing_key);
    match key.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => {
            return Err(key_err(format!(
                "does not match certificate {} in {}: {e}",
                info.serial_hex,
                cert_path.display()
            )));
        }
    }
    Ok(key)
}

/// Parses a client CA bundle (one or more CERTIFICATE blocks) into a verifier of client
/// certificates.
pub(super) fn load_client_verifier(
    path: &Path,
    contents: &[Vec<u8>],
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>> {
    let err = |reason: String| Error::File {
        path: path.to_path_buf(),
        reason,
    };
    let pem = contents.first().map(Vec::as_slice).unwrap_or_default();
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| err(format!("unparseable PEM: {e}")))?;
    if certs.is_empty() {
        return Err(err("no CERTIFICATE block".into()));
    }
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots
            .add(c)
            .map_err(|e| err(format!("unusable CA certificate: {e}")))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| err(format!("client verifier: {e}")))
}
