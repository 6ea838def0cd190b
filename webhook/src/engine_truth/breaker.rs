//! A circuit breaker per agent address: `threshold` consecutive failures (transport errors,
//! timeouts) open it; while open, checks skip the agent at once; after the cool-down one
//! probe is let through, whose success closes it and whose failure re-opens it.
//! Only agents with failures are kept, so the map is bounded by the failing agents.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct State {
    failures: u32,
    open_until: Option<Instant>,
    probing: bool,
}

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
    states: Mutex<HashMap<String, State>>,
}

impl Breakers {
    pub fn new(threshold: u32, cool_down: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cool_down,
            states: Mutex::new(HashMap::new()),
        }
    }

    fn states(&self) -> std::sync::MutexGuard<'_, HashMap<String, State>> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn admit(&self, agent: &str, now: Instant) -> Admit {
        let mut states = self.states();
        let Some(state) = states.get_mut(agent) else {
            return Admit::Call;
        };
        match state.open_until {
            None => Admit::Call,
            Some(until) if now < until => Admit::Skip,
            Some(_) if state.probing => Admit::Skip,
            Some(_) => {
                state.probing = true;
                Admit::Probe
            }
        }
    }

    /// The agent answered (whatever it said): close.
    pub fn success(&self, agent: &str) {
        self.states().remove(agent);
    }

    /// A transport error or timeout. Returns true when this failure opened the breaker.
    pub fn failure(&self, agent: &str, now: Instant) -> bool {
        let mut states = self.states();
        let state = states.entry(agent.to_string()).or_default();
        state.failures = state.failures.saturating_add(1);
        let reopen = state.probing || state.failures >= self.threshold;
        state.probing = false;
        if reopen {
            let was_open = state.open_until.is_some();
            state.open_until = Some(now + self.cool_down);
            return !was_open;
        }
        false
    }

    /// A probe that ended without a verdict (cancelled): let the next call probe.
    pub fn release_probe(&self, agent: &str) {
        if let Some(state) = self.states().get_mut(agent) {
            state.probing = false;
        }
    }

    /// Agents whose breaker is open now.
    pub fn open_count(&self, now: Instant) -> usize {
        self.states()
            .values()
            .filter(|s| s.open_until.is_some_and(|u| now < u))
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
