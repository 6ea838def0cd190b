//! Shared test support: the stand-in `longhorn-manager` process, loopback "instance-manager"
//! listeners on a block of five consecutive ports, promtool lookup.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use longhorn_guard_manager_monitor::{ManagerMonitorConfig, ProcessMatch};
pub const NODE: &str = "node-1";

/// A unique id for this test's stand-ins, so parallel tests never follow each other's.
pub fn instance_id(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{test}-{}-{nanos}", std::process::id())
}

/// The stand-in process; killed and reaped on drop.
pub struct StandIn {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub pid: i32,
    pub http_port: u16,
}

impl StandIn {
    pub fn start(instance: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_longhorn-manager"))
            .args(["--node", NODE, "--instance", instance])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the longhorn-manager stand-in");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("stand-in ready line");
        // ready pid=PID http=PORT
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .unwrap_or_else(|| panic!("stand-in said {line:?}"))
                .to_owned()
        };
        let pid = field("pid=").parse().expect("pid");
        let http_port = field("http=").parse().expect("port");
        assert_eq!(pid, i32::try_from(child.id()).expect("pid fits"));
        Self {
            child,
            stdin,
            stdout,
            pid,
            http_port,
        }
    }

    /// Sends one command and returns the `ok ...` reply; panics on `err ...`.
    pub fn cmd(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").expect("write command");
        self.stdin.flush().expect("flush");
        let mut reply = String::new();
        self.stdout.read_line(&mut reply).expect("read reply");
        assert!(
            reply.starts_with("ok"),
            "stand-in refused {line:?}: {reply:?}"
        );
        reply.trim().to_owned()
    }

    pub fn pprof_url(&self) -> String {
        format!(
            "http://127.0.0.1:{}/debug/pprof/goroutine?debug=1",
            self.http_port
        )
    }

    pub fn metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.http_port)
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A config following the stand-in(s) started with `instance`, on the given port block.
pub fn config(instance: &str, ports: &ImListeners) -> ManagerMonitorConfig {
    let mut c = ManagerMonitorConfig::for_node(NODE);
    c.process_match = ProcessMatch::CmdlineRegex(
        regex::Regex::new(&format!(
            r"longhorn-manager --node \S+ --instance {}$",
            regex::escape(instance)
        ))
        .expect("regex"),
    );
    c.im_ports = ports.base..=ports.base + 4;
    c.engine_proxy_port = ports.base + 1;
    c.interval = Duration::from_millis(50);
    c
}

/// One listener per port on five consecutive loopback ports (below the ephemeral range, so
/// they never collide with client ports), plus `[::1]` on the same ports where IPv6 works.
/// Accepted connections are kept per port until the test closes them from this (peer) side.
pub struct ImListeners {
    pub base: u16,
    pub ipv6: bool,
    accepted: Vec<Arc<Mutex<Vec<TcpStream>>>>,
}

