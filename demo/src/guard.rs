//! The guard as the demo runs it: the webhook and the agents as child processes of the
//! same binary (`longhorn-guard webhook ...`, `longhorn-guard agent ...`), their certificates,
//! the webhook's registration, the engine probe that calls the agents, and the scrape of
//! their `/metrics`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::api::{DeleteParams, DynamicObject, PostParams};
use kube::{Api, Client};
use longhorn_guard_certs::pki::{self, KeyedCert, LeafSpec, LeafUsage};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::processes::{Children, free_port};

/// Label on the demo's namespaces; the webhook registration selects on it.
pub const DEMO_NAMESPACE_LABEL: &str = "longhorn-guard.io/demo";

/// The demo's CA and a serving certificate for 127.0.0.1, written to `dir`.
pub struct DemoPki {
    pub ca: KeyedCert,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl DemoPki {
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        let ca = pki::new_ca("longhorn-guard demo CA", Duration::from_secs(24 * 3600))?;
        let leaf = pki::issue_leaf(
            &ca,
            &LeafSpec {
                common_name: "longhorn-guard-demo".into(),
                dns_names: vec!["127.0.0.1".into(), "localhost".into()],
                usage: LeafUsage::Server,
            },
            Duration::from_secs(24 * 3600),
        )?;
        std::fs::create_dir_all(dir)?;
        let cert = dir.join("tls.crt");
        let key = dir.join("tls.key");
        std::fs::write(&cert, format!("{}{}", leaf.cert_pem, ca.cert_pem))?;
        std::fs::write(&key, &leaf.key_pem)?;
        Ok(Self { ca, cert, key })
    }
}

/// A plain HTTP/1.0 GET on loopback: `(status, body)`.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.take(16 * 1024 * 1024).read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .with_context(|| format!("GET http://{addr}{path}: timed out"))?
        .with_context(|| format!("GET http://{addr}{path}"))?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text.as_str(), ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_string()))
}

