//! The monitor against a real process: the `longhorn-manager` stand-in holding TCP connections
//! to loopback "instance-manager" listeners, growing memory and threads, serving fake pprof and
//! Longhorn metrics, and being restarted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{ImListeners, NODE, StandIn, eventually, render, value_of};
use longhorn_guard_manager_monitor::{ManagerMonitor, ProcessEvent, TcpState};
use prometheus_client::registry::Registry;

#[test]
fn reports_exact_connections_memory_fds_threads_goroutines_and_proxy_gauge() {
    let ports = ImListeners::bind();
    let outside = std::net::TcpListener::bind("127.0.0.1:0").expect("bind outside listener");
    let outside_port = outside.local_addr().expect("addr").port();
    let id = common::instance_id("exact");
    let mut manager = StandIn::start(&id);
    let mut cfg = common::config(&id, &ports);
    cfg.pprof_goroutine_url = Some(manager.pprof_url());
    cfg.manager_metrics_url = Some(manager.metrics_url());
    let mut registry = Registry::default();
    let mut monitor = ManagerMonitor::new(cfg, &mut registry).expect("monitor");

    let first = monitor.sample_once().expect("first sample");
    let base = first.process.clone().expect("stand-in found");
    assert_eq!(base.identity.pid, manager.pid);
    assert_eq!(first.event, Some(ProcessEvent::Found(base.identity)));
    assert!(base.im_connections.is_empty(), "{:?}", base.im_connections);
    assert_eq!(first.goroutines, Some(0));
    assert_eq!(first.longhorn_proxy_grpc_connections, Some(0));

    let b = ports.base;
    manager.cmd(&format!("connect 127.0.0.1:{} 7", b + 1));
    manager.cmd(&format!("connect 127.0.0.1:{b} 2"));
    manager.cmd(&format!("connect 127.0.0.1:{} 1", b + 3));
    manager.cmd(&format!("connect 127.0.0.1:{outside_port} 3"));
    let v6: u64 = if ports.ipv6 {
        manager.cmd(&format!("connect [::1]:{} 2", b + 2));
        2
    } else {
        eprintln!("NOTE: no IPv6 loopback here; the tcp6 path is covered by the unit tests only");
        0
    };
    ports.wait_accepted(1, 7);
    ports.wait_accepted(0, 2);
    ports.wait_accepted(3, 1);
    ports.wait_accepted(2, v6 as usize);
    ports.close_from_peer(1, 3);
    manager.cmd("goroutines 321");
    manager.cmd("proxy 9");
    manager.cmd("grow 64");
    manager.cmd("threads 5");

    let held = 7 + 2 + 1 + 3 + v6;
    let sample = eventually(Duration::from_secs(10), || {
        let s = monitor.sample_once().map_err(|e| e.to_string())?;
        let p = s.process.clone().ok_or("no process")?;
        let want = [
            ((b + 1, TcpState::Established), 4),
            ((b + 1, TcpState::CloseWait), 3),
            ((b, TcpState::Established), 2),
            ((b + 3, TcpState::Established), 1),
        ];
        for ((port, state), n) in want {
            if p.connections(port, state) != n {
                return Err(format!(
                    "{port}/{state}: {} != {n}; all: {:?}",
                    p.connections(port, state),
                    p.im_connections
                ));
            }
        }
        if p.connections(b + 2, TcpState::Established) != v6 {
            return Err(format!("v6 connections: {:?}", p.im_connections));
        }
        if p.im_connections.values().sum::<u64>() != 10 + v6 {
            return Err(format!(
                "unexpected sockets counted (outside port {outside_port} must not be): {:?}",
                p.im_connections
            ));
        }
        if p.open_fds != base.open_fds + held {
            return Err(format!(
                "open fds {} != {} + {held}",
                p.open_fds, base.open_fds
            ));
        }
        Ok(s)
    });
    let p = sample.process.as_ref().expect("process");
    assert_eq!(p.threads, base.threads + 5, "threads");
    assert!(
        p.resident_memory_bytes >= base.resident_memory_bytes + 60 * 1024 * 1024,
        "RSS grew from {} to only {}",
        base.resident_memory_bytes,
        p.resident_memory_bytes
    );
    assert!(p.resident_memory_peak_bytes >= p.resident_memory_bytes);
    assert_eq!(sample.goroutines, Some(321));
    assert_eq!(
        sample.longhorn_proxy_grpc_connections,
        Some(9),
        "node-1 series only, other-node excluded"
    );
    assert_eq!(
        sample.proxy_connection_drift,
        Some(9 - 7),
        "scraped 9 - (4 established + 3 close_wait) to the proxy port"
    );
    assert!(sample.errors.is_empty(), "{:?}", sample.errors);

    let text = render(&registry);
    let conn = |port: u16, state: &str| {
        value_of(
            &text,
            &format!(
                "longhorn_guard_manager_im_connections{{node=\"{NODE}\",remote_port=\"{port}\",state=\"{state}\"}}"
            ),
        )
    };
    assert_eq!(conn(b + 1, "established"), Some(4.0), "{text}");
    assert_eq!(conn(b + 1, "close_wait"), Some(3.0), "{text}");
    assert_eq!(
        conn(b + 4, "established"),
        Some(0.0),
        "every port has an established series: {text}"
    );
    assert_eq!(
        value_of(
            &text,
            &format!("longhorn_guard_manager_up{{node=\"{NODE}\"}}")
        ),
        Some(1.0)
    );
    assert_eq!(
        value_of(
            &text,
            &format!("longhorn_guard_manager_goroutines{{node=\"{NODE}\"}}")
        ),
        Some(321.0)
    );
    assert_eq!(
        value_of(
            &text,
            &format!("longhorn_guard_manager_proxy_connection_drift{{node=\"{NODE}\"}}")
        ),
        Some(2.0)
    );
    assert_eq!(
        value_of(
            &text,
            &format!("longhorn_guard_manager_resident_memory_bytes{{node=\"{NODE}\"}}")
        ),
        Some(p.resident_memory_bytes as f64)
    );
    assert_eq!(
        value_of(
            &text,
            &format!("longhorn_guard_manager_open_fds{{node=\"{NODE}\"}}")
        ),
        Some(p.open_fds as f64)
    );

    // The leak grows: the monitor follows it connection by connection.
    manager.cmd(&format!("connect 127.0.0.1:{} 5", b + 1));
    ports.wait_accepted(1, 4 + 5);
    let s = monitor.sample_once().expect("sample");
    assert_eq!(
        s.process
            .expect("process")
            .connections(b + 1, TcpState::Established),
        9
    );

    // A broken pprof endpoint is counted, not fatal.
    let mut cfg = common::config(&id, &ports);
    cfg.pprof_goroutine_url = Some(format!("http://127.0.0.1:{}/nope", manager.http_port));
    let mut registry = Registry::default();
    let mut monitor = ManagerMonitor::new(cfg, &mut registry).expect("monitor");
    let s = monitor.sample_once().expect("sample");
    assert!(s.process.is_some());
    assert_eq!(s.goroutines, None);
    assert_eq!(
        s.errors
            .iter()
            .map(|e| e.metric_label())
            .collect::<Vec<_>>(),
        vec!["goroutines"]
    );
    let text = render(&registry);
    assert_eq!(
        value_of(
            &text,
            &format!(
                "longhorn_guard_manager_sample_errors_total{{node=\"{NODE}\",reason=\"goroutines\"}}"
            )
        ),
        Some(1.0)
    );
    assert!(
        !text.contains("longhorn_guard_manager_goroutines{"),
        "no stale goroutine series: {text}"
    );
}

