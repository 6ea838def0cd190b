//! The node verdict end to end through the local API server: an agent whose manager monitor
//! follows the `longhorn-manager` stand-in (manager-monitor's test binary) judges its node and
//! keeps the node's Lease in a test namespace, writes an Event on each transition and exports
//! the `node_verdict` metrics (checked with promtool).
//!
//! Needs `LHG_TEST_KUBECONFIG` (the run's control plane) and the stand-in built next to this
//! test (`cargo nextest run --workspace` builds it; alone:
//! `cargo build -p longhorn-guard-manager-monitor --bin longhorn-manager`).

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
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
use support::*;

type TestResult = anyhow::Result<()>;

/// Thresholds for seconds-long tests: a 6 s window, floors over 1 s, 2 s to enter, 3 s to
/// recover; leaking at 300 connections a minute from 20, degrading at 60 from 10.
const TEST_POLICY: &str = "\
mode: enforce
nodeProtection:
  thresholds:
    windowSeconds: 6
    floorSeconds: 1
    enterAfterSeconds: 2
    recoverAfterSeconds: 3
    degrading: {minConnections: 10, connectionsPerMinute: 60, minRssMib: 100000, rssMibPerMinute: 100000}
    leaking: {minConnections: 20, connectionsPerMinute: 300, minRssMib: 100000, rssMibPerMinute: 100000}
";
const RENEW: Duration = Duration::from_secs(1);
const LEASE_DURATION: Duration = Duration::from_secs(3);

/// A loopback "instance manager" port that accepts and holds every connection until dropped.
struct ImPort {
    port: u16,
    accepted: Arc<Mutex<Vec<TcpStream>>>,
}

