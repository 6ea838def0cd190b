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
mod request;
pub mod reservations;
pub mod token_bucket;
mod violations;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::index::IndexView;
use crate::policy::Mode;
use crate::policy::throttle::{RateLimit, RecurringAction, ThrottlePolicy};
use inflight::NodeMap;
use reservations::{Reservation, ReservationKey, Reservations};
use token_bucket::Buckets;
use violations::{
    Violation, denial_message, first_violation, near_limit_warnings, released_warning,
};

pub use request::{ThrottleRequest, is_exempt, recurring_job_of};
pub use violations::age;

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

/// The throttle of one webhook replica.
#[derive(Debug, Default)]
pub struct Throttle {
    inner: Mutex<Inner>,
}

const SWEEP_EVERY: Duration = Duration::from_secs(10);
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
        let keys = BucketKeys::of(req);

        let mut inner = self.lock();
        let inner = &mut *inner;
        inner.housekeep(policy, view, now);
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
        let rates = inner.tokens(policy, &keys, req, now.at);

        let mut warnings = Vec::new();
        let mut warned = None;
        if let Some(v) = first_violation(policy, req, &counts, node.as_deref(), &rates) {
            match judge(policy, exempt, req, node.as_deref(), &v) {
                Err(denial) => return ThrottleOutcome::Denied(denial),
                Ok(Some(warning)) => {
                    warnings.push(warning);
                    warned = Some(v.scope);
                }
                Ok(None) => {}
            }
        }

        // Allowed: near-limit warnings, then take the tokens and the slot.
        if !exempt && warned.is_none() {
            near_limit_warnings(policy, req, &counts, node.as_deref(), &rates, &mut warnings);
        }
        if let Some(w) = released_warning(policy, req, &counts.released) {
            warnings.push(w);
        }
        if let Some(why) = &req.counts_untrusted
            && !exempt
        {
            warnings.push(format!(
                "longhorn-guard: in-flight caps and duplicates not checked for {}: {why}; rates still apply",
                req.display_name()
            ));
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
            inner.take_tokens(policy, &keys, req, now.at);
        }
        inner.reserve(req, keys.namespace, node, now);
        ThrottleOutcome::Allowed {
            warnings,
            warned,
            exempt,
            reserved: true,
        }
    }
}

/// What violation `v` costs `req`: `Err` the denial, `Ok(Some(..))` the warning that
/// replaces it, `Ok(None)` nothing (exempt).
fn judge(
    policy: &ThrottlePolicy,
    exempt: bool,
    req: &ThrottleRequest,
    node: Option<&str>,
    v: &Violation,
) -> Result<Option<String>, ThrottleDenial> {
    let message = denial_message(policy, req, node, v);
    match violation_action(policy, exempt, req.recurring_job.is_some(), v.scope) {
        Some(RecurringAction::Deny) => Err(ThrottleDenial {
            scope: v.scope,
            code: THROTTLED_CODE,
            message,
            retry_after_seconds: u32::try_from(v.retry.as_secs().max(1)).unwrap_or(u32::MAX),
        }),
        Some(RecurringAction::Warn) => {
            let why = if policy.mode == Mode::WarnOnly {
                "throttle warn-only mode"
            } else {
                "recurring-job rule"
            };
            Ok(Some(format!("{why}, would deny: {message}")))
        }
        None => Ok(None),
    }
}

/// What a violation costs: `None` for an exempt request, a warning in warn-only mode, the
/// recurring-job rule's action for a recurring job's Backup, else a denial.
fn violation_action(
    policy: &ThrottlePolicy,
    exempt: bool,
    recurring: bool,
    scope: Scope,
) -> Option<RecurringAction> {
    if exempt {
        None
    } else if policy.mode == Mode::WarnOnly {
        Some(RecurringAction::Warn)
    } else if recurring {
        Some(if scope.is_rate() {
            policy.recurring_jobs.rates
        } else if scope.is_cap() {
            policy.recurring_jobs.caps
        } else {
            policy.recurring_jobs.duplicates
        })
    } else {
        Some(RecurringAction::Deny)
    }
}

