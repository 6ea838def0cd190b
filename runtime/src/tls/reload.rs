//! Reloadable server TLS: a [`ReloadingCertResolver`] serves the certificate/key pair read from
//! two files and swaps it atomically when the files change; a background thread polls the
//! files (mtime and size every `poll_interval`, content hash when they moved, and a full
//! re-read every tenth poll). A new pair that cannot be used (unparseable, key not matching,
//! expired) leaves the pair in force untouched, logs one precise error line per bad content
//! and counts it in `errors_total`. The optional client CA file (mTLS) is watched the same way.
//!
//! Kubernetes updates Secret volumes by swapping a symlink, so a pod sees the old pair or the
//! new pair, never half of each; a writer that replaces the two files one after the other may
//! cause one transient error count, and the next poll loads the finished pair.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::client_verifier::{ReloadingClientVerifier, VerifierBox};
use super::files::{describe, load_client_verifier, load_pair, unreachable_files};
use super::{Error, Result};

/// Every n-th poll re-reads and hashes the files even if mtime and size did not move.
const FULL_READ_EVERY: u64 = 10;

/// How to build a server TLS configuration.
#[derive(Debug, Clone)]
pub struct ServerTlsOptions {
    /// PEM certificate chain, leaf first (`tls.crt`).
    pub cert_path: PathBuf,
    /// PEM private key, PKCS#8, PKCS#1 or SEC1 (`tls.key`).
    pub key_path: PathBuf,
    /// mTLS: require a client certificate that chains to a CA in this PEM file (`ca.crt`).
    pub client_ca_path: Option<PathBuf>,
    /// How often the files are checked for a change.
    pub poll_interval: Duration,
    /// ALPN protocols, most preferred first.
    pub alpn_protocols: Vec<Vec<u8>>,
    /// Refuse TLS 1.2 (Longhorn's own gRPC servers are TLS 1.3 only).
    pub tls13_only: bool,
}

impl ServerTlsOptions {
    /// TLS 1.2+, ALPN `h2` and `http/1.1`, no client authentication, polled every 3 s.
    pub fn new(cert_path: impl Into<PathBuf>, key_path: impl Into<PathBuf>) -> Self {
        Self {
            cert_path: cert_path.into(),
            key_path: key_path.into(),
            client_ca_path: None,
            poll_interval: Duration::from_secs(3),
            alpn_protocols: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            tls13_only: false,
        }
    }

    /// Requires client certificates verified against the CA bundle in `path`.
    pub fn with_client_ca(mut self, path: impl Into<PathBuf>) -> Self {
        self.client_ca_path = Some(path.into());
        self
    }

    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }
}

/// Builds a rustls `ServerConfig` (ring provider) whose certificate, and client CA if any,
/// follow the files. The returned handle keeps the watcher thread alive: drop it and the
/// configuration keeps serving the last good pair, no longer reloading.
pub fn server_config(opts: &ServerTlsOptions) -> Result<(Arc<ServerConfig>, ReloadHandle)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let reloader = Arc::new(Reloader::new(opts, provider.clone())?);
    let versions: &[&rustls::SupportedProtocolVersion] = if opts.tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| Error::Tls(e.to_string()))?;
    let builder = match &reloader.verifier {
        Some(v) => builder.with_client_cert_verifier(v.clone()),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(reloader.resolver.clone());
    config.alpn_protocols = opts.alpn_protocols.clone();
    let handle = ReloadHandle::spawn(reloader, opts.poll_interval)?;
    Ok((Arc::new(config), handle))
}

/// Serves the current certificate; swapped atomically by the watcher.
#[derive(Debug)]
pub struct ReloadingCertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl ReloadingCertResolver {
    /// The leaf certificate being served.
    pub fn current_leaf(&self) -> Option<CertificateDer<'static>> {
        self.current.load().cert.first().cloned()
    }
}