/// Waits until `GET /readyz` answers 200, the child exits, or `timeout` passes.
pub async fn wait_ready(
    children: &Children,
    name: &str,
    addr: SocketAddr,
    timeout: Duration,
    log: &Path,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        if let Ok((200, _)) = http_get(addr, "/readyz").await {
            return Ok(());
        }
        if let Some(status) = children.exited(name) {
            bail!("{name} exited ({status}); see {}", log.display());
        }
        if start.elapsed() > timeout {
            bail!(
                "{name} not ready on http://{addr}/readyz after {timeout:?}; see {}",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A child of the demo binary with its ports.
pub struct Served {
    pub name: String,
    /// The child's process id (0 if the OS did not give one).
    pub pid: u32,
    pub listen: SocketAddr,
    pub metrics: SocketAddr,
}

fn loopback_addr() -> anyhow::Result<SocketAddr> {
    Ok(SocketAddr::from((
        Ipv4Addr::LOCALHOST,
        free_port(Ipv4Addr::LOCALHOST)?,
    )))
}

/// `longhorn-guard <subcommand> <own flags>` with text logs, the two loopback listeners and the
/// demo's serving certificate: the flags the webhook and the agent share.
fn serving_args(
    subcommand: &str,
    own: [String; 4],
    listen: SocketAddr,
    metrics: SocketAddr,
    pki: &DemoPki,
) -> Vec<String> {
    let mut args = vec!["--log-format".into(), "text".into(), subcommand.into()];
    args.extend(own);
    args.extend([
        "--listen".into(),
        listen.to_string(),
        "--metrics-listen".into(),
        metrics.to_string(),
        "--tls-cert".into(),
        pki.cert.display().to_string(),
        "--tls-key".into(),
        pki.key.display().to_string(),
    ]);
    args
}

/// Starts `longhorn-guard webhook` watching `namespace`, and waits until it is ready.
pub async fn start_webhook(
    children: &Children,
    exe: &Path,
    kubeconfig: &Path,
    pki: &DemoPki,
    policy: &Path,
    namespace: &str,
    logs: &Path,
) -> anyhow::Result<Served> {
    let listen = loopback_addr()?;
    let metrics = loopback_addr()?;
    let log = logs.join("webhook.log");
    let args = serving_args(
        "webhook",
        [
            "--policy".into(),
            policy.display().to_string(),
            "--namespace".into(),
            namespace.to_string(),
        ],
        listen,
        metrics,
        pki,
    );
    let pid = children.spawn(
        "webhook",
        exe,
        &args,
        &[
            ("KUBECONFIG", kubeconfig.display().to_string()),
            ("RUST_LOG", "info".to_string()),
        ],
        &log,
    )?;
    wait_ready(children, "webhook", metrics, Duration::from_secs(60), &log).await?;
    Ok(Served {
        name: "webhook".into(),
        pid,
        listen,
        metrics,
    })
}

/// Starts one `longhorn-guard agent` per node of `nodes` for `namespace`, told the port the
/// nodes' fake instance managers serve their engine proxy on, and waits until all are ready.
pub async fn start_agents(
    children: &Children,
    exe: &Path,
    kubeconfig: &Path,
    pki: &DemoPki,
    namespace: &str,
    nodes: &crate::world::Nodes,
    logs: &Path,
) -> anyhow::Result<BTreeMap<String, Served>> {
    let mut agents = BTreeMap::new();
    let engine_proxy_port = nodes.port;
    for node in nodes.nodes.iter().map(|n| &n.name) {
        let name = format!("agent-{namespace}-{node}");
        let listen = loopback_addr()?;
        let metrics = loopback_addr()?;
        let log = logs.join(format!("{name}.log"));
        let mut args = serving_args(
            "agent",
            [
                "--node".into(),
                node.clone(),
                "--namespace".into(),
                namespace.to_string(),
            ],
            listen,
            metrics,
            pki,
        );
        // Where the fake instance managers serve their engine proxy (8501 unless taken).
        args.extend(["--engine-proxy-port".into(), engine_proxy_port.to_string()]);
        let pid = children.spawn(
            &name,
            exe,
            &args,
            &[
                ("KUBECONFIG", kubeconfig.display().to_string()),
                ("RUST_LOG", "info".to_string()),
            ],
            &log,
        )?;
        agents.insert(
            node.clone(),
            Served {
                name,
                pid,
                listen,
                metrics,
            },
        );
    }
    for served in agents.values() {
        let log = logs.join(format!("{}.log", served.name));
        wait_ready(
            children,
            &served.name,
            served.metrics,
            Duration::from_secs(60),
            &log,
        )
        .await?;
    }
    Ok(agents)
}

/// Registers the webhook for CREATE of longhorn.io/v1beta2 backups in `namespace` only, and
/// waits until the API server calls it. Returns the configuration's name.
pub async fn register_webhook(
    client: &Client,
    webhook: &Served,
    ca_pem: &str,
    namespace: &str,
) -> anyhow::Result<String> {
    let name = format!("longhorn-guard-demo-{namespace}");
    let mut config: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": { "name": name },
        "webhooks": [{
            "name": "backups.longhorn-guard.io",
            "clientConfig": { "url": format!("https://{}/validate/backups", webhook.listen) },
            "rules": [{
                "apiGroups": [longhorn_types::GROUP],
                "apiVersions": [longhorn_types::VERSION],
                "operations": ["CREATE"],
                "resources": ["backups"],
                "scope": "Namespaced",
            }],
            "namespaceSelector": { "matchLabels": { DEMO_NAMESPACE_LABEL: namespace } },
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "failurePolicy": "Fail",
            "timeoutSeconds": 5,
        }],
    }))?;
    if let Some(w) = config.webhooks.as_mut().and_then(|w| w.first_mut()) {
        w.client_config.ca_bundle = Some(ByteString(ca_pem.as_bytes().to_vec()));
    }
    let api = Api::<ValidatingWebhookConfiguration>::all(client.clone());
    match api.create(&PostParams::default(), &config).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => {
            return Err(e).with_context(|| format!("registering webhook configuration {name}"));
        }
    }
    // The API server loads webhook configurations asynchronously: probe until it calls us.
    let backups: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        namespace,
        &kube::api::ApiResource::erase::<longhorn_types::Backup>(&()),
    );
    let probe: DynamicObject = serde_json::from_value(longhorn_types::shapes::backup(
        namespace,
        "lhg-demo-probe",
        "pvc-probe",
        "snapshot-that-never-existed",
        None,
    ))?;
    let start = Instant::now();
    loop {
        match backups.create(&PostParams::default(), &probe).await {
            Err(kube::Error::Api(e)) if e.message.contains("longhorn-guard") => return Ok(name),
            Ok(_) => {
                let _ = backups
                    .delete("lhg-demo-probe", &DeleteParams::default())
                    .await;
            }
            Err(_) => {}
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("the API server did not call the webhook within 30 s of registering {name}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub async fn unregister_webhook(client: &Client, name: &str) {
    let api = Api::<ValidatingWebhookConfiguration>::all(client.clone());
    match tokio::time::timeout(
        Duration::from_secs(5),
        api.delete(name, &DeleteParams::default()),
    )
    .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(kube::Error::Api(e))) if e.code == 404 => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, name, "could not delete the webhook configuration")
        }
        Err(_) => tracing::warn!(name, "deleting the webhook configuration timed out"),
    }
}
