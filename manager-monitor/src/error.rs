//! Errors of one sample, each with the `reason` label it is counted under.

use std::path::PathBuf;

/// Why (part of) a sample failed. Every variant names the process or URL involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration cannot work (checked once in `ManagerMonitor::new`).
    #[error("invalid manager-monitor configuration: {0}")]
    Config(String),
    /// The process exited (or its pid was reused) while it was being read.
    #[error("longhorn-manager pid {pid} vanished while it was being sampled")]
    ProcessVanished { pid: i32 },
    /// /proc refused a read: the monitor needs the same uid as the manager, or CAP_SYS_PTRACE.
    #[error("permission denied reading {path}: run as the manager's user or with CAP_SYS_PTRACE")]
    PermissionDenied { path: PathBuf },
    /// Any other I/O error reading /proc.
    #[error("reading {path}: {source}")]
    ProcRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A /proc file did not have the expected shape.
    #[error("parsing {path}: {what}")]
    ProcParse { path: PathBuf, what: String },
    /// The goroutine endpoint could not be read or parsed.
    #[error("goroutine count from {url}: {what}")]
    Goroutines { url: String, what: String },
    /// longhorn-manager's /metrics could not be read.
    #[error("scraping longhorn-manager metrics from {url}: {what}")]
    ManagerMetricsScrape { url: String, what: String },
    /// longhorn-manager's /metrics was read but had no `longhorn_instance_manager_proxy_grpc_connection`.
    #[error("longhorn-manager metrics at {url}: {what}")]
    ManagerMetricsParse { url: String, what: String },
}

impl Error {
    /// The `reason` label of `longhorn_guard_manager_sample_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::ProcessVanished { .. } => "process_vanished",
            Error::PermissionDenied { .. } => "permission_denied",
            Error::ProcRead { .. } => "proc_read",
            Error::ProcParse { .. } => "proc_parse",
            Error::Goroutines { .. } => "goroutines",
            Error::ManagerMetricsScrape { .. } => "manager_metrics_scrape",
            Error::ManagerMetricsParse { .. } => "manager_metrics_parse",
        }
    }

    /// Every `reason` label value, so the counter family shows all of them from the start.
    pub const METRIC_LABELS: [&'static str; 7] = [
        "process_vanished",
        "permission_denied",
        "proc_read",
        "proc_parse",
        "goroutines",
        "manager_metrics_scrape",
        "manager_metrics_parse",
    ];
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
