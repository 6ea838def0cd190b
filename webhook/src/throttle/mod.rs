//! Throttling of bulk Backup creation (the v1.7.2 incident: recurring jobs fired a Backup
//! for every volume after a power failure, 4,422 piled up Pending and longhorn-manager
//! leaked a gRPC connection per stuck Backup per reconcile).
//!
//! [`Throttle::admit`] is synchronous and pure apart from its own state (token buckets and
//! reservations behind ONE mutex, held for the check and the reservation together and
//! never across an await): a decision that takes a slot is atomic with respect to every
//! other decision of this replica. Counts come from the watch-fed index plus this
//! replica's reservations (admitted, not yet seen by the watch). Replicas coordinate only
//! through the API server: each sees the others' admitted Backups through its watch; the
//! overshoot this allows is bounded and documented in `webhook/THROTTLING.md`.
//!
//! Throttle denials carry code 429. Backups with an empty `spec.snapshotName` (Longhorn
//! syncing from the backup target) are never throttled nor counted.

pub mod admission;
pub mod inflight;
pub mod metrics;
pub mod reservations;
pub mod token_bucket;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kube::core::DynamicObject;
use longhorn_types::{BackupState, labels};

use crate::decision::BackupRequest;
use crate::index::IndexView;
use crate::policy::throttle::{RateLimit, RecurringAction, ThrottlePolicy};
use crate::policy::{Exemptions, Mode};
use inflight::{Counts, Holder, NodeMap, ScopeCount};
use reservations::{Reservation, ReservationKey, Reservations};
use token_bucket::Buckets;

pub use metrics::ThrottleMetrics;

/// The HTTP-style code of every throttle denial.
pub const THROTTLED_CODE: u16 = 429;

/// The clock a decision runs at: monotonic for buckets and reservations, wall-clock for the
/// ages of Backups (their `creationTimestamp`).
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub at: Instant,
    pub unix: i64,
}

impl Now {
    pub fn system() -> Self {
        Self {
            at: Instant::now(),
            unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
        }
    }

    /// `self` moved forward by `d` (tests).
    pub fn after(self, d: Duration) -> Self {
        Self {
            at: self.at + d,
            unix: self.unix + i64::try_from(d.as_secs()).unwrap_or(0),
        }
    }
}

/// What a throttle denial (or warning) is about. Also the `scope` metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    Volume,
    Node,
    Cluster,
    ClusterRate,
    RecurringJobRate,
    UserRate,
    Duplicate,
}

impl Scope {
    pub const ALL: [Scope; 7] = [
        Scope::Volume,
        Scope::Node,
        Scope::Cluster,
        Scope::ClusterRate,
        Scope::RecurringJobRate,
        Scope::UserRate,
        Scope::Duplicate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Volume => "volume",
            Scope::Node => "node",
            Scope::Cluster => "cluster",
            Scope::ClusterRate => "rate_cluster",
            Scope::RecurringJobRate => "rate_recurring_job",
            Scope::UserRate => "rate_user",
            Scope::Duplicate => "duplicate",
        }
    }

    fn is_rate(self) -> bool {
        matches!(
            self,
            Scope::ClusterRate | Scope::RecurringJobRate | Scope::UserRate
        )
    }

    fn is_cap(self) -> bool {
        matches!(self, Scope::Volume | Scope::Node | Scope::Cluster)
    }
}

/// What the throttle needs from a Backup CREATE.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ThrottleRequest {
    /// The AdmissionReview uid (reservation key for `generateName` requests).
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub generate_name: String,
    pub snapshot: String,
    /// The volume: `backup-volume` label, else the Snapshot's volume.
    pub volume: Option<String>,
    /// `spec.labels.RecurringJob`.
    pub recurring_job: Option<String>,
    pub username: String,
    pub groups: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// Dry runs are checked but take no token and no slot.
    pub dry_run: bool,
}

