//! Memory of a standalone agent process (issue #6: RSS ≤ 16 MiB), measured the way a node runs
//! it: the real executable (`longhorn-guard-agent`, what the manifests run, and, when it has
//! been built next to it, the all-in-one `longhorn-guard agent` for comparison), its kube watches of Engines and InstanceManagers
//! on the local kube-apiserver, its TLS gRPC API, metrics server and embedded manager monitor,
//! answering GetSnapshot from a fake engine proxy through its lease pool. Prints figures,
//! asserts nothing.
//!
//! Run by `scripts/bench-agent.sh` (which starts the control plane), or by hand with
//! `LHG_TEST_KUBECONFIG` set:
//!   cargo bench -p longhorn-guard-agent --bench agent_rss -- [--volumes N] [--calls N]
//!
//! Phases: ready and idle; `--calls` GetSnapshot calls (16 concurrent, round-robin over the
//! volumes); the same number with 30 % injected engine faults (errors, connection resets,
//! delays past the deadline); 3 s idle. VmRSS, VmHWM, threads and fds of the agent after each.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use fake_engine::{EngineSpec, FakeEngine, Fault, Method, SnapshotSpec};
use longhorn_guard_proto::agent::GetSnapshotRequest;
use longhorn_guard_proto::agent::snapshot_service_client::SnapshotServiceClient;
use longhorn_guard_testkit::{TestCluster, free_port, wait_for};
use longhorn_types::shapes;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

const AGENT_BIN: &str = env!("CARGO_BIN_EXE_longhorn-guard-agent");
const NODE: &str = "node-1";

struct Args {
    volumes: usize,
    calls: usize,
}

