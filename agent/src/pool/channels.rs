//! The channel cache per endpoint: checkout (reuse the least-loaded channel, else dial one
//! under the endpoint's dial lock and the global channel cap), eviction and reaping.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
use tokio::time::{Instant, timeout_at};
use tonic::transport::Channel;

use super::{ChannelRecord, EndpointState, LeasePool, PoolInner, PooledChannel, lock};
use crate::breaker::{BreakerState, CircuitBreaker};
use crate::connect::{ChannelWitness, DialError, dial};
use crate::metrics::CloseReason;

pub(super) enum CheckoutError {
    Deadline,
    Dial(DialError),
    ChannelCap,
}

impl LeasePool {
    pub(super) async fn checkout_channel(
        &self,
        state: &Arc<EndpointState>,
        deadline: Instant,
    ) -> Result<(u64, Channel), CheckoutError> {
        let inner = &self.inner;
        if let Some(found) = inner.pick_channel(state, false) {
            return Ok(found);
        }
        let _dialing = timeout_at(deadline, state.dial_lock.lock())
            .await
            .map_err(|_| CheckoutError::Deadline)?;
        if let Some(found) = inner.pick_channel(state, false) {
            return Ok(found);
        }
        let permit = match Arc::clone(&inner.global_channels).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if let Some(found) = inner.pick_channel(state, true) {
                    return Ok(found);
                }
                inner.evict_one_idle_channel();
                Arc::clone(&inner.global_channels)
                    .try_acquire_owned()
                    .map_err(|_| CheckoutError::ChannelCap)?
            }
        };
        let witness = Arc::new(ChannelWitness);
        let dialed = timeout_at(deadline, dial(&state.endpoint, &inner.config, &witness))
            .await
            .map_err(|_| CheckoutError::Deadline)?
            .map_err(CheckoutError::Dial)?;
        if dialed.tls_fallback {
            inner.metrics.tls_fell_back();
        }
        let (channel, transport) = (dialed.channel, dialed.transport);
        let id = inner.next_channel_id.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut channels = lock(&state.channels);
        channels.push(PooledChannel {
            id,
            channel: channel.clone(),
            transport,
            created: now,
            last_used: now,
            in_flight: 1,
            _global_permit: permit,
        });
        lock(&inner.channel_registry).insert(
            id,
            ChannelRecord {
                endpoint: state.endpoint.clone(),
                opened: now,
                released: None,
                witness: Arc::downgrade(&witness),
                reported: false,
            },
        );
        inner.metrics.channel_created();
        tracing::debug!(endpoint = %state.endpoint, id, ?transport, "opened engine-proxy channel");
        Ok((id, channel))
    }
}

impl PoolInner {
    pub(super) fn endpoint(&self, endpoint: &str, now: Instant) -> Arc<EndpointState> {
        let mut endpoints = lock(&self.endpoints);
        let state = endpoints
            .entry(endpoint.to_string())
            .or_insert_with(|| {
                self.metrics.set_breaker_state(endpoint, 0);
                Arc::new(EndpointState {
                    endpoint: endpoint.to_string(),
                    leases: Arc::new(Semaphore::new(self.config.max_leases_per_endpoint)),
                    channels: Mutex::new(Vec::new()),
                    breaker: Mutex::new(CircuitBreaker::new(
                        self.config.breaker_failure_threshold,
                        self.config.breaker_cool_down,
                    )),
                    dial_lock: tokio::sync::Mutex::new(()),
                    last_activity: Mutex::new(now),
                })
            })
            .clone();
        *lock(&state.last_activity) = now;
        state
    }

    /// Picks the least-loaded live channel. Without `any`, returns `None` when every channel
    /// carries its share of the endpoint's leases and another channel may still be opened.
    fn pick_channel(&self, state: &EndpointState, any: bool) -> Option<(u64, Channel)> {
        let now = Instant::now();
        let mut channels = lock(&state.channels);
        channels.retain(|c| {
            let keep = now < c.created + self.config.max_age;
            if !keep {
                self.channel_closed(c.id, CloseReason::MaxAge, now);
            }
            keep
        });
        let per_channel = self
            .config
            .max_leases_per_endpoint
            .div_ceil(self.config.max_channels_per_endpoint);
        let can_open_more = channels.len() < self.config.max_channels_per_endpoint;
        let best = channels.iter_mut().min_by_key(|c| c.in_flight)?;
        if !any && can_open_more && best.in_flight >= per_channel {
            return None;
        }
        best.in_flight += 1;
        best.last_used = now;
        Some((best.id, best.channel.clone()))
    }

    fn evict_one_idle_channel(&self) {
        let endpoints: Vec<_> = lock(&self.endpoints).values().cloned().collect();
        let mut oldest: Option<(Instant, Arc<EndpointState>, u64)> = None;
        for state in endpoints {
            for c in lock(&state.channels).iter().filter(|c| c.in_flight == 0) {
                if oldest.as_ref().is_none_or(|(t, _, _)| c.last_used < *t) {
                    oldest = Some((c.last_used, Arc::clone(&state), c.id));
                }
            }
        }
        if let Some((_, state, id)) = oldest {
            self.remove_channel(&state, id, CloseReason::Idle);
        }
    }

    pub(super) fn remove_channel(&self, state: &EndpointState, id: u64, reason: CloseReason) {
        let removed = {
            let mut channels = lock(&state.channels);
            channels
                .iter()
                .position(|c| c.id == id)
                .map(|i| channels.swap_remove(i))
        };
        if removed.is_some() {
            self.channel_closed(id, reason, Instant::now());
            tracing::debug!(endpoint = %state.endpoint, id, reason = reason.as_str(), "closed engine-proxy channel");
        }
    }

    pub(super) fn reap(&self) {
        let now = Instant::now();
        let mut endpoints = lock(&self.endpoints);
        let mut forget = Vec::new();
        for (name, state) in endpoints.iter() {
            let mut channels = lock(&state.channels);
            channels.retain(|c| {
                let reason = if now >= c.created + self.config.max_age {
                    Some(CloseReason::MaxAge)
                } else if c.in_flight == 0 && now >= c.last_used + self.config.idle_timeout {
                    Some(CloseReason::Idle)
                } else {
                    None
                };
                if let Some(reason) = reason {
                    self.channel_closed(c.id, reason, now);
                }
                reason.is_none()
            });
            let idle_endpoint = channels.is_empty()
                && state.leases.available_permits() == self.config.max_leases_per_endpoint
                && lock(&state.breaker).state() == BreakerState::Closed
                && now >= *lock(&state.last_activity) + self.config.idle_timeout;
            if idle_endpoint {
                forget.push(name.clone());
            }
        }
        for name in forget {
            endpoints.remove(&name);
            self.metrics.forget_endpoint(&name);
        }
    }

    /// Books a channel the pool let go of; the registry keeps watching it until it is gone.
    pub(super) fn channel_closed(&self, id: u64, reason: CloseReason, now: Instant) {
        self.metrics.channel_closed(reason);
        if let Some(record) = lock(&self.channel_registry).get_mut(&id) {
            record.released = Some(now);
        }
    }
}
