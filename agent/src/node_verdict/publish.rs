//! The agent's writes for the verdict: its node's Lease (created if missing, replaced with the
//! resourceVersion last seen, so a concurrent writer makes it re-read instead of overwriting)
//! and one core/v1 Event on the Node per transition.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::node_verdict::{Evidence, Published, Transition, Verdict, lease};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use longhorn_guard_runtime::event_note::fit_event_note;

/// A write that takes longer is abandoned and counted (`reason="timeout"`).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// `source.component` / `reportingComponent` of the Events.
pub const EVENT_COMPONENT: &str = "longhorn-guard-agent";

/// Why a write failed, as the `reason` label of `node_verdict_publish_errors_total`.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("forbidden (the agent's Role must allow it): {0}")]
    Forbidden(String),
    #[error("conflict (another writer changed it first): {0}")]
    Conflict(String),
    #[error("not found (does the namespace exist?): {0}")]
    NotFound(String),
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("API server error: {0}")]
    Server(String),
    #[error("no answer within {WRITE_TIMEOUT:?}")]
    Timeout,
    #[error("cannot reach the API server: {0}")]
    Transport(String),
}

impl PublishError {
    pub const LABELS: [&'static str; 7] = [
        "forbidden",
        "conflict",
        "not_found",
        "invalid",
        "server",
        "timeout",
        "transport",
    ];

    pub fn label(&self) -> &'static str {
        match self {
            PublishError::Forbidden(_) => "forbidden",
            PublishError::Conflict(_) => "conflict",
            PublishError::NotFound(_) => "not_found",
            PublishError::Invalid(_) => "invalid",
            PublishError::Server(_) => "server",
            PublishError::Timeout => "timeout",
            PublishError::Transport(_) => "transport",
        }
    }

    fn from_kube(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(status) => {
                let text = format!("{} ({}): {}", status.reason, status.code, status.message);
                match status.code {
                    403 | 401 => PublishError::Forbidden(text),
                    409 => PublishError::Conflict(text),
                    404 => PublishError::NotFound(text),
                    400 | 422 => PublishError::Invalid(text),
                    _ => PublishError::Server(text),
                }
            }
            other => PublishError::Transport(other.to_string()),
        }
    }
}

async fn timed<T>(call: impl Future<Output = Result<T, kube::Error>>) -> Result<T, PublishError> {
    match tokio::time::timeout(WRITE_TIMEOUT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(PublishError::from_kube(e)),
        Err(_) => Err(PublishError::Timeout),
    }
}

fn now_micro() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// The Lease writer of one node.
pub struct LeaseWriter {
    api: Api<Lease>,
    name: String,
    node: String,
    holder: String,
    duration_seconds: i32,
    /// The Lease as last written or read: its resourceVersion makes the next replace
    /// conditional. `None`: read it first.
    cached: Option<Lease>,
}

impl LeaseWriter {
    pub fn new(
        client: kube::Client,
        namespace: &str,
        node: &str,
        holder: &str,
        duration: Duration,
    ) -> Self {
        LeaseWriter {
            api: Api::namespaced(client, namespace),
            name: lease::lease_name(node),
            node: node.to_owned(),
            holder: holder.to_owned(),
            duration_seconds: i32::try_from(duration.as_secs()).unwrap_or(i32::MAX),
            cached: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Writes the verdict and renews the Lease: one replace when the last write is known, a
    /// read first otherwise, a create when there is none. A conflict re-reads and tries once
    /// more; what still fails is returned (and retried at the next renewal).
    pub async fn publish(
        &mut self,
        verdict: Verdict,
        evidence: &Evidence,
    ) -> Result<(), PublishError> {
        let published = Published {
            node: self.node.clone(),
            verdict,
            evidence: evidence.clone(),
        };
        match self.write(&published).await {
            Err(PublishError::Conflict(_)) => {
                self.cached = None;
                self.write(&published).await
            }
            other => other,
        }
    }

    async fn write(&mut self, published: &Published) -> Result<(), PublishError> {
        let current = match self.cached.take() {
            Some(lease) => Some(lease),
            None => timed(self.api.get_opt(&self.name)).await?,
        };
        let now = now_micro();
        let written = match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        labels: Some(lease::labels()),
                        annotations: Some(published.annotations()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.holder.clone()),
                        lease_duration_seconds: Some(self.duration_seconds),
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                timed(self.api.create(&PostParams::default(), &lease)).await?
            }
            Some(mut lease) => {
                let meta = &mut lease.metadata;
                meta.labels
                    .get_or_insert_with(BTreeMap::new)
                    .extend(lease::labels());
                meta.annotations
                    .get_or_insert_with(BTreeMap::new)
                    .extend(published.annotations());
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                if spec.holder_identity.as_deref() != Some(&self.holder) {
                    // A new agent pod takes over its node's Lease.
                    spec.holder_identity = Some(self.holder.clone());
                    spec.acquire_time = Some(now.clone());
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                spec.lease_duration_seconds = Some(self.duration_seconds);
                spec.renew_time = Some(now);
                // Carries metadata.resourceVersion: a concurrent change answers 409.
                timed(self.api.replace(&self.name, &PostParams::default(), &lease)).await?
            }
        };
        self.cached = Some(written);
        Ok(())
    }
}

/// The Event's reason for a verdict entered.
pub fn event_reason(to: Verdict) -> &'static str {
    match to {
        Verdict::Healthy => "NodeVerdictHealthy",
        Verdict::Degrading => "NodeVerdictDegrading",
        Verdict::Leaking => "NodeVerdictLeaking",
    }
}

