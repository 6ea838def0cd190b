//! Shared by the webhook's integration tests: serve the webhook over TLS on 127.0.0.1 with a
//! certificate made here, register it with the test control plane (scoped to the test's
//! namespace), and talk to it directly.
#![allow(dead_code, clippy::unwrap_used)]

pub mod cut_proxy;
pub mod fixtures;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use longhorn_guard_testkit::admission::Review;
use longhorn_guard_testkit::{TEST_NAMESPACE_LABEL, TestCluster, wait_for};
use longhorn_guard_webhook::{Policy, WebhookConfig, WebhookHandle};
use longhorn_types::Backup;
use serde_json::json;

/// A self-signed certificate for IP 127.0.0.1, written to a fresh directory.
pub struct TestCert {
    pub dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub pem: String,
}

impl TestCert {
    pub fn new() -> Result<Self> {
        let rcgen::CertifiedKey { cert, signing_key } = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
        ])?;
        let dir = std::env::temp_dir().join(format!(
            "lhg-webhook-test-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir)?;
        let pem = cert.pem();
        let cert_path = dir.join("tls.crt");
        let key_path = dir.join("tls.key");
        std::fs::write(&cert_path, &pem)?;
        std::fs::write(&key_path, signing_key.serialize_pem())?;
        Ok(Self {
            dir,
            cert: cert_path,
            key: key_path,
            pem,
        })
    }

    /// The same certificate and key in a fresh directory: replicas serving one name.
    pub fn copy(&self) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "lhg-webhook-test-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir)?;
        let cert = dir.join("tls.crt");
        let key = dir.join("tls.key");
        std::fs::copy(&self.cert, &cert)?;
        std::fs::copy(&self.key, &key)?;
        Ok(Self {
            dir,
            cert,
            key,
            pem: self.pem.clone(),
        })
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A webhook served for one test.
pub struct Served {
    pub handle: WebhookHandle,
    pub cert: TestCert,
}

impl Served {
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.handle.local_addr())
    }

    pub async fn ops_get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.handle.metrics_addr(), path).await
    }

    pub async fn metrics(&self) -> Result<String> {
        Ok(self.ops_get("/metrics").await?.1)
    }

    pub async fn stop(self) -> Result<()> {
        self.handle.shutdown().await
    }
}

/// Starts the webhook watching `ns` with `policy`, using `client` for watches and lookups.
pub async fn serve(client: Client, ns: &str, policy: Policy) -> Result<Served> {
    serve_with_cert(client, ns, policy, TestCert::new()?).await
}

/// [`serve`] with a given certificate (see [`TestCert::copy`]).
impl TestCert {
    /// The webhook's configuration for a test: both listeners on 127.0.0.1 (free ports), this
    /// certificate, `policy`, the watched `namespace` (all when `None`), a 5 s shutdown grace.
    pub fn config(&self, policy: Option<Policy>, namespace: Option<&str>) -> WebhookConfig {
        WebhookConfig {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            tls_cert: self.cert.clone(),
            tls_key: self.key.clone(),
            policy,
            namespace: namespace.map(str::to_string),
            shutdown_grace: Duration::from_secs(5),
            ..WebhookConfig::default()
        }
    }
}

pub async fn serve_with_cert(
    client: Client,
    ns: &str,
    policy: Policy,
    cert: TestCert,
) -> Result<Served> {
    let config = cert.config(Some(policy), Some(ns));
    let handle = longhorn_guard_webhook::start(config, client).await?;
    Ok(Served { handle, cert })
}

/// Waits until `/readyz` answers 200.
pub async fn wait_ready(served: &Served) -> Result<()> {
    wait_for(Duration::from_secs(30), "webhook /readyz 200", || async {
        Ok(served.ops_get("/readyz").await?.0 == 200)
    })
    .await
}

/// A minimal HTTP/1.1 GET over plain TCP.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<(u16, String)> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", addr.to_string())
        .body(Full::new(Bytes::new()))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A TLS connection to the webhook trusting only the test certificate; returns the ALPN
/// protocol negotiated.
pub async fn tls_connect(
    served: &Served,
    alpn: &[&[u8]],
) -> Result<(
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    Option<Vec<u8>>,
)> {
    tls_connect_to(served.handle.local_addr(), &served.cert.pem, alpn).await
}

