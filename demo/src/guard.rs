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

/// Starts `longhorn-guard webhook` as child `name` watching the setup's namespace, with its
/// `policy` file and `extra` flags, and waits until it is ready.
pub async fn start_webhook(
    setup: &GuardSetup<'_>,
    name: &str,
    policy: &Path,
    extra: &[String],
) -> anyhow::Result<Served> {
    let GuardSetup {
        children,
        exe,
        kubeconfig,
        pki,
        namespace,
        logs,
    } = *setup;
    let listen = loopback_addr()?;
    let metrics = loopback_addr()?;
    let log = logs.join(format!("{name}.log"));
    let mut args = serving_args(
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
    args.extend(extra.iter().cloned());
    let pid = children.spawn(
        name,
        exe,
        &args,
        &[
            ("KUBECONFIG", kubeconfig.display().to_string()),
            ("RUST_LOG", "info".to_string()),
        ],
        &log,
    )?;
    wait_ready(children, name, metrics, Duration::from_secs(60), &log).await?;
    Ok(Served {
        name: name.into(),
        pid,
        listen,
        metrics,
    })
}

/// The cluster and files every child of the guard (webhook, agent) is started with.
#[derive(Clone, Copy)]
pub struct GuardSetup<'a> {
    pub children: &'a Children,
    pub exe: &'a Path,
    pub kubeconfig: &'a Path,
    pub pki: &'a DemoPki,
    /// Longhorn's namespace (the run's): the webhook's and the agents' `--namespace`.
    pub namespace: &'a str,
    pub logs: &'a Path,
}

/// Spawns `longhorn-guard agent` for `node` (child `agent-<namespace>-<node>`), told the port
/// its instance managers serve the engine proxy on, with `extra` flags; does not wait.
pub fn spawn_agent(
    setup: &GuardSetup<'_>,
    node: &str,
    engine_proxy_port: u16,
    extra: Vec<String>,
) -> anyhow::Result<Served> {
    let name = format!("agent-{}-{node}", setup.namespace);
    let listen = loopback_addr()?;
    let metrics = loopback_addr()?;
    let log = setup.logs.join(format!("{name}.log"));
    let mut args = serving_args(
        "agent",
        [
            "--node".into(),
            node.to_string(),
            "--namespace".into(),
            setup.namespace.to_string(),
        ],
        listen,
        metrics,
        setup.pki,
    );
    args.extend(["--engine-proxy-port".into(), engine_proxy_port.to_string()]);
    args.extend(extra);
    let pid = setup.children.spawn(
        &name,
        setup.exe,
        &args,
        &[
            ("KUBECONFIG", setup.kubeconfig.display().to_string()),
            ("RUST_LOG", "info".to_string()),
        ],
        &log,
    )?;
    Ok(Served {
        name,
        pid,
        listen,
        metrics,
    })
}

/// The flags of an agent that judges the longhorn-manager found by `process_match` every
/// `monitor_interval` and keeps its node's verdict Lease in `verdict_namespace` (renewed every
/// second, valid 3 s), with the thresholds of the `policy` file: a stand judged in seconds.
pub fn verdict_flags(
    process_match: &str,
    monitor_interval: Duration,
    verdict_namespace: &str,
    policy: &Path,
) -> Vec<String> {
    [
        "--manager-process-match",
        process_match,
        "--manager-monitor-interval-ms",
        &monitor_interval.as_millis().to_string(),
        "--verdict-namespace",
        verdict_namespace,
        "--verdict-renew-seconds",
        "1",
        "--verdict-lease-seconds",
        "3",
        "--policy-file",
        &policy.display().to_string(),
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

/// Waits until every agent of `agents` is ready (or one exits, or a minute passes).
pub async fn wait_agents_ready<'a>(
    setup: &GuardSetup<'_>,
    agents: impl IntoIterator<Item = &'a Served>,
) -> anyhow::Result<()> {
    for served in agents {
        let log = setup.logs.join(format!("{}.log", served.name));
        wait_ready(
            setup.children,
            &served.name,
            served.metrics,
            Duration::from_secs(60),
            &log,
        )
        .await?;
    }
    Ok(())
}

/// Starts one `longhorn-guard agent` per node of `nodes`, told the port the nodes' fake
/// instance managers serve their engine proxy on (8501 unless taken) and given `extra(node)`
/// flags, and waits until all are ready.
pub async fn start_agents(
    setup: &GuardSetup<'_>,
    nodes: &crate::world::Nodes,
    extra: &dyn Fn(&str) -> Vec<String>,
) -> anyhow::Result<BTreeMap<String, Served>> {
    let mut agents = BTreeMap::new();
    for node in nodes.nodes.iter().map(|n| &n.name) {
        let served = spawn_agent(setup, node, nodes.port, extra(node))?;
        agents.insert(node.clone(), served);
    }
    wait_agents_ready(setup, agents.values()).await?;
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
    let config = demo_webhook_configuration(&name, webhook, ca_pem, namespace)?;
    let api = Api::<ValidatingWebhookConfiguration>::all(client.clone());
    match api.create(&PostParams::default(), &config).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => {
            return Err(e).with_context(|| format!("registering webhook configuration {name}"));
        }
    }
    wait_until_called(client, namespace, &name).await?;
    Ok(name)
}

/// The demo's ValidatingWebhookConfiguration `name`: CREATE of Backups in `namespace` (by its
/// demo label) sent to `webhook`, trusted through `ca_pem`.
fn demo_webhook_configuration(
    name: &str,
    webhook: &Served,
    ca_pem: &str,
    namespace: &str,
) -> anyhow::Result<ValidatingWebhookConfiguration> {
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
    Ok(config)
}

/// The API server loads webhook configurations asynchronously: creates a probe Backup of a
/// snapshot that never existed until the webhook refuses it (at most 30 s).
async fn wait_until_called(client: &Client, namespace: &str, name: &str) -> anyhow::Result<()> {
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
            Err(kube::Error::Api(e)) if e.message.contains("longhorn-guard") => return Ok(()),
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