impl ImListeners {
    pub fn bind() -> Self {
        let mut seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(1)
            ^ std::process::id().wrapping_mul(2_654_435_761);
        for _ in 0..200 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let base = 20_000 + u16::try_from((seed >> 8) % 12_000).expect("fits");
            let v4: Vec<_> = (0..5)
                .map_while(|i| TcpListener::bind(("127.0.0.1", base + i)).ok())
                .collect();
            if v4.len() < 5 {
                continue;
            }
            let v6: Vec<_> = (0..5)
                .map_while(|i| TcpListener::bind(("::1", base + i)).ok())
                .collect();
            let ipv6 = v6.len() == 5;
            let accepted: Vec<_> = (0..5).map(|_| Arc::new(Mutex::new(Vec::new()))).collect();
            let mut all = v4;
            if ipv6 {
                all.extend(v6);
            }
            for (i, listener) in all.into_iter().enumerate() {
                let sink = Arc::clone(&accepted[i % 5]);
                std::thread::spawn(move || {
                    for conn in listener.incoming().flatten() {
                        sink.lock().expect("lock").push(conn);
                    }
                });
            }
            return Self {
                base,
                ipv6,
                accepted,
            };
        }
        panic!("found no 5 consecutive free loopback ports in 20000..32000");
    }

    /// Waits until `n` connections to `base + index` have been accepted.
    pub fn wait_accepted(&self, index: usize, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.accepted[index].lock().expect("lock").len() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} connections to port index {index} accepted",
                self.accepted[index].lock().expect("lock").len()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Closes `n` accepted connections to `base + index` from the listener (peer) side: the
    /// stand-in's ends go to close_wait.
    pub fn close_from_peer(&self, index: usize, n: usize) {
        let mut conns = self.accepted[index].lock().expect("lock");
        assert!(conns.len() >= n, "only {} accepted", conns.len());
        for c in conns.drain(..n) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Polls `check` until it returns `Ok`, or panics with its last complaint after `timeout`.
pub fn eventually<T>(timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return v,
            Err(why) if Instant::now() >= deadline => {
                panic!("condition not met within {timeout:?}: {why}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// promtool from PATH or /usr/bin; fails loudly when missing (the test command installs the
/// Debian package `prometheus`).
pub fn promtool() -> String {
    for candidate in ["promtool", "/usr/bin/promtool"] {
        if Command::new(candidate)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return candidate.to_owned();
        }
    }
    panic!(
        "promtool not found: install the Debian package `prometheus` (bash scripts/test.sh does; by hand: \
         printf 'exit 101\\n' > /usr/sbin/policy-rc.d && apt-get install -y prometheus && rm /usr/sbin/policy-rc.d)"
    );
}

/// Renders a registry as the text a scrape would return.
pub fn render(registry: &prometheus_client::registry::Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).expect("encode");
    out
}

/// The value of the series whose line starts with `series ` (exact name and labels).
pub fn value_of(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
}

/// Series names the manifests may use: this crate's (read from a rendered registry, so a renamed
/// family breaks the manifests' tests), the webhook's and agent's (as those crates export them),
/// and the two from outside the project.
pub fn known_metric_names() -> std::collections::BTreeSet<String> {
    use longhorn_guard_manager_monitor::metrics::{
        ConnectionLabels, ErrorLabels, Metrics, NodeLabels,
    };
    let mut registry = prometheus_client::registry::Registry::default();
    let m = Metrics::default();
    m.register(&mut registry);
    let n = NodeLabels {
        node: NODE.to_owned(),
    };
    for g in [
        &m.up,
        &m.resident_memory_bytes,
        &m.resident_memory_peak_bytes,
        &m.threads,
        &m.open_fds,
        &m.goroutines,
        &m.longhorn_proxy_grpc_connections,
        &m.proxy_connection_drift,
    ] {
        g.get_or_create(&n).set(1);
    }
    m.im_connections
        .get_or_create(&ConnectionLabels {
            node: NODE.to_owned(),
            remote_port: "8501".into(),
            state: "established",
        })
        .set(1);
    m.restarts.get_or_create(&n).inc();
    m.sample_errors
        .get_or_create(&ErrorLabels {
            node: NODE.to_owned(),
            reason: "proc_read",
        })
        .inc();
    m.last_sample_timestamp_seconds.get_or_create(&n).set(1.0);
    let text = render(&registry);
    let mut names = std::collections::BTreeSet::new();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        if w.next() == Some("#") && w.next() == Some("TYPE") {
            let (name, kind) = (w.next().expect("name"), w.next().expect("type"));
            names.insert(if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_owned()
            });
        }
    }
    assert!(
        names.len() >= 12,
        "registry rendered too few families: {text}"
    );
    for n in [
        // webhook (longhorn_guard_webhook_*)
        "longhorn_guard_webhook_reviews_total",
        "longhorn_guard_webhook_deadline_exceeded_total",
        "longhorn_guard_webhook_review_duration_seconds_bucket",
        "longhorn_guard_webhook_index_objects",
        "longhorn_guard_webhook_index_trusted",
        "longhorn_guard_webhook_throttled_reviews_total",
        "longhorn_guard_webhook_backups",
        "longhorn_guard_webhook_backups_oldest_non_terminal_age_seconds",
        "longhorn_guard_webhook_doomed_backups",
        "longhorn_guard_webhook_doomed_volume_last_backup_age_seconds",
        "longhorn_guard_webhook_event_refusals_total",
        "longhorn_guard_webhook_event_writes_total",
        "longhorn_guard_webhook_event_series",
        "longhorn_guard_webhook_policy_longhorn_exemptions",
        "longhorn_guard_webhook_node_verdict",
        "longhorn_guard_webhook_node_verdicts_expired",
        "longhorn_guard_webhook_node_verdict_changes_total",
        "longhorn_guard_webhook_backups_held_by_node_verdict_total",
        "longhorn_guard_webhook_node_verdict_leases_unreadable",
        // agent (longhorn_guard_agent_*)
        "longhorn_guard_agent_leaked_leases",
        "longhorn_guard_agent_leaked_channels",
        "longhorn_guard_agent_leaked_lease_oldest_age_seconds",
        "longhorn_guard_agent_leaked_channel_oldest_age_seconds",
        "longhorn_guard_agent_leaked_leases_detected_total",
        "longhorn_guard_agent_leaked_channels_detected_total",
        "longhorn_guard_agent_leak_sweeps_total",
        "longhorn_guard_agent_leases_active",
        "longhorn_guard_agent_channels_active",
        "longhorn_guard_agent_lease_wait_overflow_total",
        "longhorn_guard_agent_deadline_exceeded_total",
        // the agent's node verdict (issue #19; built on branch loop-agent)
        "longhorn_guard_agent_node_verdict",
        "longhorn_guard_agent_node_verdict_transitions_total",
        "longhorn_guard_agent_node_verdict_publish_errors_total",
        "longhorn_guard_agent_node_verdict_connections_per_minute",
        "longhorn_guard_agent_node_verdict_rss_bytes_per_minute",
        // Prometheus itself and kube-state-metrics
        "up",
        "kube_pod_container_resource_limits",
    ] {
        names.insert(n.to_owned());
    }
    names
}

