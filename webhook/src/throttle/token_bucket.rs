//! Token buckets with an injected clock: every call takes `now`, so tests drive time by hand
//! and a policy reload applies to existing buckets at once (the limit is passed per call).

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::policy::throttle::RateLimit;

/// One bucket. Starts full.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(limit: &RateLimit, now: Instant) -> Self {
        Self {
            tokens: f64::from(limit.burst),
            last: now,
        }
    }

    /// Adds what accrued since the last call, capped at `burst`.
    pub fn refill(&mut self, limit: &RateLimit, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * limit.per_second()).min(f64::from(limit.burst));
        self.last = now.max(self.last);
    }

    /// Tokens available now (after [`TokenBucket::refill`]).
    pub fn tokens(&self) -> f64 {
        self.tokens
    }

    /// How long until one token is available (zero when one is).
    pub fn wait_for_one(&self, limit: &RateLimit) -> Duration {
        if self.tokens >= 1.0 || !limit.enabled() {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((1.0 - self.tokens) / limit.per_second())
    }

    /// Refills, then takes one token if there is one; else the wait until there is.
    pub fn try_take(&mut self, limit: &RateLimit, now: Instant) -> Result<(), Duration> {
        self.refill(limit, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(self.wait_for_one(limit))
        }
    }

    /// Takes one token; call only after checking one is there.
    pub fn take(&mut self) {
        self.tokens = (self.tokens - 1.0).max(0.0);
    }

    /// True when the bucket would be full at `now`: forgetting it changes nothing.
    pub fn is_full_at(&self, limit: &RateLimit, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * limit.per_second() >= f64::from(limit.burst)
    }
}

/// Buckets by key (namespace, job, user), created full on first use. Full buckets are
/// forgotten by [`Buckets::sweep`], so the map stays bounded by the keys that are
/// actually being limited.
#[derive(Debug)]
pub struct Buckets<K> {
    map: HashMap<K, TokenBucket>,
}

impl<K> Default for Buckets<K> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
        }
    }
}

impl<K: Eq + Hash + Clone> Buckets<K> {
    /// The bucket of `key`, refilled to `now`.
    pub fn get(&mut self, key: &K, limit: &RateLimit, now: Instant) -> &mut TokenBucket {
        let b = self
            .map
            .entry(key.clone())
            .or_insert_with(|| TokenBucket::new(limit, now));
        b.refill(limit, now);
        b
    }

    /// Tokens `key` would have now, without creating its bucket.
    pub fn peek(&self, key: &K, limit: &RateLimit, now: Instant) -> f64 {
        match self.map.get(key) {
            None => f64::from(limit.burst),
            Some(b) => {
                let mut b = b.clone();
                b.refill(limit, now);
                b.tokens()
            }
        }
    }

    /// Drops buckets that are full again.
    pub fn sweep(&mut self, limit: &RateLimit, now: Instant) {
        self.map.retain(|_, b| !b.is_full_at(limit, now));
    }

    /// The keys with a bucket.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.map.keys()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
