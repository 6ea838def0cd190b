//! The registries of live leases and channels, and the leak sweep over them (see the module docs
//! of [`super`]).

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::{EndpointState, PoolInner, lock};
use crate::connect::ChannelWitness;
use crate::metrics::LeakSweep;

pub(super) struct LeaseRecord {
    pub(super) endpoint: Arc<EndpointState>,
    pub(super) method: &'static str,
    pub(super) acquired: Instant,
    pub(super) deadline: Instant,
    /// Already counted in `leaked_leases_detected` (and logged).
    pub(super) reported: bool,
}

pub(super) struct ChannelRecord {
    pub(super) endpoint: String,
    pub(super) opened: Instant,
    /// When the pool closed it (took it out of its endpoint's list).
    pub(super) released: Option<Instant>,
    pub(super) witness: Weak<ChannelWitness>,
    pub(super) reported: bool,
}

/// A lease is leaked once it is still held `grace` past its deadline: the pool cuts every call
/// off at its deadline, so only a call future that nobody polls or drops any more gets there.
fn lease_leaked(deadline: Instant, grace: Duration, now: Instant) -> bool {
    now >= deadline + grace
}

/// A channel that is still alive is leaked once the pool let go of it more than `grace` ago, or
/// once it is older than `max_age + grace` (the pool closes channels at `max_age`).
fn channel_leaked(
    opened: Instant,
    released: Option<Instant>,
    max_age: Duration,
    grace: Duration,
    now: Instant,
) -> bool {
    released.is_some_and(|released| now >= released + grace) || now >= opened + max_age + grace
}

impl PoolInner {
    /// One pass over the live leases and channels (see the module docs); forgets channels whose
    /// witness is gone and books the result.
    pub(super) fn sweep_leaks(&self, now: Instant) {
        let grace = self.config.leak_grace;
        let mut sweep = LeakSweep::default();
        for record in lock(&self.live_leases).values_mut() {
            if !lease_leaked(record.deadline, grace, now) {
                continue;
            }
            sweep.leaked_leases += 1;
            sweep.oldest_leaked_lease = sweep.oldest_leaked_lease.max(now - record.acquired);
            if !record.reported {
                record.reported = true;
                sweep.newly_leaked_leases += 1;
                tracing::warn!(
                    endpoint = %record.endpoint.endpoint,
                    method = record.method,
                    held_for = ?(now - record.acquired),
                    past_deadline = ?(now - record.deadline),
                    "engine-proxy lease leaked: still held past its deadline (a call future is neither polled nor dropped)"
                );
            }
        }
        // An in-flight call may keep using a channel the pool let go of until its deadline.
        let channel_grace = self.config.max_lease + grace;
        lock(&self.channel_registry).retain(|id, record| {
            if record.witness.strong_count() == 0 {
                return false;
            }
            let leaked = channel_leaked(
                record.opened,
                record.released,
                self.config.max_age,
                channel_grace,
                now,
            );
            if leaked {
                sweep.leaked_channels += 1;
                sweep.oldest_leaked_channel = sweep.oldest_leaked_channel.max(now - record.opened);
                if !record.reported {
                    record.reported = true;
                    sweep.newly_leaked_channels += 1;
                    tracing::warn!(
                        endpoint = %record.endpoint,
                        id,
                        age = ?(now - record.opened),
                        released = ?record.released.map(|r| now - r),
                        "engine-proxy channel leaked: still open after the pool let go of it (or past its max age)"
                    );
                }
            }
            true
        });
        self.metrics.leak_swept(&sweep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_leaked_only_from_its_deadline_plus_the_grace() {
        let deadline = Instant::now();
        let grace = Duration::from_secs(10);
        assert!(!lease_leaked(deadline, grace, deadline));
        assert!(!lease_leaked(
            deadline,
            grace,
            deadline + Duration::from_secs(9)
        ));
        assert!(lease_leaked(deadline, grace, deadline + grace));
        assert!(lease_leaked(
            deadline,
            grace,
            deadline + Duration::from_secs(3600)
        ));
    }

    #[test]
    fn a_live_channel_is_leaked_after_its_release_or_max_age_plus_the_grace() {
        let opened = Instant::now();
        let (max_age, grace) = (Duration::from_secs(1800), Duration::from_secs(40));
        let s = Duration::from_secs;
        // Held by the pool and younger than max age + grace: fine.
        assert!(!channel_leaked(
            opened,
            None,
            max_age,
            grace,
            opened + s(1839)
        ));
        // The pool never lets a channel get that old.
        assert!(channel_leaked(
            opened,
            None,
            max_age,
            grace,
            opened + s(1840)
        ));
        // Let go of at 100 s: an in-flight call may still use it within the grace.
        let released = Some(opened + s(100));
        assert!(!channel_leaked(
            opened,
            released,
            max_age,
            grace,
            opened + s(139)
        ));
        assert!(channel_leaked(
            opened,
            released,
            max_age,
            grace,
            opened + s(140)
        ));
    }
}
