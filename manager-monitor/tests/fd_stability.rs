//! The monitor holds no file descriptor between samples: the test process's fd count is the same
//! before and after 1,000 samples that read /proc and make two HTTP GETs each. Alone in its
//! binary so no other test opens fds meanwhile.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{ImListeners, StandIn};
use longhorn_guard_manager_monitor::ManagerMonitor;
use prometheus_client::registry::Registry;

fn own_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

#[test]
fn fd_count_is_stable_over_1000_samples() {
    let ports = ImListeners::bind();
    let id = common::instance_id("fds");
    let mut manager = StandIn::start(&id);
    manager.cmd(&format!("connect 127.0.0.1:{} 4", ports.base + 1));
    manager.cmd("goroutines 12");
    manager.cmd("proxy 4");
    let mut cfg = common::config(&id, &ports);
    cfg.pprof_goroutine_url = Some(manager.pprof_url());
    cfg.manager_metrics_url = Some(manager.metrics_url());
    let mut registry = Registry::default();
    let mut monitor = ManagerMonitor::new(cfg, &mut registry).expect("monitor");
    ports.wait_accepted(1, 4);

    let warm = monitor.sample_once().expect("warm-up sample");
    assert!(warm.errors.is_empty(), "{:?}", warm.errors);
    let before = own_fds();
    for i in 0..1000 {
        let s = monitor
            .sample_once()
            .unwrap_or_else(|e| panic!("sample {i}: {e}"));
        assert!(s.errors.is_empty(), "sample {i}: {:?}", s.errors);
        assert_eq!(s.goroutines, Some(12), "sample {i}");
        assert_eq!(s.proxy_connection_drift, Some(0), "sample {i}");
    }
    let after = own_fds();
    assert_eq!(
        before, after,
        "fds before {before}, after 1000 samples {after}"
    );
}
