//! The test stand of `node_verdict.rs`: a loopback instance-manager port, the
//! `longhorn-manager` stand-in, an agent judging and publishing its node's verdict, and what
//! the tests read back (the Lease, the Node's Events, samples of `/metrics`).

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail, ensure};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::ListParams;
use longhorn_guard_agent::{
    Agent, AgentConfig, ManagerMonitorConfig, NodeVerdictConfig, ProcessMatch,
};
use longhorn_guard_testkit::{TestCluster, wait_for};
use node_verdict::{Published, Verdict, lease};

use crate::support::{files_dir, http_get, leaf, make_ca};

pub type TestResult = anyhow::Result<()>;

/// Thresholds for seconds-long tests (see the testkit's `SECONDS_POLICY`).
pub use longhorn_guard_testkit::manager_stand_in::SECONDS_POLICY as TEST_POLICY;
pub const RENEW: Duration = Duration::from_secs(1);
pub const LEASE_DURATION: Duration = Duration::from_secs(3);

pub use longhorn_guard_testkit::manager_stand_in::{ImPort, StandIn};

pub struct RunningAgent {
    pub http_port: u16,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub _files: tempfile::TempDir,
}

impl RunningAgent {
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await?
    }

    pub async fn metrics(&self) -> anyhow::Result<String> {
        let (code, text) = http_get(self.http_port, "/metrics").await?;
        ensure!(code == 200, "/metrics answered {code}: {text}");
        Ok(text)
    }
}

/// Everything one test runs: its namespace, node name, instance-manager port, stand-in, agent.
pub struct Stand {
    pub cluster: TestCluster,
    pub namespace: String,
    pub node: String,
    pub pod: String,
    pub im: ImPort,
    pub manager: StandIn,
    pub agent: RunningAgent,
}

/// Whom the agent writes as.
pub enum Access {
    /// The control plane's admin.
    Admin,
    /// The agent's ServiceAccount in the test namespace (impersonated), granted the
    /// manifests' Roles (`true`) or nothing (`false`).
    ServiceAccount { granted: bool },
}

pub const AGENT_SERVICE_ACCOUNT: &str = "longhorn-guard-agent";

impl Stand {
    pub async fn start(test: &str) -> anyhow::Result<Self> {
        Self::start_as(test, Access::Admin).await
    }

    pub async fn start_as(test: &str, access: Access) -> anyhow::Result<Self> {
        let cluster = TestCluster::connect().await?;
        let namespace = cluster.namespace(test).await?;
        let client = match access {
            Access::Admin => cluster.client(),
            Access::ServiceAccount { granted } => {
                if granted {
                    grant_the_manifests_agent_roles(&cluster, &namespace).await?;
                }
                let user = format!("system:serviceaccount:{namespace}:{AGENT_SERVICE_ACCOUNT}");
                let group = format!("system:serviceaccounts:{namespace}");
                cluster.client_as(
                    &user,
                    &["system:serviceaccounts", &group, "system:authenticated"],
                )?
            }
        };
        // Node names are unique per test: the Node's Events live in `default`, shared.
        let node = format!("{namespace}-node");
        let pod = format!("longhorn-guard-agent-{namespace}");
        let im = ImPort::bind()?;
        let manager = StandIn::start(&node, &namespace)?;
        let ca = make_ca("node verdict test CA")?;
        let (cert, key) = leaf(&["localhost"], &ca)?;
        let files = files_dir(&[
            ("tls.crt", &cert),
            ("tls.key", &key),
            ("policy.yaml", TEST_POLICY),
        ])?;

        let mut config = AgentConfig::new(&node);
        config.server_cert = files.path().join("tls.crt");
        config.server_key = files.path().join("tls.key");
        let mut monitor = ManagerMonitorConfig::for_node(&node);
        monitor.process_match = ProcessMatch::CmdlineRegex(regex::Regex::new(&format!(
            r"longhorn-manager --node \S+ --instance {}$",
            regex::escape(&namespace)
        ))?);
        monitor.im_ports = im.port..=im.port;
        monitor.engine_proxy_port = im.port;
        monitor.interval = Duration::from_millis(200);
        config.manager_monitor = Some(monitor);
        let mut verdict = NodeVerdictConfig::new(&pod);
        verdict.lease_namespace = namespace.clone();
        verdict.renew_period = RENEW;
        verdict.lease_duration = LEASE_DURATION;
        verdict.policy_file = Some(files.path().join("policy.yaml"));
        config.node_verdict = Some(verdict);

        let agent = Agent::new(config)?.with_kube_client(client);
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let http_port = http.local_addr()?.port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(agent.serve(grpc, http, async move {
            let _ = stopped.await;
        }));
        Ok(Stand {
            cluster,
            namespace,
            node,
            pod,
            im,
            manager,
            agent: RunningAgent {
                http_port,
                stop: Some(stop),
                task,
                _files: files,
            },
        })
    }

    pub fn policy_path(&self) -> PathBuf {
        self.agent._files.path().join("policy.yaml")
    }

    pub fn leases(&self) -> Api<Lease> {
        Api::namespaced(self.cluster.client(), &self.namespace)
    }

    pub async fn lease(&self) -> anyhow::Result<Option<Lease>> {
        Ok(self
            .leases()
            .get_opt(&lease::lease_name(&self.node))
            .await?)
    }

