//! The nodes' leak verdicts (issue #19) as the webhook knows them: one record per node, read
//! from the verdict Leases the agents publish in the guard's namespace (the contract is the
//! `node_verdict` crate), fed by this module's own list and watch ([`watch`]) under the same
//! trust rules as the index's kinds (`crate::index::WatchState`: not trusted while listing, nor
//! once the watch has failed for longer than the staleness bound).
//!
//! A record says what the agent published; whether it still counts is a question of time: a
//! verdict whose `renewTime + leaseDurationSeconds` is past has EXPIRED (its agent stopped
//! renewing it) and no longer protects ([`VerdictView::status`], pure, `now` explicit).
//! A verdict Lease that cannot be read (annotations missing or wrong, no renewTime or
//! duration, a name that is not `lease_name(node)`) is kept aside with its error, counted and
//! ignored.

pub mod metrics;
pub mod watch;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard};
use std::time::Instant;

use k8s_openapi::api::coordination::v1::Lease;
use node_verdict::lease::lease_name;
use node_verdict::{Evidence, Published, Verdict};

use crate::index::{Trust, WatchState};

pub use metrics::NodeVerdictMetrics;

/// One node's published verdict.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeRecord {
    /// The Lease it came from.
    pub lease: String,
    pub verdict: Verdict,
    pub evidence: Evidence,
    /// `spec.holderIdentity`: the agent that wrote it.
    pub holder: String,
    /// `spec.renewTime`, unix milliseconds.
    pub renewed_unix_ms: i64,
    /// `spec.leaseDurationSeconds`.
    pub duration_seconds: i64,
}

impl NodeRecord {
    /// Unix milliseconds after which the verdict has expired.
    pub fn expires_unix_ms(&self) -> i64 {
        self.renewed_unix_ms
            .saturating_add(self.duration_seconds.saturating_mul(1000))
    }

    pub fn expired(&self, now_unix_ms: i64) -> bool {
        now_unix_ms > self.expires_unix_ms()
    }
}

/// What a node's verdict means now.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NodeStatus<'a> {
    /// No verdict Lease for the node.
    Unknown,
    /// The agent's verdict, still renewed.
    Current(&'a NodeRecord),
    /// The agent stopped renewing it: it no longer counts.
    Expired(&'a NodeRecord),
}

impl NodeStatus<'_> {
    /// The metric label: the verdict, `expired`, or `unknown`.
    pub fn label(self) -> &'static str {
        match self {
            NodeStatus::Unknown => "unknown",
            NodeStatus::Current(r) => r.verdict.as_str(),
            NodeStatus::Expired(_) => "expired",
        }
    }
}

/// A verdict Lease reduced to its record, or why it cannot be: `(lease name, node, record)`.
pub fn read_lease(lease: &Lease) -> Result<(String, String, NodeRecord), String> {
    let name = lease.metadata.name.clone().unwrap_or_default();
    let annotations = lease.metadata.annotations.clone().unwrap_or_default();
    let published = Published::from_annotations(&annotations).map_err(|e| e.to_string())?;
    if name != lease_name(&published.node) {
        return Err(format!(
            "its name is not the one of node {:?}'s verdict Lease ({:?})",
            published.node,
            lease_name(&published.node)
        ));
    }
    let spec = lease.spec.as_ref();
    let renewed_unix_ms = spec
        .and_then(|s| s.renew_time.as_ref())
        .map(|t| t.0.as_millisecond())
        .ok_or("it has no spec.renewTime (a verdict must be able to expire)")?;
    let duration_seconds = spec
        .and_then(|s| s.lease_duration_seconds)
        .filter(|d| *d > 0)
        .map(i64::from)
        .ok_or("it has no positive spec.leaseDurationSeconds (a verdict must be able to expire)")?;
    let record = NodeRecord {
        lease: name.clone(),
        verdict: published.verdict,
        evidence: published.evidence,
        holder: spec
            .and_then(|s| s.holder_identity.clone())
            .unwrap_or_default(),
        renewed_unix_ms,
        duration_seconds,
    };
    Ok((name, published.node, record))
}

/// The records, by node.
#[derive(Debug, Default)]
pub struct VerdictTable {
    by_node: HashMap<String, NodeRecord>,
    /// Lease name → node, for deletes.
    node_of: HashMap<String, String>,
    /// Lease name → why it cannot be read.
    unreadable: BTreeMap<String, String>,
    /// Nodes whose verdict is not `healthy`: a few at most, so the admission path scans
    /// them (cheaper than hashing the node) before it looks the record up.
    unhealthy: Vec<String>,
}

