//! Reservations: Backups this replica admitted that its watch has not delivered yet. They
//! count against the caps exactly like indexed Backups, so a burst cannot slip past a cap
//! between two watch events. A reservation ends when the index has the Backup, or after
//! the policy's timeout (the create may have failed after our admission: another webhook
//! denied it, or the API server did).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::index::IndexView;

/// What identifies the admitted Backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReservationKey {
    /// `metadata.name` was known at admission.
    Name(String),
    /// `generateName` without a name: keyed by the review uid, matched once the index has a
    /// Backup of that snapshot whose name the API server generated from that `generateName`
    /// (an index lookup: `KindTable::generated_from`).
    Uid { uid: String, generate_name: String },
}

/// One admitted Backup not yet seen by the watch.
#[derive(Clone, Debug)]
pub struct Reservation {
    pub namespace: Arc<str>,
    pub key: ReservationKey,
    pub volume: Option<Arc<str>>,
    pub node: Option<Arc<str>>,
    pub snapshot: Arc<str>,
    pub at: Instant,
    pub at_unix: i64,
}

impl Reservation {
    /// The name for messages.
    pub fn display(&self) -> String {
        match &self.key {
            ReservationKey::Name(n) => n.clone(),
            ReservationKey::Uid { generate_name, .. } => format!("{generate_name}<generated>"),
        }
    }

    /// True once the index holds the Backup this reservation stands for. Runs for every
    /// reservation on every admission, under the throttle's mutex: lookups only.
    pub fn seen(&self, view: &IndexView<'_>) -> bool {
        match &self.key {
            ReservationKey::Name(name) => view.backup(&self.namespace, name).is_some(),
            ReservationKey::Uid { generate_name, .. } => view
                .data()
                .backups
                .generated_from(&self.namespace, generate_name, &self.snapshot)
                .next()
                .is_some(),
        }
    }

    /// [`Self::seen`] as it was: a `generateName` reservation scanned every Backup of its
    /// namespace for a name with its prefix. Kept only as the in-run baseline of
    /// `benches/reservations.rs` and of the test that both find the same Backups.
    #[doc(hidden)]
    pub fn seen_by_scan(&self, view: &IndexView<'_>) -> bool {
        match &self.key {
            ReservationKey::Name(_) => self.seen(view),
            ReservationKey::Uid { generate_name, .. } => view
                .data()
                .backups
                .in_namespace(&self.namespace)
                .any(|(name, b)| {
                    name.starts_with(generate_name.as_str())
                        && b.snapshot.as_deref() == Some(&*self.snapshot)
                }),
        }
    }
}

/// All reservations of this replica.
#[derive(Debug, Default)]
pub struct Reservations {
    items: Vec<Reservation>,
}

impl Reservations {
    /// Drops reservations the index has caught up with and those older than `timeout`.
    /// Returns how many were dropped as (seen, expired).
    pub fn settle(
        &mut self,
        view: &IndexView<'_>,
        now: Instant,
        timeout: Duration,
    ) -> (usize, usize) {
        self.settle_by(view, now, timeout, Reservation::seen)
    }

    /// [`Self::settle`] with another test of "seen" (the benchmark's baseline).
    #[doc(hidden)]
    pub fn settle_by(
        &mut self,
        view: &IndexView<'_>,
        now: Instant,
        timeout: Duration,
        is_seen: impl Fn(&Reservation, &IndexView<'_>) -> bool,
    ) -> (usize, usize) {
        let (mut seen, mut expired) = (0, 0);
        self.items.retain(|r| {
            if is_seen(r, view) {
                seen += 1;
                false
            } else if now.saturating_duration_since(r.at) >= timeout {
                expired += 1;
                false
            } else {
                true
            }
        });
        (seen, expired)
    }

    pub fn add(&mut self, r: Reservation) {
        // A retried review of the same name replaces the earlier reservation.
        if let ReservationKey::Name(n) = &r.key {
            self.items.retain(|o| {
                !(o.namespace == r.namespace && matches!(&o.key, ReservationKey::Name(m) if m == n))
            });
        }
        self.items.push(r);
    }

    /// Reservations of one namespace.
    pub fn in_namespace<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a Reservation> {
        self.items
            .iter()
            .filter(move |r| &*r.namespace == namespace)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}