impl ResolvesServerCert for ReloadingCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Counters for metrics (`*_total`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReloadStats {
    /// Successful swaps (certificate pair or client CA).
    pub reloads_total: u64,
    /// New file contents that could not be used (each distinct content counted once).
    pub errors_total: u64,
}

/// Owns the watcher thread; dropping it stops the thread.
pub struct ReloadHandle {
    reloader: Arc<Reloader>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ReloadHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadHandle")
            .field("cert", &self.reloader.cert_path)
            .field("stats", &self.stats())
            .finish()
    }
}

impl ReloadHandle {
    fn spawn(reloader: Arc<Reloader>, interval: Duration) -> Result<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let r = reloader.clone();
        let thread = std::thread::Builder::new()
            .name("tls-reload".into())
            .spawn(move || {
                let mut tick: u64 = 0;
                loop {
                    match stopped.recv_timeout(interval) {
                        Err(RecvTimeoutError::Timeout) => {
                            tick += 1;
                            // Errors are logged and counted inside.
                            let _ = r.poll(tick.is_multiple_of(FULL_READ_EVERY));
                        }
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            })
            .map_err(|e| Error::Tls(format!("starting the TLS reload thread: {e}")))?;
        Ok(Self {
            reloader,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Checks the files now (re-reading them). `Ok(true)` if something was swapped,
    /// `Ok(false)` if nothing new, `Err` if new content was refused (the old stays in force).
    pub fn check_now(&self) -> Result<bool> {
        self.reloader.poll(true)
    }

    pub fn stats(&self) -> ReloadStats {
        ReloadStats {
            reloads_total: self.reloader.reloads.load(Ordering::Relaxed),
            errors_total: self.reloader.errors.load(Ordering::Relaxed),
        }
    }

    pub fn resolver(&self) -> Arc<ReloadingCertResolver> {
        self.reloader.resolver.clone()
    }
}

impl Drop for ReloadHandle {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The state of one watched group of files.
#[derive(Debug, Default)]
struct Watch {
    stamp: Vec<Option<(SystemTime, u64)>>,
    loaded_hash: u64,
    failed_hash: Option<u64>,
}

enum Change {
    None,
    /// New content (or a read error, as `Err`) with its hash.
    New(u64, std::result::Result<Vec<Vec<u8>>, Error>),
}

impl Watch {
    fn check(&mut self, paths: &[&Path], force: bool) -> Change {
        let stamp: Vec<_> = paths
            .iter()
            .map(|p| {
                std::fs::metadata(p)
                    .ok()
                    .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
            })
            .collect();
        if !force && stamp == self.stamp {
            return Change::None;
        }
        self.stamp = stamp;
        let mut hasher = DefaultHasher::new();
        let contents: std::result::Result<Vec<Vec<u8>>, Error> = paths
            .iter()
            .map(|p| {
                std::fs::read(p).map_err(|e| Error::File {
                    path: p.to_path_buf(),
                    reason: format!("cannot read: {e}"),
                })
            })
            .collect();
        match &contents {
            Ok(c) => c.hash(&mut hasher),
            Err(e) => e.to_string().hash(&mut hasher),
        }
        let hash = hasher.finish();
        if hash == self.loaded_hash || Some(hash) == self.failed_hash {
            return Change::None;
        }
        Change::New(hash, contents)
    }
}

struct Reloader {
    cert_path: PathBuf,
    key_path: PathBuf,
    client_ca_path: Option<PathBuf>,
    provider: Arc<CryptoProvider>,
    resolver: Arc<ReloadingCertResolver>,
    verifier: Option<Arc<ReloadingClientVerifier>>,
    pair_watch: Mutex<Watch>,
    ca_watch: Mutex<Watch>,
    reloads: AtomicU64,
    errors: AtomicU64,
}

impl Reloader {
    /// Loads everything once; at start-up a bad file is an error, not a warning.
    fn new(opts: &ServerTlsOptions, provider: Arc<CryptoProvider>) -> Result<Self> {
        let paths = [opts.cert_path.as_path(), opts.key_path.as_path()];
        let mut pair_watch = Watch::default();
        let key = match pair_watch.check(&paths, true) {
            Change::New(hash, contents) => {
                let key = load_pair(&opts.cert_path, &opts.key_path, &contents?, &provider)?;
                pair_watch.loaded_hash = hash;
                key
            }
            Change::None => unreachable_files(&opts.cert_path)?,
        };
        let mut ca_watch = Watch::default();
        let verifier = match &opts.client_ca_path {
            None => None,
            Some(ca) => match ca_watch.check(&[ca.as_path()], true) {
                Change::New(hash, contents) => {
                    let v = load_client_verifier(ca, &contents?, &provider)?;
                    ca_watch.loaded_hash = hash;
                    Some(Arc::new(ReloadingClientVerifier {
                        current: ArcSwap::from_pointee(VerifierBox(v)),
                    }))
                }
                Change::None => unreachable_files(ca)?,
            },
        };
        Ok(Self {
            cert_path: opts.cert_path.clone(),
            key_path: opts.key_path.clone(),
            client_ca_path: opts.client_ca_path.clone(),
            provider,
            resolver: Arc::new(ReloadingCertResolver {
                current: ArcSwap::from_pointee(key),
            }),
            verifier,
            pair_watch: Mutex::new(pair_watch),
            ca_watch: Mutex::new(ca_watch),
            reloads: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        })
    }

    fn poll(&self, force: bool) -> Result<bool> {
        let pair = self.poll_pair(force);
        let ca = self.poll_client_ca(force);
        Ok(pair? | ca?)
    }

    fn poll_pair(&self, force: bool) -> Result<bool> {
        let mut watch = self.pair_watch.lock().unwrap_or_else(|p| p.into_inner());
        let paths = [self.cert_path.as_path(), self.key_path.as_path()];
        let Change::New(hash, contents) = watch.check(&paths, force) else {
            return Ok(false);
        };
        let loaded =
            contents.and_then(|c| load_pair(&self.cert_path, &self.key_path, &c, &self.provider));
        match loaded {
            Ok(key) => {
                let (serial, not_after) = describe(key.cert.first());
                self.resolver.current.store(Arc::new(key));
                watch.loaded_hash = hash;
                watch.failed_hash = None;
                self.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    cert = %self.cert_path.display(),
                    key = %self.key_path.display(),
                    serial = %serial,
                    not_after = %not_after,
                    "TLS certificate reloaded"
                );
                Ok(true)
            }
            Err(e) => {
                watch.failed_hash = Some(hash);
                self.errors.fetch_add(1, Ordering::Relaxed);
                let (kept_serial, kept_not_after) = describe(self.resolver.current_leaf().as_ref());
                tracing::error!(
                    cert = %self.cert_path.display(),
                    key = %self.key_path.display(),
                    error = %e,
                    kept_serial = %kept_serial,
                    kept_not_after = %kept_not_after,
                    "TLS certificate reload refused; the certificate in force stays"
                );
                Err(e)
            }
        }
    }

    fn poll_client_ca(&self, force: bool) -> Result<bool> {
        let (Some(path), Some(verifier)) = (&self.client_ca_path, &self.verifier) else {
            return Ok(false);
        };
        let mut watch = self.ca_watch.lock().unwrap_or_else(|p| p.into_inner());
        let Change::New(hash, contents) = watch.check(&[path.as_path()], force) else {
            return Ok(false);
        };
        match contents.and_then(|c| load_client_verifier(path, &c, &self.provider)) {
            Ok(v) => {
                verifier.current.store(Arc::new(VerifierBox(v)));
                watch.loaded_hash = hash;
                watch.failed_hash = None;
                self.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(client_ca = %path.display(), "TLS client CA reloaded");
                Ok(true)
            }
            Err(e) => {
                watch.failed_hash = Some(hash);
                self.errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    client_ca = %path.display(),
                    error = %e,
                    "TLS client CA reload refused; the CA bundle in force stays"
                );
                Err(e)
            }
        }
    }
}