impl ThrottleRequest {
    pub fn from_backup(
        b: &BackupRequest,
        uid: &str,
        recurring_job: Option<String>,
        dry_run: bool,
    ) -> Self {
        Self {
            uid: uid.to_string(),
            namespace: b.namespace.clone(),
            name: b.name.clone(),
            generate_name: b.generate_name.clone(),
            snapshot: b.snapshot.clone(),
            volume: b.volume_label().map(str::to_string),
            recurring_job,
            username: b.username.clone(),
            groups: b.groups.clone(),
            labels: b.labels.clone(),
            dry_run,
        }
    }

    fn display_name(&self) -> String {
        if !self.name.is_empty() {
            format!("Backup {:?}", self.name)
        } else if !self.generate_name.is_empty() {
            format!("Backup with generateName {:?}", self.generate_name)
        } else {
            "Backup (no name)".to_string()
        }
    }
}

/// `spec.labels.RecurringJob` of a Backup object, if set and a non-empty string.
pub fn recurring_job_of(obj: &DynamicObject) -> Option<String> {
    obj.data
        .get("spec")?
        .get("labels")?
        .get(labels::RECURRING_JOB)?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Whether the throttle exemptions match (label `"*"` = any value; service accounts as
/// `namespace:name`, `*:name`).
pub fn is_exempt(ex: &Exemptions, req: &ThrottleRequest) -> bool {
    if ex
        .labels
        .iter()
        .any(|(k, v)| req.labels.get(k).is_some_and(|have| v == "*" || v == have))
    {
        return true;
    }
    if ex.users.contains(&req.username) {
        return true;
    }
    if let Some(rest) = req.username.strip_prefix("system:serviceaccount:")
        && let Some((ns, name)) = rest.split_once(':')
        && ex.service_accounts.iter().any(|sa| {
            sa.split_once(':')
                .is_some_and(|(wn, wname)| (wn == "*" || wn == ns) && wname == name)
        })
    {
        return true;
    }
    ex.groups.iter().any(|g| req.groups.contains(g))
}

/// A throttle denial: 429, the scope, and a message with the count, the limit, the oldest
/// holders and when to retry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThrottleDenial {
    pub scope: Scope,
    pub code: u16,
    pub message: String,
    pub retry_after_seconds: u32,
}

/// The outcome of [`Throttle::admit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ThrottleOutcome {
    /// Not subject to throttling (disabled, or empty `spec.snapshotName`); not counted.
    Skipped,
    /// Allowed; `warned` names the scope that would have denied it (warn-only mode,
    /// recurring-job rule) and `warnings` go to the client.
    Allowed {
        warnings: Vec<String>,
        warned: Option<Scope>,
        exempt: bool,
        reserved: bool,
    },
    Denied(ThrottleDenial),
}

#[derive(Debug, Default)]
struct Inner {
    reservations: Reservations,
    cluster_buckets: Buckets<Arc<str>>,
    job_buckets: Buckets<(Arc<str>, String)>,
    user_buckets: Buckets<String>,
    last_sweep: Option<Instant>,
}

/// A throttle violation before the policy decides what it costs.
struct Violation {
    scope: Scope,
    what: String,
    holders: Vec<Holder>,
    retry: Duration,
}

/// The throttle of one webhook replica.
#[derive(Debug, Default)]
pub struct Throttle {
    inner: Mutex<Inner>,
}

const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// Suggested retry for a cap: Longhorn's own requeue interval for a Backup is ~30 s.
const CAP_RETRY: Duration = Duration::from_secs(30);

impl Throttle {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The state is counters and reservations: serving after a panic elsewhere beats
        // refusing every Backup.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reservations held now.
    pub fn reservations(&self) -> usize {
        self.lock().reservations.len()
    }

    /// Namespaces whose cluster bucket is in use (not full again since its last sweep).
    pub fn cluster_bucket_namespaces(&self) -> Vec<Arc<str>> {
        self.lock().cluster_buckets.keys().cloned().collect()
    }

    /// Tokens left in the cluster bucket of `namespace` (burst when untouched).
    pub fn cluster_tokens(&self, policy: &ThrottlePolicy, namespace: &str, now: Instant) -> f64 {
        let key: Arc<str> = Arc::from(namespace);
        self.lock()
            .cluster_buckets
            .peek(&key, &policy.cluster_rate, now)
    }

