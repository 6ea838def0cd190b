//! The monitor's configuration.

use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use regex::Regex;

use crate::error::{Error, Result};

/// The kernel keeps at most 15 bytes of a process name in `comm` (`TASK_COMM_LEN` - 1):
/// a binary called `longhorn-manager` shows as `longhorn-manage`.
pub const COMM_MAX_LEN: usize = 15;

/// How the longhorn-manager process is recognised among the processes under `proc_root`.
#[derive(Clone, Debug)]
pub enum ProcessMatch {
    /// `comm` equals the name (compared after the kernel's 15-byte truncation), or the basename
    /// of `argv[0]` equals the name.
    Name(String),
    /// The command line, arguments joined by single spaces, equals this string exactly.
    CmdlineExact(String),
    /// The regex matches somewhere in the command line (arguments joined by single spaces).
    CmdlineRegex(Regex),
}

impl Default for ProcessMatch {
    fn default() -> Self {
        ProcessMatch::Name("longhorn-manager".to_owned())
    }
}

impl ProcessMatch {
    /// Whether a process with this `comm` (without trailing newline) and these `argv` matches.
    pub fn matches(&self, comm: &str, argv: &[String]) -> bool {
        match self {
            ProcessMatch::Name(name) => {
                let truncated = name.get(..COMM_MAX_LEN).unwrap_or(name);
                let argv0_base = argv
                    .first()
                    .map(|a| a.rsplit('/').next().unwrap_or(a))
                    .unwrap_or("");
                (!comm.is_empty() && comm == truncated) || argv0_base == name
            }
            ProcessMatch::CmdlineExact(want) => !argv.is_empty() && argv.join(" ") == *want,
            ProcessMatch::CmdlineRegex(re) => !argv.is_empty() && re.is_match(&argv.join(" ")),
        }
    }
}

/// Everything [`crate::ManagerMonitor`] needs.
#[derive(Clone, Debug)]
pub struct ManagerMonitorConfig {
    /// Where procfs is mounted (`/proc`; a test may point at a fake tree).
    pub proc_root: PathBuf,
    pub process_match: ProcessMatch,
    /// The node this monitor runs on: the `node` label of every metric, and the node whose
    /// `longhorn_instance_manager_proxy_grpc_connection` series are summed.
    pub node: String,
    pub interval: Duration,
    /// Remote ports counted as instance-manager connections (Longhorn: 8500..=8504).
    pub im_ports: RangeInclusive<u16>,
    /// The engine-proxy port inside `im_ports` (Longhorn: 8501) that
    /// `proxy_connection_drift` compares against.
    pub engine_proxy_port: u16,
    /// Go pprof goroutine endpoint (`http://127.0.0.1:6060/debug/pprof/goroutine?debug=1`), or
    /// an expvar endpoint whose JSON has a numeric `"goroutines"` field.
    pub pprof_goroutine_url: Option<String>,
    /// longhorn-manager's own metrics (`http://<manager>:9500/metrics`).
    pub manager_metrics_url: Option<String>,
    /// Connect + read deadline for each HTTP GET.
    pub http_timeout: Duration,
}

impl ManagerMonitorConfig {
    /// Defaults for a monitor on `node`: `/proc`, name `longhorn-manager`, every 15 s, ports
    /// 8500..=8504 with the proxy on 8501, no HTTP sources, 2 s HTTP timeout.
    pub fn for_node(node: impl Into<String>) -> Self {
        Self {
            proc_root: PathBuf::from("/proc"),
            process_match: ProcessMatch::default(),
            node: node.into(),
            interval: Duration::from_secs(15),
            im_ports: 8500..=8504,
            engine_proxy_port: 8501,
            pprof_goroutine_url: None,
            manager_metrics_url: None,
            http_timeout: Duration::from_secs(2),
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.node.is_empty() {
            return Err(Error::Config(
                "node is empty (set it from the downward API, spec.nodeName)".into(),
            ));
        }
        if self.interval.is_zero() || self.http_timeout.is_zero() {
            return Err(Error::Config(
                "interval and http_timeout must be > 0".into(),
            ));
        }
        if self.im_ports.is_empty() {
            return Err(Error::Config(format!(
                "im_ports {:?} is empty",
                self.im_ports
            )));
        }
        if !self.im_ports.contains(&self.engine_proxy_port) {
            return Err(Error::Config(format!(
                "engine_proxy_port {} is outside im_ports {:?}",
                self.engine_proxy_port, self.im_ports
            )));
        }
        for url in [&self.pprof_goroutine_url, &self.manager_metrics_url]
            .into_iter()
            .flatten()
        {
            crate::http_get::HttpTarget::parse(url).map_err(Error::Config)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| (*a).to_owned()).collect()
    }

    #[test]
    fn default_match_uses_truncated_comm_or_argv0_basename() {
        let m = ProcessMatch::default();
        assert!(m.matches("longhorn-manage", &argv(&["/usr/local/sbin/x"])));
        assert!(m.matches("x", &argv(&["/usr/local/sbin/longhorn-manager", "daemon"])));
        assert!(m.matches("x", &argv(&["longhorn-manager"])));
        assert!(!m.matches("longhorn-instan", &argv(&["longhorn-instance-manager"])));
        assert!(!m.matches("bash", &argv(&["bash", "-c", "longhorn-manager"])));
        assert!(!m.matches("", &[]));
    }

    #[test]
    fn cmdline_matchers() {
        let exact = ProcessMatch::CmdlineExact("longhorn-manager -d daemon".into());
        assert!(exact.matches("x", &argv(&["longhorn-manager", "-d", "daemon"])));
        assert!(!exact.matches("x", &argv(&["longhorn-manager", "daemon"])));
        let re = ProcessMatch::CmdlineRegex(
            Regex::new(r"longhorn-manager .*--instance abc$").expect("regex"),
        );
        assert!(re.matches("x", &argv(&["/bin/longhorn-manager", "--instance", "abc"])));
        assert!(!re.matches("x", &argv(&["/bin/longhorn-manager", "--instance", "abcd"])));
    }

    #[test]
    fn validation_names_the_problem() {
        let mut c = ManagerMonitorConfig::for_node("n1");
        assert!(c.validate().is_ok());
        c.engine_proxy_port = 9000;
        assert!(
            c.validate()
                .is_err_and(|e| e.to_string().contains("engine_proxy_port 9000"))
        );
        let mut c = ManagerMonitorConfig::for_node("");
        assert!(c.validate().is_err());
        c.node = "n1".into();
        c.manager_metrics_url = Some("https://x:9500/metrics".into());
        assert!(
            c.validate()
                .is_err_and(|e| e.to_string().contains("http://"))
        );
    }
}
