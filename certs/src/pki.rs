//! Key and certificate generation (rcgen) and inspection (x509-parser): the guard's CA,
//! the leaves it signs, and the checks that decide whether a stored certificate is still good.

use base64::Engine as _;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::error::{Error, Result};

/// Certificate inspection lives with the reloading TLS configuration, which checks it too.
pub use longhorn_guard_runtime::tls::{CertInfo, inspect};

/// Backdating of `notBefore`, so a node whose clock is a little behind still accepts a new cert.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// A CA (or leaf) certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for KeyedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a private key.
        f.debug_struct("KeyedCert")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// What a leaf certificate is for (its extended key usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafUsage {
    /// A TLS server (the webhook, the agent).
    Server,
    /// A TLS client (the webhook when it calls the agent).
    Client,
}

/// The subject of a leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafSpec {
    pub common_name: String,
    /// Subject alternative names: DNS names (wildcards allowed, e.g.
    /// `*.ns.pod.cluster.local`) and IP addresses (a name that parses as one, e.g. `127.0.0.1`).
    pub dns_names: Vec<String>,
    pub usage: LeafUsage,
}

/// Generates a new self-signed CA valid for `validity`.
pub fn new_ca(common_name: &str, validity: Duration) -> Result<KeyedCert> {
    let generate = |source| Error::Generate {
        what: format!("CA {common_name}"),
        source,
    };
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(generate)?;
    params.distinguished_name = name(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, validity);
    let key = KeyPair::generate().map_err(generate)?;
    let ca = CertifiedIssuer::self_signed(params, key).map_err(generate)?;
    Ok(KeyedCert {
        cert_pem: ca.pem(),
        key_pem: ca.key().serialize_pem(),
    })
}

/// Issues a leaf for `spec`, signed by `ca`, valid for `validity`.
pub fn issue_leaf(ca: &KeyedCert, spec: &LeafSpec, validity: Duration) -> Result<KeyedCert> {
    let generate = |source| Error::Generate {
        what: format!("certificate {}", spec.common_name),
        source,
    };
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(generate)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(generate)?;
    let mut params = CertificateParams::new(spec.dns_names.clone()).map_err(generate)?;
    params.distinguished_name = name(&spec.common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![match spec.usage {
        LeafUsage::Server => ExtendedKeyUsagePurpose::ServerAuth,
        LeafUsage::Client => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    set_validity(&mut params, validity);
    let key = KeyPair::generate().map_err(generate)?;
    let cert = params.signed_by(&key, &issuer).map_err(generate)?;
    Ok(KeyedCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "longhorn-guard");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + validity;
}

/// Every certificate in a PEM text, in order. Fails on a PEM that is not parseable or holds none.
pub fn pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut reader = pem.as_bytes();
    let certs = rustls_pemfile::certs(&mut reader)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("unparseable PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block".into());
    }
    Ok(certs)
}

/// PEM text of `certs`, one block each, in order.
pub fn to_pem(certs: &[CertificateDer<'_>]) -> String {
    certs
        .iter()
        .map(|c| {
            let b64 = base64::engine::general_purpose::STANDARD.encode(c.as_ref());
            let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
            for chunk in b64.as_bytes().chunks(64) {
                out.push_str(&String::from_utf8_lossy(chunk));
                out.push('\n');
            }
            out.push_str("-----END CERTIFICATE-----\n");
            out
        })
        .collect()
}

/// Whether `leaf_der` carries a valid signature by the key of `ca_der`.
pub fn is_signed_by(leaf_der: &[u8], ca_der: &[u8]) -> bool {
    let (Ok((_, leaf)), Ok((_, ca))) = (
        x509_parser::parse_x509_certificate(leaf_der),
        x509_parser::parse_x509_certificate(ca_der),
    ) else {
        return false;
    };
    leaf.issuer() == ca.subject() && leaf.verify_signature(Some(ca.public_key())).is_ok()
}

/// Whether the private key `key_pem` belongs to the certificate `cert_der`.
pub fn key_matches(cert_der: &[u8], key_pem: &str) -> bool {
    let Ok(key) = KeyPair::from_pem(key_pem) else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert_der) else {
        return false;
    };
    cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn server_spec() -> LeafSpec {
        LeafSpec {
            common_name: "svc.ns.svc".into(),
            dns_names: vec![
                "svc".into(),
                "svc.ns.svc".into(),
                "*.ns.pod.cluster.local".into(),
                "127.0.0.1".into(),
                "::1".into(),
            ],
            usage: LeafUsage::Server,
        }
    }

    #[test]
    fn leaf_is_signed_by_its_ca_only_and_carries_the_names() {
        let ca = new_ca("test-ca", 3650 * DAY).unwrap();
        let other = new_ca("other-ca", 3650 * DAY).unwrap();
        let leaf = issue_leaf(&ca, &server_spec(), 90 * DAY).unwrap();
        let ca_der = &pem_certs(&ca.cert_pem).unwrap()[0];
        let other_der = &pem_certs(&other.cert_pem).unwrap()[0];
        let leaf_der = &pem_certs(&leaf.cert_pem).unwrap()[0];
        assert!(is_signed_by(leaf_der, ca_der));
        assert!(!is_signed_by(leaf_der, other_der));
        assert!(key_matches(leaf_der, &leaf.key_pem));
        assert!(!key_matches(leaf_der, &ca.key_pem));
        let info = inspect(leaf_der).unwrap();
        assert_eq!(info.dns_names, server_spec().dns_names);
        assert!(!info.is_ca);
        let left = info.remaining(OffsetDateTime::now_utc());
        assert!(left > 89 * DAY && left <= 90 * DAY, "{left:?}");
        assert!(inspect(ca_der).unwrap().is_ca);
    }

    #[test]
    fn pem_round_trip() {
        let a = new_ca("a", DAY).unwrap();
        let b = new_ca("b", DAY).unwrap();
        let bundle = format!("{}{}", a.cert_pem, b.cert_pem);
        let certs = pem_certs(&bundle).unwrap();
        assert_eq!(certs.len(), 2);
        assert_eq!(pem_certs(&to_pem(&certs)).unwrap(), certs);
        assert!(pem_certs("garbage").is_err());
        assert!(pem_certs("").is_err());
    }
}
