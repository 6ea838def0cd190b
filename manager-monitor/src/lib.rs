//! longhorn-manager leak monitor: finds the longhorn-manager process through procfs (as a sidecar
//! sharing the pod's process namespace, or from a hostPID DaemonSet) and samples its memory,
//! threads, fds and the TCP sockets it holds to instance-manager ports, plus (when configured)
//! its goroutine count and Longhorn's own `longhorn_instance_manager_proxy_grpc_connection`,
//! exporting them as `longhorn_guard_manager_*` Prometheus metrics.
//!
//! It must not: change or signal the process it watches, talk to the Kubernetes API, hold any
//! file descriptor between samples, or reach anything but the configured manager endpoints.
//! The `longhorn-manager` binary in this package is a test stand-in, never to be deployed.

pub mod config;
pub mod error;
mod http_get;
pub mod metrics;
pub mod net_tcp;
pub mod procfs;
pub mod scrape;

use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::registry::Registry;

pub use config::{ManagerMonitorConfig, ProcessMatch};
pub use error::{Error, Result};
pub use metrics::Metrics;
pub use net_tcp::TcpState;
pub use procfs::{ProcessIdentity, ProcessSample};

use http_get::HttpTarget;
use metrics::{ConnectionLabels, ErrorLabels, NodeLabels};

/// The largest longhorn-manager /metrics body accepted (thousands of Backups make it big).
const MAX_METRICS_BODY: usize = 64 * 1024 * 1024;
/// The goroutine count is on the first line; the rest of the profile is not read.
const MAX_GOROUTINE_BODY: usize = 4 * 1024;

/// A change in which process is followed; each one is logged once when it happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessEvent {
    /// A longhorn-manager was found for the first time.
    Found(ProcessIdentity),
    /// The followed process was replaced by another (new pid or start time).
    Restarted {
        previous: ProcessIdentity,
        current: ProcessIdentity,
    },
    /// No longhorn-manager is running (reported once until one is found again).
    Lost { previous: Option<ProcessIdentity> },
}

/// What one call of [`ManagerMonitor::sample_once`] saw.
#[derive(Debug)]
pub struct Sample {
    pub timestamp: SystemTime,
    pub event: Option<ProcessEvent>,
    /// `None` when no longhorn-manager process is running.
    pub process: Option<ProcessSample>,
    pub goroutines: Option<u64>,
    /// Scraped `longhorn_instance_manager_proxy_grpc_connection`, summed for this node.
    pub longhorn_proxy_grpc_connections: Option<i64>,
    /// Scraped value minus the sockets open to the engine-proxy port.
    pub proxy_connection_drift: Option<i64>,
    /// Parts of the sample that failed without failing the sample (HTTP sources).
    pub errors: Vec<Error>,
}

/// Samples one node's longhorn-manager and keeps the metrics current.
#[derive(Debug)]
pub struct ManagerMonitor {
    config: ManagerMonitorConfig,
    procfs: procfs::Procfs,
    metrics: Metrics,
    node: NodeLabels,
    goroutine_target: Option<(String, HttpTarget)>,
    metrics_target: Option<(String, HttpTarget)>,
    /// The process being followed; `None` forces a scan of the process table.
    followed: Option<ProcessIdentity>,
    /// The last process ever followed, to tell a restart from a first discovery.
    last_seen: Option<ProcessIdentity>,
    lost_reported: bool,
    /// Connection series ever exported, so a vanished (port, state) drops to 0 instead of
    /// keeping its last value.
    connection_series: BTreeSet<(u16, TcpState)>,
    /// Error reasons of the previous sample: a reason is logged as a warning when it starts,
    /// at debug level while it repeats.
    previous_errors: HashSet<&'static str>,
}

