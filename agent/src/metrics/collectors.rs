//! What is read at scrape time (the leak sweep's result, the process's fds and memory) and the
//! agent's registry.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use super::PoolMetrics;

/// The last leak sweep's result (see [`crate::LeasePool`]), read from the book at scrape time.
#[derive(Debug)]
pub(super) struct LeakCheckCollector {
    pub(super) metrics: Arc<PoolMetrics>,
}

impl Collector for LeakCheckCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let book = self.metrics.snapshot();
        encode_const_gauge(
            &mut encoder,
            "leaked_leases",
            "Engine-proxy leases the last sweep found still held past their deadline + leak grace (a call future neither polled nor dropped); must be 0",
            None,
            book.leaked_leases as i64,
        )?;
        encode_const_gauge(
            &mut encoder,
            "leaked_lease_oldest_age",
            "Time since the oldest leaked lease was acquired; 0 when none is leaked",
            Some(&Unit::Seconds),
            book.leaked_lease_oldest_age.as_secs_f64(),
        )?;
        encode_const_gauge(
            &mut encoder,
            "leaked_channels",
            "Engine-proxy channels the last sweep found still open max-lease + leak grace after the pool closed them, or older than max-age + max-lease + leak grace; must be 0",
            None,
            book.leaked_channels as i64,
        )?;
        encode_const_gauge(
            &mut encoder,
            "leaked_channel_oldest_age",
            "Time since the oldest leaked channel was opened; 0 when none is leaked",
            Some(&Unit::Seconds),
            book.leaked_channel_oldest_age.as_secs_f64(),
        )?;
        for (name, help, value) in [
            (
                "leaked_leases_detected",
                "Distinct leases ever found leaked by the sweep",
                book.leaked_leases_detected,
            ),
            (
                "leaked_channels_detected",
                "Distinct channels ever found leaked by the sweep",
                book.leaked_channels_detected,
            ),
            (
                "leak_sweeps",
                "Sweeps of the live leases and channels for leaks",
                book.leak_sweeps,
            ),
        ] {
            encode_const_counter(&mut encoder, name, help, value)?;
        }
        Ok(())
    }
}

/// Open file descriptors and resident memory of this process, read from /proc at scrape time.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(fds) = process_open_fds() {
            encode_const_gauge(
                &mut encoder,
                "process_open_fds",
                "Open file descriptors of the agent process (/proc/self/fd)",
                None,
                fds as i64,
            )?;
        }
        if let Some(rss) = process_resident_memory_bytes() {
            encode_const_gauge(
                &mut encoder,
                "process_resident_memory",
                "Resident set size of the agent process (VmRSS in /proc/self/status)",
                Some(&Unit::Bytes),
                rss as i64,
            )?;
        }
        Ok(())
    }
}

/// One counter family `name` (`_total` is appended) with one sample, for collectors.
pub(crate) fn encode_const_counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let counter = ConstCounter::new(value);
    let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
    counter.encode(metric)
}

fn encode_const_gauge<N: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: N,
) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(value);
    let metric_encoder = encoder.encode_descriptor(name, help, unit, gauge.metric_type())?;
    gauge.encode(metric_encoder)
}

/// Number of entries in /proc/self/fd (None off Linux).
pub fn process_open_fds() -> Option<usize> {
    std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|dir| dir.count())
}

/// VmRSS of /proc/self/status in bytes (None off Linux).
pub fn process_resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Prefix of every metric the agent itself exports.
pub const AGENT_PREFIX: &str = "longhorn_guard_agent";

/// Builds the agent's root registry: unprefixed, with the agent's own metrics in a
/// `longhorn_guard_agent` sub-registry, so that embedded components (the longhorn-manager
/// monitor registers `longhorn_guard_manager_*`) can register their own prefix beside it.
pub fn agent_registry(pool: &Arc<PoolMetrics>) -> Registry {
    let mut root = Registry::default();
    let agent = root.sub_registry_with_prefix(AGENT_PREFIX);
    pool.register(agent);
    agent.register_collector(Box::new(ProcessCollector));
    root
}

/// OpenMetrics text of `registry`.
pub fn encode_registry(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}