impl ImPort {
    fn bind() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&accepted);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(conn);
            }
        });
        Ok(ImPort { port, accepted })
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for ImPort {
    fn drop(&mut self) {
        self.accepted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

/// The `longhorn-manager` stand-in, killed and reaped on drop.
struct StandIn {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl StandIn {
    /// The stand-in is a binary of the manager-monitor package, built beside this test.
    fn binary() -> anyhow::Result<PathBuf> {
        let exe = std::env::current_exe()?;
        let dir = exe
            .parent()
            .and_then(|deps| deps.parent())
            .ok_or_else(|| anyhow!("no target directory above {}", exe.display()))?;
        let bin = dir.join("longhorn-manager");
        ensure!(
            bin.exists(),
            "the longhorn-manager stand-in is not built at {}: run the tests with \
             `cargo nextest run --workspace` or build it with \
             `cargo build -p longhorn-guard-manager-monitor --bin longhorn-manager`",
            bin.display()
        );
        Ok(bin)
    }

    fn start(node: &str, instance: &str) -> anyhow::Result<Self> {
        let mut child = Command::new(Self::binary()?)
            .args(["--node", node, "--instance", instance])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning the longhorn-manager stand-in")?;
        let stdin = child.stdin.take().context("stand-in stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().context("stand-in stdout")?);
        let mut ready = String::new();
        stdout.read_line(&mut ready)?;
        ensure!(ready.starts_with("ready"), "stand-in said {ready:?}");
        Ok(StandIn {
            child,
            stdin,
            stdout,
        })
    }

    fn cmd(&mut self, line: &str) -> anyhow::Result<String> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        let mut reply = String::new();
        self.stdout.read_line(&mut reply)?;
        ensure!(
            reply.starts_with("ok"),
            "stand-in refused {line:?}: {reply:?}"
        );
        Ok(reply.trim().to_owned())
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct RunningAgent {
    http_port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _files: tempfile::TempDir,
}

impl RunningAgent {
    async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await?
    }

    async fn metrics(&self) -> anyhow::Result<String> {
        let (code, text) = http_get(self.http_port, "/metrics").await?;
        ensure!(code == 200, "/metrics answered {code}: {text}");
        Ok(text)
    }
}

/// Everything one test runs: its namespace, node name, instance-manager port, stand-in, agent.
struct Stand {
    cluster: TestCluster,
    namespace: String,
    node: String,
    pod: String,
    im: ImPort,
    manager: StandIn,
    agent: RunningAgent,
}

/// Whom the agent writes as.
enum Access {
    /// The control plane's admin.
    Admin,
    /// The agent's ServiceAccount in the test namespace (impersonated), granted the
    /// manifests' Roles (`true`) or nothing (`false`).
    ServiceAccount { granted: bool },
}

const AGENT_SERVICE_ACCOUNT: &str = "longhorn-guard-agent";

impl Stand {
    async fn start(test: &str) -> anyhow::Result<Self> {
        Self::start_as(test, Access::Admin).await
    }

    async fn start_as(test: &str, access: Access) -> anyhow::Result<Self> {
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

    fn policy_path(&self) -> PathBuf {
        self.agent._files.path().join("policy.yaml")
    }

    fn leases(&self) -> Api<Lease> {
        Api::namespaced(self.cluster.client(), &self.namespace)
    }

    async fn lease(&self) -> anyhow::Result<Option<Lease>> {
        Ok(self
            .leases()
            .get_opt(&lease::lease_name(&self.node))
            .await?)
    }

    async fn published(&self) -> anyhow::Result<Option<(Published, Lease)>> {
        let Some(lease) = self.lease().await? else {
            return Ok(None);
        };
        let annotations = lease.metadata.annotations.clone().unwrap_or_default();
        let published = Published::from_annotations(&annotations)
            .map_err(|e| anyhow!("verdict Lease unreadable: {e}"))?;
        Ok(Some((published, lease)))
    }

    /// Waits until the Lease says `want`; returns what it published.
    async fn wait_verdict(&self, want: Verdict, within: Duration) -> anyhow::Result<Published> {
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

    /// The Events on this test's Node with `reason`.
    async fn events(&self, reason: &str) -> anyhow::Result<Vec<Event>> {
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

    async fn wait_event(&self, reason: &str) -> anyhow::Result<Event> {
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
fn sample(text: &str, series: &str) -> anyhow::Result<f64> {
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
async fn grant_the_manifests_agent_roles(cluster: &TestCluster, namespace: &str) -> TestResult {
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

fn micro_seconds(t: &Timestamp) -> f64 {
    t.as_microsecond() as f64 / 1e6
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaking_manager_turns_its_node_leaking_then_recovers_and_a_stopped_agent_expires()
-> TestResult {
    let mut stand = Stand::start("verdict-leak").await?;
    let healthy = stand
        .wait_verdict(Verdict::Healthy, Duration::from_secs(20))
        .await?;
    assert_eq!(healthy.node, stand.node);

    // v1.7.2's leak, fast: 30 clients a second never closed, RSS +4 MiB a second.
    stand
        .manager
        .cmd(&format!("leak {} 30 4", stand.im.addr()))?;
    let leaking = stand
        .wait_verdict(Verdict::Leaking, Duration::from_secs(30))
        .await?;
    let e = &leaking.evidence;
    assert!(e.connections >= 20, "{e:?}");
    assert!(e.connections_per_minute >= 300.0, "{e:?}");
    assert!(
        e.rss_bytes > 0 && e.threads > 0 && e.fds >= e.connections,
        "{e:?}"
    );
    assert_eq!(
        e.window_seconds, 6,
        "the policy file's thresholds are in force"
    );
    assert!(e.reason.contains("connection floor"), "{e:?}");
    assert!(!e.since.is_empty(), "{e:?}");

    let (_, lease) = stand
        .published()
        .await?
        .ok_or_else(|| anyhow!("Lease gone"))?;
    let spec = lease.spec.clone().unwrap_or_default();
    assert_eq!(spec.holder_identity.as_deref(), Some(stand.pod.as_str()));
    assert_eq!(spec.lease_duration_seconds, Some(3));
    let labels = lease.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get(lease::LABEL_KEY).map(String::as_str),
        Some(lease::LABEL_VALUE)
    );

    let event = stand.wait_event("NodeVerdictLeaking").await?;
    let message = event.message.clone().unwrap_or_default();
    assert!(
        message.contains(&format!("node {}", stand.node))
            && message.contains("-> leaking")
            && message.contains("connections to instance managers"),
        "{message}"
    );
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(event.involved_object.kind.as_deref(), Some("Node"));

    let text = stand.agent.metrics().await?;
    promtool_check(&text)?;
    let n = &stand.node;
    assert_eq!(
        sample(
            &text,
            &format!("longhorn_guard_agent_node_verdict{{node=\"{n}\",verdict=\"leaking\"}}")
        )?,
        1.0
    );
    assert_eq!(
        sample(
            &text,
            &format!("longhorn_guard_agent_node_verdict{{node=\"{n}\",verdict=\"healthy\"}}")
        )?,
        0.0
    );
    let into_leaking = sample(
        &text,
        &format!(
            "longhorn_guard_agent_node_verdict_transitions_total{{node=\"{n}\",from=\"healthy\",to=\"leaking\"}}"
        ),
    )? + sample(
        &text,
        &format!(
            "longhorn_guard_agent_node_verdict_transitions_total{{node=\"{n}\",from=\"degrading\",to=\"leaking\"}}"
        ),
    )?;
    assert_eq!(into_leaking, 1.0);
    assert!(
        sample(
            &text,
            &format!("longhorn_guard_agent_node_verdict_connections_per_minute{{node=\"{n}\"}}")
        )? >= 300.0
    );
    assert!(
        sample(
            &text,
            &format!("longhorn_guard_agent_node_verdict_rss_bytes_per_minute{{node=\"{n}\"}}")
        )? > 0.0
    );
    assert_eq!(
        sample(
            &text,
            &format!(
                "longhorn_guard_agent_node_verdict_publish_errors_total{{node=\"{n}\",reason=\"forbidden\"}}"
            )
        )?,
        0.0
    );

    // The leak stops (the stuck Backups were pruned): the floor stops growing, the node is
    // released after the recovery time.
    stand.manager.cmd("calm")?;
    stand
        .wait_verdict(Verdict::Healthy, Duration::from_secs(30))
        .await?;
    let event = stand.wait_event("NodeVerdictHealthy").await?;
    assert_eq!(event.type_.as_deref(), Some("Normal"));

    // A stopped agent leaves its Lease to expire: renewTime + leaseDurationSeconds passes and
    // nobody renews it.
    let Stand {
        agent,
        cluster,
        namespace,
        node,
        ..
    } = stand;
    agent.stop().await?;
    let leases: Api<Lease> = Api::namespaced(cluster.client(), &namespace);
    let name = lease::lease_name(&node);
    let stopped = leases.get(&name).await?;
    let renewed_at = stopped
        .spec
        .as_ref()
        .and_then(|s| s.renew_time.as_ref())
        .map(|t| micro_seconds(&t.0))
        .ok_or_else(|| anyhow!("no renewTime"))?;
    wait_for(
        Duration::from_secs(15),
        "the stopped agent's Lease to expire",
        || async {
            let now = micro_seconds(&Timestamp::now());
            Ok(now > renewed_at + LEASE_DURATION.as_secs_f64())
        },
    )
    .await?;
    let expired = leases.get(&name).await?;
    let spec = expired.spec.clone().unwrap_or_default();
    let renew = spec
        .renew_time
        .as_ref()
        .map(|t| micro_seconds(&t.0))
        .ok_or_else(|| anyhow!("no renewTime"))?;
    let duration = f64::from(spec.lease_duration_seconds.unwrap_or(0));
    assert_eq!(renew, renewed_at, "nobody renewed it after the stop");
    assert!(
        renew + duration < micro_seconds(&Timestamp::now()),
        "renewTime + leaseDurationSeconds is in the past"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_healthy_manager_keeps_its_node_healthy() -> TestResult {
    let mut stand = Stand::start("verdict-busy").await?;
    stand
        .wait_verdict(Verdict::Healthy, Duration::from_secs(20))
        .await?;
    // Many short-lived connections: 60 opened, held ~200 ms and closed, five times a second.
    stand
        .manager
        .cmd(&format!("churn {} 60", stand.im.addr()))?;
    // Watch the Lease until it has been renewed with a full window of the busy manager behind
    // it (renewals spanning two windows, and the churn seen in its evidence), healthy every time.
    let renewals = Mutex::new(std::collections::BTreeSet::new());
    let busiest = Mutex::new(0u64);
    let left_healthy = Mutex::new(None);
    wait_for(
        Duration::from_secs(40),
        "a dozen healthy renewals of the busy manager's Lease",
        || async {
            let Some((published, lease)) = stand.published().await? else {
                return Ok(false);
            };
            if published.verdict != Verdict::Healthy {
                // Stop watching at once; asserted below.
                *left_healthy.lock().unwrap_or_else(PoisonError::into_inner) = Some(published);
                return Ok(true);
            }
            let renew = lease
                .spec
                .and_then(|s| s.renew_time)
                .map(|t| t.0.as_microsecond())
                .unwrap_or(0);
            let mut renewals = renewals.lock().unwrap_or_else(PoisonError::into_inner);
            renewals.insert(renew);
            let mut busiest = busiest.lock().unwrap_or_else(PoisonError::into_inner);
            *busiest = (*busiest).max(published.evidence.connections);
            Ok(renewals.len() >= 12 && *busiest >= 30)
        },
    )
    .await?;
    if let Some(published) = left_healthy
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner)
    {
        bail!("the busy manager's node left healthy: {published:?}");
    }
    let text = stand.agent.metrics().await?;
    let n = &stand.node;
    let transitions: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("longhorn_guard_agent_node_verdict_transitions_total{")
                && l.contains(&format!("node=\"{n}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(transitions, 0.0, "{text}");
    assert!(stand.events("NodeVerdictLeaking").await?.is_empty());
    assert!(stand.events("NodeVerdictDegrading").await?.is_empty());
    stand.agent.stop().await?;
    Ok(())
}

/// The manifests' Roles are all the agent needs: as its ServiceAccount it writes its Lease and
/// the Node's Event. The thresholds follow the policy file: a change applies, a bad file is
/// counted and the last good thresholds stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_manifests_roles_the_agent_publishes_and_follows_the_policy_file() -> TestResult {
    let mut stand =
        Stand::start_as("verdict-rbac", Access::ServiceAccount { granted: true }).await?;
    let first = stand
        .wait_verdict(Verdict::Healthy, Duration::from_secs(20))
        .await?;
    assert_eq!(first.evidence.window_seconds, 6);

    std::fs::write(
        stand.policy_path(),
        TEST_POLICY.replace("windowSeconds: 6", "windowSeconds: 8"),
    )?;
    wait_for(
        Duration::from_secs(15),
        "the new window in the Lease",
        || async {
            Ok(stand
                .published()
                .await?
                .is_some_and(|(p, _)| p.evidence.window_seconds == 8))
        },
    )
    .await?;

    std::fs::write(
        stand.policy_path(),
        "nodeProtection: {thresholds: {windowSeconds: 0}}\n",
    )?;
    let n = stand.node.clone();
    let policy_errors =
        format!("longhorn_guard_agent_node_verdict_policy_errors_total{{node=\"{n}\"}}");
    wait_for(
        Duration::from_secs(15),
        "the bad policy file counted",
        || async { Ok(sample(&stand.agent.metrics().await?, &policy_errors)? == 1.0) },
    )
    .await?;

    stand
        .manager
        .cmd(&format!("leak {} 30 4", stand.im.addr()))?;
    let leaking = stand
        .wait_verdict(Verdict::Leaking, Duration::from_secs(30))
        .await?;
    assert_eq!(
        leaking.evidence.window_seconds, 8,
        "the last good thresholds stayed"
    );
    stand.wait_event("NodeVerdictLeaking").await?;
    let text = stand.agent.metrics().await?;
    for reason in [
        "forbidden",
        "conflict",
        "not_found",
        "invalid",
        "server",
        "timeout",
        "transport",
    ] {
        let series = format!(
            "longhorn_guard_agent_node_verdict_publish_errors_total{{node=\"{n}\",reason=\"{reason}\"}}"
        );
        assert_eq!(sample(&text, &series)?, 0.0, "{series}");
    }
    stand.agent.stop().await?;
    Ok(())
}

/// Without RBAC every write is refused: counted by reason, and the agent keeps judging and
/// serving (its /metrics and gRPC health answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_writes_are_counted_and_the_agent_keeps_serving() -> TestResult {
    let stand =
        Stand::start_as("verdict-norbac", Access::ServiceAccount { granted: false }).await?;
    let n = stand.node.clone();
    let forbidden = format!(
        "longhorn_guard_agent_node_verdict_publish_errors_total{{node=\"{n}\",reason=\"forbidden\"}}"
    );
    wait_for(
        Duration::from_secs(15),
        "three refused Lease writes counted",
        || async { Ok(sample(&stand.agent.metrics().await?, &forbidden)? >= 3.0) },
    )
    .await?;
    let text = stand.agent.metrics().await?;
    promtool_check(&text)?;
    assert_eq!(
        sample(
            &text,
            &format!("longhorn_guard_agent_node_verdict{{node=\"{n}\",verdict=\"healthy\"}}")
        )?,
        1.0
    );
    assert!(stand.lease().await?.is_none(), "nothing was written");
    let (code, _) = http_get(stand.agent.http_port, "/healthz").await?;
    assert_eq!(code, 200);
    assert!(!stand.agent.task.is_finished(), "the agent still runs");
    stand.agent.stop().await?;
    Ok(())
}
