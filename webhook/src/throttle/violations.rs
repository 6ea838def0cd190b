//! What the throttle finds wrong with a Backup (the first cap, rate or duplicate it
//! violates), the warnings of an allowed Backup near a limit, and the messages that name the
//! Backups holding the slots and the way out.

use std::fmt::Write as _;
use std::time::Duration;

use longhorn_types::BackupState;

use super::inflight::{Counts, Holder, ScopeCount};
use super::{Scope, ThrottleRequest};
use crate::policy::throttle::{RateLimit, ThrottlePolicy};

/// Suggested retry for a cap: Longhorn's own requeue interval for a Backup is ~30 s.
const CAP_RETRY: Duration = Duration::from_secs(30);

/// A throttle violation before the policy decides what it costs.
pub(super) struct Violation {
    pub(super) scope: Scope,
    pub(super) what: String,
    pub(super) holders: Vec<Holder>,
    pub(super) retry: Duration,
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

pub(super) fn first_violation(
    policy: &ThrottlePolicy,
    req: &ThrottleRequest,
    counts: &Counts,
    node: Option<&str>,
    rates: &[(Scope, &RateLimit, f64); 3],
) -> Option<Violation> {
    // Counts read from a Backup watch that cannot be trusted (still listing, or failing past
    // the staleness bound) would deny on Backups that have long finished: only rates apply.
    if req.counts_untrusted.is_none()
        && let Some(v) = count_violation(policy, req, counts, node)
    {
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

pub(super) fn near_limit_warnings(
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
pub(super) fn released_warning(
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

pub(super) fn denial_message(
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
    holders_note(&mut m, policy, req, v);
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

/// The oldest Backups in flight in the violated scope, and the way out when one of them looks
/// stuck.
fn holders_note(m: &mut String, policy: &ThrottlePolicy, req: &ThrottleRequest, v: &Violation) {
    if v.holders.is_empty() {
        return;
    }
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
        stuck_note(m, policy, req, v.scope, first);
    }
}

/// Why `first` looks stuck, what it holds, and how to remove it.
fn stuck_note(
    m: &mut String,
    policy: &ThrottlePolicy,
    req: &ThrottleRequest,
    scope: Scope,
    first: &Holder,
) {
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
    let holds = if scope == Scope::Volume
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

/// A duplicate or an in-flight cap, from the counts.
fn count_violation(
    policy: &ThrottlePolicy,
    req: &ThrottleRequest,
    counts: &Counts,
    node: Option<&str>,
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
    None
}
