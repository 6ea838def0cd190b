//! Counting what the server serves: calls in flight (and their maximum), connections with
//! their HTTP/2 PINGs and GOAWAYs, and the fault action each call gets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::{CONNECTIONS_REMEMBERED, ConnectionInfo, FakeEngine, Inner, lock};
use crate::fault::{Action, Method};

/// Counters of one accepted connection (see [`ConnectionInfo`]).
pub(crate) struct ConnectionRecord {
    pub(super) peer: SocketAddr,
    pub(super) open: AtomicBool,
    pub(super) pings: AtomicU64,
    pub(super) too_many_pings: AtomicBool,
    pub(super) pings_total: Arc<AtomicU64>,
    pub(super) goaways_total: Arc<AtomicU64>,
}

impl ConnectionRecord {
    pub(crate) fn ping_received(&self) {
        self.pings.fetch_add(1, Ordering::SeqCst);
        self.pings_total.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn told_too_many_pings(&self) {
        self.too_many_pings.store(true, Ordering::SeqCst);
        self.goaways_total.fetch_add(1, Ordering::SeqCst);
    }

    pub(super) fn info(&self) -> ConnectionInfo {
        ConnectionInfo {
            peer: self.peer,
            open: self.open.load(Ordering::SeqCst),
            pings_received: self.pings.load(Ordering::SeqCst),
            told_too_many_pings: self.too_many_pings.load(Ordering::SeqCst),
        }
    }
}

impl FakeEngine {
    /// The fault action for one call of `method`, randomness resolved.
    pub(crate) fn action_for(&self, method: Method) -> Action {
        let mut data = self.data();
        let data = &mut *data;
        match data
            .faults
            .get(&method)
            .or_else(|| data.faults.get(&Method::Any))
        {
            Some(fault) => fault.resolve(&mut data.rng),
            None => Action::Proceed,
        }
    }

    /// Counts a call; the guard keeps it "in flight" until dropped (also when the call is cancelled).
    pub(crate) fn begin_call(&self, method_key: &str) -> CallGuard {
        let i = &self.inner;
        i.calls_total.fetch_add(1, Ordering::SeqCst);
        *lock(&i.calls_by_method)
            .entry(method_key.to_string())
            .or_default() += 1;
        let now = i.concurrent_calls.fetch_add(1, Ordering::SeqCst) + 1;
        i.max_concurrent_calls.fetch_max(now, Ordering::SeqCst);
        CallGuard {
            inner: self.inner.clone(),
        }
    }

    /// Counts a connection; open until the guard is dropped.
    pub(crate) fn connection_opened(&self, peer: SocketAddr) -> ConnectionGuard {
        let i = &self.inner;
        i.total_connections.fetch_add(1, Ordering::SeqCst);
        i.open_connections.fetch_add(1, Ordering::SeqCst);
        let record = Arc::new(ConnectionRecord {
            peer,
            open: AtomicBool::new(true),
            pings: AtomicU64::new(0),
            too_many_pings: AtomicBool::new(false),
            pings_total: i.pings_received.clone(),
            goaways_total: i.too_many_pings_goaways.clone(),
        });
        {
            let mut connections = lock(&i.connections);
            if connections.len() == CONNECTIONS_REMEMBERED {
                connections.pop_front();
            }
            connections.push_back(record.clone());
        }
        ConnectionGuard {
            inner: self.inner.clone(),
            record,
        }
    }
}

pub(crate) struct CallGuard {
    inner: Arc<Inner>,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.inner.concurrent_calls.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(crate) struct ConnectionGuard {
    inner: Arc<Inner>,
    record: Arc<ConnectionRecord>,
}

impl ConnectionGuard {
    pub(crate) fn record(&self) -> Arc<ConnectionRecord> {
        self.record.clone()
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.record.open.store(false, Ordering::SeqCst);
        self.inner.open_connections.fetch_sub(1, Ordering::SeqCst);
    }
}