/// The Event about one transition of `node`'s verdict: on the Node (uid = the node's name, as
/// the kubelet writes it, so `kubectl describe node` lists it), in `namespace` (a Node's
/// Events live in `default`).
pub fn transition_event(
    node: &str,
    namespace: &str,
    holder: &str,
    transition: &Transition,
    evidence: &Evidence,
) -> Event {
    let message = format!(
        "longhorn-manager on node {node}: {} -> {}: {}; {}",
        transition.from,
        transition.to,
        evidence.summary(),
        evidence.reason
    );
    let message = fit_event_note(message);
    let at = Time(system_to_timestamp(transition.at));
    Event {
        metadata: ObjectMeta {
            generate_name: Some("longhorn-guard-node-verdict-".to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                lease::ANNOTATION_NODE.to_owned(),
                lease_label_value(node),
            )])),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Node".to_owned()),
            name: Some(node.to_owned()),
            uid: Some(node.to_owned()),
            ..ObjectReference::default()
        },
        reason: Some(event_reason(transition.to).to_owned()),
        message: Some(message),
        type_: Some(
            if transition.to == Verdict::Healthy {
                "Normal"
            } else {
                "Warning"
            }
            .to_owned(),
        ),
        source: Some(EventSource {
            component: Some(EVENT_COMPONENT.to_owned()),
            host: Some(node.to_owned()),
        }),
        first_timestamp: Some(at.clone()),
        last_timestamp: Some(at),
        count: Some(1),
        reporting_component: Some(EVENT_COMPONENT.to_owned()),
        reporting_instance: Some(holder.to_owned()),
        ..Event::default()
    }
}

/// A label value is at most 63 characters: longer node names are cut (the label only helps
/// `kubectl get events -l`; the Event's involvedObject names the node in full).
fn lease_label_value(node: &str) -> String {
    let cut: String = node.chars().take(63).collect();
    cut.trim_end_matches(['-', '.', '_']).to_owned()
}

fn system_to_timestamp(at: SystemTime) -> Timestamp {
    let nanos = at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(0));
    Timestamp::from_nanosecond(nanos).unwrap_or_else(|_| Timestamp::now())
}

pub async fn create_event(api: &Api<Event>, event: &Event) -> Result<(), PublishError> {
    timed(api.create(&PostParams::default(), event))
        .await
        .map(|_| ())
}

/// Now as Unix seconds (for the last-publish gauge).
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use longhorn_guard_runtime::event_note::MAX_EVENT_NOTE_BYTES;

    #[test]
    fn the_event_names_the_node_the_transition_and_the_evidence() {
        let evidence = Evidence {
            connections: 420,
            connections_per_minute: 60.0,
            reason: "connection floor 400 >= 150".into(),
            ..Evidence::default()
        };
        let t = Transition {
            from: Verdict::Healthy,
            to: Verdict::Leaking,
            at: UNIX_EPOCH + Duration::from_secs(1_796_532_600),
        };
        let e = transition_event("node-a", "default", "agent-x", &t, &evidence);
        assert_eq!(e.reason.as_deref(), Some("NodeVerdictLeaking"));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.involved_object.kind.as_deref(), Some("Node"));
        assert_eq!(e.involved_object.name.as_deref(), Some("node-a"));
        let message = e.message.unwrap_or_default();
        assert!(
            message.contains("node node-a: healthy -> leaking: 420 connections"),
            "{message}"
        );
        assert!(message.contains("connection floor 400"), "{message}");
        assert_eq!(
            e.first_timestamp.map(|t| t.0.to_string()),
            Some("2026-12-06T04:50:00Z".to_owned())
        );
        let long = Evidence {
            reason: "x".repeat(5000),
            ..evidence
        };
        let e = transition_event("node-a", "default", "agent-x", &t, &long);
        assert!(e.message.is_some_and(|m| m.len() <= MAX_EVENT_NOTE_BYTES));
        assert_eq!(lease_label_value(&"n".repeat(100)).len(), 63);
    }
}
