//! Whether one kind's part of the index can be trusted: the pure rules readiness and the
//! watch tasks follow (times are milliseconds on the index's own clock, 0 = unset).
//!
//! - A kind is *listing* from `Init` (relist start) to `InitDone`: not trusted.
//! - Once listed it stays trusted while its watch works, and also while the watch has been
//!   failing for at most the staleness bound (a short API server hiccup or a watch timeout
//!   must not flap readiness).
//! - Failing for longer than the bound makes it *stale*: not trusted. Any event that carries
//!   data from the API server (a listed object, `InitDone`, an added/modified/deleted object)
//!   ends the failure. Because a watch that resumes without news says nothing, the watch task
//!   forces a relist when the bound passes, and trust comes back at its `InitDone`.

/// One kind's watch, as the index records it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchState {
    /// The last (re)list finished and no relist has started since.
    pub synced: bool,
    /// When the current run of watch errors began; 0 = the watch is not failing.
    pub failing_since_ms: u64,
}

/// What readiness reports for one kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trust {
    /// The initial list or a relist has not finished; `failing_ms` when it keeps failing.
    Listing { failing_ms: Option<u64> },
    /// Listed, and the watch works or has failed for no longer than the bound.
    Trusted { failing_ms: Option<u64> },
    /// Listed, but the watch has failed for longer than the bound.
    Stale { failing_ms: u64 },
}

impl Trust {
    pub fn is_trusted(self) -> bool {
        matches!(self, Trust::Trusted { .. })
    }
}

impl WatchState {
    fn failing_ms(self, now_ms: u64) -> Option<u64> {
        (self.failing_since_ms > 0).then(|| now_ms.saturating_sub(self.failing_since_ms))
    }

    /// The kind's trust at `now_ms` with staleness bound `bound_ms`.
    pub fn trust(self, now_ms: u64, bound_ms: u64) -> Trust {
        let failing_ms = self.failing_ms(now_ms);
        match (self.synced, failing_ms) {
            (false, _) => Trust::Listing { failing_ms },
            (true, Some(f)) if f > bound_ms => Trust::Stale { failing_ms: f },
            (true, failing_ms) => Trust::Trusted { failing_ms },
        }
    }

    /// Milliseconds until a listed kind whose watch is failing turns stale (0 = it already
    /// is); `None` when it is not listed or not failing, i.e. when there is nothing to time.
    pub fn ms_until_stale(self, now_ms: u64, bound_ms: u64) -> Option<u64> {
        let failing = self.failing_ms(now_ms)?;
        self.synced
            .then(|| bound_ms.saturating_add(1).saturating_sub(failing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: u64 = 30_000;

    #[test]
    fn listing_is_never_trusted() {
        let s = WatchState::default();
        assert_eq!(s.trust(5, BOUND), Trust::Listing { failing_ms: None });
        let failing = WatchState {
            synced: false,
            failing_since_ms: 1_000,
        };
        assert_eq!(
            failing.trust(61_000, BOUND),
            Trust::Listing {
                failing_ms: Some(60_000)
            }
        );
        assert!(!failing.trust(61_000, BOUND).is_trusted());
        // Nothing to time while listing: the relist itself brings trust back.
        assert_eq!(failing.ms_until_stale(61_000, BOUND), None);
    }

    #[test]
    fn a_failing_watch_is_trusted_up_to_the_bound_then_stale() {
        let s = WatchState {
            synced: true,
            failing_since_ms: 10_000,
        };
        assert_eq!(
            s.trust(10_000, BOUND),
            Trust::Trusted {
                failing_ms: Some(0)
            }
        );
        assert!(s.trust(40_000, BOUND).is_trusted(), "exactly the bound");
        assert_eq!(s.ms_until_stale(40_000, BOUND), Some(1));
        assert_eq!(s.trust(40_001, BOUND), Trust::Stale { failing_ms: 30_001 });
        assert!(!s.trust(40_001, BOUND).is_trusted());
        assert_eq!(s.ms_until_stale(40_001, BOUND), Some(0));
        assert_eq!(s.ms_until_stale(99_000, BOUND), Some(0));
        assert_eq!(s.ms_until_stale(12_000, BOUND), Some(28_001));
    }

    #[test]
    fn a_working_watch_is_trusted_whatever_the_bound() {
        let s = WatchState {
            synced: true,
            failing_since_ms: 0,
        };
        assert_eq!(s.trust(u64::MAX, 1), Trust::Trusted { failing_ms: None });
        assert_eq!(s.ms_until_stale(u64::MAX, 1), None);
    }

    #[test]
    fn clock_going_backwards_does_not_underflow() {
        let s = WatchState {
            synced: true,
            failing_since_ms: 50_000,
        };
        assert_eq!(
            s.trust(1_000, BOUND),
            Trust::Trusted {
                failing_ms: Some(0)
            }
        );
        assert_eq!(s.ms_until_stale(1_000, u64::MAX), Some(u64::MAX));
    }
}
