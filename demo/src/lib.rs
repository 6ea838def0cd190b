//! `longhorn-guard demo`: the one-command storm demo. It replays the Longhorn v1.7.2
//! power-failure Backup storm twice on a local control plane (a real kube-apiserver + etcd on
//! loopback) — once without the guard, once with the webhook and the agents — against a
//! simulated v1.7.2 backup controller that leaks a gRPC connection per reconcile of a stuck
//! Backup, and reports both runs side by side (JSON, Markdown, SVG). A third run, "slow leak"
//! ([`slow_leak`]), shows the node-protection loop (issue #19): a gentle storm the static caps
//! admit while one node's simulated longhorn-manager ([`manager`]) leaks, judged by that node's
//! real agent, once with `nodeProtection.mode: off` and once with `enforce`. With
//! `--long-run-minutes N`, [`long_run`] runs the same topology for N minutes instead (storm
//! waves, engine faults, an API server outage) and judges whether the guard stays flat.
//!
//! Reusable pieces: [`storm`] (the storm generator) and [`simulated_controller`] (the leaky
//! controller). This crate must not touch anything but loopback addresses (127.0.0.0/8) and
//! the cluster it was pointed at (its own control plane, or `--kubeconfig`, where it only
//! writes in namespaces it creates plus one webhook configuration per guarded run, deleted
//! again; and the slow-leak agents' Events on their simulated Nodes, which the API server keeps
//! in `default`); it must leave no process running on any exit path, Ctrl-C included; and it
//! must keep the leak below its cap so the machine running it survives.

mod cluster;
pub mod guard;
pub mod inflight;
pub mod long_run;
pub mod manager;
pub mod plot;
mod probe;
pub mod processes;
mod progress;
pub mod report;
mod run;
pub mod simulated_controller;
pub mod slow_leak;
mod started;
pub mod storm;
pub mod world;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::PoisonError;
use std::time::Duration;

use anyhow::{Context, bail};
use kube::Client;
use tokio::time::Instant;

pub use crate::cluster::backups_by_state;
use crate::guard::DemoPki;
use crate::processes::ControlPlane;
use crate::report::{Report, Settings};
use crate::run::{RunContext, run_once};
use crate::started::{Registrations, Started};

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
    /// Length of each of the third run's two halves, "slow leak" (loop off, loop enforcing);
    /// zero skips the third run.
    pub slow_leak: Duration,
    /// Backups a second in the slow-leak runs (under the static caps).
    pub slow_leak_rate: f64,
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
            slow_leak: Duration::from_secs(45),
            slow_leak_rate: 4.0,
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
        if !(self.slow_leak_rate > 0.0 && self.slow_leak_rate <= 100.0) {
            bail!("--slow-leak-rate must be above 0 and at most 100 Backups a second");
        }
        if !self.slow_leak.is_zero() && self.nodes < 2 {
            bail!(
                "the slow-leak run needs --nodes 2 or more (a leaky node and a healthy one); --slow-leak-seconds 0 skips it"
            );
        }
        Ok(())
    }
}

/// Runs the demo; on every exit path (error, SIGINT, SIGTERM) stops every process it
/// started and removes its webhook registration before returning.
pub async fn run(options: DemoOptions) -> anyhow::Result<Report> {
    options.validate()?;
    let mut started = Started::new()?;
    let result = tokio::select! {
        r = body(&options, &mut started) => r,
        s = shutdown_signal() => Err(anyhow::anyhow!("interrupted by {s}; cleaning up")),
    };
    started.clean_up(result.is_err()).await;
    result
}

/// Resolves on SIGINT or SIGTERM, naming it.
pub(crate) async fn shutdown_signal() -> &'static str {
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

pub(crate) fn say(msg: impl AsRef<str>) {
    eprintln!("[demo] {}", msg.as_ref());
}

/// The webhook policy the demo runs with: defaults, with throttle caps sized for a demo.
pub(crate) fn demo_policy() -> longhorn_guard_webhook::Policy {
    let mut policy = longhorn_guard_webhook::Policy::default();
    policy.throttle.enabled = true;
    policy.throttle.max_in_flight_per_volume = 1;
    policy.throttle.max_in_flight_per_node = 10;
    policy.throttle.max_in_flight_per_cluster = 40;
    policy
}