    /// Decides whether `req` may take a slot, and takes it (tokens + reservation) when it
    /// is allowed and not a dry run. `view` must be the index view the rest of the
    /// decision used.
    pub fn admit(
        &self,
        policy: &ThrottlePolicy,
        view: &IndexView<'_>,
        req: &ThrottleRequest,
        now: Now,
    ) -> ThrottleOutcome {
        if !policy.enabled || req.snapshot.is_empty() {
            return ThrottleOutcome::Skipped;
        }
        let exempt = is_exempt(&policy.exemptions, req);
        let nodes = NodeMap::lookup(view, &req.namespace);
        let node = req.volume.as_deref().and_then(|v| nodes.node_of(v));
        let ns: Arc<str> = Arc::from(req.namespace.as_str());
        let job_key = req.recurring_job.as_ref().map(|j| (ns.clone(), j.clone()));

        let mut inner = self.lock();
        let inner = &mut *inner;
        inner.reservations.settle(
            view,
            now.at,
            Duration::from_secs(policy.reservation_timeout_seconds),
        );
        if inner
            .last_sweep
            .is_none_or(|t| now.at.saturating_duration_since(t) >= SWEEP_EVERY)
        {
            inner.cluster_buckets.sweep(&policy.cluster_rate, now.at);
            inner.job_buckets.sweep(&policy.recurring_job_rate, now.at);
            inner.user_buckets.sweep(&policy.user_rate, now.at);
            inner.last_sweep = Some(now.at);
        }
        let counts = inflight::count(
            view,
            &nodes,
            &inner.reservations,
            &req.namespace,
            req.volume.as_deref(),
            node.as_deref(),
            &req.snapshot,
            now.unix,
            policy.stuck_after_seconds,
        );

        // Tokens each bucket has now (refilled), without taking any yet.
        let rates: [(Scope, &RateLimit, f64); 3] = [
            (
                Scope::ClusterRate,
                &policy.cluster_rate,
                if policy.cluster_rate.enabled() {
                    inner
                        .cluster_buckets
                        .get(&ns, &policy.cluster_rate, now.at)
                        .tokens()
                } else {
                    f64::INFINITY
                },
            ),
            (
                Scope::RecurringJobRate,
                &policy.recurring_job_rate,
                match &job_key {
                    Some(k) if policy.recurring_job_rate.enabled() => inner
                        .job_buckets
                        .get(k, &policy.recurring_job_rate, now.at)
                        .tokens(),
                    _ => f64::INFINITY,
                },
            ),
            (
                Scope::UserRate,
                &policy.user_rate,
                if policy.user_rate.enabled() {
                    inner
                        .user_buckets
                        .get(&req.username, &policy.user_rate, now.at)
                        .tokens()
                } else {
                    f64::INFINITY
                },
            ),
        ];

        let violation = first_violation(policy, req, &counts, node.as_deref(), &rates);
        let recurring = req.recurring_job.is_some();
        let mut warnings = Vec::new();
        let mut warned = None;
        if let Some(v) = violation {
            let action = if exempt {
                None
            } else if policy.mode == Mode::WarnOnly {
                Some(RecurringAction::Warn)
            } else if recurring {
                Some(if v.scope.is_rate() {
                    policy.recurring_jobs.rates
                } else if v.scope.is_cap() {
                    policy.recurring_jobs.caps
                } else {
                    policy.recurring_jobs.duplicates
                })
            } else {
                Some(RecurringAction::Deny)
            };
            let message = denial_message(policy, req, node.as_deref(), &v);
            match action {
                Some(RecurringAction::Deny) => {
                    return ThrottleOutcome::Denied(ThrottleDenial {
                        scope: v.scope,
                        code: THROTTLED_CODE,
                        message,
                        retry_after_seconds: u32::try_from(v.retry.as_secs().max(1))
                            .unwrap_or(u32::MAX),
                    });
                }
                Some(RecurringAction::Warn) => {
                    let why = if policy.mode == Mode::WarnOnly {
                        "throttle warn-only mode"
                    } else {
                        "recurring-job rule"
                    };
                    warnings.push(format!("{why}, would deny: {message}"));
                    warned = Some(v.scope);
                }
                None => {}
            }
        }

        // Allowed: near-limit warnings, then take the tokens and the slot.
        if !exempt && warned.is_none() {
            near_limit_warnings(policy, req, &counts, node.as_deref(), &rates, &mut warnings);
        }
        if let Some(w) = released_warning(policy, req, &counts.released) {
            warnings.push(w);
        }
        if req.dry_run {
            return ThrottleOutcome::Allowed {
                warnings,
                warned,
                exempt,
                reserved: false,
            };
        }
        if !exempt {
            if policy.cluster_rate.enabled() {
                let b = inner.cluster_buckets.get(&ns, &policy.cluster_rate, now.at);
                if b.tokens() >= 1.0 {
                    b.take();
                }
            }
            if let Some(k) = &job_key
                && policy.recurring_job_rate.enabled()
            {
                let b = inner.job_buckets.get(k, &policy.recurring_job_rate, now.at);
                if b.tokens() >= 1.0 {
                    b.take();
                }
            }
            if policy.user_rate.enabled() {
                let b = inner
                    .user_buckets
                    .get(&req.username, &policy.user_rate, now.at);
                if b.tokens() >= 1.0 {
                    b.take();
                }
            }
        }
        let key = if req.name.is_empty() {
            ReservationKey::Uid {
                uid: req.uid.clone(),
                generate_name: req.generate_name.clone(),
            }
        } else {
            ReservationKey::Name(req.name.clone())
        };
        inner.reservations.add(Reservation {
            namespace: ns,
            key,
            volume: req.volume.as_deref().map(Arc::from),
            node,
            snapshot: Arc::from(req.snapshot.as_str()),
            at: now.at,
            at_unix: now.unix,
        });
        ThrottleOutcome::Allowed {
            warnings,
            warned,
            exempt,
            reserved: true,
        }
    }
}

