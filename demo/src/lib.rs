//! `longhorn-guard demo`: the one-command storm demo. It replays the Longhorn v1.7.2
//! power-failure Backup storm twice on a local control plane (a real kube-apiserver + etcd on
//! loopback) — once without the guard, once with the webhook and the agents — against a
//! simulated v1.7.2 backup controller that leaks a gRPC connection per reconcile of a stuck
//! Backup, and reports both runs side by side (JSON, Markdown, SVG).
//!
//! Reusable pieces: [`storm`] (the storm generator) and [`simulated_controller`] (the leaky
//! controller). This crate must not touch anything but loopback addresses (127.0.0.0/8) and
//! the cluster it was pointed at (its own control plane, or `--kubeconfig`, where it only
//! writes in namespaces it creates plus one webhook configuration it deletes again); it must
//! leave no process running on any exit path, Ctrl-C included; and it must keep the leak
//! below its cap so the machine running it survives.

pub mod guard;
pub mod inflight;
pub mod plot;
pub mod processes;
pub mod report;
pub mod simulated_controller;
pub mod storm;
pub mod world;

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::guard::{DEMO_NAMESPACE_LABEL, DemoPki};
use crate::processes::{Children, ControlPlane};
use crate::report::{Report, RunReport, Settings, percentile};
use crate::simulated_controller::{ControllerConfig, SimulatedController};
use crate::storm::{Outcome, SnapshotFate, StormConfig, StormProgress, StormShape};

/// Everything `longhorn-guard demo` can be told.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub backups: usize,
    pub volumes: usize,
    pub nodes: usize,
    /// Share of the Backups whose snapshot was lost in the outage.
    pub lost_share: f64,
    /// Share whose snapshot disappears right after admission.
    pub mid_storm_loss_share: f64,
    /// Bound of each run (storm + observation).
    pub duration: Duration,
    /// The storm's CREATEs start evenly over this span (clamped to the duration).
    pub storm_spread: Duration,
    /// How often the simulated controller re-reconciles a stuck Backup.
    pub resync: Duration,
    pub concurrency: usize,
    pub leak_cap: usize,
    pub slots_per_node: usize,
    pub backup_duration: Duration,
    pub out_dir: PathBuf,
    /// Use this cluster instead of starting a local control plane.
    pub kubeconfig: Option<PathBuf>,
    pub control_plane_dir: Option<PathBuf>,
    /// The `longhorn-guard` binary for the webhook and agent children (default: this one).
    pub exe: Option<PathBuf>,
    pub seed: u64,
    /// The first node's loopback address (the others follow it); default 127.0.0.2 with the
    /// demo's own control plane, a random 127.x.y.2 with `--kubeconfig`.
    pub node_address: Option<Ipv4Addr>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            backups: 4422,
            volumes: 300,
            nodes: 4,
            lost_share: 0.30,
            mid_storm_loss_share: 0.03,
            duration: Duration::from_secs(60),
            storm_spread: Duration::from_secs(30),
            resync: Duration::from_secs(15),
            concurrency: 32,
            leak_cap: 5_000,
            slots_per_node: 5,
            backup_duration: Duration::from_secs(2),
            out_dir: PathBuf::from("demo-out"),
            kubeconfig: None,
            control_plane_dir: None,
            exe: None,
            seed: 4422,
            node_address: None,
        }
    }
}

impl DemoOptions {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.backups == 0 || self.volumes == 0 || self.nodes == 0 {
            bail!("--backups, --volumes and --nodes must be > 0");
        }
        if self.nodes > 250 {
            bail!("--nodes must be at most 250 (one loopback address each)");
        }
        if !(0.0..=1.0).contains(&self.lost_share) {
            bail!("--lost-share must be between 0 and 1");
        }
        if !(0.0..=1.0).contains(&self.mid_storm_loss_share) {
            bail!("--mid-storm-loss-share must be between 0 and 1");
        }
        if self.duration.is_zero() || self.resync.is_zero() {
            bail!("--duration and --resync must be > 0");
        }
        if self.concurrency == 0 || self.slots_per_node == 0 || self.leak_cap == 0 {
            bail!("--concurrency, --slots-per-node and --leak-cap must be > 0");
        }
        Ok(())
    }
}