/// A verdict that changed, for the `node_verdict_changes_total` counter: `(node, from, to)`,
/// `from` = `none` for a node seen for the first time after the first list.
pub type Change = (String, &'static str, &'static str);

impl VerdictTable {
    pub fn len(&self) -> usize {
        self.by_node.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_node.is_empty()
    }

    /// Adds or replaces a node's record; the change of verdict, if any.
    pub fn insert(&mut self, node: String, record: NodeRecord, first_list: bool) -> Option<Change> {
        self.unreadable.remove(&record.lease);
        self.node_of.insert(record.lease.clone(), node.clone());
        let to = record.verdict.as_str();
        let healthy = record.verdict == Verdict::Healthy;
        let from = self.by_node.insert(node.clone(), record).map(|r| r.verdict);
        self.unhealthy.retain(|n| *n != node);
        if !healthy {
            self.unhealthy.push(node.clone());
        }
        match from {
            Some(from) if from.as_str() != to => Some((node, from.as_str(), to)),
            None if !first_list => Some((node, "none", to)),
            _ => None,
        }
    }

    /// Records that Lease `name` cannot be read (and drops what it said before).
    pub fn mark_unreadable(&mut self, name: &str, error: String) {
        self.remove(name);
        self.unreadable.insert(name.to_string(), error);
    }

    /// Forgets Lease `name`.
    pub fn remove(&mut self, name: &str) {
        self.unreadable.remove(name);
        if let Some(node) = self.node_of.remove(name) {
            self.by_node.remove(&node);
            self.unhealthy.retain(|n| *n != node);
        }
    }

    pub fn get(&self, node: &str) -> Option<&NodeRecord> {
        self.by_node.get(node)
    }

    pub fn nodes(&self) -> impl Iterator<Item = (&String, &NodeRecord)> {
        self.by_node.iter()
    }

    /// Unreadable verdict Leases and why.
    pub fn unreadable(&self) -> &BTreeMap<String, String> {
        &self.unreadable
    }
}

/// The verdicts and the trust of their watch; written by [`watch`], read by decisions.
#[derive(Debug)]
pub struct NodeVerdicts {
    table: RwLock<VerdictTable>,
    synced: AtomicBool,
    /// Lists completed so far (the first does not count changes).
    lists: AtomicU64,
    /// Milliseconds on `created`'s clock when the current run of watch errors began; 0 = none.
    failing_since_ms: AtomicU64,
    /// Whether a watch runs at all (no namespace configured: nothing to trust or wait for).
    watched: AtomicBool,
    created: Instant,
}

impl Default for NodeVerdicts {
    fn default() -> Self {
        Self {
            table: RwLock::default(),
            synced: AtomicBool::new(false),
            lists: AtomicU64::new(0),
            failing_since_ms: AtomicU64::new(0),
            watched: AtomicBool::new(false),
            created: Instant::now(),
        }
    }
}

/// A read-locked view for one decision, with the wall clock it judges expiry by (fixed, or read
/// when first needed).
pub struct VerdictView<'a> {
    table: RwLockReadGuard<'a, VerdictTable>,
    now_unix_ms: std::cell::OnceCell<i64>,
}

impl VerdictView<'_> {
    fn now(&self) -> i64 {
        *self.now_unix_ms.get_or_init(unix_ms_now)
    }

    /// What `node`'s verdict means at this view's `now`.
    pub fn status(&self, node: &str) -> NodeStatus<'_> {
        match self.table.get(node) {
            None => NodeStatus::Unknown,
            Some(r) if r.expired(self.now()) => NodeStatus::Expired(r),
            Some(r) => NodeStatus::Current(r),
        }
    }

    /// `node`'s verdict when it holds Backups back: `degrading` or `leaking`, not expired. The
    /// admission path's lookup: nothing to do (not even a clock read) while every node is
    /// healthy, one hash lookup otherwise.
    pub fn holding(&self, node: &str) -> Option<&NodeRecord> {
        if !self.table.unhealthy.iter().any(|n| n == node) {
            return None;
        }
        self.table
            .get(node)
            .filter(|r| r.verdict != Verdict::Healthy && !r.expired(self.now()))
    }

    /// True while some node's published verdict is not `healthy` (expired or not).
    pub fn any_unhealthy(&self) -> bool {
        !self.table.unhealthy.is_empty()
    }

    pub fn table(&self) -> &VerdictTable {
        &self.table
    }

    pub fn now_unix_ms(&self) -> i64 {
        self.now()
    }
}