fn cap_violation(
    scope: Scope,
    sc: &ScopeCount,
    limit: u32,
    what: impl FnOnce() -> String,
) -> Option<Violation> {
    (limit > 0 && sc.count >= limit).then(|| Violation {
        scope,
        what: what(),
        holders: sc.oldest.clone(),
        retry: CAP_RETRY,
    })
}

fn first_violation(
    policy: &ThrottlePolicy,
    req: &ThrottleRequest,
    counts: &Counts,
    node: Option<&str>,
    rates: &[(Scope, &RateLimit, f64); 3],
) -> Option<Violation> {
    if policy.deny_duplicates
        && let Some(d) = &counts.duplicate
    {
        return Some(Violation {
            scope: Scope::Duplicate,
            what: format!(
                "Snapshot {:?} already has a Backup in flight: {:?} ({}, {}); a second Backup of the same snapshot adds work and no protection",
                req.snapshot,
                d.name,
                d.state,
                age(d.age_seconds)
            ),
            holders: vec![d.clone()],
            retry: CAP_RETRY,
        });
    }
    if let Some(volume) = req.volume.as_deref()
        && let Some(v) = cap_violation(
            Scope::Volume,
            &counts.volume,
            policy.max_in_flight_per_volume,
            || {
                format!(
                    "volume {volume:?} has {} Backup(s) in flight, the limit is {} (throttle.maxInFlightPerVolume)",
                    counts.volume.count, policy.max_in_flight_per_volume
                )
            },
        )
    {
        return Some(v);
    }
    if let Some(node) = node
        && let Some(v) = cap_violation(
            Scope::Node,
            &counts.node,
            policy.max_in_flight_per_node,
            || {
                format!(
                    "node {node:?} has {} Backup(s) in flight, the limit is {} (throttle.maxInFlightPerNode)",
                    counts.node.count, policy.max_in_flight_per_node
                )
            },
        )
    {
        return Some(v);
    }
    if let Some(v) = cap_violation(
        Scope::Cluster,
        &counts.cluster,
        policy.max_in_flight_per_cluster,
        || {
            format!(
                "namespace {:?} has {} Backup(s) in flight, the limit is {} (throttle.maxInFlightPerCluster)",
                req.namespace, counts.cluster.count, policy.max_in_flight_per_cluster
            )
        },
    ) {
        return Some(v);
    }
    for (scope, limit, tokens) in rates {
        if *tokens >= 1.0 {
            continue;
        }
        let (field, whose) = match scope {
            Scope::ClusterRate => (
                "throttle.clusterRate",
                format!("namespace {:?}", req.namespace),
            ),
            Scope::RecurringJobRate => (
                "throttle.recurringJobRate",
                format!(
                    "recurring job {:?}",
                    req.recurring_job.as_deref().unwrap_or_default()
                ),
            ),
            _ => ("throttle.userRate", format!("user {:?}", req.username)),
        };
        let wait = if limit.per_second() > 0.0 {
            Duration::from_secs_f64(((1.0 - tokens).max(0.0) / limit.per_second()).ceil())
        } else {
            CAP_RETRY
        };
        return Some(Violation {
            scope: *scope,
            what: format!(
                "the Backup creation rate of {whose} is above {}/min with a burst of {} ({field}); {} of {} tokens left",
                limit.per_minute,
                limit.burst,
                tokens.floor().max(0.0),
                limit.burst
            ),
            holders: Vec::new(),
            retry: wait.max(Duration::from_secs(1)),
        });
    }
    None
}

