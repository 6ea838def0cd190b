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

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, timeout_at};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::breaker::{Admission, BreakerState, CircuitBreaker};
use crate::config::{ConfigError, PoolConfig};
use crate::connect::{ChannelWitness, DialError, Transport, dial};
use crate::metrics::{CloseReason, LeakSweep, LeaseOutcome, PoolBook, PoolMetrics};

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

struct LeaseRecord {
    endpoint: Arc<EndpointState>,
    method: &'static str,
    acquired: Instant,
    deadline: Instant,
    /// Already counted in `leaked_leases_detected` (and logged).
    reported: bool,
}

struct ChannelRecord {
    endpoint: String,
    opened: Instant,
    /// When the pool closed it (took it out of its endpoint's list).
    released: Option<Instant>,
    witness: Weak<ChannelWitness>,
    reported: bool,
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

    async fn call_leased<T, F, Fut>(
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
        let inner = &self.inner;
        if inner.shut_down.load(Ordering::SeqCst) {
            return Err(Status::unavailable(format!(
                "{method} via {endpoint}: lease pool is shut down"
            )));
        }
        let started = Instant::now();
        let deadline = deadline.min(started + inner.config.max_lease);
        let state = inner.endpoint(endpoint, started);

        if lock(&state.breaker).would_shed(started) {
            return Err(self.shed(&state, method, started));
        }

        let (endpoint_permit, global_permit) = self.acquire(&state, method, deadline).await?;
        inner
            .metrics
            .observe_lease_wait((Instant::now() - started).as_secs_f64());

        let now = Instant::now();
        let admission = {
            let mut breaker = lock(&state.breaker);
            let admission = breaker.admit(now);
            inner
                .metrics
                .set_breaker_state(endpoint, breaker.state().metric_value());
            admission
        };
        let Some(admission) = admission else {
            return Err(self.shed(&state, method, now));
        };

        inner.metrics.lease_acquired();
        let id = inner.next_lease_id.fetch_add(1, Ordering::Relaxed);
        lock(&inner.live_leases).insert(
            id,
            LeaseRecord {
                endpoint: Arc::clone(&state),
                method,
                acquired: now,
                deadline,
                reported: false,
            },
        );
        let mut lease = Lease {
            id,
            pool: Arc::clone(inner),
            endpoint: Arc::clone(&state),
            channel_id: None,
            admission,
            verdict_recorded: false,
            outcome: None,
            _endpoint_permit: endpoint_permit,
            _global_permit: global_permit,
        };

        let channel = match self.checkout_channel(&state, deadline).await {
            Ok((id, channel)) => {
                lease.channel_id = Some(id);
                channel
            }
            Err(CheckoutError::Deadline) => {
                lease.finish(LeaseOutcome::Deadline, Verdict::Failure);
                return Err(Status::deadline_exceeded(format!(
                    "{method} via {endpoint}: deadline exceeded while opening a channel (lease of {:?})",
                    deadline - started
                )));
            }
            Err(CheckoutError::Dial(e)) => {
                lease.finish(LeaseOutcome::Error, Verdict::Failure);
                return Err(Status::unavailable(format!("{method} via {endpoint}: {e}")));
            }
            Err(CheckoutError::ChannelCap) => {
                lease.finish(LeaseOutcome::Error, Verdict::None);
                return Err(Status::resource_exhausted(format!(
                    "{method} via {endpoint}: no channel available: the pool holds its cap of {} channels in total and none is idle",
                    inner.config.max_channels_total
                )));
            }
        };

        let remaining = deadline.saturating_duration_since(Instant::now());
        match timeout_at(deadline, call(channel, remaining)).await {
            Ok(Ok(value)) => {
                lease.finish(LeaseOutcome::Ok, Verdict::Success);
                Ok(value)
            }
            Ok(Err(status)) if is_deadline(&status, deadline) => {
                // tonic's own grpc-timeout (set from the same deadline) fired first.
                lease.finish(LeaseOutcome::Deadline, Verdict::Failure);
                Err(Status::deadline_exceeded(format!(
                    "{method} via {endpoint}: no answer within the lease deadline of {:?} ({})",
                    deadline - started,
                    status_text(&status)
                )))
            }
            Ok(Err(status)) => {
                let transport = is_transport_error(&status);
                let connection = lease.channel_id;
                if transport {
                    lease.evict_channel(CloseReason::TransportError);
                }
                let verdict = match connection {
                    // Every call in flight on a broken connection fails: one failure for all.
                    Some(id) if transport => Verdict::ConnectionFailure(id),
                    _ if transport || endpoint_failure(status.code()) => Verdict::Failure,
                    _ => Verdict::Success,
                };
                let outcome = LeaseOutcome::Error;
                lease.finish(outcome, verdict);
                Err(Status::new(
                    status.code(),
                    format!("{method} via {endpoint}: {}", status_text(&status)),
                ))
            }
            Err(_elapsed) => {
                lease.finish(LeaseOutcome::Deadline, Verdict::Failure);
                Err(Status::deadline_exceeded(format!(
                    "{method} via {endpoint}: no answer within the lease deadline of {:?}",
                    deadline - started
                )))
            }
        }
    }

