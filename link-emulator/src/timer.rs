//! Sub-millisecond waits. tokio's timer ticks in whole milliseconds, too coarse for a 0.05 ms
//! one-way delay, so deadlines go to one dedicated thread per emulator that keeps them in a heap
//! and sleeps on a futex until the earliest. The kernel adds its timer slack (~50 µs) to every
//! such sleep, and more under load; the thread measures that overshoot at start, keeps an average
//! of the overshoots it sees, wakes that much early, then spins the few remaining microseconds. Spinning only ever covers that last stretch, so an idle or
//! slow link costs no CPU.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// Never wake more than this early (a bad calibration on a loaded machine must not turn into
/// long spins).
const MAX_LEAD: Duration = Duration::from_micros(200);

struct Deadline {
    at: Instant,
    seq: u64,
    wake: oneshot::Sender<()>,
}

impl PartialEq for Deadline {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Deadline {}
impl PartialOrd for Deadline {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Deadline {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Handle to the timer thread; the thread ends when every handle is dropped.
#[derive(Clone)]
pub struct PreciseTimer {
    requests: mpsc::Sender<(Instant, oneshot::Sender<()>)>,
}

impl PreciseTimer {
    pub fn start() -> std::io::Result<Self> {
        let (requests, incoming) = mpsc::channel();
        std::thread::Builder::new()
            .name("link-emulator-timer".into())
            .spawn(move || run(&incoming, calibrate_lead(&incoming)))?;
        Ok(Self { requests })
    }

    /// Completes at `at`, a few microseconds late at best (more when the machine is loaded).
    pub async fn sleep_until(&self, at: Instant) {
        if at <= Instant::now() {
            return;
        }
        let (wake, woken) = oneshot::channel();
        if self.requests.send((at, wake)).is_err() || woken.await.is_err() {
            // the timer thread is gone: fall back to tokio's millisecond timer
            tokio::time::sleep_until(at.into()).await;
        }
    }
}

/// The smallest overshoot of a short futex sleep: the kernel's timer slack for this thread.
fn calibrate_lead(incoming: &mpsc::Receiver<(Instant, oneshot::Sender<()>)>) -> Duration {
    let mut lead = MAX_LEAD;
    for _ in 0..8 {
        let asked = Duration::from_micros(100);
        let started = Instant::now();
        if let Ok(_early_request) = incoming.recv_timeout(asked) {
            // a request before calibration ended: answer it late rather than lose it
            return Duration::from_micros(50);
        }
        lead = lead.min(started.elapsed().saturating_sub(asked));
    }
    lead
}

fn run(incoming: &mpsc::Receiver<(Instant, oneshot::Sender<()>)>, mut lead: Duration) {
    let mut heap: BinaryHeap<Reverse<Deadline>> = BinaryHeap::new();
    let mut seq = 0u64;
    loop {
        let now = Instant::now();
        while heap.peek().is_some_and(|Reverse(d)| d.at <= now) {
            if let Some(Reverse(due)) = heap.pop() {
                let _ = due.wake.send(());
            }
        }
        let received = match heap.peek().map(|Reverse(d)| d.at - now) {
            None => match incoming.recv() {
                Ok(request) => Some(request),
                Err(mpsc::RecvError) => return,
            },
            Some(left) if left > lead => match incoming.recv_timeout(left - lead) {
                Ok(request) => Some(request),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // Track how late the kernel wakes us (it varies with the sleep's length and
                    // the machine's load): an average of the recent overshoots.
                    let late = now.elapsed().saturating_sub(left - lead);
                    lead = ((lead * 7 + late) / 8).min(MAX_LEAD);
                    None
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            },
            Some(_) => match incoming.try_recv() {
                Ok(request) => Some(request),
                Err(mpsc::TryRecvError::Empty) => {
                    std::hint::spin_loop();
                    None
                }
                Err(mpsc::TryRecvError::Disconnected) => return,
            },
        };
        if let Some((at, wake)) = received {
            seq += 1;
            heap.push(Reverse(Deadline { at, seq, wake }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sub_millisecond_waits_never_end_before_their_deadline() {
        let timer = PreciseTimer::start().expect("the timer thread starts");
        for i in 0..200u64 {
            let deadline = Instant::now() + Duration::from_micros(20 + 7 * i);
            timer.sleep_until(deadline).await;
            let now = Instant::now();
            assert!(now >= deadline, "woke {:?} early", deadline - now);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_waits_each_end_after_their_own_deadline() {
        let timer = PreciseTimer::start().expect("the timer thread starts");
        let start = Instant::now();
        // deadlines handed over out of order: the heap must wake each at its own
        let waits = (0..64u64).map(|i| {
            let timer = timer.clone();
            let deadline = start + Duration::from_micros(((i * 37) % 64) * 25);
            tokio::spawn(async move {
                timer.sleep_until(deadline).await;
                Instant::now() >= deadline
            })
        });
        for wait in waits {
            assert!(
                wait.await.expect("the wait task completes"),
                "a wait ended early"
            );
        }
    }
}