/// What the cleanup path must undo besides processes: the webhook registration.
#[derive(Default)]
struct Registrations {
    webhooks: Mutex<Vec<(Client, String)>>,
}

/// Runs the demo; on every exit path (error, SIGINT, SIGTERM) stops every process it
/// started and removes its webhook registration before returning.
pub async fn run(options: DemoOptions) -> anyhow::Result<Report> {
    options.validate()?;
    let work = std::env::temp_dir().join(format!(
        "lhg-demo-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let children = Children::default();
    let registrations = Registrations::default();
    let mut control_plane: Option<ControlPlane> = None;
    let result = tokio::select! {
        r = body(&options, &work, &children, &registrations, &mut control_plane) => r,
        s = shutdown_signal() => Err(anyhow::anyhow!("interrupted by {s}; cleaning up")),
    };
    if result.is_err() {
        eprintln!("[demo] stopping everything it started ...");
    }
    let webhooks: Vec<(Client, String)> = registrations
        .webhooks
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .drain(..)
        .collect();
    for (client, name) in webhooks {
        guard::unregister_webhook(&client, &name).await;
    }
    children.stop("", Duration::from_secs(10)).await;
    if let Some(mut cp) = control_plane {
        cp.stop().await;
    }
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// Resolves on SIGINT or SIGTERM, naming it.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = tokio::signal::ctrl_c() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

fn say(msg: impl AsRef<str>) {
    eprintln!("[demo] {}", msg.as_ref());
}

/// A client for `kubeconfig`. `retry: false` turns off kube's transparent retry of 429/503
/// answers: the storm client must see a throttle denial (429) as the denial it is, not wait
/// through retries.
async fn connect(kubeconfig: &Path, retry: bool) -> anyhow::Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading kubeconfig {}", kubeconfig.display()))?;
    let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", kubeconfig.display()))?;
    config.default_retry = retry;
    Client::try_from(config).context("building a kube client")
}

async fn ensure_crds(client: &Client) -> anyhow::Result<()> {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let crds = longhorn_types::crds::all();
    for crd in &crds {
        match api.create(&PostParams::default(), crd).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e).context("installing the Longhorn CRDs"),
        }
    }
    let start = Instant::now();
    for crd in &crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        loop {
            let established = api
                .get(&name)
                .await
                .ok()
                .and_then(|c| c.status)
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                break;
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("CRD {name} not Established after 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

async fn create_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "labels": { DEMO_NAMESPACE_LABEL: name } }
    }))?;
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            bail!(
                "namespace {name} already exists: the demo needs fresh namespaces (use another cluster or --kubeconfig)"
            )
        }
        Err(e) => Err(e).with_context(|| format!("creating namespace {name}")),
    }
}

/// The webhook policy the demo runs with: defaults, with throttle caps sized for a demo.
fn demo_policy() -> longhorn_guard_webhook::Policy {
    let mut policy = longhorn_guard_webhook::Policy::default();
    policy.throttle.enabled = true;
    policy.throttle.max_in_flight_per_volume = 1;
    policy.throttle.max_in_flight_per_node = 10;
    policy.throttle.max_in_flight_per_cluster = 40;
    policy
}

