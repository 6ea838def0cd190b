//! `longhorn-guard demo --long-run-minutes 2`: the two-minute version of the long run
//! (scripts/long-run.sh runs the hour) against the test command's control plane. The real
//! binary runs webhook, agents, simulated controller and fake engines with eight storm waves,
//! a fault in the engines during each and an API server outage for the guard; the test reads
//! its report and checks the same verdicts the hour is held to, recomputing each series'
//! verdict with the same code (`long_run::trend::judge`): every series flat, 0 leaked leases
//! and channels, 0 false denials; and that the run really was hostile (denials of both kinds
//! checked, the outage broke the webhook's watches). Nothing it started may be left running.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use anyhow::{Result, bail};
use longhorn_guard_demo::long_run::report::LongRunReport;
use longhorn_guard_demo::long_run::trend;
use longhorn_guard_testkit::TestCluster;

use common::{demo_command, procs_of_run, run_id, stderr_tail, temp_dir, wait_bounded};

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn two_minute_long_run_meets_the_hours_goals() -> Result<()> {
    let cluster = TestCluster::connect().await?;
    let out = temp_dir("long-run")?;
    let id = run_id("long-run");
    let mut child = demo_command(
        Some(cluster.kubeconfig_path()),
        &out,
        &id,
        &[
            "--long-run-minutes",
            "2",
            "--wave-seconds",
            "15",
            "--outage-seconds",
            "6",
            "--sample-seconds",
            "5",
            "--resync",
            "5",
            "--volumes",
            "40",
            "--wave-backups",
            "80",
        ],
    )?
    .spawn()?;
    // Two minutes of run plus set-up and tear-down; beyond that the run is stuck.
    let status = wait_bounded(&mut child, Duration::from_secs(420))?;
    let left = procs_of_run(&id);
    assert!(left.is_empty(), "processes left behind: {left:?}");
    let Ok(text) = std::fs::read_to_string(out.join("long-run.json")) else {
        bail!(
            "no long-run.json ({status}); stderr tail:\n{}",
            stderr_tail(&out)
        );
    };
    let report: LongRunReport = serde_json::from_str(&text)?;
    assert!(
        status.success() && report.passed(),
        "the long run missed its goals ({status}): {:?}\n{}",
        report.failures,
        stderr_tail(&out)
    );

    // The verdicts, recomputed from the samples with the same code.
    assert_eq!(report.series.len(), 12);
    // Memory is judged by its anonymous part; the total (with the executable's file-backed
    // pages) is followed but not judged.
    let judged = |key: &str| {
        report
            .series
            .iter()
            .find(|s| s.key == key)
            .map(|s| s.judged)
    };
    assert_eq!(judged("webhook-anon"), Some(true));
    assert_eq!(judged("agents-anon"), Some(true));
    assert_eq!(judged("webhook-rss"), Some(false));
    assert_eq!(judged("agents-rss"), Some(false));
    for s in &report.series {
        let again = trend::judge(&s.points, s.bound, s.trend.horizon_hours);
        // The report went through JSON: floats agree to their last digits, not bits.
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0);
        assert!(
            again.flat == s.trend.flat
                && again.why == s.trend.why
                && again.samples == s.trend.samples
                && close(again.slope_per_hour, s.trend.slope_per_hour)
                && close(again.ci95_per_hour, s.trend.ci95_per_hour)
                && close(again.drift, s.trend.drift)
                && close(again.bound, s.trend.bound),
            "{}: verdict differs from its samples: {again:?} vs {:?}",
            s.key,
            s.trend
        );
        assert!(!s.judged || s.trend.flat, "{}: {}", s.key, s.trend.why);
        assert!(
            s.trend.samples >= 3,
            "{}: {} samples judged",
            s.key,
            s.trend.samples
        );
        // Two minutes are judged on their own second half, not extrapolated to an hour.
        assert!(s.trend.horizon_hours > 0.0 && s.trend.horizon_hours < 1.0 / 50.0);
        assert!(
            out.join(format!("{}.svg", s.key)).is_file(),
            "{}.svg",
            s.key
        );
    }
    assert!(report.leaks.none(), "{:?}", report.leaks);
    assert!(
        report.false_denials.is_empty(),
        "{:?}",
        report.false_denials
    );
    assert!(
        report.sample_errors.is_empty(),
        "{:?}",
        report.sample_errors
    );

    // It was hostile: four waves with their faults, denials of both kinds checked, and the
    // outage broke the webhook's watches (restarts counted after it).
    assert_eq!(report.waves.len(), 8, "{:?}", report.waves);
    let reasons = |prefix: &str| -> u64 {
        report
            .waves
            .iter()
            .flat_map(|w| &w.denied_by_reason)
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
            .sum()
    };
    assert!(
        reasons("snapshot_") > 0,
        "no snapshot denial: {:?}",
        report.waves
    );
    assert!(
        reasons("throttled:") > 0,
        "no throttle denial: {:?}",
        report.waves
    );
    assert_eq!(report.denials, reasons(""));
    let restarts = report
        .series
        .iter()
        .find(|s| s.key == "webhook-watch-restarts")
        .unwrap();
    let at_outage = report.outage.at_seconds;
    let before = restarts
        .points
        .iter()
        .filter(|p| p.0 < at_outage)
        .map(|p| p.1)
        .fold(0.0, f64::max);
    let after = restarts.points.last().map_or(0.0, |p| p.1);
    assert!(
        after > before,
        "the outage did not reach the webhook (watch restarts {before} -> {after})"
    );
    assert!(report.engine_checks > 0);
    let md = std::fs::read_to_string(out.join("long-run.md"))?;
    assert!(md.contains("**Verdict: PASSED**"), "{md}");
    let _ = std::fs::remove_dir_all(&out);
    Ok(())
}
