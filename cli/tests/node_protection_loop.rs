//! The node-protection loop end to end (issue #19), every piece real: the suite's local control
//! plane, the `longhorn-guard webhook` and two `longhorn-guard agent` processes of this build
//! (the webhook registered by `url: https://127.0.0.1:PORT/validate/backups`, TLS with the
//! demo's CA), and per node a `longhorn-manager` stand-in (manager-monitor's test binary) whose
//! connections to its node's instance-manager port and whose RSS the agent reads from `/proc`.
//! node-a's stand-in leaks; node-b's stays healthy. Every step waits for a fact (the Lease, the
//! webhook's `node_verdict` gauge), never for time.
//!
//! Needs `LHG_TEST_KUBECONFIG` and the stand-in built beside this test (`cargo nextest run
//! --workspace` builds it; alone: `cargo build -p longhorn-guard-manager-monitor --bin
//! longhorn-manager`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use longhorn_guard_demo::guard::{
    self, DEMO_NAMESPACE_LABEL, DemoPki, GuardSetup, Served, http_get,
};
use longhorn_guard_demo::processes::Children;
use longhorn_guard_testkit::manager_stand_in::{ImPort, SECONDS_POLICY, StandIn};
use longhorn_guard_testkit::{TestCluster, wait_for};
use longhorn_types::shapes;

const BIN: &str = env!("CARGO_BIN_EXE_longhorn-guard");

/// Unthrottled (the test creates several Backups per volume); `nodeProtection` enforcing with
/// the testkit's thresholds for seconds-long tests.
fn policy_yaml() -> String {
    format!("throttle:\n  enabled: false\n{SECONDS_POLICY}")
}

/// One node: its instance-manager port, its manager stand-in, and the agent's flags.
struct NodeStand {
    name: String,
    volume: String,
    im: ImPort,
    manager: StandIn,
}

impl NodeStand {
    fn start(ns: &str, suffix: &str) -> Result<Self> {
        let name = format!("{ns}-node-{suffix}");
        Ok(Self {
            manager: StandIn::start(&name, ns)?,
            volume: format!("vol-{suffix}"),
            im: ImPort::bind()?,
            name,
        })
    }

    fn agent_flags(&self, ns: &str, policy: &std::path::Path) -> Vec<String> {
        let process_match = format!(
            "regex:longhorn-manager --node {} --instance {ns}$",
            self.name
        );
        guard::verdict_flags(&process_match, Duration::from_millis(200), ns, policy)
    }

    /// v1.7.2's leak, fast: 30 clients a second never closed, RSS +4 MiB a second.
    fn leak(&mut self) -> Result<()> {
        self.manager
            .cmd(&format!("leak {} 30 4", self.im.addr()))
            .map(drop)
    }
}

/// What the webhook's `/metrics` says.
async fn webhook_metrics(webhook: &Served) -> Result<String> {
    let (code, text) = http_get(webhook.metrics, "/metrics").await?;
    ensure!(code == 200, "webhook /metrics answered {code}");
    Ok(text)
}

/// Waits until the webhook's `node_verdict` gauge says `node` is `verdict`.
async fn wait_webhook_sees(webhook: &Served, node: &str, verdict: &str) -> Result<()> {
    let series =
        format!("longhorn_guard_webhook_node_verdict{{node=\"{node}\",verdict=\"{verdict}\"}} 1");
    wait_for(
        Duration::from_secs(45),
        &format!("the webhook to see node {node} {verdict}"),
        || async { Ok(webhook_metrics(webhook).await?.lines().any(|l| l == series)) },
    )
    .await
}

/// Waits until `node`'s verdict Lease in `ns` says `verdict`.
async fn wait_lease_says(leases: &Api<Lease>, node: &str, verdict: &str) -> Result<()> {
    let name = format!("longhorn-guard-node-{node}");
    wait_for(
        Duration::from_secs(45),
        &format!("the Lease {name} to say {verdict}"),
        || async {
            let lease = leases.get_opt(&name).await?;
            Ok(lease
                .and_then(|l| l.metadata.annotations)
                .and_then(|a| a.get("longhorn-guard.io/verdict").cloned())
                .is_some_and(|v| v == verdict))
        },
    )
    .await
}

/// A recurring job's Backup of `volume`: `None` when admitted, else the API server's message.
async fn backup(
    backups: &Api<DynamicObject>,
    ns: &str,
    name: &str,
    volume: &str,
) -> Result<Option<String>> {
    let obj: DynamicObject = serde_json::from_value(shapes::backup(
        ns,
        name,
        volume,
        &format!("snap-{volume}"),
        Some("daily"),
    ))?;
    match backups.create(&PostParams::default(), &obj).await {
        Ok(_) => Ok(None),
        Err(kube::Error::Api(e)) => Ok(Some(e.message)),
        Err(e) => Err(e.into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn a_leaking_node_is_protected_released_and_expires_with_its_agent() -> Result<()> {
    let cluster = TestCluster::connect().await?;
    let ns = cluster.namespace("loop").await?;
    // The demo's webhook registration selects its namespace by the demo's label.
    Api::<Namespace>::all(cluster.client())
        .patch(
            &ns,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {DEMO_NAMESPACE_LABEL: &ns}}})),
        )
        .await?;
    let work = std::env::temp_dir().join(format!("lhg-loop-{ns}"));
    std::fs::create_dir_all(&work)?;
    let children = Children::default();
    let result = the_loop(&cluster, &ns, &work, &children).await;
    children.stop("", Duration::from_secs(10)).await;
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        eprintln!("logs kept in {}", work.display());
    }
    result
}