    fn shed(&self, state: &EndpointState, method: &'static str, now: Instant) -> Status {
        let breaker = lock(&state.breaker);
        Status::unavailable(format!(
            "circuit open for {}: {method} shed after {} consecutive failures ({})",
            state.endpoint,
            self.inner.config.breaker_failure_threshold,
            breaker.describe(now)
        ))
    }

    async fn acquire(
        &self,
        state: &EndpointState,
        method: &'static str,
        deadline: Instant,
    ) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), Status> {
        let inner = &self.inner;
        let started = Instant::now();
        let wait_until = deadline.min(started + inner.config.queue_timeout);
        let waited = timeout_at(wait_until, async {
            let endpoint_permit = Arc::clone(&state.leases).acquire_owned().await?;
            let global_permit = Arc::clone(&inner.global_leases).acquire_owned().await?;
            Ok::<_, tokio::sync::AcquireError>((endpoint_permit, global_permit))
        })
        .await;
        match waited {
            Ok(Ok(permits)) => Ok(permits),
            Ok(Err(_closed)) => Err(Status::unavailable(format!(
                "{method} via {}: lease pool is shut down",
                state.endpoint
            ))),
            Err(_elapsed) => {
                inner.metrics.lease_wait_overflowed();
                Err(Status::resource_exhausted(format!(
                    "{method} via {}: no lease within {:?}: caps are {} concurrent calls per endpoint ({} in use) and {} in total ({} in use)",
                    state.endpoint,
                    wait_until - started,
                    inner.config.max_leases_per_endpoint,
                    inner
                        .config
                        .max_leases_per_endpoint
                        .saturating_sub(state.leases.available_permits()),
                    inner.config.max_leases_total,
                    inner
                        .config
                        .max_leases_total
                        .saturating_sub(inner.global_leases.available_permits()),
                )))
            }
        }
    }

    async fn checkout_channel(
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

enum CheckoutError {
    Deadline,
    Dial(DialError),
    ChannelCap,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Success,
    Failure,
    /// The call failed because pooled channel `id` broke.
    ConnectionFailure(u64),
    None,
}

impl PoolInner {
    fn endpoint(&self, endpoint: &str, now: Instant) -> Arc<EndpointState> {
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

    fn remove_channel(&self, state: &EndpointState, id: u64, reason: CloseReason) {
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

    fn reap(&self) {
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
    fn channel_closed(&self, id: u64, reason: CloseReason, now: Instant) {
        self.metrics.channel_closed(reason);
        if let Some(record) = lock(&self.channel_registry).get_mut(&id) {
            record.released = Some(now);
        }
    }

    /// One pass over the live leases and channels (see the module docs); forgets channels whose
    /// witness is gone and books the result.
    fn sweep_leaks(&self, now: Instant) {
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

async fn reap_loop(pool: Weak<PoolInner>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(pool) = pool.upgrade() else { return };
        pool.reap();
        pool.sweep_leaks(Instant::now());
    }
}

/// A granted call slot. Dropping it, on any path, returns the permits, releases the channel and
/// books the outcome: `cancelled` when dropped without one, `panic` when dropped while unwinding.
struct Lease {
    /// Key in the pool's registry of live leases.
    id: u64,
    pool: Arc<PoolInner>,
    endpoint: Arc<EndpointState>,
    channel_id: Option<u64>,
    admission: Admission,
    verdict_recorded: bool,
    outcome: Option<LeaseOutcome>,
    _endpoint_permit: OwnedSemaphorePermit,
    _global_permit: OwnedSemaphorePermit,
}

impl Lease {
    fn finish(&mut self, outcome: LeaseOutcome, verdict: Verdict) {
        self.outcome = Some(outcome);
        if verdict == Verdict::None {
            return;
        }
        let mut breaker = lock(&self.endpoint.breaker);
        match verdict {
            Verdict::Success => breaker.on_success(),
            Verdict::Failure => breaker.on_failure(Instant::now()),
            Verdict::ConnectionFailure(id) => breaker.on_connection_failure(Instant::now(), id),
            Verdict::None => {}
        }
        self.verdict_recorded = true;
        self.pool
            .metrics
            .set_breaker_state(&self.endpoint.endpoint, breaker.state().metric_value());
    }

    fn evict_channel(&mut self, reason: CloseReason) {
        if let Some(id) = self.channel_id.take() {
            self.pool.remove_channel(&self.endpoint, id, reason);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let outcome = self.outcome.take().unwrap_or(if std::thread::panicking() {
            LeaseOutcome::Panic
        } else {
            LeaseOutcome::Cancelled
        });
        if let Some(id) = self.channel_id.take() {
            let now = Instant::now();
            if let Some(c) = lock(&self.endpoint.channels)
                .iter_mut()
                .find(|c| c.id == id)
            {
                c.in_flight = c.in_flight.saturating_sub(1);
                c.last_used = now;
            }
        }
        if self.admission == Admission::Probe && !self.verdict_recorded {
            let mut breaker = lock(&self.endpoint.breaker);
            breaker.on_probe_abandoned();
            self.pool
                .metrics
                .set_breaker_state(&self.endpoint.endpoint, breaker.state().metric_value());
        }
        lock(&self.pool.live_leases).remove(&self.id);
        self.pool.metrics.lease_released(outcome);
    }
}

/// Observes `call_duration_seconds` on every path; a dropped call is booked as `cancelled`.
struct CallTimer<'a> {
    metrics: &'a PoolMetrics,
    method: &'static str,
    started: Instant,
    code: Option<Code>,
}

impl Drop for CallTimer<'_> {
    fn drop(&mut self) {
        let code = self.code.unwrap_or(Code::Cancelled);
        self.metrics
            .observe_call(self.method, code, self.started.elapsed().as_secs_f64());
    }
}

/// Errors that mean the connection itself is bad: UNAVAILABLE, or an error raised on the client
/// side by the transport (tonic attaches the hyper / h2 / io error as the source).
fn is_transport_error(status: &Status) -> bool {
    if status.code() == Code::Unavailable {
        return true;
    }
    matches!(
        status.code(),
        Code::Unknown | Code::Internal | Code::Cancelled
    ) && std::error::Error::source(status).is_some()
}

/// The call ran out of time: a DEADLINE_EXCEEDED from the server, tonic's client-side
/// `grpc-timeout` expiry (CANCELLED with a `TimeoutExpired` source), or any error at the deadline.
fn is_deadline(status: &Status, deadline: Instant) -> bool {
    if status.code() == Code::DeadlineExceeded || Instant::now() >= deadline {
        return true;
    }
    let mut source = std::error::Error::source(status);
    while let Some(s) = source {
        if s.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// Codes that say the endpoint is failing (as opposed to the request being wrong).
fn endpoint_failure(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Internal
            | Code::Unknown
            | Code::DataLoss
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Cancelled
    )
}

fn status_text(status: &Status) -> String {
    match std::error::Error::source(status) {
        Some(source) if !status.message().contains(&source.to_string()) => {
            format!(
                "{}: {}",
                status.message(),
                crate::connect::error_chain(source)
            )
        }
        _ => status.message().to_string(),
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
