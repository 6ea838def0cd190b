//! What a scrape of the monitor returns passes `promtool check metrics` and a strict
//! OpenMetrics parser, and has every documented family.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{ImListeners, StandIn};
use longhorn_guard_manager_monitor::ManagerMonitor;
use prometheus_client::registry::Registry;

pub const FAMILIES: [&str; 12] = [
    "longhorn_guard_manager_up",
    "longhorn_guard_manager_resident_memory_bytes",
    "longhorn_guard_manager_resident_memory_peak_bytes",
    "longhorn_guard_manager_threads",
    "longhorn_guard_manager_open_fds",
    "longhorn_guard_manager_im_connections",
    "longhorn_guard_manager_goroutines",
    "longhorn_guard_manager_restarts",
    "longhorn_guard_manager_longhorn_proxy_grpc_connections",
    "longhorn_guard_manager_proxy_connection_drift",
    "longhorn_guard_manager_sample_errors",
    "longhorn_guard_manager_last_sample_timestamp_seconds",
];

fn populated_exposition() -> String {
    let ports = ImListeners::bind();
    let id = common::instance_id("expo");
    let mut manager = StandIn::start(&id);
    manager.cmd(&format!("connect 127.0.0.1:{} 3", ports.base + 1));
    ports.wait_accepted(1, 3);
    ports.close_from_peer(1, 1);
    manager.cmd("goroutines 40");
    manager.cmd("proxy 5");
    let mut cfg = common::config(&id, &ports);
    cfg.pprof_goroutine_url = Some(manager.pprof_url());
    cfg.manager_metrics_url = Some(manager.metrics_url());
    let mut registry = Registry::default();
    let mut monitor = ManagerMonitor::new(cfg, &mut registry).expect("monitor");
    let s = monitor.sample_once().expect("sample");
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    common::render(&registry)
}

#[test]
fn exposition_passes_promtool_check_metrics() {
    let text = populated_exposition();
    let mut child = Command::new(common::promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool output");
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // promtool reads the Prometheus text format, where a counter's HELP would be named like its
    // `_total` sample; in OpenMetrics (what prometheus-client writes) HELP names the family
    // without `_total`. That one finding is a format difference and is tolerated only when the
    // family really has its HELP line; every other finding fails the test.
    let unexplained: Vec<&str> = findings
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| {
            let Some(family) = l.strip_suffix("_total no help text") else {
                return true;
            };
            !text
                .lines()
                .any(|t| t.starts_with(&format!("# HELP {family} ")))
        })
        .collect();
    assert!(
        unexplained.is_empty(),
        "promtool check metrics (exit {:?}) found:\n{}\n--- exposition ---\n{text}",
        out.status.code(),
        unexplained.join("\n")
    );
    assert!(
        out.status.success() || !findings.trim().is_empty(),
        "promtool failed without saying why: {:?}",
        out.status
    );
}

#[test]
fn exposition_parses_as_openmetrics_with_every_family() {
    let text = populated_exposition();
    let exposition = openmetrics_parser::openmetrics::parse_openmetrics(&text)
        .unwrap_or_else(|e| panic!("not valid OpenMetrics: {e:?}\n{text}"));
    for family in FAMILIES {
        assert!(
            exposition.families.contains_key(family),
            "family {family} missing; have {:?}",
            exposition.families.keys().collect::<Vec<_>>()
        );
    }
    assert_eq!(
        exposition.families.len(),
        FAMILIES.len(),
        "{:?}",
        exposition.families.keys().collect::<Vec<_>>()
    );
}