    pub async fn published(&self) -> anyhow::Result<Option<(Published, Lease)>> {
        let Some(lease) = self.lease().await? else {
            return Ok(None);
        };
        let annotations = lease.metadata.annotations.clone().unwrap_or_default();
        let published = Published::from_annotations(&annotations)
            .map_err(|e| anyhow!("verdict Lease unreadable: {e}"))?;
        Ok(Some((published, lease)))
    }

    /// Waits until the Lease says `want`; returns what it published.
    pub async fn wait_verdict(&self, want: Verdict, within: Duration) -> anyhow::Result<Published> {
        let seen = Mutex::new(None);
        wait_for(
            within,
            &format!("the Lease of {} to say {want}", self.node),
            || async {
                let got = self.published().await?;
                let hit = got.as_ref().is_some_and(|(p, _)| p.verdict == want);
                *seen.lock().unwrap_or_else(PoisonError::into_inner) = got.map(|(p, _)| p);
                Ok(hit)
            },
        )
        .await
        .with_context(|| format!("last published: {:?}", seen.lock().ok()))?;
        seen.into_inner()
            .unwrap_or_else(PoisonError::into_inner)
            .ok_or_else(|| anyhow!("no verdict published"))
    }

    /// Starts v1.7.2's leak, fast (30 clients a second never closed, RSS +4 MiB a second),
    /// and waits until the Lease says `leaking`.
    pub async fn leak_until_leaking(&mut self) -> anyhow::Result<Published> {
        self.manager.cmd(&format!("leak {} 30 4", self.im.addr()))?;
        self.wait_verdict(Verdict::Leaking, Duration::from_secs(30))
            .await
    }

    /// The Events on this test's Node with `reason`.
    pub async fn events(&self, reason: &str) -> anyhow::Result<Vec<Event>> {
        let api: Api<Event> = Api::namespaced(self.cluster.client(), "default");
        let list = api
            .list(&ListParams::default().fields(&format!("involvedObject.name={}", self.node)))
            .await?;
        Ok(list
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .collect())
    }

    pub async fn wait_event(&self, reason: &str) -> anyhow::Result<Event> {
        wait_for(
            Duration::from_secs(10),
            &format!("an Event {reason} on {}", self.node),
            || async { Ok(!self.events(reason).await?.is_empty()) },
        )
        .await?;
        self.events(reason)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("Event {reason} gone"))
    }
}

/// The value of the sample `name{labels}` (labels exactly as rendered) in an exposition that
/// promtool accepted.
pub fn sample(text: &str, series: &str) -> anyhow::Result<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .ok_or_else(|| anyhow!("no sample {series} in\n{text}"))?
        .split_whitespace()
        .next()
        .ok_or_else(|| anyhow!("{series} has no value"))?
        .parse()
        .with_context(|| format!("{series}'s value"))
}

/// Creates the agent's node-verdict Roles and RoleBindings exactly as
/// manifests/base/rbac-agent.yaml has them, moved to the test: the Lease Role into `namespace`,
/// the Node-events Role into `default` under a name of the test's own, both bound to the
/// agent's ServiceAccount in `namespace`.
pub async fn grant_the_manifests_agent_roles(cluster: &TestCluster, namespace: &str) -> TestResult {
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    use kube::api::PostParams;
    use serde::Deserialize as _;

    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/base/rbac-agent.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut granted = 0;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let mut value = serde_json::Value::deserialize(doc)?;
        let name = value["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let target_ns = match value["metadata"]["namespace"].as_str() {
            Some("longhorn-guard") => namespace.to_owned(),
            Some("default") => "default".to_owned(),
            _ => continue, // Longhorn's namespace: the Engine/InstanceManager reader
        };
        let new_name = if target_ns == "default" {
            format!("{name}-{namespace}")
        } else {
            name.clone()
        };
        value["metadata"]["name"] = new_name.clone().into();
        value["metadata"]["namespace"] = target_ns.clone().into();
        match value["kind"].as_str() {
            Some("Role") => {
                let role: Role = serde_json::from_value(value)?;
                Api::<Role>::namespaced(cluster.client(), &target_ns)
                    .create(&PostParams::default(), &role)
                    .await
                    .with_context(|| format!("creating Role {new_name}"))?;
            }
            Some("RoleBinding") => {
                value["roleRef"]["name"] = new_name.clone().into();
                value["subjects"][0]["namespace"] = namespace.into();
                ensure!(
                    value["subjects"][0]["name"] == AGENT_SERVICE_ACCOUNT,
                    "{name} binds {:?}",
                    value["subjects"]
                );
                let binding: RoleBinding = serde_json::from_value(value)?;
                Api::<RoleBinding>::namespaced(cluster.client(), &target_ns)
                    .create(&PostParams::default(), &binding)
                    .await
                    .with_context(|| format!("creating RoleBinding {new_name}"))?;
            }
            other => bail!("{name}: unexpected kind {other:?} in {}", path.display()),
        }
        granted += 1;
    }
    ensure!(
        granted == 4,
        "expected the verdict and node-events Roles and bindings, found {granted}"
    );
    Ok(())
}

pub fn micro_seconds(t: &Timestamp) -> f64 {
    t.as_microsecond() as f64 / 1e6
}
