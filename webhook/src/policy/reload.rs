//! Hot reload of the policy file (a ConfigMap mount): its content is polled every few
//! seconds; a new valid policy is swapped in and the generation goes up; an invalid one is
//! rejected with one log line naming the file and the field, counted once per distinct
//! content, and the last good policy stays in force.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::Policy;

/// The policy in force and its generation (1 = the one loaded at start).
#[derive(Debug)]
pub struct PolicyCell {
    current: RwLock<Arc<Policy>>,
    generation: AtomicU64,
}

impl PolicyCell {
    pub fn new(policy: Arc<Policy>) -> Self {
        Self {
            current: RwLock::new(policy),
            generation: AtomicU64::new(1),
        }
    }

    /// The policy in force now; cheap (an `Arc` clone under a read lock).
    pub fn get(&self) -> Arc<Policy> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Swaps in `policy`; returns the new generation.
    pub fn set(&self, policy: Arc<Policy>) -> u64 {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = policy;
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

/// What one poll found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// Same content as last time (good or bad): nothing to do, nothing to report.
    Unchanged,
    Reloaded {
        generation: u64,
    },
    /// The new content is not a valid policy; the last good one stays.
    Rejected {
        error: String,
    },
}

/// Parses and validates policy text; the error names the file and the field.
pub fn parse_policy(path: &Path, text: &str) -> Result<Policy, String> {
    let shown = path.display();
    let policy = Policy::from_yaml(text)
        .map_err(|e| format!("policy file {shown} is not a valid policy: {e}"))?;
    policy
        .validate()
        .map_err(|m| format!("policy file {shown}: {m}"))?;
    Ok(policy)
}

fn digest(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Polls one policy file.
#[derive(Debug)]
pub struct PolicyFileWatch {
    path: PathBuf,
    /// Digest of the content last looked at (loaded or rejected); `None` = read failed.
    last: Option<u64>,
    last_read_failed: bool,
}

impl PolicyFileWatch {
    /// `initial` is the content the running policy was loaded from, if known.
    pub fn new(path: PathBuf, initial: Option<&[u8]>) -> Self {
        Self {
            path,
            last: initial.map(digest),
            last_read_failed: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file once and applies it to `cell` if it changed and is valid.
    pub fn poll(&mut self, cell: &PolicyCell) -> ReloadOutcome {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) => {
                if self.last_read_failed {
                    return ReloadOutcome::Unchanged;
                }
                self.last_read_failed = true;
                return ReloadOutcome::Rejected {
                    error: format!(
                        "cannot read policy file {}: {e}; keeping policy generation {}",
                        self.path.display(),
                        cell.generation()
                    ),
                };
            }
        };
        self.last_read_failed = false;
        self.apply_content(bytes, cell)
    }

    /// Applies file content just read to `cell`: `Unchanged` when it is the content last
    /// looked at, else swapped in when valid or rejected (the last good policy stays). What
    /// [`poll`](Self::poll) does after its read; public for fuzzing and tests.
    pub fn apply_content(&mut self, bytes: Vec<u8>, cell: &PolicyCell) -> ReloadOutcome {
        let d = digest(&bytes);
        if self.last == Some(d) {
            return ReloadOutcome::Unchanged;
        }
        self.last = Some(d);
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                return ReloadOutcome::Rejected {
                    error: format!(
                        "policy file {} is not UTF-8: {e}; keeping policy generation {}",
                        self.path.display(),
                        cell.generation()
                    ),
                };
            }
        };
        match parse_policy(&self.path, &text) {
            Ok(p) => ReloadOutcome::Reloaded {
                generation: cell.set(Arc::new(p)),
            },
            Err(error) => ReloadOutcome::Rejected {
                error: format!("{error}; keeping policy generation {}", cell.generation()),
            },
        }
    }
}

/// Polls `watch` every `interval` forever, logging each outcome and handing it to
/// `report` (metrics).
pub async fn run_reloader(
    mut watch: PolicyFileWatch,
    cell: Arc<PolicyCell>,
    interval: Duration,
    report: impl Fn(&ReloadOutcome) + Send + 'static,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let outcome = watch.poll(&cell);
        match &outcome {
            ReloadOutcome::Unchanged => {}
            ReloadOutcome::Reloaded { generation } => tracing::info!(
                file = %watch.path().display(),
                generation,
                "policy reloaded"
            ),
            ReloadOutcome::Rejected { error } => tracing::error!(
                file = %watch.path().display(),
                %error,
                "policy reload rejected; the last good policy stays in force"
            ),
        }
        report(&outcome);
    }
}
