//! `longhorn-guard demo` end to end: the real binary against the test command's control
//! plane (`--kubeconfig`), its report checked against the API server's own counts, and its
//! cleanup on SIGINT (no process it started may survive).
//!
//! Every process the demo starts inherits `LHG_RUN_ID=<unique>` from the test, so "nothing
//! left" is checked by scanning `/proc/*/environ` for that value, whatever the process is.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kube::Api;
use kube::api::{ApiResource, DynamicObject, ListParams};
use longhorn_guard_demo::report::Report;
use longhorn_guard_testkit::TestCluster;

use common::{demo_command, procs_of_run, run_id, stderr_tail, temp_dir, wait_bounded};

fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while !check() {
        if start.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn sigint(pid: u32) -> Result<()> {
    let ok = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .context("running kill -INT")?
        .success();
    if !ok {
        bail!("kill -INT {pid} failed");
    }
    Ok(())
}

/// Runs the demo against `cluster` to its end, bounded; fails with its stderr tail unless it
/// exits 0, and unless it leaves no process behind. Returns its output directory, its stdout
/// and its report.
fn run_to_report(
    cluster: &TestCluster,
    what: &str,
    args: &[&str],
) -> Result<(PathBuf, String, Report)> {
    let out = temp_dir(what)?;
    let id = run_id(what);
    let mut child = demo_command(Some(cluster.kubeconfig_path()), &out, &id, args)?.spawn()?;
    let status = wait_bounded(&mut child, Duration::from_secs(420))?;
    let mut stdout = String::new();
    if let Some(mut s) = child.stdout.take() {
        use std::io::Read;
        s.read_to_string(&mut stdout)?;
    }
    if !status.success() {
        bail!(
            "demo failed ({status}); stderr tail:\n{}",
            stderr_tail(&out)
        );
    }
    let left = procs_of_run(&id);
    assert!(left.is_empty(), "processes left behind: {left:?}");
    let report: Report = serde_json::from_str(&std::fs::read_to_string(out.join("report.json"))?)?;
    Ok((out, stdout, report))
}

async fn by_state(cluster: &TestCluster, ns: &str) -> Result<BTreeMap<String, u64>> {
    let api: Api<DynamicObject> = Api::namespaced_with(
        cluster.client(),
        ns,
        &ApiResource::erase::<longhorn_types::Backup>(&()),
    );
    let mut counts = BTreeMap::new();
    for b in api.list(&ListParams::default()).await?.items {
        let s = b.data["status"]["state"].as_str().unwrap_or_default();
        let key = if s.is_empty() { "New" } else { s };
        *counts.entry(key.to_string()).or_insert(0) += 1;
    }
    Ok(counts)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn demo_small_storm_report_matches_the_api_server() -> Result<()> {
    let cluster = TestCluster::connect().await?;
    let (out, stdout, report) = run_to_report(
        &cluster,
        "e2e",
        &[
            "--backups",
            "300",
            "--volumes",
            "30",
            "--nodes",
            "3",
            "--duration",
            "30",
            "--storm-seconds",
            "10",
            "--resync",
            "5",
            "--slow-leak-seconds",
            "30",
        ],
    )?;
    for f in [
        "report.json",
        "report.md",
        "in-flight.svg",
        "slow-leak.svg",
        "logs/webhook.log",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    assert!(stdout.contains("| figure | A: without the guard | B: with longhorn-guard |"));
    assert_eq!(report.runs.len(), 2);
    let (a, b) = (&report.runs[0], &report.runs[1]);

    for r in [a, b] {
        let api = by_state(&cluster, &r.namespace).await?;
        let existing: u64 = api.values().sum();
        assert_eq!(api, r.backups_by_state, "{}: states vs API server", r.label);
        assert_eq!(
            existing, r.admitted,
            "{}: admitted = Backup objects",
            r.label
        );
        assert_eq!(
            r.denied,
            r.attempted - existing - r.errors,
            "{}: denied = attempts - objects - errors",
            r.label
        );
        assert_eq!(r.errors, 0, "{}: CREATE errors", r.label);
        assert_eq!(r.attempted + r.not_sent, 300, "{}", r.label);
        assert_eq!(
            r.stuck_pending_end,
            api.get("Pending").copied().unwrap_or(0)
        );
        assert!(
            r.leaked_manager_connections >= r.stuck_pending_end,
            "{}: every stuck Backup leaked at least once",
            r.label
        );
        assert!(!r.leak_cap_hit, "{}", r.label);
        assert!(!r.timeline.is_empty(), "{}", r.label);
    }
    // Without the guard: everything admitted; every lost snapshot's Backup is stuck.
    assert!(!a.guard && a.denied == 0 && a.admitted == a.attempted);
    assert!(
        a.stuck_pending_end >= 60,
        "A stuck: {}",
        a.stuck_pending_end
    );
    // With the guard: missing snapshots denied, the rest throttled, far fewer stuck and leaked.
    assert!(b.guard);
    assert!(
        b.denied_by_reason
            .get("snapshot_missing")
            .copied()
            .unwrap_or(0)
            >= 60
    );
    assert!(
        b.throttled > 0,
        "B throttled nothing: {:?}",
        b.denied_by_reason
    );
    assert!(
        b.peak_in_flight <= 40,
        "B peak {} above the cluster cap",
        b.peak_in_flight
    );
    assert!(a.peak_in_flight > b.peak_in_flight);
    assert!(b.stuck_pending_end < a.stuck_pending_end / 4);
    assert!(b.leaked_manager_connections < a.leaked_manager_connections / 4);
    let agent = b.agent.as_ref().context("run B has agent figures")?;
    assert_eq!(agent.agents, 3);
    // The agents' leak sweep ran through the run and never found a leaked lease or channel.
    eprintln!("run B agents: {agent:?}");
    assert!(agent.leak_sweeps > 0, "{agent:?}");
    assert_eq!(
        (agent.leaked_leases_detected, agent.leaked_channels_detected),
        (0, 0),
        "{agent:?}"
    );
    assert_eq!((agent.leaked_leases, agent.leaked_channels), (0, 0));
    assert!(agent.leases_acquired > 0 && agent.leases_acquired <= agent.engine_checks);
    assert!(
        agent.channels_created <= 2 * 3,
        "agent channels {}",
        agent.channels_created
    );
    assert!(a.agent.is_none());
    check_slow_leak(&cluster, &report, &stdout).await?;
    let _ = std::fs::remove_dir_all(&out);
    Ok(())
}

/// The third run, "slow leak": the leaky node's real agent turned it `leaking` and the webhook
/// saw it in both halves; with the loop open the node's Backups kept being admitted while it was
/// `leaking`, with the loop closed none was (and only that node's were refused), and its
/// manager leaked less.
async fn check_slow_leak(cluster: &TestCluster, report: &Report, stdout: &str) -> Result<()> {
    assert!(stdout.contains("| figure | C: slow leak, loop off | C: slow leak, loop enforce |"));
    let [off, on] = report.slow_leak.as_slice() else {
        bail!("two slow-leak runs expected: {:?}", report.slow_leak);
    };
    assert_eq!((off.mode.as_str(), on.mode.as_str()), ("off", "enforce"));
    for r in [off, on] {
        eprintln!(
            "{}: leak start {:?} s, protected {:?} s, spans {:?}, admitted while leaking {}, peak {} connections / {:.0} MiB",
            r.label,
            r.leak_started_s,
            r.protected_at_s,
            r.leaking_spans,
            r.leaky_node_admitted_while_leaking,
            r.peak_connections,
            r.peak_rss_mib
        );
        assert_eq!(
            by_state(cluster, &r.namespace).await?,
            r.backups_by_state,
            "{}: states vs API server",
            r.label
        );
        assert_eq!(r.errors, 0, "{}: CREATE errors", r.label);
        let took = r.time_to_protection_s.with_context(|| {
            format!(
                "{}: the webhook never saw {} leaking",
                r.label, r.leaky_node
            )
        })?;
        assert!(took > 0.0, "{}: protected before the leak started", r.label);
        assert!(
            r.samples.iter().any(|s| s.agent_verdict == "leaking"),
            "{}: the agent's own verdict",
            r.label
        );
        assert!(
            r.peak_connections > 0 && r.peak_rss_mib > 0.0,
            "{}",
            r.label
        );
        assert!(!r.leak_cap_hit, "{}", r.label);
    }
    // The loop open: nothing refused, the leaky node's Backups admitted while it was leaking.
    assert!(
        off.denied_by_reason.is_empty(),
        "{:?}",
        off.denied_by_reason
    );
    assert!(off.leaky_node_admitted_while_leaking > 0, "{off:?}");
    // The loop closed: none admitted while leaking, only the leaky node's refused, for that.
    assert_eq!(on.leaky_node_admitted_while_leaking, 0, "{on:?}");
    let refused = on
        .denied_by_reason
        .get("node_leaking")
        .copied()
        .unwrap_or(0);
    assert!(refused > 0, "{:?}", on.denied_by_reason);
    assert_eq!(refused, on.leaky_node_denied, "{:?}", on.denied_by_reason);
    assert_eq!(on.denied_by_reason.len(), 1, "{:?}", on.denied_by_reason);
    assert!(
        on.admitted > on.leaky_node_admitted,
        "the healthy nodes' Backups were admitted"
    );
    assert!(
        on.leaked_by_controller < off.leaked_by_controller,
        "the loop slowed the leak: {} vs {}",
        on.leaked_by_controller,
        off.leaked_by_controller
    );
    Ok(())
}

/// Port 8501 of a node address is taken by something else (a listener that accepts and never
/// answers, as a stray process would): the demo serves its fake instance managers on another port
/// and tells the agents, so every engine check through them reaches an engine.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn demo_with_8501_taken_on_a_node_address_tells_the_agents_the_port() -> Result<()> {
    let cluster = TestCluster::connect().await?;
    let r: u32 = rand::random();
    let base = std::net::Ipv4Addr::new(127, 201 + (r % 50) as u8, (r >> 8) as u8, 2);
    let second = std::net::Ipv4Addr::from(u32::from(base) + 1);
    let squatter = std::net::TcpListener::bind((second, 8501))?;
    let squatting = std::thread::spawn(move || {
        // Accept and hold every connection without a byte of HTTP/2, until the test ends.
        let mut held = Vec::new();
        for conn in squatter.incoming() {
            match conn {
                Ok(c) => held.push(c),
                Err(_) => break,
            }
        }
    });
    let base_arg = base.to_string();
    let (out, _, report) = run_to_report(
        &cluster,
        "port-taken",
        &[
            "--backups",
            "120",
            "--volumes",
            "12",
            "--nodes",
            "2",
            "--duration",
            "20",
            "--storm-seconds",
            "5",
            "--resync",
            "3",
            "--node-address",
            &base_arg,
            "--slow-leak-seconds",
            "0",
        ],
    )?;
    for run in &report.runs {
        assert_ne!(run.engine_proxy_port, 8501, "{}", run.label);
        assert_ne!(run.engine_proxy_port, 0, "{}", run.label);
    }
    let agent = report.runs[1]
        .agent
        .as_ref()
        .context("run B has agent figures")?;
    assert!(agent.engine_checks > 0, "{agent:?}");
    assert_eq!(
        agent.engine_check_errors,
        0,
        "engine checks through the agents failed: {agent:?}; stderr tail:\n{}",
        stderr_tail(&out)
    );
    let stderr = std::fs::read_to_string(out.join("demo-stderr.log"))?;
    assert!(
        stderr.contains("port 8501 is taken on a node address"),
        "{}",
        stderr_tail(&out)
    );
    // The demo's scenario files are the fake engines' format (fake-engine/SCENARIOS.md).
    let scenario = out
        .join("logs")
        .join(format!("scenario-{}-node-1.yaml", report.runs[1].namespace));
    fake_engine::Scenario::from_file(&scenario)?;
    drop(squatting);
    let _ = std::fs::remove_dir_all(&out);
    Ok(())
}

/// SIGINT while the webhook and the storm run: the demo exits non-zero and nothing it started
/// (webhook, agents) is left.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn demo_sigint_mid_run_leaves_no_process() -> Result<()> {
    let cluster = TestCluster::connect().await?;
    let out = temp_dir("sigint")?;
    let id = run_id("sigint");
    let mut child = demo_command(
        Some(cluster.kubeconfig_path()),
        &out,
        &id,
        &[
            "--backups",
            "600",
            "--volumes",
            "30",
            "--nodes",
            "2",
            "--duration",
            "60",
            "--storm-seconds",
            "30",
            "--resync",
            "5",
        ],
    )?
    .spawn()?;
    let demo_pid = child.id();
    let saw_webhook = wait_until(
        Duration::from_secs(120),
        "the webhook child and the storm",
        || {
            let procs = procs_of_run(&id);
            procs.iter().any(|(_, c)| c.contains(" webhook "))
                && std::fs::read_to_string(out.join("demo-stderr.log"))
                    .unwrap_or_default()
                    .contains("storm of")
        },
    );
    if let Err(e) = saw_webhook {
        let _ = child.kill();
        let _ = child.wait();
        bail!("{e}; stderr tail:\n{}", stderr_tail(&out));
    }
    std::thread::sleep(Duration::from_secs(3));
    let before = procs_of_run(&id);
    assert!(before.len() >= 2, "demo + webhook at least: {before:?}");
    sigint(demo_pid)?;
    let status = wait_bounded(&mut child, Duration::from_secs(60))?;
    assert!(!status.success(), "an interrupted demo must not exit 0");
    let left = procs_of_run(&id);
    assert!(left.is_empty(), "processes left after SIGINT: {left:?}");
    let stderr = std::fs::read_to_string(out.join("demo-stderr.log"))?;
    assert!(
        stderr.contains("interrupted by SIGINT"),
        "{}",
        stderr_tail(&out)
    );
    let _ = std::fs::remove_dir_all(&out);
    Ok(())
}

/// The same with the demo's own control plane: after SIGINT, etcd and kube-apiserver are gone
/// too. Ignored by a plain test run because it starts a cluster of its own (the control-plane
/// scripts and the cached kube-apiserver); `scripts/test.sh` runs it (`--run-ignored all`).
#[test]
#[ignore = "starts its own control plane (kube-apiserver + etcd): bash scripts/test.sh"]
fn demo_sigint_stops_its_own_control_plane() -> Result<()> {
    let out = temp_dir("sigint-cp")?;
    let id = run_id("sigint-cp");
    let mut child = demo_command(
        None,
        &out,
        &id,
        &[
            "--backups",
            "600",
            "--volumes",
            "30",
            "--nodes",
            "2",
            "--duration",
            "60",
            "--storm-seconds",
            "30",
        ],
    )?
    .spawn()?;
    let demo_pid = child.id();
    let ready = wait_until(
        Duration::from_secs(240),
        "etcd, kube-apiserver and the webhook",
        || {
            let procs = procs_of_run(&id);
            ["etcd", "kube-apiserver", " webhook "]
                .iter()
                .all(|w| procs.iter().any(|(_, c)| c.contains(w)))
        },
    );
    if let Err(e) = ready {
        let _ = child.kill();
        let _ = child.wait();
        bail!("{e}; stderr tail:\n{}", stderr_tail(&out));
    }
    std::thread::sleep(Duration::from_secs(3));
    sigint(demo_pid)?;
    let status = wait_bounded(&mut child, Duration::from_secs(90))?;
    assert!(!status.success());
    let left = procs_of_run(&id);
    assert!(left.is_empty(), "processes left after SIGINT: {left:?}");
    let _ = std::fs::remove_dir_all(&out);
    Ok(())
}