fn near_limit_warnings(
    policy: &ThrottlePolicy,
    req: &ThrottleRequest,
    counts: &Counts,
    node: Option<&str>,
    rates: &[(Scope, &RateLimit, f64); 3],
    out: &mut Vec<String>,
) {
    let mut caps: Vec<(String, u32, u32)> = Vec::new();
    // A cap of 1 would warn on every Backup: near-limit warnings need a limit of 2 or more.
    if let Some(v) = req.volume.as_deref() {
        caps.push((
            format!("volume {v:?}"),
            counts.volume.count + 1,
            policy.max_in_flight_per_volume,
        ));
    }
    if let Some(n) = node {
        caps.push((
            format!("node {n:?}"),
            counts.node.count + 1,
            policy.max_in_flight_per_node,
        ));
    }
    caps.push((
        format!("namespace {:?}", req.namespace),
        counts.cluster.count + 1,
        policy.max_in_flight_per_cluster,
    ));
    for (whose, after, limit) in caps {
        if limit >= 2 && policy.near(after, limit) {
            out.push(format!(
                "longhorn-guard: {whose} now has {after} of {limit} Backups in flight; further Backups will be throttled (429) at the limit"
            ));
        }
    }
    for (scope, limit, tokens) in rates {
        if !limit.enabled() || !tokens.is_finite() {
            continue;
        }
        let used_after = f64::from(limit.burst) - (tokens - 1.0);
        if limit.burst >= 2
            && used_after * 100.0 >= f64::from(limit.burst) * f64::from(policy.warn_at_percent)
        {
            out.push(format!(
                "longhorn-guard: {} burst nearly used ({} of {} tokens left at {}/min) [{}]",
                match scope {
                    Scope::ClusterRate => format!("namespace {:?} creation rate", req.namespace),
                    Scope::RecurringJobRate => format!(
                        "recurring job {:?} creation rate",
                        req.recurring_job.as_deref().unwrap_or_default()
                    ),
                    _ => format!("user {:?} creation rate", req.username),
                },
                (tokens - 1.0).floor().max(0.0),
                limit.burst,
                limit.per_minute,
                scope.as_str()
            ));
        }
    }
}

/// The warning an allowed Backup carries when its volume has Backups that cannot finish and
/// no longer hold its slot: they still cost longhorn-manager a reconcile each ~30 s.
fn released_warning(
    policy: &ThrottlePolicy,
    req: &ThrottleRequest,
    released: &ScopeCount,
) -> Option<String> {
    if released.count == 0 {
        return None;
    }
    let list: Vec<String> = released
        .oldest
        .iter()
        .map(|h| {
            format!(
                "{} ({}, {}, snapshot {:?})",
                h.name,
                h.state,
                age(h.age_seconds),
                h.snapshot
            )
        })
        .collect();
    Some(format!(
        "longhorn-guard: volume {} has {} Backup(s) that cannot finish, their snapshot gone: {}; older than {} (throttle.stuckAfterSeconds), they no longer hold the volume's slot, but longhorn-manager keeps reconciling each: remove them with `longhorn-guard prune -n {}`",
        req.volume
            .as_deref()
            .map_or("unknown".to_string(), |v| format!("{v:?}")),
        released.count,
        list.join(", "),
        age(policy.stuck_after_seconds as i64),
        req.namespace
    ))
}

