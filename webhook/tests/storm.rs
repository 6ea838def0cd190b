//! The v1.7.2 storm against the real kube-apiserver: thousands of Backups created at once
//! for ~300 volumes on several nodes, 30 % of them for snapshots that do not exist, while a
//! small simulated backup controller moves admitted Backups New → InProgress → Completed at
//! a fixed rate, and — like v1.7.2 — leaves a Backup Pending forever when its snapshot
//! disappears after admission.
//!
//! Recurring-job Backups model the job's price: a denied job exits and its CronJob retries
//! it, each retry creating a new snapshot and a new Backup, up to `backoffLimit` retries
//! with exponential backoff (scaled down from the Job controller's 10 s, 20 s, 40 s).
//!
//! Size: `LHG_TEST_STORM_BACKUPS` (default 4422), `LHG_TEST_STORM_VOLUMES` (default 300).
#![allow(clippy::unwrap_used)]

mod common;
mod storm_common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use common::*;
use futures::{StreamExt, TryStreamExt};
use kube::Api;
use kube::api::DeleteParams;
use longhorn_guard_testkit::{TestCluster, test_env};
use longhorn_guard_webhook::Policy;
use longhorn_guard_webhook::policy::throttle::ThrottlePolicy;
use longhorn_types::{Backup, BackupState, Snapshot, shapes};
use storm_common::*;

/// The Job's backoffLimit the simulated recurring job honours.
const BACKOFF_LIMIT: u32 = 3;
/// Job-controller backoff 10 s, 20 s, 40 s scaled down 100×.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Every Nth admitted recurring-job Backup loses its snapshot right after admission.
const LOSE_SNAPSHOT_EVERY: usize = 40;