impl ManagerMonitor {
    /// Checks `config` and registers the `longhorn_guard_manager_*` families in `registry`
    /// (pass the root registry: the prefix is added here).
    pub fn new(config: ManagerMonitorConfig, registry: &mut Registry) -> Result<Self> {
        config.validate()?;
        let metrics = Metrics::default();
        metrics.register(registry);
        let node = NodeLabels {
            node: config.node.clone(),
        };
        metrics.up.get_or_create(&node).set(0);
        metrics.restarts.get_or_create(&node).inc_by(0);
        for reason in Error::METRIC_LABELS {
            metrics
                .sample_errors
                .get_or_create(&ErrorLabels {
                    node: config.node.clone(),
                    reason,
                })
                .inc_by(0);
        }
        let target = |url: &Option<String>| -> Result<Option<(String, HttpTarget)>> {
            url.as_ref()
                .map(|u| {
                    HttpTarget::parse(u)
                        .map(|t| (u.clone(), t))
                        .map_err(Error::Config)
                })
                .transpose()
        };
        Ok(Self {
            procfs: procfs::Procfs::new(config.proc_root.clone()),
            goroutine_target: target(&config.pprof_goroutine_url)?,
            metrics_target: target(&config.manager_metrics_url)?,
            config,
            metrics,
            node,
            followed: None,
            last_seen: None,
            lost_reported: false,
            connection_series: BTreeSet::new(),
            previous_errors: HashSet::new(),
        })
    }

    pub fn config(&self) -> &ManagerMonitorConfig {
        &self.config
    }

