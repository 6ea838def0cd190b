//! The call path: shutdown and breaker checks, permits within the queue timeout, a registered
//! lease, a channel from the cache, the caller's future under the deadline, and the outcome
//! booked on the breaker and the metrics.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, timeout_at};
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::channels::CheckoutError;
use super::lease::{Lease, Verdict};
use super::{EndpointState, LeasePool, LeaseRecord, lock};
use crate::metrics::{CloseReason, LeaseOutcome, PoolMetrics};

impl LeasePool {
    /// The call path: a lease, a channel, the caller's future under the deadline, the outcome.
    pub(super) async fn call_leased<T, F, Fut>(
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
        let call_site = CallSite {
            endpoint,
            method,
            started: Instant::now(),
            deadline,
        };
        let (mut lease, call_site) = self.lease(call_site).await?;
        let channel = self.checkout(&mut lease, &call_site).await?;
        let remaining = call_site.deadline.saturating_duration_since(Instant::now());
        let answer = timeout_at(call_site.deadline, call(channel, remaining)).await;
        match answer {
            Ok(answer) => call_site.book_answer(&mut lease, answer),
            Err(_elapsed) => {
                lease.finish(LeaseOutcome::Deadline, Verdict::Failure);
                Err(Status::deadline_exceeded(format!(
                    "{method} via {endpoint}: no answer within the lease deadline of {:?}",
                    call_site.lease_length()
                )))
            }
        }
    }

    /// Shutdown and breaker checks, permits within the queue timeout, the breaker's admission,
    /// and the lease registered as live. Caps the deadline at `max_lease`.
    async fn lease<'a>(&self, call_site: CallSite<'a>) -> Result<(Lease, CallSite<'a>), Status> {
        let inner = &self.inner;
        let CallSite {
            endpoint,
            method,
            started,
            ..
        } = call_site;
        if inner.shut_down.load(Ordering::SeqCst) {
            return Err(Status::unavailable(format!(
                "{method} via {endpoint}: lease pool is shut down"
            )));
        }
        let deadline = call_site.deadline.min(started + inner.config.max_lease);
        let call_site = CallSite {
            deadline,
            ..call_site
        };
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
        let lease = Lease {
            id,
            pool: Arc::clone(inner),
            endpoint: state,
            channel_id: None,
            admission,
            verdict_recorded: false,
            outcome: None,
            _endpoint_permit: endpoint_permit,
            _global_permit: global_permit,
        };
        Ok((lease, call_site))
    }

    /// A channel for `lease` from the cache; a failure is booked on the lease.
    async fn checkout(
        &self,
        lease: &mut Lease,
        call_site: &CallSite<'_>,
    ) -> Result<Channel, Status> {
        let CallSite {
            endpoint, method, ..
        } = *call_site;
        let state = Arc::clone(&lease.endpoint);
        match self.checkout_channel(&state, call_site.deadline).await {
            Ok((id, channel)) => {
                lease.channel_id = Some(id);
                Ok(channel)
            }
            Err(CheckoutError::Deadline) => {
                lease.finish(LeaseOutcome::Deadline, Verdict::Failure);
                Err(Status::deadline_exceeded(format!(
                    "{method} via {endpoint}: deadline exceeded while opening a channel (lease of {:?})",
                    call_site.lease_length()
                )))
            }
            Err(CheckoutError::Dial(e)) => {
                lease.finish(LeaseOutcome::Error, Verdict::Failure);
                Err(Status::unavailable(format!("{method} via {endpoint}: {e}")))
            }
            Err(CheckoutError::ChannelCap) => {
                lease.finish(LeaseOutcome::Error, Verdict::None);
                Err(Status::resource_exhausted(format!(
                    "{method} via {endpoint}: no channel available: the pool holds its cap of {} channels in total and none is idle",
                    self.inner.config.max_channels_total
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
}

/// What a call's errors name, and its time bounds.
#[derive(Clone, Copy)]
struct CallSite<'a> {
    endpoint: &'a str,
    method: &'static str,
    started: Instant,
    deadline: Instant,
}

impl CallSite<'_> {
    fn lease_length(&self) -> Duration {
        self.deadline - self.started
    }

    /// Books the answer the caller's future gave within the deadline on `lease` and names
    /// `method` and `endpoint` in an error.
    fn book_answer<T>(&self, lease: &mut Lease, answer: Result<T, Status>) -> Result<T, Status> {
        let CallSite {
            endpoint, method, ..
        } = *self;
        match answer {
            Ok(value) => {
                lease.finish(LeaseOutcome::Ok, Verdict::Success);
                Ok(value)
            }
            Err(status) if is_deadline(&status, self.deadline) => {
                // tonic's own grpc-timeout (set from the same deadline) fired first.
                lease.finish(LeaseOutcome::Deadline, Verdict::Failure);
                Err(Status::deadline_exceeded(format!(
                    "{method} via {endpoint}: no answer within the lease deadline of {:?} ({})",
                    self.lease_length(),
                    status_text(&status)
                )))
            }
            Err(status) => {
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
        }
    }
}

/// Observes `call_duration_seconds` on every path; a dropped call is booked as `cancelled`.
pub(super) struct CallTimer<'a> {
    pub(super) metrics: &'a PoolMetrics,
    pub(super) method: &'static str,
    pub(super) started: Instant,
    pub(super) code: Option<Code>,
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