/// The keys of a request's cluster and recurring-job buckets (its user bucket is keyed by
/// its username).
struct BucketKeys {
    namespace: Arc<str>,
    job: Option<(Arc<str>, String)>,
}

impl BucketKeys {
    fn of(req: &ThrottleRequest) -> Self {
        let namespace: Arc<str> = Arc::from(req.namespace.as_str());
        let job = req
            .recurring_job
            .as_ref()
            .map(|j| (namespace.clone(), j.clone()));
        Self { namespace, job }
    }
}

impl Inner {
    /// Settles reservations the watch has caught up with (or that timed out) and, every
    /// [`SWEEP_EVERY`], drops buckets that are full again.
    fn housekeep(&mut self, policy: &ThrottlePolicy, view: &IndexView<'_>, now: Now) {
        self.reservations.settle(
            view,
            now.at,
            Duration::from_secs(policy.reservation_timeout_seconds),
        );
        if self
            .last_sweep
            .is_none_or(|t| now.at.saturating_duration_since(t) >= SWEEP_EVERY)
        {
            self.cluster_buckets.sweep(&policy.cluster_rate, now.at);
            self.job_buckets.sweep(&policy.recurring_job_rate, now.at);
            self.user_buckets.sweep(&policy.user_rate, now.at);
            self.last_sweep = Some(now.at);
        }
    }

    /// Tokens each bucket has now (refilled), without taking any yet; infinite when the
    /// rate is off.
    fn tokens<'p>(
        &mut self,
        policy: &'p ThrottlePolicy,
        keys: &BucketKeys,
        req: &ThrottleRequest,
        at: Instant,
    ) -> [(Scope, &'p RateLimit, f64); 3] {
        let cluster = if policy.cluster_rate.enabled() {
            self.cluster_buckets
                .get(&keys.namespace, &policy.cluster_rate, at)
                .tokens()
        } else {
            f64::INFINITY
        };
        let job = match &keys.job {
            Some(k) if policy.recurring_job_rate.enabled() => self
                .job_buckets
                .get(k, &policy.recurring_job_rate, at)
                .tokens(),
            _ => f64::INFINITY,
        };
        let user = if policy.user_rate.enabled() {
            self.user_buckets
                .get(&req.username, &policy.user_rate, at)
                .tokens()
        } else {
            f64::INFINITY
        };
        [
            (Scope::ClusterRate, &policy.cluster_rate, cluster),
            (Scope::RecurringJobRate, &policy.recurring_job_rate, job),
            (Scope::UserRate, &policy.user_rate, user),
        ]
    }

    /// Takes a token from each enabled bucket that has one.
    fn take_tokens(
        &mut self,
        policy: &ThrottlePolicy,
        keys: &BucketKeys,
        req: &ThrottleRequest,
        at: Instant,
    ) {
        if policy.cluster_rate.enabled() {
            let b = self
                .cluster_buckets
                .get(&keys.namespace, &policy.cluster_rate, at);
            if b.tokens() >= 1.0 {
                b.take();
            }
        }
        if let Some(k) = &keys.job
            && policy.recurring_job_rate.enabled()
        {
            let b = self.job_buckets.get(k, &policy.recurring_job_rate, at);
            if b.tokens() >= 1.0 {
                b.take();
            }
        }
        if policy.user_rate.enabled() {
            let b = self.user_buckets.get(&req.username, &policy.user_rate, at);
            if b.tokens() >= 1.0 {
                b.take();
            }
        }
    }

    /// Holds the slot of an admitted Backup until the watch sees it.
    fn reserve(
        &mut self,
        req: &ThrottleRequest,
        namespace: Arc<str>,
        node: Option<Arc<str>>,
        now: Now,
    ) {
        let key = if req.name.is_empty() {
            ReservationKey::Uid {
                uid: req.uid.clone(),
                generate_name: req.generate_name.clone(),
            }
        } else {
            ReservationKey::Name(req.name.clone())
        };
        self.reservations.add(Reservation {
            namespace,
            key,
            volume: req.volume.as_deref().map(Arc::from),
            node,
            snapshot: Arc::from(req.snapshot.as_str()),
            at: now.at,
            at_unix: now.unix,
        });
    }
}

#[cfg(test)]
mod tests;
