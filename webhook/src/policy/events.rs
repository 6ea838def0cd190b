//! The `events` section of the policy: whether and how fast Kubernetes Events are written about
//! refused Backups (the writer is `crate::events`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::throttle::RateLimit;

/// The `events` section of the policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct EventsPolicy {
    /// Write Events about refused Backups on their Volumes (hot-reloadable).
    pub enabled: bool,
    /// A series (namespace + volume + reason) is written at most once per window.
    pub aggregate_window_seconds: u64,
    /// A series with no refusal for this long ends; the next refusal starts a new Event.
    pub series_idle_seconds: u64,
    /// Event writes of this replica (creates and patches, all namespaces).
    pub writes: RateLimit,
    /// Refusals waiting for the writer; when full, refusals are dropped (counted). Fixed at
    /// start.
    pub queue_capacity: usize,
    /// Series tracked at once; refusals of further series are dropped (counted).
    pub max_series: usize,
}

impl Default for EventsPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            aggregate_window_seconds: 60,
            series_idle_seconds: 360,
            writes: RateLimit::new(120.0, 10),
            queue_capacity: 1024,
            max_series: 4096,
        }
    }
}

impl EventsPolicy {
    pub fn validate(&self) -> Result<(), String> {
        if self.aggregate_window_seconds == 0 {
            return Err("events.aggregateWindowSeconds must be > 0".into());
        }
        if self.series_idle_seconds < self.aggregate_window_seconds {
            return Err("events.seriesIdleSeconds must be >= events.aggregateWindowSeconds".into());
        }
        if !self.writes.enabled() || self.writes.burst == 0 {
            return Err("events.writes needs perMinute > 0 and burst > 0 (set events.enabled: false to write none)".into());
        }
        if self.queue_capacity == 0 || self.max_series == 0 {
            return Err("events.queueCapacity and events.maxSeries must be > 0".into());
        }
        Ok(())
    }

    pub(crate) fn window(&self) -> Duration {
        Duration::from_secs(self.aggregate_window_seconds)
    }

    pub(crate) fn idle(&self) -> Duration {
        Duration::from_secs(self.series_idle_seconds)
    }
}
