//! Circuit breaker of one remote endpoint (an engine proxy for the agent, an agent for the
//! webhook): closed → open after K consecutive failures → half-open (one probe) after a
//! cool-down → closed on the probe's success, open again on failure.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Exported as `breaker_state{endpoint}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    HalfOpen,
    Open,
}

impl BreakerState {
    pub fn metric_value(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

/// What the breaker lets a call do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Breaker closed: a normal call.
    Pass,
    /// Breaker half-open: this call is the one probe.
    Probe,
}

/// How many recently failed connections are remembered (a few per endpoint at most are open).
const FAILED_CONNECTIONS_REMEMBERED: usize = 16;

#[derive(Debug)]
pub struct CircuitBreaker {
    failure_threshold: u32,
    cool_down: Duration,
    state: Inner,
    /// Connections whose failure has already been counted: every call in flight on a connection
    /// that breaks fails, but that is one failure of the endpoint, not one per call.
    failed_connections: VecDeque<u64>,
}

#[derive(Debug, Clone, Copy)]
enum Inner {
    Closed { consecutive_failures: u32 },
    Open { until: Instant },
    HalfOpen { probe_in_flight: bool },
}

impl CircuitBreaker {
    pub fn new(failure_threshold: u32, cool_down: Duration) -> Self {
        Self {
            failure_threshold: failure_threshold.max(1),
            cool_down,
            state: Inner::Closed {
                consecutive_failures: 0,
            },
            failed_connections: VecDeque::new(),
        }
    }

    pub fn state(&self) -> BreakerState {
        match self.state {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// `None` = shed the call. An open breaker past its cool-down turns half-open and admits
    /// exactly one probe; every other call is shed until the probe reports.
    pub fn admit(&mut self, now: Instant) -> Option<Admission> {
        match self.state {
            Inner::Closed { .. } => Some(Admission::Pass),
            Inner::Open { until } if now < until => None,
            Inner::Open { .. }
            | Inner::HalfOpen {
                probe_in_flight: false,
            } => {
                self.state = Inner::HalfOpen {
                    probe_in_flight: true,
                };
                Some(Admission::Probe)
            }
            Inner::HalfOpen {
                probe_in_flight: true,
            } => None,
        }
    }

    /// Whether the breaker is open and still cooling down at `now` (no probe due yet).
    pub fn is_cooling_down(&self, now: Instant) -> bool {
        matches!(self.state, Inner::Open { until } if now < until)
    }

    /// Whether [`Self::admit`] would shed a call now, without changing state.
    pub fn would_shed(&self, now: Instant) -> bool {
        match self.state {
            Inner::Closed { .. } => false,
            Inner::Open { until } => now < until,
            Inner::HalfOpen { probe_in_flight } => probe_in_flight,
        }
    }

    /// For error messages.
    pub fn describe(&self, now: Instant) -> String {
        match self.state {
            Inner::Closed {
                consecutive_failures,
            } => format!("closed, {consecutive_failures} consecutive failures"),
            Inner::Open { until } => format!(
                "open, next probe in {:?}",
                until.saturating_duration_since(now)
            ),
            Inner::HalfOpen { .. } => "half-open, a probe is in flight".to_string(),
        }
    }

    pub fn on_success(&mut self) {
        self.state = Inner::Closed {
            consecutive_failures: 0,
        };
    }

    pub fn on_failure(&mut self, now: Instant) {
        self.state = match self.state {
            Inner::Closed {
                consecutive_failures,
            } => {
                let failures = consecutive_failures.saturating_add(1);
                if failures >= self.failure_threshold {
                    Inner::Open {
                        until: now + self.cool_down,
                    }
                } else {
                    Inner::Closed {
                        consecutive_failures: failures,
                    }
                }
            }
            Inner::HalfOpen { .. } => Inner::Open {
                until: now + self.cool_down,
            },
            open @ Inner::Open { .. } => open,
        };
    }

    /// A call failed because its connection (pooled channel `connection`) broke. Counts as one
    /// failure per connection while the breaker is closed: the other calls that were in flight
    /// on it report the same break. A half-open probe's failure always counts.
    pub fn on_connection_failure(&mut self, now: Instant, connection: u64) {
        let counted = self.failed_connections.contains(&connection);
        if !counted {
            if self.failed_connections.len() >= FAILED_CONNECTIONS_REMEMBERED {
                self.failed_connections.pop_front();
            }
            self.failed_connections.push_back(connection);
        }
        if counted && matches!(self.state, Inner::Closed { .. }) {
            return;
        }
        self.on_failure(now);
    }

    /// A probe that ended without a verdict (cancelled, shed by the lease queue): let the next
    /// call probe instead.
    pub fn on_probe_abandoned(&mut self) {
        if let Inner::HalfOpen {
            probe_in_flight: true,
        } = self.state
        {
            self.state = Inner::HalfOpen {
                probe_in_flight: false,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_k_failures_probes_once_then_closes() {
        let t0 = Instant::now();
        let mut breaker = CircuitBreaker::new(3, Duration::from_secs(5));
        for _ in 0..2 {
            assert_eq!(breaker.admit(t0), Some(Admission::Pass));
            breaker.on_failure(t0);
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
        breaker.on_success();
        for _ in 0..3 {
            breaker.on_failure(t0);
        }
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(breaker.admit(t0 + Duration::from_secs(4)), None);
        let later = t0 + Duration::from_secs(5);
        assert_eq!(breaker.admit(later), Some(Admission::Probe));
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert_eq!(breaker.admit(later), None, "only one probe at a time");
        breaker.on_probe_abandoned();
        assert_eq!(breaker.admit(later), Some(Admission::Probe));
        breaker.on_failure(later);
        assert_eq!(breaker.state(), BreakerState::Open);
        let again = later + Duration::from_secs(5);
        assert_eq!(breaker.admit(again), Some(Admission::Probe));
        breaker.on_success();
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(breaker.admit(again), Some(Admission::Pass));
    }

    #[test]
    fn one_broken_connection_counts_once() {
        let t0 = Instant::now();
        let mut breaker = CircuitBreaker::new(3, Duration::from_secs(5));
        // 16 calls in flight on connection 7 fail together: one failure.
        for _ in 0..16 {
            breaker.on_connection_failure(t0, 7);
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.describe(t0).contains("1 consecutive"));
        // Two more distinct connections break: K = 3 reached.
        breaker.on_connection_failure(t0, 8);
        breaker.on_connection_failure(t0, 8);
        assert_eq!(breaker.state(), BreakerState::Closed);
        breaker.on_connection_failure(t0, 9);
        assert_eq!(breaker.state(), BreakerState::Open);
        // A half-open probe failing on an already-counted connection still re-opens.
        let later = t0 + Duration::from_secs(5);
        assert_eq!(breaker.admit(later), Some(Admission::Probe));
        breaker.on_connection_failure(later, 9);
        assert_eq!(breaker.state(), BreakerState::Open);
    }
}
