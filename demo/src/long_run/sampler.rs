//! One sample of the guard's processes every few seconds: from `/proc/<pid>` their resident
//! memory (all of it, and its anonymous part: heap and stacks, what a leak grows, as opposed
//! to the executable's file-backed pages, which the kernel evicts and reloads as the machine's
//! page cache comes under pressure), open file descriptors and threads; from their `/metrics` the agents' channels,
//! leases and leak gauges and the webhook's index size and watch restarts.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::guard::{Served, http_get};
use crate::probe::sum_metrics;

/// What `/proc/<pid>` says about one process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcFigures {
    pub rss_bytes: u64,
    /// `RssAnon`: the anonymous part of `rss_bytes`.
    #[serde(default)]
    pub anon_bytes: u64,
    pub fds: u64,
    pub threads: u64,
}

impl std::ops::AddAssign for ProcFigures {
    fn add_assign(&mut self, o: Self) {
        self.rss_bytes += o.rss_bytes;
        self.anon_bytes += o.anon_bytes;
        self.fds += o.fds;
        self.threads += o.threads;
    }
}

/// What the long run reads from `/proc/<pid>/status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// `VmRSS`, in bytes.
    pub rss_bytes: u64,
    /// `RssAnon`, in bytes.
    pub anon_bytes: u64,
    pub threads: u64,
}

/// `VmRSS`, `RssAnon` (in bytes) and `Threads` of a `/proc/<pid>/status` text.
pub fn parse_status(text: &str) -> anyhow::Result<Status> {
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .with_context(|| format!("no {name} line"))?;
        let number = line
            .trim_start_matches(':')
            .split_whitespace()
            .next()
            .with_context(|| format!("{name} has no value"))?;
        number
            .parse()
            .with_context(|| format!("{name} value {number:?} is not a number"))
    };
    Ok(Status {
        rss_bytes: field("VmRSS")? * 1024,
        anon_bytes: field("RssAnon")? * 1024,
        threads: field("Threads")?,
    })
}

/// Reads `/proc/<pid>`; fails when the process is gone.
pub fn read_proc(pid: u32) -> anyhow::Result<ProcFigures> {
    let dir = Path::new("/proc").join(pid.to_string());
    let status = std::fs::read_to_string(dir.join("status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let Status {
        rss_bytes,
        anon_bytes,
        threads,
    } = parse_status(&status).with_context(|| format!("parsing /proc/{pid}/status"))?;
    let fds = std::fs::read_dir(dir.join("fd"))
        .with_context(|| format!("listing /proc/{pid}/fd"))?
        .count() as u64;
    Ok(ProcFigures {
        rss_bytes,
        anon_bytes,
        fds,
        threads,
    })
}

/// One sample of everything the long run follows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Seconds since the run started.
    pub t: f64,
    pub webhook: ProcFigures,
    /// Summed over the agents.
    pub agents: ProcFigures,
    /// `longhorn_guard_agent_*` and `longhorn_guard_webhook_*` samples, summed by name.
    pub metrics: BTreeMap<String, f64>,
}

impl Row {
    pub fn metric(&self, name: &str) -> f64 {
        self.metrics.get(name).copied().unwrap_or(0.0)
    }
}

async fn scrape(served: &Served, into: &mut BTreeMap<String, f64>) -> anyhow::Result<()> {
    let (code, body) = http_get(served.metrics, "/metrics").await?;
    if code != 200 {
        bail!("{} /metrics answered {code}", served.name);
    }
    for (k, v) in sum_metrics(&body) {
        *into.entry(k).or_insert(0.0) += v;
    }
    Ok(())
}

/// Samples the webhook and the agents now.
pub async fn sample(t: f64, webhook: &Served, agents: &[&Served]) -> anyhow::Result<Row> {
    let mut row = Row {
        t,
        webhook: read_proc(webhook.pid).with_context(|| webhook.name.clone())?,
        ..Row::default()
    };
    scrape(webhook, &mut row.metrics).await?;
    for a in agents {
        row.agents += read_proc(a.pid).with_context(|| a.name.clone())?;
        scrape(a, &mut row.metrics).await?;
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_read() {
        let text = "Name:\tlonghorn-guard\nVmPeak:\t  900 kB\nVmRSS:\t   12345 kB\nRssAnon:\t    2345 kB\nRssFile:\t   10000 kB\nThreads:\t7\n";
        assert_eq!(
            parse_status(text).unwrap(),
            Status {
                rss_bytes: 12345 * 1024,
                anon_bytes: 2345 * 1024,
                threads: 7
            }
        );
    }

    #[test]
    fn a_broken_status_is_an_error_naming_the_field() {
        let e = parse_status("Threads:\t7\n").unwrap_err();
        assert!(e.to_string().contains("VmRSS"), "{e}");
        let e = parse_status("VmRSS:\t 1 kB\nThreads:\t7\n").unwrap_err();
        assert!(e.to_string().contains("RssAnon"), "{e}");
        let e = parse_status("VmRSS:\t x kB\nRssAnon: 1 kB\nThreads: 2\n").unwrap_err();
        assert!(format!("{e:#}").contains("not a number"), "{e:#}");
    }

    #[test]
    fn this_process_can_be_read() {
        let f = read_proc(std::process::id()).unwrap();
        assert!(f.rss_bytes > 0 && f.fds > 0 && f.threads > 0, "{f:?}");
        assert!(f.anon_bytes > 0 && f.anon_bytes <= f.rss_bytes, "{f:?}");
        assert!(read_proc(u32::MAX).is_err());
    }
}
