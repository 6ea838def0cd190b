//! The pure part of the Event writer: series (namespace + volume + reason), the write
//! bucket, and which writes are due when. Time is passed in; no I/O.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;

use crate::decision::Reason;
use crate::policy::EventsPolicy;
use crate::throttle::token_bucket::TokenBucket;

/// A series: one Event about one namespace + volume + reason.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct SeriesKey {
    pub(super) namespace: String,
    pub(super) volume: String,
    pub(super) reason: Reason,
}

#[derive(Debug)]
pub(super) struct Series {
    pub(super) volume_uid: Option<String>,
    /// The Event's name once created.
    pub(super) event_name: Option<String>,
    pub(super) event_time: Timestamp,
    pub(super) observed: i32,
    /// The count the API server has.
    pub(super) written: i32,
    pub(super) last_observed: Instant,
    pub(super) last_observed_at: Timestamp,
    pub(super) last_attempt: Option<Instant>,
    pub(super) note: String,
}

/// One write the aggregator wants made.
#[derive(Debug, PartialEq)]
pub(super) struct PlannedWrite {
    pub(super) key: SeriesKey,
    /// `None`: create; `Some(name)`: patch that Event.
    pub(super) patch: Option<String>,
    pub(super) count: i32,
}

/// The pure part: series, the write bucket, what is due when. Time is passed in.
#[derive(Debug)]
pub(super) struct Aggregator {
    pub(super) series: HashMap<SeriesKey, Series>,
    pub(super) bucket: TokenBucket,
}

impl Aggregator {
    pub(super) fn new(policy: &EventsPolicy, now: Instant) -> Self {
        Self {
            series: HashMap::new(),
            bucket: TokenBucket::new(&policy.writes, now),
        }
    }

    /// Counts one refusal; `false` when it starts a series past `max_series`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn observe(
        &mut self,
        policy: &EventsPolicy,
        key: SeriesKey,
        volume_uid: Option<String>,
        note: String,
        now: Instant,
        at: Timestamp,
    ) -> bool {
        if let Some(s) = self.series.get_mut(&key) {
            s.observed = s.observed.saturating_add(1);
            s.last_observed = now;
            s.last_observed_at = at;
            s.note = note;
            if volume_uid.is_some() {
                s.volume_uid = volume_uid;
            }
            return true;
        }
        if self.series.len() >= policy.max_series {
            return false;
        }
        self.series.insert(
            key,
            Series {
                volume_uid,
                event_name: None,
                event_time: at,
                observed: 1,
                written: 0,
                last_observed: now,
                last_observed_at: at,
                last_attempt: None,
                note,
            },
        );
        true
    }

    /// Ends series idle past the policy's bound whose last count was written (or tried).
    pub(super) fn expire(&mut self, policy: &EventsPolicy, now: Instant) {
        let idle = policy.idle();
        self.series.retain(|_, s| {
            let settled = s.observed == s.written || s.last_attempt >= Some(s.last_observed);
            !(settled && now.saturating_duration_since(s.last_observed) >= idle)
        });
    }

    pub(super) fn is_due(s: &Series, window: Duration, now: Instant, flush: bool) -> bool {
        s.observed > s.written
            && (flush
                || s.last_attempt
                    .is_none_or(|t| now.saturating_duration_since(t) >= window))
    }

    /// The writes due now, as far as the bucket allows; `flush` ignores the window (shutdown).
    pub(super) fn plan(
        &mut self,
        policy: &EventsPolicy,
        now: Instant,
        flush: bool,
    ) -> Vec<PlannedWrite> {
        let window = policy.window();
        let mut due: Vec<(&SeriesKey, &mut Series)> = self
            .series
            .iter_mut()
            .filter(|(_, s)| Self::is_due(s, window, now, flush))
            .collect();
        // Oldest attempts first, so a tight bucket serves every series in turn.
        due.sort_by_key(|(_, s)| s.last_attempt);
        let mut planned = Vec::new();
        for (key, s) in due {
            if self.bucket.try_take(&policy.writes, now).is_err() {
                break;
            }
            s.last_attempt = Some(now);
            planned.push(PlannedWrite {
                key: key.clone(),
                patch: s.event_name.clone(),
                count: s.observed,
            });
        }
        planned
    }

    /// Some refusal's count is not written yet.
    pub(super) fn pending(&self) -> bool {
        self.series.values().any(|s| s.observed > s.written)
    }

    /// How long until the bucket has a token.
    pub(super) fn bucket_wait(&self, policy: &EventsPolicy, now: Instant) -> Duration {
        let mut bucket = self.bucket.clone();
        bucket.refill(&policy.writes, now);
        bucket.wait_for_one(&policy.writes)
    }

    /// When the next write may be due (`None`: nothing pending).
    pub(super) fn next_wake(&self, policy: &EventsPolicy, now: Instant) -> Option<Instant> {
        let window = policy.window();
        let due = self
            .series
            .values()
            .filter(|s| s.observed > s.written)
            .map(|s| s.last_attempt.map_or(now, |t| t + window))
            .min()?;
        Some(due.max(now + self.bucket_wait(policy, now)))
    }

    /// Records a write's result: `Ok(name)` of the Event written; `Err(gone)` when it failed,
    /// `gone` when a patched Event no longer exists (the next write creates a new one).
    pub(super) fn written(&mut self, write: &PlannedWrite, result: Result<String, bool>) {
        let Some(s) = self.series.get_mut(&write.key) else {
            return;
        };
        match result {
            Ok(name) => {
                s.event_name = Some(name);
                s.written = write.count;
            }
            Err(true) => {
                s.event_name = None;
                s.written = 0;
                s.last_attempt = None;
            }
            Err(false) => {}
        }
    }
}
