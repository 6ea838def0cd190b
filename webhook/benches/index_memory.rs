//! Webhook memory and start-up at scale: 100k Backups + 100k Snapshots + 10k Volumes in a real
//! kube-apiserver, the webhook's compact index beside a kube reflector store holding the full
//! objects (the baseline), each measured in its own child process of this binary.
//!
//! Run: `bash scripts/bench-webhook-memory.sh` (starts its own control plane; fills it, which
//! takes minutes: not part of the test command). Sizes: `--backups N --snapshots N --volumes N`;
//! `--startup-only` skips the reflector baselines.
//!
//! Prints, for each process: time from spawn to ready (all initial lists indexed), steady
//! VmRSS a few seconds after ready, peak VmHWM, and the ratios. The start-up baseline is the
//! floor: a child that makes the webhook's lists (one GET at `resourceVersion=0` per kind, all
//! at once) and only reads them, measured in alternating rounds with the webhook
//! (`--rounds N`, default 2; medians). The memory baselines are kube reflector stores holding
//! the full objects, listing two ways: paged quorum reads from etcd (500 per page: kube's
//! default) and `resourceVersion=0` from the API server's watch cache (one unpaged response
//! per kind, decoded whole).
#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use kube::Api;
use kube::api::{ApiResource, DynamicObject, ListParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use longhorn_guard_testkit::TestCluster;
use longhorn_guard_webhook::WebhookConfig;
use longhorn_types::{Backup, Snapshot, Volume, shapes};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

const NS: &str = "bench-memory";

struct Sizes {
    backups: usize,
    snapshots: usize,
    volumes: usize,
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    longhorn_guard_runtime::install_crypto_provider();
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        match args.get(i + 1).map(String::as_str) {
            Some("webhook") => child_webhook(&args[i + 2]).await,
            Some("floor") => child_floor().await,
            Some("reflector") => child_reflector(watcher::Config::default()).await,
            Some("reflector-cache") => {
                // No page size: with a limit kube-core drops resourceVersion=0.
                child_reflector(watcher::Config {
                    page_size: None,
                    ..watcher::Config::default().any_semantic()
                })
                .await
            }
            other => panic!("unknown child mode {other:?}"),
        }
        return;
    }
    let sizes = Sizes {
        backups: arg("--backups", 100_000),
        snapshots: arg("--snapshots", 100_000),
        volumes: arg("--volumes", 10_000),
    };
    let cluster = TestCluster::connect().await.unwrap();
    fill(&cluster, &sizes).await;
    if args.iter().any(|a| a == "--fill-only") {
        // For other benches over a filled namespace (apiserver_latency's
        // LHG_BENCH_INDEXED_NAMESPACE), with LHG_BENCH_STATE keeping the control plane.
        println!("namespace {NS} filled; --fill-only: nothing measured");
        return;
    }

    let dir = std::env::temp_dir().join(format!("lhg-bench-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();

    println!(
        "objects in the API server: {} Backups, {} Snapshots, {} Volumes (namespace {NS})",
        sizes.backups, sizes.snapshots, sizes.volumes
    );
    // Rounds of the floor (the API server sending the same lists to a client that only reads
    // them) and the webhook, alternating: the API server's own speed varies from run to run.
    let rounds = arg("--rounds", 2).max(1);
    let mut floors = Vec::new();
    let mut webhooks = Vec::new();
    for round in 1..=rounds {
        let floor = measure(&["--child", "floor"], &cluster).await;
        let webhook = measure(&["--child", "webhook", dir.to_str().unwrap()], &cluster).await;
        println!(
            "round {round}: floor ready {:.2} s (CPU {:.2} s), webhook ready {:.2} s (CPU {:.2} s, {:.2}× the floor), webhook peak {:.1} MiB",
            floor.ready.as_secs_f64(),
            floor.cpu_at_ready.as_secs_f64(),
            webhook.ready.as_secs_f64(),
            webhook.cpu_at_ready.as_secs_f64(),
            webhook.ready.as_secs_f64() / floor.ready.as_secs_f64(),
            mib(webhook.hwm_kib)
        );
        floors.push(floor);
        webhooks.push(webhook);
    }
    let median = |ms: &mut Vec<Measured>| {
        ms.sort_by_key(|m| m.ready);
        ms.swap_remove(ms.len() / 2)
    };
    let floor = median(&mut floors);
    let webhook = median(&mut webhooks);
    if args.iter().any(|a| a == "--startup-only") {
        std::fs::remove_dir_all(&dir).unwrap();
        println!(
            "start-up: webhook ready / floor ready = {:.2}× (medians of {rounds} rounds); webhook peak {:.2}× steady",
            webhook.ready.as_secs_f64() / floor.ready.as_secs_f64(),
            webhook.hwm_kib as f64 / webhook.rss_kib as f64
        );
        return;
    }
    let reflector = measure(&["--child", "reflector"], &cluster).await;
    let cached = measure(&["--child", "reflector-cache"], &cluster).await;
    std::fs::remove_dir_all(&dir).unwrap();

    println!();
    println!(
        "| process | ready after | CPU used by then | steady VmRSS | peak VmHWM | peak / steady |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, m) in [
        (
            "floor: the same lists read and dropped (RV=0, all kinds at once)",
            &floor,
        ),
        ("webhook (compact index)", &webhook),
        (
            "kube reflector store, full objects, paged lists from etcd (baseline)",
            &reflector,
        ),
        (
            "kube reflector store, full objects, lists from the watch cache",
            &cached,
        ),
    ] {
        println!(
            "| {name} | {:.2} s | {:.2} s | {:.1} MiB | {:.1} MiB | {:.2}× |",
            m.ready.as_secs_f64(),
            m.cpu_at_ready.as_secs_f64(),
            mib(m.rss_kib),
            mib(m.hwm_kib),
            m.hwm_kib as f64 / m.rss_kib as f64
        );
    }
    println!(
        "\nstart-up: webhook ready / floor ready = {:.2}× (medians of {rounds} rounds)",
        webhook.ready.as_secs_f64() / floor.ready.as_secs_f64()
    );
    println!(
        "start-up: paged baseline ready / webhook ready = {:.2}×; watch-cache baseline ready / webhook ready = {:.2}×",
        reflector.ready.as_secs_f64() / webhook.ready.as_secs_f64(),
        cached.ready.as_secs_f64() / webhook.ready.as_secs_f64(),
    );
    println!(
        "baseline steady RSS / webhook steady RSS = {:.1}× (goal ≥ 10×); webhook steady {:.1} MiB (goal ≤ 64 MiB); webhook ready in {:.2} s (goal ≤ 10 s), peak {:.2}× steady (goal ≤ 2×)",
        reflector.rss_kib as f64 / webhook.rss_kib as f64,
        mib(webhook.rss_kib),
        webhook.ready.as_secs_f64(),
        webhook.hwm_kib as f64 / webhook.rss_kib as f64
    );
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

struct Measured {
    ready: Duration,
    /// CPU time (user + system) the process had used when it said ready.
    cpu_at_ready: Duration,
    rss_kib: u64,
    hwm_kib: u64,
}

/// utime + stime of a process, from /proc/PID/stat (fields 14 and 15, in clock ticks of
/// 1/100 s on Linux).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name (field 2) may hold spaces: count from the ')' that ends it.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<u64> = after
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // `after` starts at field 3, so utime (14) and stime (15) are its 12th and 13th.
    Duration::from_millis((fields[11] + fields[12]) * 10)
}

/// Spawns this binary in a child mode, waits for its "ready" line, lets it settle, samples
/// /proc/PID/status and stops it.
async fn measure(args: &[&str], cluster: &TestCluster) -> Measured {
    let exe = std::env::current_exe().unwrap();
    let start = Instant::now();
    let mut child = tokio::process::Command::new(exe)
        .args(args)
        .env(
            longhorn_guard_testkit::KUBECONFIG_ENV,
            cluster.kubeconfig_path(),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(600), lines.next_line())
        .await
        .expect("child ready within 600 s")
        .unwrap();
    assert_eq!(
        line.as_deref(),
        Some("ready"),
        "child {args:?} said {line:?}"
    );
    let ready = start.elapsed();
    let cpu_at_ready = cpu_time(pid);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |k: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    let m = Measured {
        ready,
        cpu_at_ready,
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
    };
    child.kill().await.unwrap();
    m
}

/// Webhook child: the real webhook (index + servers) on loopback; "ready" once /readyz is 200.
async fn child_webhook(dir: &str) {
    let cluster = TestCluster::connect_to(longhorn_guard_testkit::KUBECONFIG_ENV)
        .await
        .unwrap();
    let config = WebhookConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: "127.0.0.1:0".parse().unwrap(),
        tls_cert: format!("{dir}/tls.crt").into(),
        tls_key: format!("{dir}/tls.key").into(),
        namespace: Some(NS.into()),
        ..Default::default()
    };
    let handle = longhorn_guard_webhook::start(config, cluster.client())
        .await
        .unwrap();
    loop {
        if handle.state().0.index.all_synced() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("ready");
    std::future::pending::<()>().await;
}

/// Floor child: what start-up cannot beat: the API server sending every list the webhook
/// makes (one GET at `resourceVersion=0` per kind, all at once, as the webhook does), read to
/// the end and dropped; "ready" once all are read.
async fn child_floor() {
    use futures::AsyncReadExt;
    use kube::Resource;
    use longhorn_types::{BackupTarget, Engine};
    let cluster = TestCluster::connect_to(longhorn_guard_testkit::KUBECONFIG_ENV)
        .await
        .unwrap();
    let client = cluster.client();
    let paths = [
        Backup::url_path(&(), Some(NS)),
        Snapshot::url_path(&(), Some(NS)),
        Volume::url_path(&(), Some(NS)),
        Engine::url_path(&(), Some(NS)),
        BackupTarget::url_path(&(), Some(NS)),
    ];
    let lists = paths.iter().map(|path| {
        let client = client.clone();
        let request = longhorn_guard_webhook::index::cache_list_request(path).unwrap();
        tokio::spawn(async move {
            let mut body = Box::pin(client.request_stream(request).await.unwrap());
            let mut buf = vec![0; 64 * 1024];
            let mut total = 0usize;
            loop {
                match body.read(&mut buf).await.unwrap() {
                    0 => break total,
                    n => total += n,
                }
            }
        })
    });
    let bytes: usize = futures::future::join_all(lists)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .sum();
    assert!(bytes > 0, "the lists were empty");
    println!("ready");
    std::future::pending::<()>().await;
}

/// Baseline child: kube reflector stores holding the full objects of the same kinds, listing
/// with `config`.
async fn child_reflector(config: watcher::Config) {
    let cluster = TestCluster::connect_to(longhorn_guard_testkit::KUBECONFIG_ENV)
        .await
        .unwrap();
    let mut readers = Vec::new();
    for ar in [
        ApiResource::erase::<Backup>(&()),
        ApiResource::erase::<Snapshot>(&()),
        ApiResource::erase::<Volume>(&()),
    ] {
        let api: Api<DynamicObject> = Api::namespaced_with(cluster.client(), NS, &ar);
        let writer = reflector::store::Writer::<DynamicObject>::new(ar.clone());
        let reader = writer.as_reader();
        let stream = reflector(writer, watcher(api, config.clone()))
            .applied_objects()
            .for_each(|_| async {});
        tokio::spawn(stream);
        readers.push(reader);
    }
    for r in &readers {
        r.wait_until_ready().await.unwrap();
    }
    println!("ready");
    std::future::pending::<()>().await;
}

/// Creates what is missing, 64 requests at a time, with status like Longhorn writes it.
async fn fill(cluster: &TestCluster, sizes: &Sizes) {
    let nodes = 50;
    ensure_namespace(cluster).await;
    let have = |ar: ApiResource| {
        let api: Api<DynamicObject> = Api::namespaced_with(cluster.client(), NS, &ar);
        async move {
            // A full list of one object: on 1.20 a metadata-only list leaves out
            // remainingItemCount, which made every run fill again.
            let list = api.list(&ListParams::default().limit(1)).await.unwrap();
            list.items.len() + list.metadata.remaining_item_count.unwrap_or(0) as usize
        }
    };
    let mut work: Vec<(Value, Value)> = Vec::new();
    if have(ApiResource::erase::<Volume>(&())).await < sizes.volumes {
        for v in 0..sizes.volumes {
            let node = format!("node-{}", v % nodes);
            work.push((
                shapes::volume(NS, &format!("pvc-{v:05}"), &node),
                shapes::volume_status(&node),
            ));
        }
    }
    if have(ApiResource::erase::<Snapshot>(&())).await < sizes.snapshots {
        for s in 0..sizes.snapshots {
            let vol = format!("pvc-{:05}", s % sizes.volumes.max(1));
            work.push((
                shapes::snapshot(NS, &format!("snap-{s:06}"), &vol),
                shapes::snapshot_status("node-0", ""),
            ));
        }
    }
    if have(ApiResource::erase::<Backup>(&())).await < sizes.backups {
        for b in 0..sizes.backups {
            let vol = format!("pvc-{:05}", b % sizes.volumes.max(1));
            let snap = format!("snap-{:06}", b % sizes.snapshots.max(1));
            work.push((
                shapes::backup(NS, &format!("backup-{b:016x}"), &vol, &snap, Some("daily")),
                shapes::backup_status("Completed", "node-0", &vol, &snap),
            ));
        }
    }
    if work.is_empty() {
        println!("fill: objects already there");
        return;
    }
    let total = work.len();
    let done = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    stream::iter(work.into_iter().map(|(obj, status)| {
        let done = done.clone();
        async move {
            match cluster.create_longhorn_object(NS, obj, Some(status)).await {
                Ok(_) => {}
                Err(e) if format!("{e:#}").contains("already exists") => {}
                Err(e) => return Err(e),
            }
            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_multiple_of(20_000) {
                eprintln!(
                    "fill: {n}/{total} after {:.0} s",
                    start.elapsed().as_secs_f64()
                );
            }
            Ok(())
        }
    }))
    .buffer_unordered(64)
    .try_collect::<Vec<()>>()
    .await
    .unwrap();
    println!(
        "fill: created {total} objects in {:.0} s",
        start.elapsed().as_secs_f64()
    );
}

async fn ensure_namespace(cluster: &TestCluster) {
    use k8s_openapi::api::core::v1::Namespace;
    let api: Api<Namespace> = Api::all(cluster.client());
    if api.get_opt(NS).await.unwrap().is_none() {
        let ns: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": NS}})).unwrap();
        api.create(&Default::default(), &ns).await.unwrap();
    }
}
