//! `LeasePool`: bounded HTTP/2 channels and bounded, deadline-limited calls per engine-proxy
//! endpoint (`<InstanceManager.status.ip>:8501`).
//!
//! The only way to use a channel is [`LeasePool::call`]: it takes a lease (endpoint permit +
//! global permit + deadline), runs the caller's future under `timeout_at(deadline)`, and returns
//! the lease when the `Lease` value drops — on success, error, deadline, cancellation (the
//! caller's future dropped) or panic (dropped while unwinding). No lease outlives its deadline,
//! because the future holding it is cut off at that deadline — as long as someone polls or drops
//! that future.
//!
//! Whether that holds is checked, not assumed: every lease is in a registry of live leases
//! (acquired, deadline) until it drops, and every channel the pool opened in a registry holding a
//! `Weak` to its [`ChannelWitness`] (alive while any clone of the channel or any of its
//! connections is). The reaper sweeps both every `reap_interval`: a lease held past its deadline
//! plus `leak_grace` (a call future nobody polls or drops any more), or a channel still alive
//! `max_lease + leak_grace` after the pool let go of it (a clone kept by a caller: the
//! longhorn-manager v1.7.2 leak) or older than `max_age + max_lease + leak_grace`, is counted
//! leaked and exported with the age of the oldest offender.

//!
//! The module is cut along those seams: [`call`] is the call path (lease, channel, deadline,
//! outcome), [`lease`] the granted slot that books itself when dropped, [`channels`] the channel
//! cache per endpoint (checkout, eviction, reaping), [`leaks`] the registries of live leases and
//! channels and their sweep.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::breaker::{BreakerState, CircuitBreaker};
use crate::config::{ConfigError, PoolConfig};
use crate::connect::Transport;
use crate::metrics::{CloseReason, PoolBook, PoolMetrics};

mod call;
mod channels;
mod leaks;
mod lease;

use call::CallTimer;
use leaks::{ChannelRecord, LeaseRecord};

/// Pool of channels to engine proxies. Cheap to clone; all clones share one pool.
#[derive(Clone)]
pub struct LeasePool {
    inner: Arc<PoolInner>,
}

impl std::fmt::Debug for LeasePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeasePool")
            .field("book", &self.inner.metrics.snapshot())
            .finish()
    }
}

struct PoolInner {
    config: PoolConfig,
    metrics: Arc<PoolMetrics>,
    global_leases: Arc<Semaphore>,
    global_channels: Arc<Semaphore>,
    endpoints: Mutex<HashMap<String, Arc<EndpointState>>>,
    next_channel_id: AtomicU64,
    shut_down: AtomicBool,
    /// Every lease not dropped yet, by id: the live set the leak sweep reads.
    live_leases: Mutex<HashMap<u64, LeaseRecord>>,
    next_lease_id: AtomicU64,
    /// Every channel the pool opened whose witness may still be alive, by channel id.
    channel_registry: Mutex<HashMap<u64, ChannelRecord>>,
}

struct EndpointState {
    endpoint: String,
    leases: Arc<Semaphore>,
    channels: Mutex<Vec<PooledChannel>>,
    breaker: Mutex<CircuitBreaker>,
    /// One dial at a time per endpoint: a burst of callers shares the channel the first one opens.
    dial_lock: tokio::sync::Mutex<()>,
    last_activity: Mutex<Instant>,
}

struct PooledChannel {
    id: u64,
    channel: Channel,
    transport: Transport,
    created: Instant,
    last_used: Instant,
    in_flight: usize,
    /// Held for as long as the pool holds the channel: the global channel cap.
    _global_permit: OwnedSemaphorePermit,
}

/// Weak reference to a pool's shared state (see [`LeasePool::liveness`]).
#[derive(Clone)]
pub struct PoolLiveness(Weak<PoolInner>);

impl PoolLiveness {
    /// True while a pool clone, a lease or the reaper's current pass still holds the state.
    pub fn is_alive(&self) -> bool {
        self.0.strong_count() > 0
    }
}