/// Metric names a PromQL expression selects: identifiers outside strings, label matchers,
/// grouping clauses and range brackets that are not function calls, keywords or numbers.
pub fn promql_metric_names(expr: &str) -> Vec<String> {
    const KEYWORDS: [&str; 12] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
    ];
    // Drop string literals, {...} and [...] contents.
    let mut cleaned = String::new();
    let mut depth_brace = 0;
    let mut depth_bracket = 0;
    let mut quote: Option<char> = None;
    for c in expr.chars() {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '{' => depth_brace += 1,
            '}' => depth_brace -= 1,
            '[' => depth_bracket += 1,
            ']' => depth_bracket -= 1,
            _ if depth_brace > 0 || depth_bracket > 0 => {}
            _ => cleaned.push(c),
        }
        if matches!(c, '{' | '}' | '[' | ']') {
            cleaned.push(' ');
        }
    }
    // Drop grouping label lists: by (...), without (...), on (...), ignoring (...), group_*(...).
    let grouping =
        regex::Regex::new(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
            .expect("regex");
    let cleaned = grouping.replace_all(&cleaned, " ");
    let ident = regex::Regex::new(r"[A-Za-z_:][A-Za-z0-9_:]*(\s*\()?").expect("regex");
    let mut names = Vec::new();
    for m in ident.find_iter(&cleaned) {
        let token = m.as_str();
        if token.ends_with('(') {
            continue; // a function call
        }
        // part of a number like 1e9 or a duration suffix
        let start = m.start();
        if start > 0 && cleaned.as_bytes()[start - 1].is_ascii_digit() {
            continue;
        }
        if KEYWORDS.contains(&token.to_ascii_lowercase().as_str()) {
            continue;
        }
        names.push(token.to_owned());
    }
    names
}
