//! Every task the server spawns (connections, and the HTTP/2 stream tasks hyper spawns through
//! [`TrackedExecutor`]) is registered here, so shutdown can abort them all and wait until none is left.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;
use tokio::task::AbortHandle;

pub(crate) struct TaskRegistry {
    state: Mutex<RegistryState>,
    live: watch::Sender<usize>,
}

#[derive(Default)]
struct RegistryState {
    next_id: u64,
    handles: HashMap<u64, AbortHandle>,
    /// Tasks that ended before their handle was registered.
    ended_early: HashSet<u64>,
    closed: bool,
}

impl TaskRegistry {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(TaskRegistry {
            state: Mutex::new(RegistryState::default()),
            live: watch::Sender::new(0),
        })
    }

    fn state(&self) -> MutexGuard<'_, RegistryState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Spawns `fut` on the current runtime, tracked. After [`Self::close`], `fut` is dropped unrun.
    pub(crate) fn spawn<F>(self: &Arc<Self>, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let id = {
            let mut st = self.state();
            if st.closed {
                return;
            }
            st.next_id += 1;
            st.next_id
        };
        self.live.send_modify(|n| *n += 1);
        let guard = TaskGuard {
            registry: self.clone(),
            id,
        };
        // No lock held here: if the runtime drops the future at once, the guard's drop may lock.
        let handle = tokio::spawn(async move {
            let _guard = guard;
            fut.await;
        })
        .abort_handle();
        let mut st = self.state();
        if st.ended_early.remove(&id) {
            return;
        }
        if st.closed {
            handle.abort();
        }
        st.handles.insert(id, handle);
    }

    /// Refuses new tasks and aborts every running one.
    pub(crate) fn close(&self) {
        let mut st = self.state();
        st.closed = true;
        for handle in st.handles.values() {
            handle.abort();
        }
    }

    /// Waits until every task has ended (or been dropped after an abort).
    pub(crate) async fn wait_idle(&self) {
        let mut live = self.live.subscribe();
        // The sender lives in `self`, so this only returns once the count is 0.
        let _ = live.wait_for(|n| *n == 0).await;
    }

    pub(crate) fn live_tasks(&self) -> usize {
        *self.live.borrow()
    }
}

struct TaskGuard {
    registry: Arc<TaskRegistry>,
    id: u64,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        {
            let mut st = self.registry.state();
            if st.handles.remove(&self.id).is_none() {
                st.ended_early.insert(self.id);
            }
        }
        self.registry.live.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// hyper executor that spawns HTTP/2 stream tasks into a [`TaskRegistry`].
#[derive(Clone)]
pub(crate) struct TrackedExecutor(pub(crate) Arc<TaskRegistry>);

impl<F> hyper::rt::Executor<F> for TrackedExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.spawn(async move {
            fut.await;
        });
    }
}