/// Point-in-time view of one endpoint, for tests and debugging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointStatus {
    pub endpoint: String,
    pub channels: usize,
    pub leases_in_use: usize,
    pub breaker: BreakerState,
    pub transports: Vec<Transport>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here leaves the data consistent; a panic elsewhere must not wedge the pool.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LeasePool {
    /// Builds a pool and starts its reaper task (closes idle / aged channels). Must be called
    /// inside a tokio runtime. Refuses configurations that would break against Longhorn
    /// (keepalive < 10 s) or disable a bound.
    pub fn new(config: PoolConfig, metrics: Arc<PoolMetrics>) -> Result<Self, ConfigError> {
        config.validate()?;
        let inner = Arc::new(PoolInner {
            global_leases: Arc::new(Semaphore::new(config.max_leases_total)),
            global_channels: Arc::new(Semaphore::new(config.max_channels_total)),
            endpoints: Mutex::new(HashMap::new()),
            next_channel_id: AtomicU64::new(1),
            shut_down: AtomicBool::new(false),
            live_leases: Mutex::new(HashMap::new()),
            next_lease_id: AtomicU64::new(1),
            channel_registry: Mutex::new(HashMap::new()),
            metrics,
            config,
        });
        let weak = Arc::downgrade(&inner);
        let interval = inner.config.reap_interval;
        tokio::spawn(reap_loop(weak, interval));
        Ok(Self { inner })
    }

    pub fn config(&self) -> &PoolConfig {
        &self.inner.config
    }

    pub fn metrics(&self) -> &Arc<PoolMetrics> {
        &self.inner.metrics
    }

    /// Consistent counts (acquired / released / active leases, channels...).
    pub fn book(&self) -> PoolBook {
        self.inner.metrics.snapshot()
    }

    /// Channels the pool holds right now, over all endpoints.
    pub fn open_channels(&self) -> usize {
        lock(&self.inner.endpoints)
            .values()
            .map(|e| lock(&e.channels).len())
            .sum()
    }

    /// Channels the pool opened of which a clone or a connection is still alive, held by the pool
    /// or not: 0 once everything the pool ever opened is really gone.
    pub fn channels_alive(&self) -> usize {
        lock(&self.inner.channel_registry)
            .values()
            .filter(|record| record.witness.strong_count() > 0)
            .count()
    }

    pub fn endpoint_status(&self, endpoint: &str) -> Option<EndpointStatus> {
        let state = lock(&self.inner.endpoints).get(endpoint).cloned()?;
        let channels = lock(&state.channels);
        Some(EndpointStatus {
            endpoint: endpoint.to_string(),
            channels: channels.len(),
            leases_in_use: self
                .inner
                .config
                .max_leases_per_endpoint
                .saturating_sub(state.leases.available_permits()),
            breaker: lock(&state.breaker).state(),
            transports: channels.iter().map(|c| c.transport).collect(),
        })
    }

    /// A weak handle to the pool's shared state: dead once every clone and every outstanding
    /// lease is gone (the leak oracle of the tests).
    pub fn liveness(&self) -> PoolLiveness {
        PoolLiveness(Arc::downgrade(&self.inner))
    }

    /// Closes every channel (reason `shutdown`) and refuses new calls. Calls in flight finish
    /// on their own channel clone, bounded by their deadline.
    pub fn shutdown(&self) {
        self.inner.shut_down.store(true, Ordering::SeqCst);
        self.inner.global_leases.close();
        let endpoints: Vec<_> = lock(&self.inner.endpoints).values().cloned().collect();
        for state in endpoints {
            state.leases.close();
            let drained: Vec<_> = lock(&state.channels).drain(..).collect();
            let now = Instant::now();
            for channel in drained {
                self.inner
                    .channel_closed(channel.id, CloseReason::Shutdown, now);
            }
        }
    }

    /// Sweeps the live leases and channels for leaks now (the reaper does it every
    /// `reap_interval`) and returns the book with the result.
    pub fn sweep_leaks(&self) -> PoolBook {
        self.inner.sweep_leaks(Instant::now());
        self.book()
    }

    /// Runs `call` on a leased channel to `endpoint`.
    ///
    /// `deadline` is capped at `max_lease` from now. `call` gets a channel and the time left; it
    /// should put that on the request (`tonic::Request::set_timeout`) so the server gives up too.
    /// The future is cut off at the deadline regardless. Errors keep their gRPC code and name
    /// `method` and `endpoint`.
    pub async fn call<T, F, Fut>(
        &self,
        endpoint: &str,
        method: &'static str,
        deadline: Instant,
        call: F,
    ) -> Result<T, Status>
    where
        F: FnOnce(Channel, Duration) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut timer = CallTimer {
            metrics: &self.inner.metrics,
            method,
            started: Instant::now(),
            code: None,
        };
        let result = self.call_leased(endpoint, method, deadline, call).await;
        timer.code = Some(match &result {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        });
        result
    }
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        let endpoints = std::mem::take(&mut *lock(&self.endpoints));
        for state in endpoints.values() {
            let drained: Vec<_> = lock(&state.channels).drain(..).collect();
            for _ in drained {
                self.metrics.channel_closed(CloseReason::Shutdown);
            }
        }
    }
}

/// The reaper: closes idle and aged channels and sweeps for leaks every `interval`, until the
/// pool is gone.
async fn reap_loop(pool: Weak<PoolInner>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(pool) = pool.upgrade() else { return };
        pool.reap();
        pool.sweep_leaks(Instant::now());
    }
}