async fn body(options: &DemoOptions, started: &mut Started) -> anyhow::Result<Report> {
    let began = Instant::now();
    let logs = options.out_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let exe = guard_exe(options)?;

    // 1. The cluster.
    let cluster = Cluster::open(options, &started.work, &mut started.control_plane).await?;
    let (work, children) = (&started.work, &started.children);
    let (client, kubeconfig) = (&cluster.client, &cluster.kubeconfig);

    // 2. The guard's certificates, policy and webhook (registered for run B only).
    let pki = DemoPki::create(&work.join("pki"))?;
    let policy_path = work.join("policy.yaml");
    std::fs::write(&policy_path, serde_yaml::to_string(&demo_policy())?)?;
    say("starting the webhook (child process) ...");
    let setup = guard::GuardSetup {
        children,
        exe: &exe,
        kubeconfig,
        pki: &pki,
        namespace: &cluster.ns_b,
        logs: &logs,
    };
    let webhook = guard::start_webhook(&setup, "webhook", &policy_path, &[]).await?;

    let settings = demo_settings(options, &cluster);
    // 3. The two runs.
    let mut runs = Vec::new();
    let ctx = RunContext {
        options,
        client,
        storm_client: &cluster.storm_client,
        kubeconfig,
        exe: &exe,
        children,
        pki: &pki,
        logs: &logs,
        node_base: cluster.node_base,
    };
    runs.push(run_once(&ctx, "A: without the guard", &cluster.ns_a, None).await?);
    let name = guard::register_webhook(client, &webhook, &pki.ca.cert_pem, &cluster.ns_b).await?;
    started.registered(client, name);
    runs.push(
        run_once(
            &ctx,
            "B: with longhorn-guard",
            &cluster.ns_b,
            Some(&webhook),
        )
        .await?,
    );

    // The slow-leak runs have webhooks of their own (run B's is stopped with everything at the
    // end: stopping it here costs its shutdown grace).
    let mut slow_leak = Vec::new();
    if !options.slow_leak.is_zero() {
        for (ns, mode) in [(&cluster.ns_c_off, "off"), (&cluster.ns_c_on, "enforce")] {
            let label = format!("C: slow leak, loop {mode}");
            slow_leak
                .push(slow_leak_run(&ctx, &started.registrations, (&label, ns, mode), work).await?);
        }
    }

    let report = Report {
        settings,
        runs,
        slow_leak,
        total_seconds: began.elapsed().as_secs_f64(),
    };
    write_outputs(&report, &options.out_dir)?;
    Ok(report)
}

/// What the report says the demo ran with.
fn demo_settings(options: &DemoOptions, cluster: &Cluster) -> Settings {
    Settings {
        backups: options.backups,
        volumes: options.volumes,
        nodes: options.nodes,
        lost_share: options.lost_share,
        mid_storm_loss_share: options.mid_storm_loss_share,
        duration_seconds: options.duration.as_secs_f64(),
        resync_seconds: options.resync.as_secs_f64(),
        concurrency: options.concurrency,
        leak_cap: options.leak_cap,
        slow_leak_seconds: options.slow_leak.as_secs_f64(),
        slow_leak_rate: options.slow_leak_rate,
        cluster: if cluster.own {
            "local control plane started by the demo".into()
        } else {
            format!("existing ({})", cluster.kubeconfig.display())
        },
    }
}

