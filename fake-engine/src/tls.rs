//! TLS of the fake engine proxy, configured like Longhorn's instance-manager servers (reference
//! §1.7): TLS 1.3 only, ALPN h2, and a mandatory client certificate that chains to `ca.crt` and
//! carries the peer name `longhorn-backend.longhorn-system` as a DNS SAN.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

/// Longhorn's gRPC peer name: the SAN of the certificates in the `longhorn-grpc-tls` Secret.
pub const LONGHORN_PEER_NAME: &str = "longhorn-backend.longhorn-system";

/// Certificate files of a TLS fake (Longhorn mounts `tls.crt`, `tls.key`, `ca.crt` at
/// `/tls-files/`).
#[derive(Clone, Debug)]
pub struct FakeTls {
    /// PEM chain served by the fake, leaf first.
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// CA that client certificates must chain to.
    pub client_ca_path: PathBuf,
    /// DNS SAN every client certificate must carry.
    pub client_name: String,
}

impl FakeTls {
    /// `tls.crt`, `tls.key` and `ca.crt` of `dir`, clients named [`LONGHORN_PEER_NAME`].
    pub fn longhorn_dir(dir: &Path) -> Self {
        Self {
            cert_path: dir.join("tls.crt"),
            key_path: dir.join("tls.key"),
            client_ca_path: dir.join("ca.crt"),
            client_name: LONGHORN_PEER_NAME.to_string(),
        }
    }

    pub(crate) fn server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let read = |path: &Path| {
            std::fs::read(path)
                .with_context(|| format!("fake-engine TLS: reading {}", path.display()))
        };
        let chain = rustls_pemfile::certs(&mut read(&self.cert_path)?.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("fake-engine TLS: parsing {}", self.cert_path.display()))?;
        if chain.is_empty() {
            bail!(
                "fake-engine TLS: no certificate in {}",
                self.cert_path.display()
            );
        }
        let key = rustls_pemfile::private_key(&mut read(&self.key_path)?.as_slice())
            .with_context(|| format!("fake-engine TLS: parsing {}", self.key_path.display()))?
            .with_context(|| {
                format!(
                    "fake-engine TLS: no private key in {}",
                    self.key_path.display()
                )
            })?;
        let mut roots = RootCertStore::empty();
        for ca in rustls_pemfile::certs(&mut read(&self.client_ca_path)?.as_slice()) {
            let ca = ca.with_context(|| {
                format!("fake-engine TLS: parsing {}", self.client_ca_path.display())
            })?;
            roots.add(ca).with_context(|| {
                format!(
                    "fake-engine TLS: unusable CA in {}",
                    self.client_ca_path.display()
                )
            })?;
        }
        let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .context("fake-engine TLS: client verifier")?;
        let name = ServerName::try_from(self.client_name.clone())
            .with_context(|| format!("fake-engine TLS: bad client name {:?}", self.client_name))?;
        let verifier = Arc::new(PeerNameVerifier { inner, name });
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("fake-engine TLS: protocol versions")?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .context("fake-engine TLS: certificate and key")?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// Chain verification by webpki, then the DNS SAN check Longhorn's server does on clients.
#[derive(Debug)]
struct PeerNameVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    name: ServerName<'static>,
}

impl ClientCertVerifier for PeerNameVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_name(&parsed, &self.name)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
