//! Kubernetes Events about refused Backups, written off the request path.
//!
//! A denied CREATE leaves no Backup object, so the Event's regarding object is the Backup's
//! Volume (its `backup-volume` label, else its Snapshot's volume, uid from the index): then
//! `kubectl describe volume` shows why a recurring job's Backups are refused even after the
//! job's pod is gone. The one write this crate makes to the cluster.
//!
//! Bounded like client-go's event recorder, and more strictly:
//! - the admission handler only `try_send`s a [`Refusal`] on a bounded channel
//!   ([`EventsPolicy::queue_capacity`]); when it is full the refusal is dropped and counted
//!   (`event_refusals_total{outcome="queue_full"}`); nothing on the request path waits or fails;
//! - a background task aggregates refusals by namespace + volume + reason into one Event per
//!   series (`series.count` = refusals seen), written at most once per
//!   [`EventsPolicy::aggregate_window_seconds`] per series;
//! - all writes (creates and patches, every namespace) take a token from one bucket
//!   ([`EventsPolicy::writes`]);
//! - at most [`EventsPolicy::max_series`] series are tracked; a series idle for
//!   [`EventsPolicy::series_idle_seconds`] (client-go: 6 min) ends, the next refusal starts a new
//!   Event;
//! - a failed write (RBAC missing, API server down) is counted
//!   (`event_writes_total{outcome="error"}`) and logged, and retried at the next window.
//!
//! A 4,000-refusal storm over a few volumes thus writes one create per volume and reason, then at
//! most one patch per window each, plus a final patch at shutdown.

mod aggregate;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use longhorn_guard_runtime::event_note::fit_event_note;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use tokio::sync::{mpsc, oneshot};

use crate::decision::Reason;
use crate::index::Index;
use crate::policy::PolicyCell;

use crate::policy::EventsPolicy;
use aggregate::{Aggregator, PlannedWrite, Series, SeriesKey};

/// `reportingController` of the Events.
pub const REPORTING_CONTROLLER: &str = "longhorn-guard.io/webhook";
/// A write that takes longer is abandoned (and counted as failed).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// One refused Backup, as the admission handler hands it over.
#[derive(Clone, Debug)]
pub struct Refusal {
    pub namespace: String,
    /// `Backup "name"` or `Backup with generateName "…"`.
    pub backup: String,
    pub snapshot: String,
    /// The Backup's `backup-volume` label, if any.
    pub volume_label: Option<String>,
    pub reason: Reason,
    /// The guard's message (what the client saw).
    pub message: String,
    /// The requester's username.
    pub requester: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// `aggregated` (counted in an Event series), `queue_full`, `no_volume` (the volume is
    /// unknown: no object to attach the Event to), `series_full`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// `create` or `patch`.
    pub op: &'static str,
    /// `ok` or `error`.
    pub outcome: &'static str,
}

/// The Event writer's metrics.
#[derive(Clone, Debug, Default)]
pub struct EventMetrics {
    pub refusals: Family<RefusalLabels, Counter>,
    pub writes: Family<WriteLabels, Counter>,
    pub series: Gauge,
}

impl EventMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "event_refusals",
            "Refused Backups handed to the Event writer, by what became of them",
            m.refusals.clone(),
        );
        registry.register(
            "event_writes",
            "Event API writes about refused Backups, by operation and outcome",
            m.writes.clone(),
        );
        registry.register(
            "event_series",
            "Event series (namespace + volume + reason) tracked now",
            m.series.clone(),
        );
        m
    }

    fn refusal(&self, outcome: &'static str) {
        self.refusals
            .get_or_create(&RefusalLabels { outcome })
            .inc();
    }

    fn write(&self, op: &'static str, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.writes
            .get_or_create(&WriteLabels { op, outcome })
            .inc();
    }
}

/// The request path's end of the writer: never waits, never fails.
#[derive(Clone, Debug)]
pub struct EventSink {
    tx: mpsc::Sender<Refusal>,
    metrics: EventMetrics,
}

impl EventSink {
    /// Hands `refusal` to the writer, or drops it (counted) when the queue is full.
    pub fn record(&self, refusal: Refusal) {
        if self.tx.try_send(refusal).is_err() {
            self.metrics.refusal("queue_full");
        }
    }
}