async fn the_loop(
    cluster: &TestCluster,
    ns: &str,
    work: &std::path::Path,
    children: &Children,
) -> Result<()> {
    let client = cluster.client();
    let mut a = NodeStand::start(ns, "a")?;
    let b = NodeStand::start(ns, "b")?;
    for n in [&a, &b] {
        cluster
            .create_with_status::<longhorn_types::Volume>(
                ns,
                shapes::volume(ns, &n.volume, &n.name),
                shapes::volume_status(&n.name),
            )
            .await?;
        cluster
            .create_with_status::<longhorn_types::Snapshot>(
                ns,
                shapes::snapshot(ns, &format!("snap-{}", n.volume), &n.volume),
                shapes::snapshot_status(&n.name, ""),
            )
            .await?;
    }
    cluster
        .create_with_status::<longhorn_types::BackupTarget>(
            ns,
            shapes::backup_target(ns, "default", "s3://bk@us-east-1/"),
            shapes::backup_target_status(&a.name, true),
        )
        .await?;

    let pki = DemoPki::create(&work.join("pki"))?;
    let policy = work.join("policy.yaml");
    std::fs::write(&policy, policy_yaml())?;
    let exe = PathBuf::from(BIN);
    let kubeconfig = cluster.kubeconfig_path().to_path_buf();
    let setup = GuardSetup {
        children,
        exe: &exe,
        kubeconfig: &kubeconfig,
        pki: &pki,
        namespace: ns,
        logs: work,
    };
    let webhook = guard::start_webhook(
        &setup,
        "webhook",
        &policy,
        &["--node-verdict-namespace".into(), ns.to_string()],
    )
    .await?;
    let registration = guard::register_webhook(&client, &webhook, &pki.ca.cert_pem, ns).await?;
    let agent_a = guard::spawn_agent(&setup, &a.name, a.im.port, a.agent_flags(ns, &policy))?;
    let agent_b = guard::spawn_agent(&setup, &b.name, b.im.port, b.agent_flags(ns, &policy))?;
    guard::wait_agents_ready(&setup, [&agent_a, &agent_b]).await?;
    let result = steps(ns, &client, &webhook, (&mut a, &b), (&setup, &agent_a)).await;
    guard::unregister_webhook(&client, &registration).await;
    result
}

async fn steps(
    ns: &str,
    client: &kube::Client,
    webhook: &Served,
    (a, b): (&mut NodeStand, &NodeStand),
    (setup, agent_a): (&GuardSetup<'_>, &Served),
) -> Result<()> {
    let backups: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::erase::<longhorn_types::Backup>(&()),
    );
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    wait_webhook_sees(webhook, &a.name, "healthy").await?;
    wait_webhook_sees(webhook, &b.name, "healthy").await?;
    assert_eq!(backup(&backups, ns, "before", &a.volume).await?, None);

    // node-a's manager leaks: its agent turns it leaking, the webhook refuses its Backups and
    // admits node-b's.
    a.leak()?;
    wait_lease_says(&leases, &a.name, "leaking").await?;
    wait_webhook_sees(webhook, &a.name, "leaking").await?;
    let refusal = backup(&backups, ns, "while-leaking", &a.volume)
        .await?
        .context("a Backup of node-a's volume is refused while node-a is leaking")?;
    for part in [
        format!("node \"{}\" is leaking", a.name),
        // The evidence: connections and their slope, RSS and its slope.
        "connections to instance managers (+".to_string(),
        "MiB/min)".to_string(),
        "[node_leaking]".to_string(),
        "runbook".to_string(),
    ] {
        assert!(refusal.contains(&part), "{part:?} not in {refusal}");
    }
    assert_eq!(
        backup(&backups, ns, "other-node", &b.volume).await?,
        None,
        "node-b is healthy"
    );

    // The leak stops: longhorn-manager restarted healthy. After the recovery time node-a is
    // released and its Backups are admitted again.
    a.manager = StandIn::start(&a.name, ns)?;
    wait_lease_says(&leases, &a.name, "healthy").await?;
    wait_webhook_sees(webhook, &a.name, "healthy").await?;
    assert_eq!(backup(&backups, ns, "released", &a.volume).await?, None);

    // Leaking again, then its agent is killed: the Lease is no longer renewed, expires, the
    // webhook's gauges say so and node-a is no longer protected.
    a.leak()?;
    wait_webhook_sees(webhook, &a.name, "leaking").await?;
    assert!(
        backup(&backups, ns, "leaking-again", &a.volume)
            .await?
            .is_some()
    );
    setup
        .children
        .stop(&agent_a.name, Duration::from_secs(10))
        .await;
    wait_webhook_sees(webhook, &a.name, "expired").await?;
    let text = webhook_metrics(webhook).await?;
    assert!(
        text.lines()
            .any(|l| l == "longhorn_guard_webhook_node_verdicts_expired 1"),
        "{text}"
    );
    let lease = leases
        .get(&format!("longhorn-guard-node-{}", a.name))
        .await?;
    let annotations = lease.metadata.annotations.unwrap_or_default();
    assert_eq!(
        annotations
            .get("longhorn-guard.io/verdict")
            .map(String::as_str),
        Some("leaking"),
        "the dead agent's last verdict stays in the Lease, expired"
    );
    assert_eq!(
        backup(&backups, ns, "expired", &a.volume).await?,
        None,
        "an expired verdict does not protect"
    );
    assert_eq!(backup(&backups, ns, "other-node-2", &b.volume).await?, None);
    Ok(())
}
