//! What a certificate says (subject, serial, validity, names): parsed with x509-parser for
//! the reloader's checks and for the certs crate's rotation decisions.

use std::time::Duration;

use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;

/// The facts about a certificate that rotation decisions need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    pub serial_hex: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub dns_names: Vec<String>,
    pub is_ca: bool,
}

impl CertInfo {
    /// Time left until `notAfter` (zero when already expired).
    pub fn remaining(&self, now: OffsetDateTime) -> Duration {
        let left = self.not_after - now;
        Duration::try_from(left).unwrap_or(Duration::ZERO)
    }
}

/// Parses one DER certificate.
pub fn inspect(der: &[u8]) -> Result<CertInfo, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("unparseable certificate: {e}"))?;
    let time = |t: x509_parser::time::ASN1Time| {
        OffsetDateTime::from_unix_timestamp(t.timestamp())
            .map_err(|e| format!("certificate time out of range: {e}"))
    };
    let dns_names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_string()),
                GeneralName::IPAddress(ip) => ip_text(ip),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(format!("invalid subjectAltName: {e}")),
    };
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        serial_hex: cert.raw_serial_as_string(),
        not_before: time(cert.validity().not_before)?,
        not_after: time(cert.validity().not_after)?,
        dns_names,
        is_ca: cert.is_ca(),
    })
}

/// An IP address SAN (4 or 16 bytes) in the text form `CertificateParams::new` parses.
fn ip_text(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|b| std::net::IpAddr::from(b).to_string()),
        16 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| std::net::IpAddr::from(b).to_string()),
        _ => None,
    }
}