fn args() -> Args {
    Args {
        volumes: common::flag("--volumes").unwrap_or(50),
        calls: common::flag("--calls").unwrap_or(100_000),
    }
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// VmRSS, VmHWM, RssAnon, RssFile (MiB), threads and open fds of `pid`.
fn sample(pid: u32) -> Result<(f64, f64, f64, f64, u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    Ok((
        field("VmRSS:") as f64 / 1024.0,
        field("VmHWM:") as f64 / 1024.0,
        field("RssAnon:") as f64 / 1024.0,
        field("RssFile:") as f64 / 1024.0,
        field("Threads:"),
        fds,
    ))
}

fn report(phase: &str, pid: u32) -> Result<()> {
    let (rss, hwm, anon, file, threads, fds) = sample(pid)?;
    println!(
        "{phase:<48} VmRSS {rss:5.1} MiB (anon {anon:5.1}, file {file:5.1})   VmHWM {hwm:5.1} MiB   threads {threads:2}   fds {fds:3}"
    );
    Ok(())
}

/// `calls` GetSnapshot calls, 16 at a time; returns (calls/s, failures).
async fn drive(
    client: SnapshotServiceClient<Channel>,
    ns: &str,
    volumes: usize,
    calls: usize,
) -> (f64, usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let (mut client, next, failed, ns) =
                (client.clone(), next.clone(), failed.clone(), ns.to_string());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= calls {
                        return;
                    }
                    let mut req = tonic::Request::new(GetSnapshotRequest {
                        namespace: ns.clone(),
                        volume: format!("vol-{}", i % volumes),
                        snapshot: format!("snap-{}", i % 8),
                    });
                    req.set_timeout(Duration::from_millis(200));
                    if client.get_snapshot(req).await.is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    (
        calls as f64 / started.elapsed().as_secs_f64(),
        failed.load(Ordering::Relaxed),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    longhorn_guard_runtime::install_crypto_provider();
    let args = args();
    let cluster = TestCluster::connect()
        .await
        .context("the agent bench needs a control plane: run scripts/bench-agent.sh")?;
    let dedicated = std::path::PathBuf::from(AGENT_BIN);
    let mut runs = vec![(
        "longhorn-guard-agent",
        vec![dedicated.clone()],
        measure(&cluster, &args, &dedicated, &[], 1).await?,
    )];
    let all_in_one = dedicated.with_file_name("longhorn-guard");
    if all_in_one.exists() {
        runs.push((
            "longhorn-guard agent",
            vec![all_in_one.clone()],
            measure(&cluster, &args, &all_in_one, &["agent"], 2).await?,
        ));
    } else {
        println!(
            "({} not built: `cargo build --release -p longhorn-guard` to compare)",
            all_in_one.display()
        );
    }
    println!("\nexecutable              file size   VmRSS end   VmHWM");
    for (name, paths, (rss, hwm)) in &runs {
        let size = std::fs::metadata(&paths[0]).map(|m| m.len()).unwrap_or(0);
        println!(
            "{name:<22} {:6.1} MiB   {rss:6.1} MiB  {hwm:6.1} MiB",
            size as f64 / (1024.0 * 1024.0)
        );
    }
    if let [(_, _, (a, _)), (_, _, (b, _))] = runs.as_slice() {
        println!("ratio all-in-one / dedicated VmRSS: {:.2}x", b / a);
    }
    Ok(())
}

/// Runs one agent executable through the phases; returns its final VmRSS and VmHWM (MiB).
async fn measure(
    cluster: &TestCluster,
    args: &Args,
    bin: &std::path::Path,
    subcommand: &[&str],
    run: u8,
) -> Result<(f64, f64)> {
    println!("\n== {} {}", bin.display(), subcommand.join(" "));
    let ns = cluster.namespace("lhg-agent-rss").await?;

    // The instance manager's proxy: a fake engine on a loopback address of its own, port 8501
    // (the agent always dials <InstanceManager.status.ip>:8501).
    // A loopback address of this run's own (127.<pid>.<run>): no clash on port 8501.
    let me = std::process::id();
    let ip = format!("127.{}.{}.{}", 1 + me % 250, (me / 250) % 250, run);
    let fake = FakeEngine::new();
    for v in 0..args.volumes {
        let address = format!("10.42.{}.{}:10010", v / 250, v % 250);
        fake.add_engine(EngineSpec {
            address: address.clone(),
            engine_name: format!("vol-{v}-e-0"),
            volume_name: format!("vol-{v}"),
        });
        fake.set_snapshots(
            &address,
            (0..8)
                .map(|i| SnapshotSpec {
                    name: format!("snap-{i}"),
                    user_created: true,
                    size: 4096,
                    ..SnapshotSpec::default()
                })
                .collect(),
        );
    }
    let server = fake_engine::serve(fake.clone(), format!("{ip}:8501").parse()?).await?;
    cluster
        .create_longhorn_object(
            &ns,
            shapes::instance_manager(&ns, "im-1", NODE),
            Some(shapes::instance_manager_status(NODE, &ip)),
        )
        .await?;
    for v in 0..args.volumes {
        let volume = format!("vol-{v}");
        cluster
            .create_longhorn_object(
                &ns,
                shapes::engine(&ns, &volume, NODE),
                Some(shapes::engine_status(
                    NODE,
                    "im-1",
                    &format!("10.42.{}.{}", v / 250, v % 250),
                    10010,
                )),
            )
            .await?;
    }

    // The agent's serving certificate (127.0.0.1), in a temp directory.
    let dir = std::env::temp_dir().join(format!("lhg-agent-rss-{me}-{run}"));
    std::fs::create_dir_all(&dir)?;
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])?;
    std::fs::write(dir.join("tls.crt"), cert.pem())?;
    std::fs::write(dir.join("tls.key"), signing_key.serialize_pem())?;
    let (listen, ops) = (free_port()?, free_port()?);
    let agent = Agent(
        cluster
            .command(bin)
            .args(["--log-format", "json"])
            .args(subcommand)
            .args(["--node", NODE, "--namespace", &ns])
            .args(["--listen", &format!("127.0.0.1:{listen}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{ops}")])
            .arg("--tls-cert")
            .arg(dir.join("tls.crt"))
            .arg("--tls-key")
            .arg(dir.join("tls.key"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("agent.log"))?)
            .spawn()?,
    );
    let pid = agent.0.id();
    let channel = Channel::from_shared(format!("https://127.0.0.1:{listen}"))?.tls_config(
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(cert.pem()))
            .domain_name("127.0.0.1"),
    )?;
    let probe_ns = ns.clone();
    let last_volume = format!("vol-{}", args.volumes.saturating_sub(1));
    wait_for(
        Duration::from_secs(60),
        "the agent to answer from the engine",
        || {
            let channel = channel.clone();
            let ns = probe_ns.clone();
            let volume = last_volume.clone();
            async move {
                let mut client = SnapshotServiceClient::new(channel.connect().await?);
                let resp = client
                    .get_snapshot(GetSnapshotRequest {
                        namespace: ns,
                        volume,
                        snapshot: "snap-0".into(),
                    })
                    .await?;
                Ok(resp.into_inner().found)
            }
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "agent: {} volumes on one instance manager, {} calls per phase, 16 concurrent, 200 ms deadline",
        args.volumes, args.calls
    );
    report("ready, idle", pid)?;
    if longhorn_guard_testkit::test_env().bench_smaps {
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
        let mut current = String::new();
        for line in smaps.lines() {
            if line
                .split_whitespace()
                .next()
                .is_some_and(|f| f.contains('-'))
            {
                current = line.to_string();
            } else if let Some(v) = line.strip_prefix("Rss:") {
                let kb: u64 = v
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                if kb > 200 {
                    println!("  {kb:>6} kB  {current}");
                }
            }
        }
    }

    let client = SnapshotServiceClient::new(channel.connect().await?);
    let (rate, failed) = drive(client.clone(), &ns, args.volumes, args.calls).await;
    report(
        &format!("after {} calls ({rate:.0}/s, {failed} failed)", args.calls),
        pid,
    )?;

    let p = |fault: Fault| Fault::Probabilistic {
        probability: 0.3,
        fault: Box::new(fault),
    };
    fake.set_fault(
        Method::SnapshotList,
        p(Fault::Error {
            code: tonic::Code::Internal,
            message: "injected".into(),
        }),
    );
    let (rate, failed) = drive(client.clone(), &ns, args.volumes, args.calls / 2).await;
    fake.set_fault(Method::SnapshotList, p(Fault::Reset));
    let (rate2, failed2) = drive(client.clone(), &ns, args.volumes, args.calls / 2).await;
    fake.set_fault(
        Method::SnapshotList,
        p(Fault::RandomDelay {
            min: Duration::from_millis(1),
            max: Duration::from_millis(400),
        }),
    );
    let (rate3, failed3) = drive(client, &ns, args.volumes, args.calls / 4).await;
    fake.set_fault(Method::SnapshotList, Fault::None);
    report(
        &format!(
            "after faults ({rate:.0}/{rate2:.0}/{rate3:.0} /s, {} failed)",
            failed + failed2 + failed3
        ),
        pid,
    )?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    report("3 s idle", pid)?;
    let metrics = String::from_utf8(
        Command::new("curl")
            .args([
                "-s",
                "--max-time",
                "5",
                &format!("http://127.0.0.1:{ops}/metrics"),
            ])
            .output()?
            .stdout,
    )?;
    for name in [
        "longhorn_guard_agent_leases_acquired_total",
        "longhorn_guard_agent_leases_released_total",
        "longhorn_guard_agent_leases_active",
        "longhorn_guard_agent_leaked_leases",
        "longhorn_guard_agent_channels_active",
        "longhorn_guard_agent_channels_created_total",
    ] {
        let sum: f64 = metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        println!("{name} {sum}");
    }
    let (rss, hwm, ..) = sample(pid)?;
    drop(agent);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok((rss, hwm))
}
