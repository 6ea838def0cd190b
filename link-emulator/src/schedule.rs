//! When each chunk read from one side may be written to the other: pure arithmetic, no I/O.

use std::time::{Duration, Instant};

/// One direction of the emulated link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Direction {
    /// One-way propagation delay added to every chunk.
    pub delay: Duration,
    /// Each chunk's delay is drawn uniformly from `delay ± jitter` (never below zero). Jitter
    /// never reorders: a chunk is never released before the one read before it.
    pub jitter: Duration,
    /// Link rate in bytes per second; `None` is unlimited. A chunk of `n` bytes occupies the
    /// link for `n / rate` seconds after the previous chunk has left it (serialization time).
    pub bandwidth_bytes_per_sec: Option<u64>,
}

impl Direction {
    /// A fixed delay, no jitter, no bandwidth cap.
    pub fn delay(delay: Duration) -> Self {
        Self {
            delay,
            ..Self::default()
        }
    }
}

/// SplitMix64: a tiny deterministic generator for the jitter (seeded per direction, so a run
/// can be repeated).
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..=bound_nanos`.
    fn below_or_equal(&mut self, bound_nanos: u64) -> u64 {
        if bound_nanos == 0 {
            return 0;
        }
        self.next_u64() % (bound_nanos + 1)
    }
}

/// The release schedule of one direction: for each chunk, in read order, the instant it may be
/// written to the far side.
///
/// `release = max(sent + propagation, previous release)` where
/// `sent = max(arrived, link free) + len / rate` and `propagation = delay ± jitter`. Release times never decrease, so bytes keep
/// their order whatever the jitter.
#[derive(Clone, Debug)]
pub struct ReleaseSchedule {
    direction: Direction,
    link_free_at: Option<Instant>,
    last_release: Option<Instant>,
    rng: SplitMix64,
}

impl ReleaseSchedule {
    pub fn new(direction: Direction, seed: u64) -> Self {
        Self {
            direction,
            link_free_at: None,
            last_release: None,
            rng: SplitMix64(seed),
        }
    }

    /// Nothing leaves before `instant` (the emulated TCP handshake: the client's connect returns
    /// at once on loopback, but on a real link its first bytes can only go one round trip later).
    pub fn hold_until(&mut self, instant: Instant) {
        self.link_free_at = Some(self.link_free_at.map_or(instant, |free| free.max(instant)));
    }

    /// Time the link needs to put `len` bytes on the wire.
    pub fn serialization_time(&self, len: usize) -> Duration {
        match self.direction.bandwidth_bytes_per_sec {
            Some(rate) if rate > 0 => {
                let nanos = (len as u128 * 1_000_000_000).div_ceil(u128::from(rate));
                Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
            }
            _ => Duration::ZERO,
        }
    }

    fn propagation(&mut self) -> Duration {
        let Direction { delay, jitter, .. } = self.direction;
        if jitter.is_zero() {
            return delay;
        }
        let jitter_nanos = u64::try_from(jitter.as_nanos()).unwrap_or(u64::MAX / 4);
        let offset = self.rng.below_or_equal(jitter_nanos.saturating_mul(2));
        // delay - jitter + offset, offset uniform in [0, 2 × jitter], clamped at zero
        let nanos = delay.as_nanos() as i128 - i128::from(jitter_nanos) + i128::from(offset);
        Duration::from_nanos(u64::try_from(nanos.max(0)).unwrap_or(u64::MAX))
    }

    /// The release instant of a chunk of `len` bytes read at `arrived` (0 for a FIN or a reset).
    pub fn release_at(&mut self, arrived: Instant, len: usize) -> Instant {
        let start = self.link_free_at.map_or(arrived, |free| free.max(arrived));
        let sent = start + self.serialization_time(len);
        self.link_free_at = Some(sent);
        let release = sent + self.propagation();
        let release = self.last_release.map_or(release, |last| last.max(release));
        self.last_release = Some(release);
        release
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_delay_is_added_to_each_chunk() {
        let mut schedule = ReleaseSchedule::new(Direction::delay(Duration::from_micros(250)), 1);
        let t0 = Instant::now();
        for i in 0..10u64 {
            let arrived = t0 + Duration::from_millis(i);
            assert_eq!(
                schedule.release_at(arrived, 100),
                arrived + Duration::from_micros(250)
            );
        }
    }

    fn jittery() -> Direction {
        Direction {
            delay: Duration::from_micros(500),
            jitter: Duration::from_micros(400),
            bandwidth_bytes_per_sec: None,
        }
    }

    #[test]
    fn jitter_never_reorders_chunks_closer_than_the_jitter() {
        let mut schedule = ReleaseSchedule::new(jittery(), 7);
        let t0 = Instant::now();
        let mut previous = t0;
        let mut held_back = 0;
        for i in 0..10_000u64 {
            // chunks 10 µs apart, far closer than the jitter: without the max() they would reorder
            let arrived = t0 + Duration::from_micros(10 * i);
            let release = schedule.release_at(arrived, 64);
            assert!(
                release >= previous,
                "chunk {i} released before its predecessor"
            );
            assert!(
                release - arrived >= Duration::from_micros(100),
                "chunk {i} below delay - jitter"
            );
            if release == previous {
                held_back += 1;
            }
            previous = release;
        }
        // ordering really had to hold chunks back
        assert!(
            held_back > 100,
            "only {held_back} chunks held back by their predecessor"
        );
    }

    #[test]
    fn jitter_spreads_the_delay_within_its_bounds() {
        let direction = jittery();
        let mut schedule = ReleaseSchedule::new(direction, 7);
        let t0 = Instant::now();
        let (mut below, mut above) = (0, 0);
        for i in 0..10_000u64 {
            // 2 ms apart, more than the largest delay: no chunk is held by its predecessor
            let arrived = t0 + Duration::from_millis(2 * i);
            let waited = schedule.release_at(arrived, 64) - arrived;
            assert!(
                waited >= Duration::from_micros(100),
                "chunk {i}: {waited:?} < delay - jitter"
            );
            assert!(
                waited <= Duration::from_micros(900),
                "chunk {i}: {waited:?} > delay + jitter"
            );
            if waited < direction.delay {
                below += 1;
            } else if waited > direction.delay {
                above += 1;
            }
        }
        assert!(
            below > 4_000 && above > 4_000,
            "{below} below / {above} above the delay"
        );
    }

    #[test]
    fn jitter_larger_than_the_delay_never_goes_below_zero() {
        let direction = Direction {
            delay: Duration::from_micros(50),
            jitter: Duration::from_micros(200),
            bandwidth_bytes_per_sec: None,
        };
        let mut schedule = ReleaseSchedule::new(direction, 3);
        let t0 = Instant::now();
        for i in 0..1_000u64 {
            let arrived = t0 + Duration::from_millis(i);
            let waited = schedule.release_at(arrived, 1) - arrived;
            assert!(waited <= Duration::from_micros(250), "{waited:?}");
        }
    }

    #[test]
    fn bandwidth_adds_serialization_time_back_to_back() {
        // 1,000,000 B/s: a 1,000-byte chunk occupies the link for 1 ms
        let direction = Direction {
            delay: Duration::from_micros(100),
            jitter: Duration::ZERO,
            bandwidth_bytes_per_sec: Some(1_000_000),
        };
        let mut schedule = ReleaseSchedule::new(direction, 1);
        assert_eq!(schedule.serialization_time(1_000), Duration::from_millis(1));
        let t0 = Instant::now();
        // 100 chunks all read at t0 (a burst): the k-th leaves after k ms of serialization
        for k in 1..=100u64 {
            let release = schedule.release_at(t0, 1_000);
            assert_eq!(
                release,
                t0 + Duration::from_millis(k) + Duration::from_micros(100)
            );
        }
        // an idle link does not bank credit: a chunk read later starts at its own arrival
        let later = t0 + Duration::from_secs(1);
        assert_eq!(
            schedule.release_at(later, 500),
            later + Duration::from_micros(500) + Duration::from_micros(100)
        );
    }

    #[test]
    fn hold_until_delays_the_first_bytes_by_the_handshake() {
        let mut schedule = ReleaseSchedule::new(Direction::delay(Duration::from_millis(1)), 1);
        let t0 = Instant::now();
        schedule.hold_until(t0 + Duration::from_millis(2));
        assert_eq!(schedule.release_at(t0, 10), t0 + Duration::from_millis(3));
        // afterwards chunks only pay the delay
        let t1 = t0 + Duration::from_millis(10);
        assert_eq!(schedule.release_at(t1, 10), t1 + Duration::from_millis(1));
    }

    #[test]
    fn same_seed_same_schedule() {
        let direction = Direction {
            delay: Duration::from_millis(1),
            jitter: Duration::from_millis(1),
            bandwidth_bytes_per_sec: None,
        };
        let t0 = Instant::now();
        let run = |seed| {
            let mut schedule = ReleaseSchedule::new(direction, seed);
            (0..100u64)
                .map(|i| schedule.release_at(t0 + Duration::from_millis(5 * i), 1))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(11), run(11));
        assert_ne!(run(11), run(12));
    }
}