/// A TLS connection to `addr` trusting only `ca_pem` (as 127.0.0.1); returns the ALPN
/// protocol negotiated.
pub async fn tls_connect_to(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> Result<(
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    Option<Vec<u8>>,
)> {
    longhorn_guard_runtime::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
    let tls = connector.connect(name, tcp).await?;
    let proto = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    Ok((tls, proto))
}

/// POSTs `body` over TLS (HTTP/1.1) and returns status and body text.
pub async fn tls_post(served: &Served, path: &str, body: Vec<u8>) -> Result<(u16, String)> {
    tls_post_to(served.handle.local_addr(), &served.cert.pem, path, body).await
}

/// [`tls_post`] to `addr` trusting `ca_pem`: needs no borrow of the [`Served`] (a request
/// that outlives its shutdown).
pub async fn tls_post_to(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<(u16, String)> {
    let (tls, _) = tls_connect_to(addr, ca_pem, &[b"http/1.1"]).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let req = http::Request::post(path)
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// An `admission.k8s.io/v1` AdmissionReview of a CREATE of the Backup `object` in `ns`, as
/// the API server sends it, from `username`.
pub fn admission_review(
    ns: &str,
    uid: &str,
    username: &str,
    object: serde_json::Value,
) -> serde_json::Value {
    Review::new(ns, uid, username, object).into_value()
}

/// A registered Validating- or MutatingWebhookConfiguration, deleted by
/// [`Registration::remove`].
pub struct Registration {
    pub name: String,
    mutating: bool,
    client: Client,
}

impl Registration {
    pub async fn remove(self) -> Result<()> {
        let dp = DeleteParams::default();
        let deleted = if self.mutating {
            Api::<MutatingWebhookConfiguration>::all(self.client.clone())
                .delete(&self.name, &dp)
                .await
                .map(|_| ())
        } else {
            Api::<ValidatingWebhookConfiguration>::all(self.client.clone())
                .delete(&self.name, &dp)
                .await
                .map(|_| ())
        };
        deleted.with_context(|| format!("deleting webhook configuration {}", self.name))
    }
}

/// Standard base64, as `caBundle` wants it.
pub fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// The one webhook entry of a test registration: `path` of `served` by URL with its CA,
/// CREATE of longhorn.io/v1beta2 backups in namespace `ns` only.
pub fn webhook_entry(served: &Served, path: &str, ns: &str) -> serde_json::Value {
    json!({
        "name": "backups.longhorn-guard.io",
        "clientConfig": {
            "url": served.url(path),
            "caBundle": b64(served.cert.pem.as_bytes()),
        },
        "rules": [{
            "apiGroups": ["longhorn.io"],
            "apiVersions": ["v1beta2"],
            "operations": ["CREATE"],
            "resources": ["backups"],
            "scope": "Namespaced",
        }],
        "namespaceSelector": { "matchLabels": { TEST_NAMESPACE_LABEL: ns } },
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "failurePolicy": "Fail",
        "timeoutSeconds": 5,
    })
}

/// Registers `/validate/backups` of `served` for CREATE of longhorn.io/v1beta2 backups in
/// namespace `ns` only, and waits until the API server calls it (a Backup of a snapshot
/// that does not exist is denied).
pub async fn register(cluster: &TestCluster, served: &Served, ns: &str) -> Result<Registration> {
    let reg = register_no_probe(cluster, served, ns).await?;
    wait_until_called(cluster, ns).await?;
    Ok(reg)
}

/// Waits until the API server calls the webhook registered for `ns`: a Backup of a snapshot
/// that does not exist is denied by longhorn-guard.
pub async fn wait_until_called(cluster: &TestCluster, ns: &str) -> Result<()> {
    let client = cluster.client();
    // The API server loads webhook configurations asynchronously: probe until it calls us.
    let probe = longhorn_types::shapes::backup(
        ns,
        "lhg-probe",
        "vol-probe",
        "snap-that-never-exists",
        None,
    );
    let api: Api<Backup> = Api::namespaced(client.clone(), ns);
    wait_for(
        Duration::from_secs(20),
        "the API server to call the webhook",
        || {
            let probe = probe.clone();
            let api = api.clone();
            async move {
                let b: Backup = serde_json::from_value(probe)?;
                match api.create(&PostParams::default(), &b).await {
                    Err(kube::Error::Api(e)) if e.message.contains("longhorn-guard denied") => {
                        Ok(true)
                    }
                    Ok(_) => {
                        // Created before the webhook was active: remove it and try again.
                        let _ = api.delete("lhg-probe", &DeleteParams::default()).await;
                        Ok(false)
                    }
                    Err(_) => Ok(false),
                }
            }
        },
    )
    .await
}

/// Registers without waiting for the API server to use the configuration.
pub async fn register_no_probe(
    cluster: &TestCluster,
    served: &Served,
    ns: &str,
) -> Result<Registration> {
    register_entry(cluster, ns, webhook_entry(served, "/validate/backups", ns)).await
}

/// Registers the validating webhook `entry` (see [`webhook_entry`]) for `ns`, without
/// waiting for the API server to use it.
pub async fn register_entry(
    cluster: &TestCluster,
    ns: &str,
    entry: serde_json::Value,
) -> Result<Registration> {
    let name = format!("lhg-test-{ns}");
    let config: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": { "name": name },
        "webhooks": [entry],
    }))?;
    let client = cluster.client();
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &config)
        .await
        .with_context(|| format!("registering webhook configuration {name}"))?;
    Ok(Registration {
        name,
        mutating: false,
        client,
    })
}