/// The Event's `reason`: the guard's reason in PascalCase (`snapshot_missing` →
/// `SnapshotMissing`).
pub fn event_reason(reason: Reason) -> String {
    reason
        .as_str()
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// The Event's `note`: which Backup, who asked, the guard's message; cut to the API's 1 kB.
pub fn event_note(r: &Refusal) -> String {
    fit_event_note(format!(
        "{} (snapshot {:?}) refused for {}: {}",
        r.backup, r.snapshot, r.requester, r.message
    ))
}

/// The volume a refused Backup is about: its `backup-volume` label, else its Snapshot's
/// volume in the index; with the Volume's uid when indexed.
fn volume_of(index: &Index, r: &Refusal) -> Option<(String, Option<String>)> {
    let view = index.view();
    let volume = match &r.volume_label {
        Some(v) => v.clone(),
        None => match view.snapshot(&r.namespace, &r.snapshot) {
            crate::index::SnapshotLookup::Indexed(f) | crate::index::SnapshotLookup::Live(f) => {
                f.volume?
            }
            _ => return None,
        },
    };
    let entry = view.volume(&r.namespace, &volume)?;
    let uid = entry.uid.as_deref().map(str::to_string);
    Some((volume, uid))
}

/// What the writer needs.
pub struct EventWriter {
    pub client: kube::Client,
    pub index: Arc<Index>,
    pub policy: Arc<PolicyCell>,
    pub metrics: EventMetrics,
    /// `reportingInstance`: the pod name.
    pub instance: String,
}

/// A running writer: stop it with [`EventWriterHandle::stop`] to flush pending counts.
pub struct EventWriterHandle {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl EventWriterHandle {
    /// Writes the counts still pending (as the bucket allows, within `grace`), then stops.
    pub async fn stop(mut self, grace: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(grace, &mut self.task).await.is_err() {
            tracing::warn!(
                "event writer did not finish its final flush in time; pending Event counts lost"
            );
            self.task.abort();
        }
    }
}

impl Drop for EventWriterHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the writer task; the sink goes to the admission handlers.
pub fn spawn(writer: EventWriter) -> (EventSink, EventWriterHandle) {
    let capacity = writer.policy.get().events.queue_capacity;
    let (tx, rx) = mpsc::channel(capacity);
    let (stop_tx, stop_rx) = oneshot::channel();
    let sink = EventSink {
        tx,
        metrics: writer.metrics.clone(),
    };
    let task = tokio::spawn(writer.run(rx, stop_rx));
    (
        sink,
        EventWriterHandle {
            stop: Some(stop_tx),
            task,
        },
    )
}

impl EventWriter {
    async fn run(self, mut rx: mpsc::Receiver<Refusal>, mut stop: oneshot::Receiver<()>) {
        let mut agg = Aggregator::new(&self.policy.get().events, Instant::now());
        loop {
            let policy = self.policy.get();
            let wake = agg.next_wake(&policy.events, Instant::now());
            tokio::select! {
                received = rx.recv() => match received {
                    Some(r) => self.observe(&mut agg, &policy.events, r),
                    None => break,
                },
                _ = sleep_until(wake) => {}
                _ = &mut stop => break,
            }
            // Take what else is queued before writing, so a burst is one write per series.
            while let Ok(r) = rx.try_recv() {
                self.observe(&mut agg, &policy.events, r);
            }
            let now = Instant::now();
            agg.expire(&policy.events, now);
            self.write_all(&mut agg, &policy.events, now, false).await;
        }
        // Final flush: what is queued, then every pending count, as the bucket allows.
        rx.close();
        let policy = self.policy.get();
        while let Ok(r) = rx.try_recv() {
            self.observe(&mut agg, &policy.events, r);
        }
        loop {
            let (planned, ok) = self
                .write_all(&mut agg, &policy.events, Instant::now(), true)
                .await;
            if !agg.pending() || (planned > 0 && ok == 0) {
                break;
            }
            if planned == 0 {
                tokio::time::sleep(agg.bucket_wait(&policy.events, Instant::now())).await;
            }
        }
    }

    fn observe(&self, agg: &mut Aggregator, policy: &EventsPolicy, r: Refusal) {
        let Some((volume, uid)) = volume_of(&self.index, &r) else {
            self.metrics.refusal("no_volume");
            return;
        };
        let note = event_note(&r);
        let key = SeriesKey {
            namespace: r.namespace,
            volume,
            reason: r.reason,
        };
        let outcome = if agg.observe(policy, key, uid, note, Instant::now(), Timestamp::now()) {
            "aggregated"
        } else {
            "series_full"
        };
        self.metrics.refusal(outcome);
        self.metrics.series.set(agg.series.len() as i64);
    }

    /// Makes the writes due; returns how many were planned and how many succeeded.
    async fn write_all(
        &self,
        agg: &mut Aggregator,
        policy: &EventsPolicy,
        now: Instant,
        flush: bool,
    ) -> (usize, usize) {
        let planned = agg.plan(policy, now, flush);
        let mut ok = 0;
        for write in &planned {
            let Some(s) = agg.series.get(&write.key) else {
                continue;
            };
            let result = self.write(&write.key, s, write).await;
            ok += usize::from(result.is_ok());
            agg.written(write, result);
        }
        self.metrics.series.set(agg.series.len() as i64);
        (planned.len(), ok)
    }

    async fn write(&self, key: &SeriesKey, s: &Series, w: &PlannedWrite) -> Result<String, bool> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), &key.namespace);
        let series = (w.count > 1).then_some(EventSeries {
            count: w.count,
            last_observed_time: MicroTime(s.last_observed_at),
        });
        let (op, result) = match &w.patch {
            Some(name) => {
                let patch = serde_json::json!({ "series": series, "note": s.note });
                let (params, merge) = (PatchParams::default(), Patch::Merge(&patch));
                let call = api.patch(name, &params, &merge);
                ("patch", timed(call).await.map(|_| name.clone()))
            }
            None => {
                let event = self.new_event(key, s, series);
                let params = PostParams::default();
                let call = api.create(&params, &event);
                let name = event.metadata.name.clone().unwrap_or_default();
                // AlreadyExists: an earlier create that timed out went through; patch it next.
                let result = match timed(call).await {
                    Err(e) if e.starts_with("AlreadyExists") => Ok(name),
                    other => other.map(|_| name),
                };
                ("create", result)
            }
        };
        self.metrics.write(op, result.is_ok());
        result.map_err(|error| {
            tracing::warn!(
                %error,
                namespace = %key.namespace,
                volume = %key.volume,
                reason = key.reason.as_str(),
                count = w.count,
                "cannot {op} the Event about refused Backups on volume {:?} (needs create/patch of events.k8s.io events in namespace {:?}); admissions are unaffected",
                key.volume,
                key.namespace,
            );
            op == "patch" && error.contains("NotFound")
        })
    }

    fn new_event(&self, key: &SeriesKey, s: &Series, series: Option<EventSeries>) -> Event {
        let name = format!("{}.{:x}", key.volume, s.event_time.as_nanosecond());
        Event {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(key.namespace.clone()),
                ..ObjectMeta::default()
            },
            action: Some("RefuseBackup".to_string()),
            reason: Some(event_reason(key.reason)),
            note: Some(s.note.clone()),
            type_: Some("Warning".to_string()),
            event_time: Some(MicroTime(s.event_time)),
            series,
            regarding: Some(ObjectReference {
                api_version: Some("longhorn.io/v1beta2".to_string()),
                kind: Some("Volume".to_string()),
                name: Some(key.volume.clone()),
                namespace: Some(key.namespace.clone()),
                uid: s.volume_uid.clone(),
                ..ObjectReference::default()
            }),
            reporting_controller: Some(REPORTING_CONTROLLER.to_string()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        }
    }
}

/// A write with [`WRITE_TIMEOUT`]; the error as text (with the API's reason).
async fn timed<T>(call: impl Future<Output = Result<T, kube::Error>>) -> Result<T, String> {
    match tokio::time::timeout(WRITE_TIMEOUT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(kube::Error::Api(e))) => Err(format!("{} ({}): {}", e.reason, e.code, e.message)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {WRITE_TIMEOUT:?}")),
    }
}

async fn sleep_until(wake: Option<Instant>) {
    match wake {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// `reportingInstance`: `POD_NAME`, else `HOSTNAME` (a pod's name), else the controller.
pub fn reporting_instance() -> String {
    ["POD_NAME", "HOSTNAME"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .find(|v| !v.is_empty())
        .unwrap_or_else(|| "longhorn-guard-webhook".to_string())
}

#[cfg(test)]
mod tests;