#[test]
fn follows_a_restart_and_reports_loss_once() {
    let ports = ImListeners::bind();
    let id = common::instance_id("restart");
    let mut registry = Registry::default();
    let mut monitor =
        ManagerMonitor::new(common::config(&id, &ports), &mut registry).expect("monitor");
    let restarts = |registry: &Registry| {
        value_of(
            &render(registry),
            &format!("longhorn_guard_manager_restarts_total{{node=\"{NODE}\"}}"),
        )
    };
    let up = |registry: &Registry| {
        value_of(
            &render(registry),
            &format!("longhorn_guard_manager_up{{node=\"{NODE}\"}}"),
        )
    };

    // Nothing running yet: up 0, reported once.
    let s = monitor.sample_once().expect("sample");
    assert!(s.process.is_none());
    assert_eq!(s.event, Some(ProcessEvent::Lost { previous: None }));
    assert_eq!(
        monitor.sample_once().expect("sample").event,
        None,
        "loss is reported once, not every interval"
    );
    assert_eq!(up(&registry), Some(0.0));

    let first = StandIn::start(&id);
    let s = monitor.sample_once().expect("sample");
    let a = s.process.expect("found").identity;
    assert_eq!(a.pid, first.pid);
    assert_eq!(s.event, Some(ProcessEvent::Found(a)));
    assert_eq!(restarts(&registry), Some(0.0));
    assert_eq!(up(&registry), Some(1.0));
    assert_eq!(monitor.sample_once().expect("sample").event, None);

    // Killed, gone for a while, then a new one.
    drop(first);
    let s = monitor.sample_once().expect("sample");
    assert_eq!(s.event, Some(ProcessEvent::Lost { previous: Some(a) }));
    assert_eq!(up(&registry), Some(0.0));
    let text = render(&registry);
    assert!(
        !text.contains("longhorn_guard_manager_resident_memory_bytes{"),
        "no stale RSS while lost: {text}"
    );
    assert_eq!(monitor.sample_once().expect("sample").event, None);

    let second = StandIn::start(&id);
    let s = monitor.sample_once().expect("sample");
    let b = s.process.expect("found").identity;
    assert_eq!(b.pid, second.pid);
    assert_eq!(
        s.event,
        Some(ProcessEvent::Restarted {
            previous: a,
            current: b
        })
    );
    assert_eq!(restarts(&registry), Some(1.0));
    assert_eq!(up(&registry), Some(1.0));

    // Replaced between two samples, with no gap the monitor could see.
    drop(second);
    let third = StandIn::start(&id);
    let s = eventually(Duration::from_secs(5), || {
        let s = monitor.sample_once().map_err(|e| e.to_string())?;
        if s.process.is_some() {
            Ok(s)
        } else {
            Err("not found yet".into())
        }
    });
    let c = s.process.expect("found").identity;
    assert_eq!(c.pid, third.pid);
    assert_eq!(
        s.event,
        Some(ProcessEvent::Restarted {
            previous: b,
            current: c
        })
    );
    assert_eq!(restarts(&registry), Some(2.0));
}

#[test]
fn run_samples_on_its_interval_and_stops_on_shutdown() {
    let ports = ImListeners::bind();
    let id = common::instance_id("run");
    let manager = StandIn::start(&id);
    let mut registry = Registry::default();
    let monitor = ManagerMonitor::new(common::config(&id, &ports), &mut registry).expect("monitor");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(monitor.run(async {
            let _ = rx.await;
        }));
        tokio::time::sleep(Duration::from_millis(400)).await;
        tx.send(()).expect("send shutdown");
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("run returned")
            .expect("run task");
    });
    let text = render(&registry);
    assert_eq!(
        value_of(
            &text,
            &format!("longhorn_guard_manager_up{{node=\"{NODE}\"}}")
        ),
        Some(1.0),
        "{text}"
    );
    let ts = value_of(
        &text,
        &format!("longhorn_guard_manager_last_sample_timestamp_seconds{{node=\"{NODE}\"}}"),
    )
    .expect("timestamp");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!((now - ts).abs() < 5.0, "last sample {ts} vs now {now}");
    drop(manager);
}