    /// Handles to the metric families (shared with the registry).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Samples every `interval` until `shutdown` completes. Each sample runs on the blocking
    /// pool (procfs reads and short HTTP GETs); a sample in flight finishes before return.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        self.run_with(shutdown, |_| {}).await;
    }

    /// [`ManagerMonitor::run`], handing every sample to `on_sample` (on the async side, after
    /// the metrics are updated; a sample whose process could not be read is not handed over).
    pub async fn run_with(
        self,
        shutdown: impl Future<Output = ()>,
        mut on_sample: impl FnMut(&Sample),
    ) {
        let mut interval = tokio::time::interval(self.config.interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        let mut monitor = self;
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                _ = interval.tick() => {}
            }
            let joined = tokio::task::spawn_blocking(move || {
                // Failures are logged and counted inside sample_once.
                let sample = monitor.sample_once();
                (monitor, sample)
            })
            .await;
            match joined {
                Ok((m, sample)) => {
                    monitor = m;
                    if let Ok(sample) = sample {
                        on_sample(&sample);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "longhorn-manager monitor: sampling task failed; monitor stopped");
                    return;
                }
            }
        }
        tracing::info!(node = %monitor.config.node, "longhorn-manager monitor stopped");
    }

    /// Takes one sample and updates the metrics. `Err` when the process could not be read
    /// (it vanished mid-read, /proc refused access, or a /proc file was malformed); HTTP
    /// failures only land in [`Sample::errors`].
    pub fn sample_once(&mut self) -> Result<Sample> {
        let timestamp = SystemTime::now();
        self.metrics
            .last_sample_timestamp_seconds
            .get_or_create(&self.node)
            .set(
                timestamp
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or(Duration::ZERO)
                    .as_secs_f64(),
            );
        let result = self.sample_process(timestamp);
        let mut reasons: HashSet<&'static str> = HashSet::new();
        match &result {
            Ok(sample) => {
                for e in &sample.errors {
                    self.count_error(e);
                    self.log_error(e, &reasons);
                    reasons.insert(e.metric_label());
                }
            }
            Err(e) => {
                self.count_error(e);
                self.log_error(e, &reasons);
                reasons.insert(e.metric_label());
            }
        }
        self.previous_errors = reasons;
        result
    }

    fn count_error(&self, e: &Error) {
        self.metrics
            .sample_errors
            .get_or_create(&ErrorLabels {
                node: self.config.node.clone(),
                reason: e.metric_label(),
            })
            .inc();
    }

    fn log_error(&self, e: &Error, this_round: &HashSet<&'static str>) {
        let label = e.metric_label();
        if self.previous_errors.contains(label) || this_round.contains(label) {
            tracing::debug!(node = %self.config.node, reason = label, error = %e, "longhorn-manager sample failed again");
        } else {
            tracing::warn!(node = %self.config.node, reason = label, error = %e, "longhorn-manager sample failed");
        }
    }

    fn locate(&mut self) -> Result<Option<ProcessIdentity>> {
        if let Some(id) = self.followed
            && self.procfs.identity(id.pid).ok() == Some(id)
        {
            return Ok(Some(id));
        }
        let found = self.procfs.find(&self.config.process_match)?;
        if found.len() > 1 {
            tracing::warn!(
                node = %self.config.node,
                candidates = ?found.iter().map(|p| p.pid).collect::<Vec<_>>(),
                "several processes match the longhorn-manager pattern; following the oldest"
            );
        }
        Ok(found.first().copied())
    }

    fn sample_process(&mut self, timestamp: SystemTime) -> Result<Sample> {
        let Some(id) = self.locate()? else {
            return Ok(self.process_lost(timestamp));
        };
        let event = self.follow(id);

        let process = match self.procfs.sample(id, &self.config.im_ports) {
            Ok(p) => p,
            Err(e) => {
                if matches!(e, Error::ProcessVanished { .. }) {
                    self.followed = None;
                }
                self.metrics.up.get_or_create(&self.node).set(0);
                return Err(e);
            }
        };

        let mut errors = Vec::new();
        let goroutines = match self.scrape_goroutines() {
            Ok(g) => g,
            Err(e) => {
                errors.push(e);
                None
            }
        };
        let scraped = match self.scrape_proxy_connections() {
            Ok(v) => v,
            Err(e) => {
                errors.push(e);
                None
            }
        };
        let open_to_proxy =
            i64::try_from(process.open_connections_to(self.config.engine_proxy_port))
                .unwrap_or(i64::MAX);
        let drift = scraped.map(|s| s.saturating_sub(open_to_proxy));

        self.publish(&process, goroutines, scraped, drift);
        Ok(Sample {
            timestamp,
            event,
            process: Some(process),
            goroutines,
            longhorn_proxy_grpc_connections: scraped,
            proxy_connection_drift: drift,
            errors,
        })
    }

    /// No longhorn-manager process matches: stops following, clears the process series and
    /// reports the loss once (until one is found again).
    fn process_lost(&mut self, timestamp: SystemTime) -> Sample {
        let mut event = None;
        if !self.lost_reported {
            tracing::warn!(
                node = %self.config.node,
                proc_root = %self.config.proc_root.display(),
                matcher = ?self.config.process_match,
                previous = ?self.last_seen.map(|p| p.pid),
                "no longhorn-manager process found; longhorn_guard_manager_up = 0 until one appears"
            );
            self.lost_reported = true;
            event = Some(ProcessEvent::Lost {
                previous: self.last_seen,
            });
        }
        self.followed = None;
        self.clear_process_series();
        Sample {
            timestamp,
            event,
            process: None,
            goroutines: None,
            longhorn_proxy_grpc_connections: None,
            proxy_connection_drift: None,
            errors: Vec::new(),
        }
    }

    /// Follows process `id`; when it is not the one followed so far, says whether it was
    /// found or replaced another (a restart, counted).
    fn follow(&mut self, id: ProcessIdentity) -> Option<ProcessEvent> {
        if self.followed == Some(id) {
            return None;
        }
        let event = match self.last_seen {
            Some(previous) if previous != id => {
                self.metrics.restarts.get_or_create(&self.node).inc();
                tracing::warn!(node = %self.config.node, %previous, current = %id, "longhorn-manager restarted; following the new process");
                ProcessEvent::Restarted {
                    previous,
                    current: id,
                }
            }
            _ => {
                tracing::info!(node = %self.config.node, process = %id, "following longhorn-manager");
                ProcessEvent::Found(id)
            }
        };
        self.followed = Some(id);
        self.last_seen = Some(id);
        self.lost_reported = false;
        Some(event)
    }

    fn scrape_goroutines(&self) -> Result<Option<u64>> {
        let Some((url, target)) = &self.goroutine_target else {
            return Ok(None);
        };
        let err = |what: String| Error::Goroutines {
            url: url.clone(),
            what,
        };
        let body =
            http_get::get(target, self.config.http_timeout, MAX_GOROUTINE_BODY).map_err(err)?;
        let text = String::from_utf8_lossy(&body.bytes);
        scrape::goroutine_count(&text).map(Some).ok_or_else(|| {
            err(
                "no \"goroutine profile: total N\" first line and no expvar \"goroutines\" field"
                    .into(),
            )
        })
    }

    fn scrape_proxy_connections(&self) -> Result<Option<i64>> {
        let Some((url, target)) = &self.metrics_target else {
            return Ok(None);
        };
        let body =
            http_get::get(target, self.config.http_timeout, MAX_METRICS_BODY).map_err(|what| {
                Error::ManagerMetricsScrape {
                    url: url.clone(),
                    what,
                }
            })?;
        if body.truncated {
            return Err(Error::ManagerMetricsScrape {
                url: url.clone(),
                what: format!("body larger than {MAX_METRICS_BODY} bytes or cut short"),
            });
        }
        let text = String::from_utf8_lossy(&body.bytes);
        let sum = scrape::proxy_grpc_connections(&text, &self.config.node).ok_or_else(|| {
            Error::ManagerMetricsParse {
                url: url.clone(),
                what: format!("no {} family", scrape::PROXY_GRPC_CONNECTION),
            }
        })?;
        // The gauge is an integer count; round what the text format gave as a float.
        Ok(Some(sum.round() as i64))
    }

    fn publish(
        &mut self,
        p: &ProcessSample,
        goroutines: Option<u64>,
        scraped: Option<i64>,
        drift: Option<i64>,
    ) {
        let m = &self.metrics;
        let n = &self.node;
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        m.up.get_or_create(n).set(1);
        m.resident_memory_bytes
            .get_or_create(n)
            .set(as_i64(p.resident_memory_bytes));
        m.resident_memory_peak_bytes
            .get_or_create(n)
            .set(as_i64(p.resident_memory_peak_bytes));
        m.threads.get_or_create(n).set(as_i64(p.threads));
        m.open_fds.get_or_create(n).set(as_i64(p.open_fds));

        for port in self.config.im_ports.clone() {
            self.connection_series.insert((port, TcpState::Established));
        }
        self.connection_series
            .extend(p.im_connections.keys().copied());
        for &(port, state) in &self.connection_series {
            let labels = ConnectionLabels {
                node: self.config.node.clone(),
                remote_port: port.to_string(),
                state: state.as_str(),
            };
            m.im_connections
                .get_or_create(&labels)
                .set(as_i64(p.connections(port, state)));
        }

        match goroutines {
            Some(g) => {
                m.goroutines.get_or_create(n).set(as_i64(g));
            }
            None => {
                m.goroutines.remove(n);
            }
        }
        match (scraped, drift) {
            (Some(s), Some(d)) => {
                m.longhorn_proxy_grpc_connections.get_or_create(n).set(s);
                m.proxy_connection_drift.get_or_create(n).set(d);
            }
            _ => {
                m.longhorn_proxy_grpc_connections.remove(n);
                m.proxy_connection_drift.remove(n);
            }
        }
    }

    /// With no process there is nothing to report: drop its series rather than keep stale values.
    fn clear_process_series(&mut self) {
        let m = &self.metrics;
        let n = &self.node;
        m.up.get_or_create(n).set(0);
        for family in [
            &m.resident_memory_bytes,
            &m.resident_memory_peak_bytes,
            &m.threads,
            &m.open_fds,
            &m.goroutines,
            &m.longhorn_proxy_grpc_connections,
            &m.proxy_connection_drift,
        ] {
            family.remove(n);
        }
        m.im_connections.clear();
        self.connection_series.clear();
    }
}