async fn body(
    options: &DemoOptions,
    work: &Path,
    children: &Children,
    registrations: &Registrations,
    control_plane: &mut Option<ControlPlane>,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let logs = options.out_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let exe = match &options.exe {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("locating the longhorn-guard binary")?,
    };

    // 1. The cluster.
    let (kubeconfig, own_cluster) = match &options.kubeconfig {
        Some(k) => {
            say(format!("using the cluster of {}", k.display()));
            (k.clone(), false)
        }
        None => {
            let scripts = processes::control_plane_dir(options.control_plane_dir.as_deref())?;
            say("starting a local control plane (kube-apiserver + etcd on 127.0.0.1) ...");
            let cp = ControlPlane::start(&scripts, &work.join("control-plane")).await?;
            let k = cp.kubeconfig();
            *control_plane = Some(cp);
            (k, true)
        }
    };
    let client = connect(&kubeconfig, true).await?;
    let storm_client = connect(&kubeconfig, false).await?;
    ensure_crds(&client).await?;
    let suffix = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let (ns_a, ns_b) = if own_cluster {
        (
            "demo-a-without-guard".to_string(),
            "demo-b-with-guard".to_string(),
        )
    } else {
        (
            format!("lhg-demo-a-{suffix}"),
            format!("lhg-demo-b-{suffix}"),
        )
    };
    create_namespace(&client, &ns_a).await?;
    create_namespace(&client, &ns_b).await?;
    // Node addresses: 127.0.0.2.. on our own cluster; elsewhere a random 127.x.y.0/24 so two
    // demos on one machine do not collide.
    let node_base = if let Some(ip) = options.node_address {
        if !ip.is_loopback() {
            bail!("--node-address {ip} is not in 127.0.0.0/8");
        }
        ip
    } else if own_cluster {
        Ipv4Addr::new(127, 0, 0, 2)
    } else {
        let r: u32 = rand::random();
        Ipv4Addr::new(127, 1 + (r % 250) as u8, ((r >> 8) % 256) as u8, 2)
    };

    // 2. The guard's certificates, policy and webhook (registered for run B only).
    let pki = DemoPki::create(&work.join("pki"))?;
    let policy_path = work.join("policy.yaml");
    std::fs::write(&policy_path, serde_yaml::to_string(&demo_policy())?)?;
    say("starting the webhook (child process) ...");
    let webhook = guard::start_webhook(
        children,
        &exe,
        &kubeconfig,
        &pki,
        &policy_path,
        &ns_b,
        &logs,
    )
    .await?;

    let settings = Settings {
        backups: options.backups,
        volumes: options.volumes,
        nodes: options.nodes,
        lost_share: options.lost_share,
        mid_storm_loss_share: options.mid_storm_loss_share,
        duration_seconds: options.duration.as_secs_f64(),
        resync_seconds: options.resync.as_secs_f64(),
        concurrency: options.concurrency,
        leak_cap: options.leak_cap,
        cluster: if own_cluster {
            "local control plane started by the demo".into()
        } else {
            format!("existing ({})", kubeconfig.display())
        },
    };
    let mut runs = Vec::new();
    let ctx = RunContext {
        options,
        client: &client,
        storm_client: &storm_client,
        kubeconfig: &kubeconfig,
        exe: &exe,
        children,
        pki: &pki,
        logs: &logs,
        node_base,
    };
    runs.push(run_once(&ctx, "A: without the guard", &ns_a, None).await?);
    let name = guard::register_webhook(&client, &webhook, &pki.ca.cert_pem, &ns_b).await?;
    registrations
        .webhooks
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((client.clone(), name));
    runs.push(run_once(&ctx, "B: with longhorn-guard", &ns_b, Some(&webhook)).await?);

    let report = Report {
        settings,
        runs,
        total_seconds: started.elapsed().as_secs_f64(),
    };
    write_outputs(&report, &options.out_dir)?;
    Ok(report)
}

/// Writes `report.json`, `report.md` and `in-flight.svg` into `dir`.
pub fn write_outputs(report: &Report, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(report)?,
    )?;
    std::fs::write(dir.join("report.md"), report.markdown())?;
    let colors = ["#d62728", "#2ca02c", "#1f77b4", "#ff7f0e"];
    let series: Vec<plot::Series<'_>> = report
        .runs
        .iter()
        .enumerate()
        .map(|(i, r)| plot::Series {
            label: &r.label,
            color: colors[i % colors.len()],
            samples: &r.timeline,
        })
        .collect();
    let title = format!(
        "In-flight Backups during a storm of {} Backups ({} volumes, {} nodes)",
        report.settings.backups, report.settings.volumes, report.settings.nodes
    );
    std::fs::write(
        dir.join("in-flight.svg"),
        plot::in_flight_svg(&title, &series),
    )?;
    Ok(())
}