/// `42s`, `7m03s`, `2h05m`.
pub fn age(seconds: i64) -> String {
    let s = seconds.max(0);
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

fn denial_message(
    policy: &ThrottlePolicy,
    req: &ThrottleRequest,
    node: Option<&str>,
    v: &Violation,
) -> String {
    let mut m = format!(
        "longhorn-guard throttled {} in namespace {:?} (snapshot {:?}, volume {}, node {}) [throttled: {}]: {}.",
        req.display_name(),
        req.namespace,
        req.snapshot,
        req.volume
            .as_deref()
            .map_or("unknown".to_string(), |v| format!("{v:?}")),
        node.map_or("unknown".to_string(), |n| format!("{n:?}")),
        v.scope.as_str(),
        v.what
    );
    if !v.holders.is_empty() {
        let list: Vec<String> = v
            .holders
            .iter()
            .map(|h| {
                let mut s = format!("{} ({}, {})", h.name, h.state, age(h.age_seconds));
                if h.snapshot_gone {
                    let _ = write!(s, " [snapshot {:?} is gone]", h.snapshot);
                } else if h.stuck {
                    let _ = write!(
                        s,
                        " [stuck: over {}]",
                        age(policy.stuck_after_seconds as i64)
                    );
                }
                s
            })
            .collect();
        let _ = write!(m, " Oldest in flight: {}.", list.join(", "));
        let stuck: Vec<&Holder> = v
            .holders
            .iter()
            .filter(|h| (h.stuck || h.snapshot_gone) && h.state != "admitted")
            .collect();
        if let Some(first) = stuck.first() {
            let why = if first.snapshot_gone {
                format!(
                    "its snapshot {:?} is gone, so Longhorn will keep it Pending",
                    first.snapshot
                )
            } else {
                format!(
                    "it has been {} for {}, longer than {} (throttle.stuckAfterSeconds)",
                    first.state,
                    age(first.age_seconds),
                    age(policy.stuck_after_seconds as i64)
                )
            };
            let holds = if v.scope == Scope::Volume
                && first.snapshot_gone
                && first.state != BackupState::InProgress.as_str()
            {
                format!(
                    "it holds the volume's slot until it is {} old (throttle.stuckAfterSeconds), then the volume's Backups are admitted again while it keeps counting for the node and the cluster",
                    age(policy.stuck_after_seconds as i64)
                )
            } else {
                "it holds the slot until it ends".to_string()
            };
            let _ = write!(
                m,
                " Backup {:?} looks stuck: {why}; {holds}. Way out: `longhorn-guard prune`, or `kubectl -n {} delete backups.longhorn.io {}` after checking it has no backup URL (`kubectl -n {} get backups.longhorn.io {} -o jsonpath='{{.status.url}}'` prints nothing).",
                first.name, req.namespace, first.name, req.namespace, first.name
            );
        }
    }
    let retry = v.retry.as_secs().max(1);
    match v.scope {
        Scope::Duplicate => {
            let _ = write!(
                m,
                " Wait for that Backup to finish instead of creating another; retry after {retry}s if it fails."
            );
        }
        s if s.is_rate() => {
            let _ = write!(m, " Retry after {retry}s.");
        }
        _ => {
            let _ = write!(
                m,
                " Retry after about {retry}s, once a Backup in this scope completes."
            );
        }
    }
    if let Some(job) = &req.recurring_job {
        let _ = write!(
            m,
            " This Backup comes from recurring job {job:?}: the job pod exits and its CronJob retries it with a new snapshot (bounded by the Job's backoffLimit)."
        );
    }
    m
}

#[cfg(test)]
mod tests;
