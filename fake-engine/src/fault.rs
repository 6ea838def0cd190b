//! Fault injection: what a call to a method suffers before (or instead of) normal handling.

use std::time::Duration;

use rand::Rng;

/// The proxy RPCs a [`Fault`] can be attached to. `Any` applies to every method without its own fault.
/// Health checks are never faulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    ServerVersionGet,
    VolumeGet,
    SnapshotList,
    SnapshotBackup,
    SnapshotBackupStatus,
    ReplicaList,
    Any,
}

impl Method {
    /// The RPC name, as in the HTTP/2 path `/imrpc.ProxyEngineService/<name>` (and the key in
    /// [`crate::Stats::calls_by_method`]).
    pub fn rpc_name(self) -> &'static str {
        match self {
            Method::ServerVersionGet => "ServerVersionGet",
            Method::VolumeGet => "VolumeGet",
            Method::SnapshotList => "SnapshotList",
            Method::SnapshotBackup => "SnapshotBackup",
            Method::SnapshotBackupStatus => "SnapshotBackupStatus",
            Method::ReplicaList => "ReplicaList",
            Method::Any => "Any",
        }
    }
}

/// What happens to a call. Faults apply before normal handling.
#[derive(Clone, Debug)]
pub enum Fault {
    None,
    /// Answer normally after a delay.
    Delay(Duration),
    /// Answer normally after a delay drawn uniformly from `min..=max`.
    RandomDelay {
        min: Duration,
        max: Duration,
    },
    /// Answer with this status.
    Error {
        code: tonic::Code,
        message: String,
    },
    /// Abort the TCP connection carrying the call (RST, no HTTP/2 response).
    Reset,
    /// Accept the call, never answer (until the client gives up).
    BlackHole,
    /// Send HTTP/2 GOAWAY on the connection carrying the call (graceful shutdown of that connection); the
    /// call itself fails with UNAVAILABLE.
    GoAway,
    /// Apply `fault` to this share of calls (0.0..=1.0), else answer normally.
    Probabilistic {
        probability: f64,
        fault: Box<Fault>,
    },
}

/// A fault with its randomness resolved, for one call.
#[derive(Debug, PartialEq)]
pub(crate) enum Action {
    Proceed,
    Delay(Duration),
    Error(tonic::Code, String),
    Reset,
    BlackHole,
    GoAway,
}

impl Fault {
    pub(crate) fn resolve(&self, rng: &mut impl Rng) -> Action {
        match self {
            Fault::None => Action::Proceed,
            Fault::Delay(d) => Action::Delay(*d),
            Fault::RandomDelay { min, max } => {
                if max <= min {
                    Action::Delay(*min)
                } else {
                    let nanos = rng.random_range(min.as_nanos()..=max.as_nanos());
                    Action::Delay(Duration::from_nanos(
                        u64::try_from(nanos).unwrap_or(u64::MAX),
                    ))
                }
            }
            Fault::Error { code, message } => Action::Error(*code, message.clone()),
            Fault::Reset => Action::Reset,
            Fault::BlackHole => Action::BlackHole,
            Fault::GoAway => Action::GoAway,
            Fault::Probabilistic { probability, fault } => {
                // `random::<f64>()` is in [0, 1): probability 0 never fires, 1 always does.
                if rng.random::<f64>() < *probability {
                    fault.resolve(rng)
                } else {
                    Action::Proceed
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn random_delay_stays_within_bounds() {
        let mut rng = StdRng::seed_from_u64(7);
        let f = Fault::RandomDelay {
            min: Duration::from_millis(5),
            max: Duration::from_millis(9),
        };
        for _ in 0..1000 {
            let Action::Delay(d) = f.resolve(&mut rng) else {
                panic!("not a delay")
            };
            assert!(
                d >= Duration::from_millis(5) && d <= Duration::from_millis(9),
                "{d:?}"
            );
        }
    }

    #[test]
    fn probabilistic_extremes() {
        let mut rng = StdRng::seed_from_u64(1);
        let never = Fault::Probabilistic {
            probability: 0.0,
            fault: Box::new(Fault::Reset),
        };
        let always = Fault::Probabilistic {
            probability: 1.0,
            fault: Box::new(Fault::Reset),
        };
        for _ in 0..1000 {
            assert_eq!(never.resolve(&mut rng), Action::Proceed);
            assert_eq!(always.resolve(&mut rng), Action::Reset);
        }
    }
}