struct RunContext<'a> {
    options: &'a DemoOptions,
    client: &'a Client,
    /// Without kube's retry of 429/503 (see [`connect`]).
    storm_client: &'a Client,
    kubeconfig: &'a Path,
    exe: &'a Path,
    children: &'a Children,
    pki: &'a DemoPki,
    logs: &'a Path,
    node_base: Ipv4Addr,
}

async fn run_once(
    ctx: &RunContext<'_>,
    label: &str,
    ns: &str,
    webhook: Option<&guard::Served>,
) -> anyhow::Result<RunReport> {
    let o = ctx.options;
    let guarded = webhook.is_some();
    let plan = storm::plan(&StormShape {
        backups: o.backups,
        volumes: o.volumes,
        lost_share: o.lost_share,
        mid_storm_loss_share: o.mid_storm_loss_share,
        recurring_jobs: 2,
        seed: o.seed,
    });
    let nodes = world::Nodes::start(o.nodes, ctx.node_base).await?;
    say(format!(
        "run {label}: creating {} volumes, their engines and {} snapshots in namespace {ns} ({} lost in the outage) ...",
        o.volumes,
        plan.len(),
        plan.iter()
            .filter(|b| b.fate == SnapshotFate::LostBeforeStorm)
            .count()
    ));
    if nodes.port != world::PREFERRED_PROXY_PORT {
        say(format!(
            "run {label}: port {} is taken on a node address; the fake instance managers serve their engine proxy on port {} (the agents are told)",
            world::PREFERRED_PROXY_PORT,
            nodes.port
        ));
    }
    world::populate(ctx.client, ns, &nodes, o.volumes, &plan, 48, ctx.logs).await?;
    let volume_nodes = Arc::new(world::volume_nodes(&nodes, o.volumes));
    let node_names: Vec<String> = nodes.nodes.iter().map(|n| n.name.clone()).collect();

    // The guard's agents (run B only).
    let agents = if guarded {
        say(format!(
            "run {label}: starting {} agents (child processes) ...",
            node_names.len()
        ));
        Some(
            guard::start_agents(
                ctx.children,
                ctx.exe,
                ctx.kubeconfig,
                ctx.pki,
                ns,
                &nodes,
                ctx.logs,
            )
            .await?,
        )
    } else {
        None
    };

    let origin = Instant::now();
    let tracker = inflight::InFlightTracker::start(
        ctx.client.clone(),
        ns,
        origin,
        Duration::from_millis(250),
    );
    let controller = SimulatedController::start(
        ctx.client.clone(),
        ControllerConfig {
            namespace: ns.to_string(),
            proxies: nodes.proxies(),
            volume_nodes: (*volume_nodes).clone(),
            resync: o.resync,
            slots_per_node: o.slots_per_node,
            backup_duration: o.backup_duration,
            max_leaked: o.leak_cap,
        },
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let probe_counts = Arc::new(guard::ProbeCounts::default());
    let probe = agents.as_ref().map(|agents| {
        let probe = guard::EngineProbe {
            agents: agents.iter().map(|(n, s)| (n.clone(), s.listen)).collect(),
            ca_pem: ctx.pki.ca.cert_pem.clone(),
            namespace: ns.to_string(),
            volume_nodes: volume_nodes.clone(),
            targets: tracker.non_terminal_fn(),
            every: o.resync,
            counts: probe_counts.clone(),
        };
        tokio::spawn(probe.run(stop_rx.clone()))
    });

    // Mid-storm loss: the snapshot of an admitted Backup disappears right away.
    let (admitted_tx, mut admitted_rx) = mpsc::unbounded_channel::<usize>();
    let lost_mid = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let loser = {
        let client = ctx.client.clone();
        let ns = ns.to_string();
        let plan = plan.clone();
        let lost_mid = lost_mid.clone();
        let volumes = o.volumes;
        let nodes = &nodes;
        async move {
            while let Some(i) = admitted_rx.recv().await {
                let Some(b) = plan.get(i) else { continue };
                if b.fate != SnapshotFate::LostAfterAdmission {
                    continue;
                }
                match world::lose_snapshot(&client, &ns, nodes, i % volumes, &b.snapshot).await {
                    Ok(()) => {
                        lost_mid.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => tracing::warn!(error = %e, "mid-storm snapshot loss failed"),
                }
            }
        }
    };

    say(format!(
        "run {label}: storm of {} Backups (concurrency {}, spread over {:?}, run bounded to {:?}) ...",
        plan.len(),
        o.concurrency,
        o.storm_spread.min(o.duration),
        o.duration
    ));
    let progress = Arc::new(StormProgress::default());
    let display = Progress::start(label, plan.len() as u64);
    let storm_config = StormConfig {
        concurrency: o.concurrency,
        spread: o.storm_spread.min(o.duration),
        deadline: o.duration,
        request_timeout: Duration::from_secs(15),
    };
    let backups_api: Api<DynamicObject> = Api::namespaced_with(
        ctx.storm_client.clone(),
        ns,
        &ApiResource::erase::<longhorn_types::Backup>(&()),
    );
    let storm_started = Instant::now();
    let storm = async {
        let attempts = storm::run(
            backups_api.clone(),
            ns,
            &plan,
            &storm_config,
            progress.clone(),
            Some(admitted_tx),
            stop_rx.clone(),
        )
        .await;
        (attempts, storm_started.elapsed())
    };
    // Everything of the run, bounded by its duration and the leak cap.
    let observe = async {
        let deadline = origin + o.duration;
        loop {
            display.update(&progress, &tracker, &controller);
            if controller.leak_cap_hit() {
                say(format!(
                    "run {label}: the leak reached the demo's cap of {} connections; cutting the run short",
                    o.leak_cap
                ));
                let _ = stop_tx.send(true);
                return;
            }
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let ((attempts, storm_elapsed), (), ()) = tokio::join!(storm, observe, loser);
    let _ = stop_tx.send(true);
    display.finish(&progress, &tracker, &controller);
    let run_elapsed = origin.elapsed();

    // Figures, before anything is stopped.
    let stats = controller.stats();
    let engine_proxy_open = nodes.open_connections();
    let agent = match &agents {
        Some(a) => Some(guard::agent_figures(a, &probe_counts).await?),
        None => None,
    };
    // Stop the controller (it finishes its writes), then read the final states.
    if let Some(p) = probe {
        let _ = tokio::time::timeout(Duration::from_secs(5), p).await;
    }
    controller.stop().await;
    let by_state = backups_by_state(&backups_api).await?;
    let peak = tracker.peak();
    let in_flight_end: u64 = by_state
        .iter()
        .filter(|(s, _)| !inflight::is_terminal(if s.as_str() == "New" { "" } else { s }))
        .map(|(_, n)| *n)
        .sum();
    let timeline = tracker.timeline();

    // Stop the rest of the run's pieces.
    tracker.stop().await;
    if let Some(agents) = &agents {
        for a in agents.values() {
            ctx.children.stop(&a.name, Duration::from_secs(10)).await;
        }
    }
    let engine_proxy_port = nodes.port;
    nodes.shutdown().await;

    let mut denied_by_reason: BTreeMap<String, u64> = BTreeMap::new();
    let (mut admitted, mut denied, mut errors, mut not_sent) = (0u64, 0u64, 0u64, 0u64);
    let mut latencies = Vec::new();
    let mut first_error: Option<String> = None;
    for a in &attempts {
        match &a.outcome {
            Outcome::Admitted => admitted += 1,
            Outcome::Denied { reason, .. } => {
                denied += 1;
                *denied_by_reason.entry(reason.clone()).or_insert(0) += 1;
            }
            Outcome::Failed(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| e.clone());
            }
            Outcome::NotSent => not_sent += 1,
        }
        if a.outcome != Outcome::NotSent {
            latencies.push(a.latency.as_secs_f64() * 1000.0);
        }
    }
    if let Some(e) = first_error {
        say(format!("run {label}: {errors} CREATEs failed; first: {e}"));
    }
    let throttled = denied_by_reason
        .iter()
        .filter(|(k, _)| k.starts_with("throttled"))
        .map(|(_, n)| *n)
        .sum();
    let _ = webhook;
    Ok(RunReport {
        label: label.to_string(),
        namespace: ns.to_string(),
        guard: guarded,
        attempted: admitted + denied + errors,
        not_sent,
        admitted,
        denied,
        denied_by_reason,
        throttled,
        errors,
        peak_in_flight: peak,
        stuck_pending_end: by_state.get("Pending").copied().unwrap_or(0),
        completed_end: by_state.get("Completed").copied().unwrap_or(0),
        backups_by_state: by_state,
        in_flight_end,
        snapshots_lost_mid_storm: lost_mid.load(Ordering::Relaxed),
        leaked_manager_connections: stats.leaked_connections,
        engine_proxy_open_connections: engine_proxy_open,
        engine_proxy_port,
        leak_cap_hit: stats.leak_cap_hit,
        reconciles: stats.reconciles,
        admission_p50_ms: percentile(&latencies, 50.0).unwrap_or(0.0),
        admission_p99_ms: percentile(&latencies, 99.0).unwrap_or(0.0),
        storm_seconds: storm_elapsed.as_secs_f64(),
        run_seconds: run_elapsed.as_secs_f64(),
        agent,
        timeline,
    })
}

/// Backups the API server holds, by `status.state` (`""` as `New`).
pub async fn backups_by_state(api: &Api<DynamicObject>) -> anyhow::Result<BTreeMap<String, u64>> {
    let list = api
        .list(&ListParams::default())
        .await
        .context("listing Backups")?;
    let mut by_state = BTreeMap::new();
    for b in list.items {
        let state = b.data["status"]["state"].as_str().unwrap_or_default();
        let key = if state.is_empty() { "New" } else { state };
        *by_state.entry(key.to_string()).or_insert(0) += 1;
    }
    Ok(by_state)
}

/// The progress display on stderr: a bar on a terminal, a line every 5 s otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    label: String,
    last_line: Mutex<Option<Instant>>,
}

impl Progress {
    fn start(label: &str, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} sent  {msg}",
            ) {
                bar.set_style(style);
            }
            bar.set_prefix(label.to_string());
            bar
        });
        Self {
            bar,
            label: label.to_string(),
            last_line: Mutex::new(None),
        }
    }

    fn message(
        progress: &StormProgress,
        tracker: &inflight::InFlightTracker,
        controller: &SimulatedController,
    ) -> String {
        format!(
            "admitted {} denied {} | in flight {} (peak {}) | leaked connections {}",
            progress.admitted.load(Ordering::Relaxed),
            progress.denied.load(Ordering::Relaxed),
            tracker.in_flight(),
            tracker.peak(),
            controller.leaked_connections()
        )
    }

    fn update(
        &self,
        progress: &StormProgress,
        tracker: &inflight::InFlightTracker,
        controller: &SimulatedController,
    ) {
        let msg = Self::message(progress, tracker, controller);
        match &self.bar {
            Some(bar) => {
                bar.set_position(progress.sent.load(Ordering::Relaxed));
                bar.set_message(msg);
            }
            None => {
                let mut last = self
                    .last_line
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                    *last = Some(Instant::now());
                    eprintln!(
                        "[demo] {}: sent {} | {msg}",
                        self.label,
                        progress.sent.load(Ordering::Relaxed)
                    );
                }
            }
        }
    }

    fn finish(
        &self,
        progress: &StormProgress,
        tracker: &inflight::InFlightTracker,
        controller: &SimulatedController,
    ) {
        let msg = Self::message(progress, tracker, controller);
        match &self.bar {
            Some(bar) => {
                bar.set_position(progress.sent.load(Ordering::Relaxed));
                bar.finish_with_message(msg);
            }
            None => eprintln!(
                "[demo] {}: done, sent {} | {msg}",
                self.label,
                progress.sent.load(Ordering::Relaxed)
            ),
        }
    }
}