/// Wall-clock unix milliseconds (what renewTime is written in).
pub fn unix_ms_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl NodeVerdicts {
    fn now_ms(&self) -> u64 {
        (self.created.elapsed().as_millis() as u64).max(1)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, VerdictTable> {
        self.table.write().unwrap_or_else(|p| p.into_inner())
    }

    /// A view judged at `now_unix_ms` (tests and benches choose it; the webhook passes
    /// [`unix_ms_now`]).
    pub fn view_at(&self, now_unix_ms: i64) -> VerdictView<'_> {
        let view = self.view();
        let _ = view.now_unix_ms.set(now_unix_ms);
        view
    }

    /// A view judged at the wall clock (read once, when first needed).
    pub fn view(&self) -> VerdictView<'_> {
        VerdictView {
            table: self.table.read().unwrap_or_else(|p| p.into_inner()),
            now_unix_ms: std::cell::OnceCell::new(),
        }
    }

    /// A (re)list begins: not trusted until [`NodeVerdicts::replace`].
    pub fn relist_start(&self) {
        self.watched.store(true, Ordering::Release);
        self.synced.store(false, Ordering::Release);
    }

    /// A complete list: the table becomes exactly these Leases. Returns the changes and the
    /// unreadable Leases (name, error).
    pub fn replace(&self, leases: &[Lease]) -> (Vec<Change>, Vec<(String, String)>) {
        let first_list = self.lists.fetch_add(1, Ordering::AcqRel) == 0;
        let mut table = self.write();
        // Unreadable Leases are found again by this list.
        table.unreadable.clear();
        // Leases gone from the list are gone.
        let listed: std::collections::HashSet<&str> = leases
            .iter()
            .filter_map(|l| l.metadata.name.as_deref())
            .collect();
        let gone: Vec<String> = table
            .node_of
            .keys()
            .filter(|name| !listed.contains(name.as_str()))
            .cloned()
            .collect();
        for name in gone {
            table.remove(&name);
        }
        let mut changes = Vec::new();
        let mut unreadable = Vec::new();
        for lease in leases {
            match apply_lease(&mut table, lease, first_list) {
                Ok(change) => changes.extend(change),
                Err(bad) => unreadable.push(bad),
            }
        }
        drop(table);
        self.alive();
        self.synced.store(true, Ordering::Release);
        (changes, unreadable)
    }

    /// An added or modified Lease: the change of verdict, or the Lease's name and why it
    /// cannot be read.
    pub fn upsert(&self, lease: &Lease) -> Result<Option<Change>, (String, String)> {
        self.alive();
        apply_lease(&mut self.write(), lease, false)
    }

    pub fn delete(&self, lease: &Lease) {
        self.alive();
        if let Some(name) = lease.metadata.name.as_deref() {
            self.write().remove(name);
        }
    }

    /// The watch brought data (or a bookmark): it works.
    pub fn alive(&self) {
        self.failing_since_ms.store(0, Ordering::Release);
    }

    /// A list or watch error; the first of a run starts the failure clock.
    pub fn failed(&self) {
        let _ = self.failing_since_ms.compare_exchange(
            0,
            self.now_ms(),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    fn state(&self) -> WatchState {
        WatchState {
            synced: self.synced.load(Ordering::Acquire),
            failing_since_ms: self.failing_since_ms.load(Ordering::Acquire),
        }
    }

    /// Trust with staleness bound `bound`; always trusted when no watch runs (no verdicts:
    /// nothing is held back, and nothing to wait for).
    pub fn trust(&self, bound: std::time::Duration) -> Trust {
        if !self.watched.load(Ordering::Acquire) {
            return Trust::Trusted { failing_ms: None };
        }
        let bound_ms = u64::try_from(bound.as_millis()).unwrap_or(u64::MAX);
        self.state().trust(self.now_ms(), bound_ms)
    }

    /// Milliseconds until a failing watch turns stale (see `WatchState::ms_until_stale`).
    pub fn until_stale(&self, bound: std::time::Duration) -> Option<std::time::Duration> {
        let bound_ms = u64::try_from(bound.as_millis()).unwrap_or(u64::MAX);
        self.state()
            .ms_until_stale(self.now_ms(), bound_ms)
            .map(std::time::Duration::from_millis)
    }
}

fn apply_lease(
    table: &mut VerdictTable,
    lease: &Lease,
    first_list: bool,
) -> Result<Option<Change>, (String, String)> {
    match read_lease(lease) {
        Ok((_, node, record)) => Ok(table.insert(node, record, first_list)),
        Err(error) => {
            let name = lease.metadata.name.clone().unwrap_or_default();
            table.mark_unreadable(&name, error.clone());
            Err((name, error))
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
