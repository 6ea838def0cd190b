//! In-flight Backups of a namespace as a watch sees them: the current non-terminal count, its
//! peak (updated on every event, not only at samples) and a timeline sampled every `every`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::watcher;
use kube::{Api, Client};
use longhorn_types::Backup;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::report::Sample;

/// What the tracker knows about one Backup.
#[derive(Clone, Debug)]
pub struct Tracked {
    pub state: String,
    pub volume: String,
    pub snapshot: String,
}

/// True for `Completed`, `Error`, `Unknown` (and 1.8's `Deleting`).
pub fn is_terminal(state: &str) -> bool {
    matches!(state, "Completed" | "Error" | "Unknown" | "Deleting")
}

/// When a Backup was in flight as the watch saw it: from its first event to the event that
/// showed it terminal or deleted (`None`: still in flight).
#[derive(Clone, Debug, PartialEq)]
pub struct InFlightSpan {
    pub volume: String,
    pub from: std::time::Instant,
    pub until: Option<std::time::Instant>,
}

#[derive(Default)]
struct State {
    backups: HashMap<String, Tracked>,
    /// Every Backup ever seen, by name (kept across deletions and relists).
    spans: HashMap<String, InFlightSpan>,
    in_flight: u64,
    peak: u64,
    timeline: Vec<Sample>,
}

impl State {
    fn recount(&mut self) {
        self.in_flight = self
            .backups
            .values()
            .filter(|b| !is_terminal(&b.state))
            .count() as u64;
        self.peak = self.peak.max(self.in_flight);
    }
}

/// A running tracker.
pub struct InFlightTracker {
    state: Arc<Mutex<State>>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl InFlightTracker {
    /// Starts watching Backups in `namespace`; the timeline's `t = 0` is `origin`.
    pub fn start(client: Client, namespace: &str, origin: Instant, every: Duration) -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let (stop, stopped) = watch::channel(false);
        let api: Api<Backup> = Api::namespaced(client, namespace);
        let watch_task = tokio::spawn(watch_loop(api, state.clone(), stopped.clone()));
        let sample_task = tokio::spawn(sample_loop(state.clone(), origin, every, stopped));
        Self {
            state,
            stop,
            tasks: vec![watch_task, sample_task],
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn in_flight(&self) -> u64 {
        self.lock().in_flight
    }

    pub fn peak(&self) -> u64 {
        self.lock().peak
    }

    pub fn timeline(&self) -> Vec<Sample> {
        self.lock().timeline.clone()
    }

    /// The in-flight span of every Backup seen so far.
    pub fn spans(&self) -> Vec<InFlightSpan> {
        self.lock().spans.values().cloned().collect()
    }

    /// `(volume, snapshot)` of every non-terminal Backup.
    pub fn non_terminal(&self) -> Vec<(String, String)> {
        self.lock()
            .backups
            .values()
            .filter(|b| !is_terminal(&b.state))
            .map(|b| (b.volume.clone(), b.snapshot.clone()))
            .collect()
    }

    /// A closure over [`Self::non_terminal`] for other tasks.
    pub fn non_terminal_fn(&self) -> Arc<dyn Fn() -> Vec<(String, String)> + Send + Sync> {
        let state = self.state.clone();
        Arc::new(move || {
            state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .backups
                .values()
                .filter(|b| !is_terminal(&b.state))
                .map(|b| (b.volume.clone(), b.snapshot.clone()))
                .collect()
        })
    }

    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

impl Drop for InFlightTracker {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn watch_loop(
    api: Api<Backup>,
    state: Arc<Mutex<State>>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut events = watcher(api, watcher::Config::default()).boxed();
    loop {
        let event = tokio::select! {
            _ = stopped.changed() => return,
            e = events.next() => e,
        };
        let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
        match event {
            Some(Ok(watcher::Event::Apply(b) | watcher::Event::InitApply(b))) => {
                let Some(name) = b.metadata.name.clone() else {
                    continue;
                };
                let tracked = Tracked {
                    state: b
                        .status
                        .as_ref()
                        .map(|st| st.state.clone())
                        .unwrap_or_default(),
                    volume: b
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(longhorn_types::labels::BACKUP_VOLUME))
                        .cloned()
                        .unwrap_or_default(),
                    snapshot: b.spec.snapshot_name.clone(),
                };
                let now = std::time::Instant::now();
                let span = s.spans.entry(name.clone()).or_insert_with(|| InFlightSpan {
                    volume: tracked.volume.clone(),
                    from: now,
                    until: None,
                });
                if is_terminal(&tracked.state) && span.until.is_none() {
                    span.until = Some(now);
                }
                s.backups.insert(name, tracked);
                s.recount();
            }
            Some(Ok(watcher::Event::Delete(b))) => {
                if let Some(name) = b.metadata.name.as_deref() {
                    s.backups.remove(name);
                    if let Some(span) = s.spans.get_mut(name) {
                        span.until.get_or_insert_with(std::time::Instant::now);
                    }
                }
                s.recount();
            }
            Some(Ok(watcher::Event::Init)) => s.backups.clear(),
            Some(Ok(watcher::Event::InitDone)) => s.recount(),
            Some(Err(e)) => {
                drop(s);
                tracing::debug!(error = %e, "in-flight tracker: watch error");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            None => return,
        }
    }
}

async fn sample_loop(
    state: Arc<Mutex<State>>,
    origin: Instant,
    every: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            _ = tick.tick() => {}
        }
        let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
        let sample = Sample {
            t: origin.elapsed().as_secs_f64(),
            in_flight: s.in_flight,
        };
        s.timeline.push(sample);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states() {
        for s in ["Completed", "Error", "Unknown", "Deleting"] {
            assert!(is_terminal(s), "{s}");
        }
        for s in ["", "Pending", "InProgress"] {
            assert!(!is_terminal(s), "{s}");
        }
    }

    #[test]
    fn peak_survives_a_drop() {
        let mut s = State::default();
        for i in 0..3 {
            s.backups.insert(
                format!("b{i}"),
                Tracked {
                    state: "Pending".into(),
                    volume: String::new(),
                    snapshot: String::new(),
                },
            );
        }
        s.recount();
        for b in s.backups.values_mut() {
            b.state = "Completed".into();
        }
        s.recount();
        assert_eq!((s.in_flight, s.peak), (0, 3));
    }
}