/// One slow-leak run with its own webhook (policy `mode`, reading the verdict Leases in `ns`),
/// registered for `ns` only, then stopped and unregistered.
async fn slow_leak_run(
    ctx: &RunContext<'_>,
    registrations: &Registrations,
    (label, ns, mode): (&str, &str, &str),
    work: &Path,
) -> anyhow::Result<report::SlowLeakRun> {
    let policy = work.join(format!("policy-{ns}.yaml"));
    std::fs::write(&policy, slow_leak::policy_yaml(&demo_policy(), mode)?)?;
    let name = format!("webhook-{ns}");
    say(format!(
        "run {label}: starting its webhook (nodeProtection.mode {mode}) ..."
    ));
    let webhook = guard::start_webhook(
        &ctx.guard_setup(ns),
        &name,
        &policy,
        &["--node-verdict-namespace".into(), ns.to_string()],
    )
    .await?;
    let registration =
        guard::register_webhook(ctx.client, &webhook, &ctx.pki.ca.cert_pem, ns).await?;
    registrations
        .webhooks
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((ctx.client.clone(), registration.clone()));
    let result = slow_leak::run_slow_leak(ctx, (label, ns, mode), &webhook, &policy).await;
    guard::unregister_webhook(ctx.client, &registration).await;
    registrations
        .webhooks
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|(_, n)| n != &registration);
    ctx.children.stop(&name, Duration::from_secs(10)).await;
    result
}

/// The cluster the demo runs on, with its two fresh namespaces (A without, B with the guard).
pub(crate) struct Cluster {
    kubeconfig: PathBuf,
    /// The demo started this control plane itself.
    own: bool,
    client: Client,
    /// Without kube's retry of 429/503 (see [`cluster::connect`]).
    storm_client: Client,
    ns_a: String,
    ns_b: String,
    /// The slow-leak runs': loop off, loop enforcing.
    ns_c_off: String,
    ns_c_on: String,
    /// The first simulated node's loopback address.
    node_base: Ipv4Addr,
}

impl Cluster {
    /// The cluster of `--kubeconfig`, or a local control plane started into `control_plane`;
    /// the Longhorn CRDs installed and the two namespaces created.
    pub(crate) async fn open(
        options: &DemoOptions,
        work: &Path,
        control_plane: &mut Option<ControlPlane>,
    ) -> anyhow::Result<Self> {
        let (kubeconfig, own) = match &options.kubeconfig {
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
        let client = cluster::connect(&kubeconfig, true).await?;
        let storm_client = cluster::connect(&kubeconfig, false).await?;
        cluster::ensure_crds(&client).await?;
        let suffix = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
        let [ns_a, ns_b, ns_c_off, ns_c_on] = if own {
            [
                "demo-a-without-guard",
                "demo-b-with-guard",
                "demo-c-slow-leak-loop-off",
                "demo-c-slow-leak-loop-on",
            ]
            .map(String::from)
        } else {
            ["a", "b", "c-off", "c-on"].map(|run| format!("lhg-demo-{run}-{suffix}"))
        };
        let slow_leak = !options.slow_leak.is_zero();
        for ns in [&ns_a, &ns_b].into_iter().chain(
            slow_leak
                .then_some([&ns_c_off, &ns_c_on])
                .into_iter()
                .flatten(),
        ) {
            cluster::create_namespace(&client, ns).await?;
        }
        // Node addresses: 127.0.0.2.. on our own cluster; elsewhere a random 127.x.y.0/24 so
        // two demos on one machine do not collide.
        let node_base = if let Some(ip) = options.node_address {
            if !ip.is_loopback() {
                bail!("--node-address {ip} is not in 127.0.0.0/8");
            }
            ip
        } else if own {
            Ipv4Addr::new(127, 0, 0, 2)
        } else {
            let r: u32 = rand::random();
            Ipv4Addr::new(127, 1 + (r % 250) as u8, ((r >> 8) % 256) as u8, 2)
        };
        Ok(Self {
            kubeconfig,
            own,
            client,
            storm_client,
            ns_a,
            ns_b,
            ns_c_off,
            ns_c_on,
            node_base,
        })
    }
}

/// The `longhorn-guard` binary the webhook and agents run from (default: this one).
pub(crate) fn guard_exe(options: &DemoOptions) -> anyhow::Result<PathBuf> {
    match &options.exe {
        Some(p) => Ok(p.clone()),
        None => std::env::current_exe().context("locating the longhorn-guard binary"),
    }
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
    if !report.slow_leak.is_empty() {
        std::fs::write(
            dir.join("slow-leak.svg"),
            plot::slow_leak_svg(&report.slow_leak),
        )?;
    }
    Ok(())
}