#[derive(Default)]
struct Tally {
    stale: AtomicU64,
    stale_denied_404: AtomicU64,
    jobs: AtomicU64,
    jobs_admitted: AtomicU64,
    jobs_gave_up: AtomicU64,
    denials_429: AtomicU64,
    retries: AtomicU64,
    backup_attempts: AtomicU64,
    snapshots_created: AtomicU64,
    other_denials: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn storm_of_backups_is_held_at_the_caps() -> Result<()> {
    let total = test_env().storm_backups.unwrap_or(4422);
    let volumes = test_env().storm_volumes.unwrap_or(300);
    let started = Instant::now();
    let cluster = TestCluster::connect().await?;
    let ns = cluster.namespace("storm").await?;
    storm_fixtures(&cluster, &ns, volumes).await?;
    // The snapshots the recurring jobs took before asking for their Backups.
    let indices = (0..total).filter(|i| i % 10 >= 3);
    create_snapshots(&cluster, &ns, volumes, indices, |i| format!("snap-{i}-0")).await?;
    let setup = started.elapsed();

    let policy = Policy::default();
    let caps = policy.throttle.clone();
    let served = serve(cluster.client(), &ns, policy).await?;
    wait_ready(&served).await?;
    let reg = register(&cluster, &served, &ns).await?;

    let watch = StormWatch::start(&cluster, &ns, volumes);
    let ctl = &watch.ctl;

    let tally = Arc::new(Tally::default());
    let admitted_jobs = Arc::new(AtomicUsize::new(0));
    let client = cluster.client_without_retry(None)?;
    let storm_start = Instant::now();
    futures::stream::iter(0..total)
        .map(|i| {
            let client = client.clone();
            let ns = ns.clone();
            let tally = tally.clone();
            let admitted_jobs = admitted_jobs.clone();
            async move {
                let vol = format!("vol-{}", i % volumes);
                // 30 % stale: Backups of snapshots that do not exist (no retry: not a job).
                if i % 10 < 3 {
                    tally.stale.fetch_add(1, Ordering::Relaxed);
                    tally.backup_attempts.fetch_add(1, Ordering::Relaxed);
                    let obj = shapes::backup(
                        &ns,
                        &format!("stale-{i}"),
                        &vol,
                        &format!("gone-{i}"),
                        None,
                    );
                    match create::<Backup>(&client, &ns, obj).await? {
                        Err((404, _)) => {
                            tally.stale_denied_404.fetch_add(1, Ordering::Relaxed);
                        }
                        Err((c, m)) => bail!("stale-{i}: expected 404, got {c}: {m}"),
                        Ok(()) => bail!("stale-{i}: a Backup of a missing snapshot was admitted"),
                    }
                    return Ok(());
                }
                // A recurring-job run: snapshot, then Backup; denied → retry with a new one.
                tally.jobs.fetch_add(1, Ordering::Relaxed);
                let job = format!("storm-job-{}", i % 10);
                for attempt in 0..=BACKOFF_LIMIT {
                    if attempt > 0 {
                        tally.retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(BACKOFF_BASE * 2u32.pow(attempt - 1)).await;
                    }
                    let snap = format!("snap-{i}-{attempt}");
                    // The first run's snapshot was taken before the storm (setup); every
                    // retry takes a new one, as the recurring job does.
                    if attempt > 0 {
                        create::<Snapshot>(&client, &ns, shapes::snapshot(&ns, &snap, &vol))
                            .await?
                            .created()?;
                    }
                    tally.snapshots_created.fetch_add(1, Ordering::Relaxed);
                    tally.backup_attempts.fetch_add(1, Ordering::Relaxed);
                    let name = format!("bk-{i}-{attempt}");
                    let obj = shapes::backup(&ns, &name, &vol, &snap, Some(&job));
                    match create::<Backup>(&client, &ns, obj).await? {
                        Ok(()) => {
                            tally.jobs_admitted.fetch_add(1, Ordering::Relaxed);
                            let n = admitted_jobs.fetch_add(1, Ordering::Relaxed) + 1;
                            if n.is_multiple_of(LOSE_SNAPSHOT_EVERY) {
                                // The snapshot vanishes after admission (longhorn/longhorn#9934).
                                Api::<Snapshot>::namespaced(client.clone(), &ns)
                                    .delete(&snap, &DeleteParams::default())
                                    .await?;
                            }
                            return Ok(());
                        }
                        Err((429, _)) => {
                            tally.denials_429.fetch_add(1, Ordering::Relaxed);
                        }
                        Err((c, m)) => {
                            tally.other_denials.fetch_add(1, Ordering::Relaxed);
                            bail!("{name}: unexpected denial {c}: {m}");
                        }
                    }
                }
                tally.jobs_gave_up.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    let storm_time = storm_start.elapsed();

    // Drain: every admitted Backup either completes or is stuck Pending (snapshot gone).
    let api: Api<Backup> = Api::namespaced(cluster.client(), &ns);
    let drain_start = Instant::now();
    let (non_terminal, pending) = loop {
        let list = api.list(&Default::default()).await?;
        let non_terminal: HashSet<String> = list
            .items
            .iter()
            .filter(|b| !b.state().is_terminal() && !b.spec.snapshot_name.is_empty())
            .filter_map(|b| b.metadata.name.clone())
            .collect();
        let stuck = ctl.stuck.lock().unwrap().clone();
        if non_terminal.is_subset(&stuck) && !non_terminal.is_empty() || non_terminal.is_empty() {
            let pending: Vec<String> = list
                .items
                .iter()
                .filter(|b| b.state() == BackupState::Pending)
                .filter_map(|b| b.metadata.name.clone())
                .collect();
            break (non_terminal, pending);
        }
        if drain_start.elapsed() > Duration::from_secs(60) {
            let left: Vec<String> = list
                .items
                .iter()
                .filter(|b| {
                    b.metadata
                        .name
                        .as_ref()
                        .is_some_and(|n| non_terminal.contains(n) && !stuck.contains(n))
                })
                .map(|b| {
                    format!(
                        "{} ({:?}, snapshot {})",
                        b.metadata.name.clone().unwrap_or_default(),
                        b.state(),
                        b.spec.snapshot_name
                    )
                })
                .take(10)
                .collect();
            bail!(
                "{} still in flight after the storm ({} stuck; controller started {}, completed {}): {left:?}",
                non_terminal.len(),
                stuck.len(),
                ctl.started.load(Ordering::Relaxed),
                ctl.completed.load(Ordering::Relaxed),
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let admitted = usize::try_from(tally.jobs_admitted.load(Ordering::Relaxed))?;
    let o = watch.take_when_seen(admitted, WATCH_CATCH_UP).await?;
    assert_eq!(o.backups.len(), admitted, "only admitted Backups exist");
    let stuck = ctl.stuck.lock().unwrap().clone();
    let t = &*tally;
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let denials = g(&t.denials_429);
    eprintln!(
        "storm: {total} initial Backups ({} stale, {} recurring-job runs) on {volumes} volumes / {NODES} nodes; \
         setup {setup:.1?}, storm {storm_time:.1?}, drain {:.1?}, watch events {}",
        g(&t.stale),
        g(&t.jobs),
        drain_start.elapsed(),
        o.events
    );
    eprintln!(
        "storm: stale denied 404: {}; jobs admitted {}, gave up after backoffLimit {}: {}; 429 denials {denials}; retries {} \
         (= extra snapshots and extra Backup attempts); extra snapshots per denial {:.2}; Backup attempts {} for {} initial; snapshots created {}",
        g(&t.stale_denied_404),
        g(&t.jobs_admitted),
        BACKOFF_LIMIT,
        g(&t.jobs_gave_up),
        g(&t.retries),
        if denials > 0 {
            g(&t.retries) as f64 / denials as f64
        } else {
            0.0
        },
        g(&t.backup_attempts),
        total,
        g(&t.snapshots_created),
    );
    eprintln!(
        "storm: max in flight seen by the watch: {}; stuck Pending {}; controller started {} completed {}",
        o.maxima(&caps),
        stuck.len(),
        ctl.started.load(Ordering::Relaxed),
        ctl.completed.load(Ordering::Relaxed),
    );
    assert_eq!(
        g(&t.stale_denied_404),
        g(&t.stale),
        "every missing-snapshot Backup denied"
    );
    assert!(o.max_volume <= caps.max_in_flight_per_volume, "volume cap");
    assert!(o.max_node <= caps.max_in_flight_per_node, "node cap");
    assert!(
        o.max_cluster <= caps.max_in_flight_per_cluster,
        "cluster cap"
    );
    // Stuck Backups hold their volume's slot: never more than the cap on one volume.
    let mut stuck_per_volume: HashMap<String, u32> = HashMap::new();
    for (name, (vol, s)) in &o.backups {
        if stuck.contains(name) && !s.is_terminal() {
            *stuck_per_volume.entry(vol.clone()).or_default() += 1;
        }
    }
    assert!(
        stuck_per_volume
            .values()
            .all(|n| *n <= caps.max_in_flight_per_volume),
        "{stuck_per_volume:?}"
    );
    // Nothing but the deliberately stuck ones is left in flight or Pending.
    assert!(non_terminal.is_subset(&stuck), "{non_terminal:?}");
    assert!(pending.iter().all(|p| stuck.contains(p)), "{pending:?}");
    // The price of denying recurring jobs is bounded by backoffLimit.
    assert!(g(&t.retries) <= g(&t.jobs) * u64::from(BACKOFF_LIMIT));
    // A hang guard, not a performance target: the figure is printed above.
    assert!(
        storm_time < Duration::from_secs(240),
        "storm took {storm_time:?}"
    );
    drop(o);
    drop(watch);
    reg.remove().await?;
    served.stop().await
}

/// Sends one AdmissionReview for `obj` to a replica; true when allowed.
pub async fn review_at(
    served: &Served,
    ns: &str,
    uid: &str,
    obj: serde_json::Value,
) -> Result<bool> {
    let body = admission_review(
        ns,
        uid,
        &format!("system:serviceaccount:{ns}:longhorn-service-account"),
        obj,
    );
    let (status, text) = tls_post(served, "/validate/backups", serde_json::to_vec(&body)?).await?;
    if status != 200 {
        bail!("replica answered HTTP {status}: {text}");
    }
    let v: serde_json::Value = serde_json::from_str(&text)?;
    Ok(v["response"]["allowed"].as_bool().unwrap_or(false))
}

/// Two replicas watching the same namespace, half the load sent straight to each: each
/// enforces the caps with the other's reservations invisible until its watch delivers the
/// other's Backups. The overshoot must stay within the documented bound
/// (R − 1) × cap per scope (THROTTLING.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn two_replicas_overshoot_stays_within_the_bound() -> Result<()> {
    let total = test_env().replica_storm_backups.unwrap_or(1500);
    let volumes = test_env().replica_storm_volumes.unwrap_or(60);
    let cluster = TestCluster::connect().await?;
    let ns = cluster.namespace("storm-replicas").await?;
    storm_fixtures(&cluster, &ns, volumes).await?;
    let policy = Policy {
        throttle: ThrottlePolicy {
            max_in_flight_per_volume: 1,
            max_in_flight_per_node: 4,
            max_in_flight_per_cluster: 12,
            cluster_rate: longhorn_guard_webhook::policy::throttle::RateLimit::OFF,
            recurring_job_rate: longhorn_guard_webhook::policy::throttle::RateLimit::OFF,
            user_rate: longhorn_guard_webhook::policy::throttle::RateLimit::OFF,
            ..ThrottlePolicy::default()
        },
        ..Policy::default()
    };
    let caps = policy.throttle.clone();
    let replicas = [
        Arc::new(serve(cluster.client(), &ns, policy.clone()).await?),
        Arc::new(serve(cluster.client(), &ns, policy).await?),
    ];
    for r in &replicas {
        wait_ready(r).await?;
    }
    let watch = StormWatch::start(&cluster, &ns, volumes);
    let client = cluster.client_without_retry(None)?;
    let admitted = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    futures::stream::iter(0..total)
        .map(|i| {
            let client = client.clone();
            let ns = ns.clone();
            let replica = replicas[i % 2].clone();
            let admitted = admitted.clone();
            async move {
                let vol = format!("vol-{}", i % volumes);
                let snap = format!("snap-{i}");
                create::<Snapshot>(&client, &ns, shapes::snapshot(&ns, &snap, &vol))
                    .await?
                    .created()?;
                let name = format!("bk-{i}");
                let obj = shapes::backup(&ns, &name, &vol, &snap, None);
                if review_at(&replica, &ns, &format!("uid-{i}"), obj.clone()).await? {
                    // No webhook registered here: the create is what the API server would
                    // do after both replicas... here after the one asked.
                    create::<Backup>(&client, &ns, obj).await?.created()?;
                    admitted.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    let elapsed = start.elapsed();
    let o = watch
        .take_when_seen(admitted.load(Ordering::Relaxed), WATCH_CATCH_UP)
        .await?;
    let r = 2u32;
    eprintln!(
        "replicas: {total} reviews split over {r} replicas in {elapsed:.1?}, admitted {}; max in flight: {}; overshoot volume {}, node {}, cluster {}",
        admitted.load(Ordering::Relaxed),
        o.maxima(&caps),
        o.max_volume.saturating_sub(caps.max_in_flight_per_volume),
        o.max_node.saturating_sub(caps.max_in_flight_per_node),
        o.max_cluster.saturating_sub(caps.max_in_flight_per_cluster),
    );
    // The documented bound: cap + (R − 1) × min(cap, admissions one replica makes within
    // one watch-propagation window) ≤ R × cap.
    assert!(o.max_volume <= r * caps.max_in_flight_per_volume);
    assert!(o.max_node <= r * caps.max_in_flight_per_node);
    assert!(o.max_cluster <= r * caps.max_in_flight_per_cluster);
    drop(o);
    drop(watch);
    for r in replicas {
        if let Ok(r) = Arc::try_unwrap(r) {
            r.stop().await?;
        }
    }
    Ok(())
}
