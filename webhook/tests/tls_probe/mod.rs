//! TLS probes for the security tests of the webhook and the agent (the agent's tests include
//! this file by path): a raw ClientHello of any version and cipher list written over plain
//! TCP (rustls clients cannot offer TLS 1.0/1.1), and a blocking rustls handshake restricted
//! to one protocol version.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

pub const TLS1_0: u16 = 0x0301;
pub const TLS1_1: u16 = 0x0302;
pub const TLS1_2: u16 = 0x0303;

/// Cipher suites of the TLS 1.0/1.1 era (RSA key exchange, CBC, 3DES, RC4) that rustls never
/// implements, plus ECDHE-CBC suites a TLS 1.0 client would offer.
pub const LEGACY_SUITES: [u16; 7] = [0x002f, 0x0035, 0x000a, 0x0005, 0xc013, 0xc014, 0xc009];

/// A ClientHello record with `version` in the record and the hello, no extensions beyond
/// SNI, supported groups, EC point formats and signature algorithms.
pub fn client_hello(version: u16, suites: &[u16]) -> Vec<u8> {
    let mut ext = Vec::new();
    // server_name: localhost
    let host = b"localhost";
    let mut sni = Vec::new();
    sni.extend_from_slice(&((host.len() + 3) as u16).to_be_bytes());
    sni.push(0);
    sni.extend_from_slice(&(host.len() as u16).to_be_bytes());
    sni.extend_from_slice(host);
    push_ext(&mut ext, 0x0000, &sni);
    // supported_groups: x25519, secp256r1, secp384r1
    push_ext(&mut ext, 0x000a, &[0, 6, 0, 0x1d, 0, 0x17, 0, 0x18]);
    // ec_point_formats: uncompressed
    push_ext(&mut ext, 0x000b, &[1, 0]);
    // signature_algorithms: rsa_pkcs1_sha256, ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, rsa_pkcs1_sha1
    push_ext(
        &mut ext,
        0x000d,
        &[0, 8, 0x04, 0x01, 0x04, 0x03, 0x08, 0x04, 0x02, 0x01],
    );

    let mut body = Vec::new();
    body.extend_from_slice(&version.to_be_bytes());
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // compression: null
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);

    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut record = vec![0x16];
    record.extend_from_slice(&version.to_be_bytes());
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

fn push_ext(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
}

/// What the server answered to a raw ClientHello.
#[derive(Debug, PartialEq, Eq)]
pub enum RawOutcome {
    /// A TLS alert record: (level, description), e.g. (2, 70) fatal protocol_version,
    /// (2, 40) fatal handshake_failure.
    Alert(u8, u8),
    /// The connection was closed (or reset) without an answer.
    Closed,
    /// A handshake record: the server went on with the handshake (a ServerHello).
    Handshake(Vec<u8>),
    Other(Vec<u8>),
}

impl RawOutcome {
    pub fn refused(&self) -> bool {
        matches!(self, RawOutcome::Alert(2, _) | RawOutcome::Closed)
    }
}

/// Writes `hello` to `addr` and reads the first record back (5 s at most).
pub fn probe_raw(addr: SocketAddr, hello: &[u8]) -> std::io::Result<RawOutcome> {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    tcp.write_all(hello)?;
    let mut buf = [0u8; 7];
    let mut got = 0;
    while got < buf.len() {
        match tcp.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(e),
        }
    }
    Ok(match (got, buf[0]) {
        (0, _) => RawOutcome::Closed,
        (7, 0x15) => RawOutcome::Alert(buf[5], buf[6]),
        (_, 0x16) => RawOutcome::Handshake(buf[..got].to_vec()),
        _ => RawOutcome::Other(buf[..got].to_vec()),
    })
}

/// A completed handshake: what was negotiated.
#[derive(Debug)]
pub struct Negotiated {
    pub version: rustls::ProtocolVersion,
    pub suite: rustls::CipherSuite,
}

/// A blocking rustls handshake with only `version` offered, trusting `ca_pem`, optionally
/// presenting a client certificate. Errors when the server refuses.
pub fn handshake(
    addr: SocketAddr,
    server_name: &str,
    ca_pem: &str,
    version: &'static rustls::SupportedProtocolVersion,
    identity: Option<(&str, &str)>,
) -> anyhow::Result<Negotiated> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])?
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => {
            let certs =
                rustls_pemfile::certs(&mut cert.as_bytes()).collect::<Result<Vec<_>, _>>()?;
            let key = rustls_pemfile::private_key(&mut key.as_bytes())?
                .ok_or_else(|| anyhow::anyhow!("no key"))?;
            builder.with_client_auth_cert(certs, key)?
        }
        None => builder.with_no_client_auth(),
    };
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string())?;
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name)?;
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)?;
    }
    // TLS 1.3 servers reject a client certificate after the client's Finished: read once so
    // such a refusal surfaces here (a timeout means the server accepted and is waiting).
    conn.writer().write_all(b"\x00")?;
    conn.complete_io(&mut tcp)?;
    tcp.set_read_timeout(Some(Duration::from_millis(500)))?;
    match conn.complete_io(&mut tcp) {
        Ok(_) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Negotiated {
        version: conn
            .protocol_version()
            .ok_or_else(|| anyhow::anyhow!("no version"))?,
        suite: conn
            .negotiated_cipher_suite()
            .ok_or_else(|| anyhow::anyhow!("no suite"))?
            .suite(),
    })
}
