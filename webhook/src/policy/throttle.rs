//! The `throttle:` section of the webhook policy: in-flight caps, creation rates, duplicate
//! suppression, exemptions and what recurring-job Backups get when throttled. Every field
//! has a default; [`ThrottlePolicy::validate`] names the exact field that is wrong.

use serde::{Deserialize, Serialize};

use super::{Exemptions, Mode};

/// A token bucket: `perMinute` tokens are added per minute up to `burst`. `perMinute: 0`
/// turns the limit off.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    pub per_minute: f64,
    pub burst: u32,
}

impl RateLimit {
    pub const fn new(per_minute: f64, burst: u32) -> Self {
        Self { per_minute, burst }
    }

    pub const OFF: RateLimit = RateLimit::new(0.0, 0);

    pub fn enabled(&self) -> bool {
        self.per_minute > 0.0
    }

    pub fn per_second(&self) -> f64 {
        self.per_minute / 60.0
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::OFF
    }
}

/// What a throttle decision does to a Backup carrying `spec.labels.RecurringJob`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecurringAction {
    /// Denied like any other Backup: the job pod exits and its CronJob retries it (a new
    /// snapshot and a new Backup per retry, bounded by the Job's `backoffLimit`).
    #[default]
    Deny,
    /// Allowed with a warning saying what would have been denied.
    Warn,
}

/// How recurring-job Backups are treated by each family of limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct RecurringJobRule {
    /// Per-volume, per-node and cluster in-flight caps. Deny by default: the caps are what
    /// stop a storm, and a volume whose Backup is still running does not need another one.
    pub caps: RecurringAction,
    /// Cluster, per-recurring-job and per-user creation rates. Warn by default: a denied
    /// recurring job is retried with a NEW snapshot (longhorn/longhorn#10154), and the caps
    /// already bound the work in flight.
    pub rates: RecurringAction,
    /// A Backup of a snapshot that already has a non-terminal Backup.
    pub duplicates: RecurringAction,
}

impl Default for RecurringJobRule {
    fn default() -> Self {
        Self {
            caps: RecurringAction::Deny,
            rates: RecurringAction::Warn,
            duplicates: RecurringAction::Deny,
        }
    }
}

/// The `throttle:` policy section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct ThrottlePolicy {
    /// Off = no throttling, no reservations.
    pub enabled: bool,
    /// `warn-only`: every throttle denial is allowed with a warning (and still counted).
    pub mode: Mode,
    /// Non-terminal Backups per volume (0 = no cap).
    pub max_in_flight_per_volume: u32,
    /// Non-terminal Backups per node (node of the volume's engine; 0 = no cap).
    pub max_in_flight_per_node: u32,
    /// Non-terminal Backups per Longhorn namespace, i.e. per install (0 = no cap).
    pub max_in_flight_per_cluster: u32,
    /// Creation rate per Longhorn namespace (per webhook replica).
    pub cluster_rate: RateLimit,
    /// Creation rate per recurring job (`spec.labels.RecurringJob`).
    pub recurring_job_rate: RateLimit,
    /// Creation rate per requesting user (most Backups come from longhorn-manager's
    /// service account, so this is never the only brake).
    pub user_rate: RateLimit,
    /// Deny a Backup of a snapshot that already has a non-terminal Backup.
    pub deny_duplicates: bool,
    pub recurring_jobs: RecurringJobRule,
    /// Requests never throttled (they are still counted).
    pub exemptions: Exemptions,
    /// An allowed Backup carries a warning once a scope is at or above this share of its
    /// limit.
    pub warn_at_percent: u8,
    /// A reservation (admitted, not yet seen in the watch) is dropped after this long.
    pub reservation_timeout_seconds: u64,
    /// A non-terminal Backup older than this is called stuck in denial messages.
    pub stuck_after_seconds: u64,
}

impl Default for ThrottlePolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            mode: Mode::Enforce,
            max_in_flight_per_volume: 1,
            max_in_flight_per_node: 10,
            max_in_flight_per_cluster: 50,
            cluster_rate: RateLimit::new(120.0, 50),
            recurring_job_rate: RateLimit::new(60.0, 30),
            user_rate: RateLimit::new(30.0, 10),
            deny_duplicates: true,
            recurring_jobs: RecurringJobRule::default(),
            exemptions: Exemptions::default(),
            warn_at_percent: 80,
            reservation_timeout_seconds: 30,
            stuck_after_seconds: 15 * 60,
        }
    }
}

impl ThrottlePolicy {
    /// Checks what serde cannot; the error names the field as written in YAML.
    pub fn validate(&self) -> Result<(), String> {
        for (field, rate) in [
            ("throttle.clusterRate", &self.cluster_rate),
            ("throttle.recurringJobRate", &self.recurring_job_rate),
            ("throttle.userRate", &self.user_rate),
        ] {
            if !rate.per_minute.is_finite() || rate.per_minute < 0.0 {
                return Err(format!(
                    "{field}.perMinute must be a finite number >= 0 (0 = off), got {}",
                    rate.per_minute
                ));
            }
            if rate.enabled() && rate.burst == 0 {
                return Err(format!(
                    "{field}.burst must be >= 1 when {field}.perMinute is {} (set perMinute: 0 to turn the limit off)",
                    rate.per_minute
                ));
            }
        }
        if self.warn_at_percent == 0 || self.warn_at_percent > 100 {
            return Err(format!(
                "throttle.warnAtPercent must be between 1 and 100, got {}",
                self.warn_at_percent
            ));
        }
        if self.reservation_timeout_seconds == 0 {
            return Err("throttle.reservationTimeoutSeconds must be > 0".into());
        }
        if self.stuck_after_seconds == 0 {
            return Err("throttle.stuckAfterSeconds must be > 0".into());
        }
        self.exemptions
            .check_service_accounts("throttle.exemptions")
    }

    /// True when a scope holding `count` of `limit` is at the warning threshold.
    pub fn near(&self, count: u32, limit: u32) -> bool {
        limit > 0 && u64::from(count) * 100 >= u64::from(limit) * u64::from(self.warn_at_percent)
    }
}

impl Exemptions {
    /// Checks that every `serviceAccounts` entry is `namespace:name`; `section` is the
    /// exemptions' YAML path for the message (e.g. `throttle.exemptions`).
    pub fn check_service_accounts(&self, section: &str) -> Result<(), String> {
        match self
            .service_accounts
            .iter()
            .enumerate()
            .find(|(_, sa)| !sa.contains(':'))
        {
            Some((i, sa)) => Err(format!(
                "{section}.serviceAccounts[{i}] must be namespace:name (or *:name), got {sa:?}"
            )),
            None => Ok(()),
        }
    }
}
