//! A circuit breaker per agent address (the runtime's [`CircuitBreaker`], as the agent has per
//! engine endpoint): `threshold` consecutive failures (transport errors, timeouts) open it;
//! while open, checks skip the agent at once; after the cool-down one probe is let through,
//! whose success closes it and whose failure re-opens it.
//! Only agents with failures are kept, so the map is bounded by the failing agents.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use longhorn_guard_runtime::breaker::{Admission, BreakerState, CircuitBreaker};

/// Whether a call may go to the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Closed: call.
    Call,
    /// Half-open: this call is the one probe.
    Probe,
    /// Open (or a probe is already out): skip.
    Skip,
}

#[derive(Debug)]
pub struct Breakers {
    threshold: u32,
    cool_down: Duration,
    states: Mutex<HashMap<String, CircuitBreaker>>,
}

impl Breakers {
    pub fn new(threshold: u32, cool_down: Duration) -> Self {
        Self {
            threshold,
            cool_down,
            states: Mutex::new(HashMap::new()),
        }
    }

    fn states(&self) -> std::sync::MutexGuard<'_, HashMap<String, CircuitBreaker>> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn admit(&self, agent: &str, now: Instant) -> Admit {
        let mut states = self.states();
        let Some(breaker) = states.get_mut(agent) else {
            return Admit::Call;
        };
        match breaker.admit(now.into()) {
            Some(Admission::Pass) => Admit::Call,
            Some(Admission::Probe) => Admit::Probe,
            None => Admit::Skip,
        }
    }

    /// The agent answered (whatever it said): close.
    pub fn success(&self, agent: &str) {
        self.states().remove(agent);
    }

    /// A transport error or timeout. Returns true when this failure opened the breaker (from
    /// closed; a failed probe re-opens an open one).
    pub fn failure(&self, agent: &str, now: Instant) -> bool {
        let mut states = self.states();
        let breaker = states
            .entry(agent.to_string())
            .or_insert_with(|| CircuitBreaker::new(self.threshold, self.cool_down));
        let was_closed = breaker.state() == BreakerState::Closed;
        breaker.on_failure(now.into());
        was_closed && breaker.state() == BreakerState::Open
    }

    /// A probe that ended without a verdict (cancelled): let the next call probe.
    pub fn release_probe(&self, agent: &str) {
        if let Some(breaker) = self.states().get_mut(agent) {
            breaker.on_probe_abandoned();
        }
    }

    /// Agents whose breaker is open now.
    pub fn open_count(&self, now: Instant) -> usize {
        let now = now.into();
        self.states()
            .values()
            .filter(|b| b.is_cooling_down(now))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_k_failures_then_probes_once_after_cool_down() {
        let b = Breakers::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(b.admit("a", t0), Admit::Call);
        assert!(!b.failure("a", t0));
        assert!(!b.failure("a", t0));
        assert_eq!(
            b.admit("a", t0),
            Admit::Call,
            "2 of 3 failures: still closed"
        );
        assert!(b.failure("a", t0), "the 3rd failure opens it");
        assert_eq!(b.admit("a", t0), Admit::Skip);
        assert_eq!(b.admit("b", t0), Admit::Call, "per agent");
        assert_eq!(b.open_count(t0), 1);
        let later = t0 + Duration::from_secs(11);
        assert_eq!(b.admit("a", later), Admit::Probe);
        assert_eq!(b.admit("a", later), Admit::Skip, "one probe at a time");
        assert!(
            !b.failure("a", later),
            "a failed probe re-opens (already open)"
        );
        assert_eq!(b.admit("a", later), Admit::Skip);
        let much_later = later + Duration::from_secs(11);
        assert_eq!(b.admit("a", much_later), Admit::Probe);
        b.success("a");
        assert_eq!(b.admit("a", much_later), Admit::Call);
        assert_eq!(b.open_count(much_later), 0);
    }

    #[test]
    fn a_success_resets_the_count() {
        let b = Breakers::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        b.failure("a", t0);
        b.success("a");
        b.failure("a", t0);
        assert_eq!(b.admit("a", t0), Admit::Call);
    }

    #[test]
    fn a_cancelled_probe_lets_the_next_call_probe() {
        let b = Breakers::new(1, Duration::from_secs(1));
        let t0 = Instant::now();
        b.failure("a", t0);
        let later = t0 + Duration::from_secs(2);
        assert_eq!(b.admit("a", later), Admit::Probe);
        b.release_probe("a");
        assert_eq!(b.admit("a", later), Admit::Probe);
    }
}