/// Registers `/mutate/backups` of `served` as a MutatingWebhookConfiguration (same scope as
/// [`register`]) and waits until the API server calls it: a dry-run Backup CREATE in `ns`
/// (of `volume`, snapshot `snapshot`) is counted by the webhook's mutate endpoint.
pub async fn register_mutating(
    cluster: &TestCluster,
    served: &Served,
    ns: &str,
    volume: &str,
    snapshot: &str,
) -> Result<Registration> {
    let name = format!("lhg-test-mutate-{ns}");
    let mut entry = webhook_entry(served, "/mutate/backups", ns);
    entry["reinvocationPolicy"] = json!("Never");
    let config: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": { "name": name },
        "webhooks": [entry],
    }))?;
    let client = cluster.client();
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &config)
        .await
        .with_context(|| format!("registering webhook configuration {name}"))?;
    let reg = Registration {
        name,
        mutating: true,
        client: client.clone(),
    };
    // The API server loads webhook configurations asynchronously: probe with dry runs (they
    // store nothing) until the mutate endpoint has seen one.
    let api: Api<Backup> = Api::namespaced(client, ns);
    let calls = || async {
        let text = served.metrics().await?;
        anyhow::Ok(metric(
            &text,
            "longhorn_guard_webhook_review_duration_seconds_count",
            "endpoint=\"mutate\"",
        ))
    };
    let before = calls().await?;
    wait_for(
        Duration::from_secs(20),
        "the API server to call the mutating webhook",
        || {
            let api = api.clone();
            async move {
                let b: Backup = serde_json::from_value(longhorn_types::shapes::backup(
                    ns,
                    "lhg-mutate-probe",
                    volume,
                    snapshot,
                    None,
                ))?;
                let dry = PostParams {
                    dry_run: true,
                    ..PostParams::default()
                };
                api.create(&dry, &b).await?;
                Ok(calls().await? > before)
            }
        },
    )
    .await?;
    Ok(reg)
}

/// The message of a denial, or `None` when the create succeeded.
pub async fn create_backup(
    client: &Client,
    ns: &str,
    obj: serde_json::Value,
    dry_run: bool,
) -> Result<Option<String>> {
    let b: Backup = serde_json::from_value(obj)?;
    let pp = PostParams {
        dry_run,
        ..PostParams::default()
    };
    match Api::<Backup>::namespaced(client.clone(), ns)
        .create(&pp, &b)
        .await
    {
        Ok(_) => Ok(None),
        Err(kube::Error::Api(e)) if e.message.contains("denied the request") => Ok(Some(e.message)),
        Err(e) => Err(e.into()),
    }
}

/// Sums a metric's samples whose line contains `filter`.
pub fn metric(text: &str, name: &str, filter: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The `response` of an AdmissionReview for CREATE of `obj` posted to the webhook itself
/// (warnings, which the kube client does not show, are in it).
pub async fn review_directly(
    served: &Served,
    ns: &str,
    obj: serde_json::Value,
) -> serde_json::Value {
    let review = admission_review(ns, "watch-outage", "watch-outage-test", obj);
    let (status, body) = tls_post(
        served,
        "/validate/backups",
        serde_json::to_vec(&review).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["response"].clone()
}
