//! What an engine check found, and how that changes the Snapshot-CR decision: pure, no I/O.
//!
//! Only a definite answer from the engine ("I do not have it", "it is marked removed") can
//! turn an allowed Backup into a denial, and only in `enforce` mode (and not in the policy's
//! `warn-only` mode). Every other outcome keeps the CR decision and adds a warning saying the
//! engine check was skipped and why.

use crate::decision::{BackupRequest, Decision, Denial, Reason};
use crate::policy::{EngineCheckMode, Mode};

/// How one engine check ended. Also the `outcome` metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The engine lists the snapshot.
    Present,
    /// The engine answered and does not list it (its chain is otherwise non-empty).
    Absent,
    /// The engine lists it marked removed.
    Removed,
    /// The agent answered with an error, or could not be reached (refused, TLS failure).
    Error,
    /// No answer within the budget.
    Timeout,
    /// The agent's breaker is open: not asked.
    BreakerOpen,
    /// No engine known for the volume, or no agent known for its node.
    NoAgent,
    /// Too many checks in flight: not asked.
    Overflow,
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::Present,
        Outcome::Absent,
        Outcome::Removed,
        Outcome::Error,
        Outcome::Timeout,
        Outcome::BreakerOpen,
        Outcome::NoAgent,
        Outcome::Overflow,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Present => "present",
            Outcome::Absent => "absent",
            Outcome::Removed => "removed",
            Outcome::Error => "error",
            Outcome::Timeout => "timeout",
            Outcome::BreakerOpen => "breaker_open",
            Outcome::NoAgent => "no_agent",
            Outcome::Overflow => "overflow",
        }
    }

    /// True for the answers that say something about the snapshot.
    pub fn is_definite(self) -> bool {
        matches!(self, Outcome::Present | Outcome::Absent | Outcome::Removed)
    }
}

/// The result of one check, with the names a message needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub outcome: Outcome,
    /// The volume the check was about.
    pub volume: String,
    /// The engine asked (the agent's answer when it gave one, else the index's).
    pub engine: Option<String>,
    /// Its node.
    pub node: Option<String>,
    /// For anything but `present`: what happened, for the warning.
    pub detail: String,
    /// Whether the Snapshot CR says `readyToUse` (`None` when the index does not have it).
    pub cr_ready: Option<bool>,
}

impl Finding {
    fn engine_and_node(&self) -> String {
        format!(
            "engine {} on node {}",
            self.engine
                .as_deref()
                .map_or("(unknown)".to_string(), |e| format!("{e:?}")),
            self.node
                .as_deref()
                .map_or("(unknown)".to_string(), |n| format!("{n:?}")),
        )
    }
}

/// True when an engine check can change `decision`: an allowed Backup whose Snapshot CR was
/// found and passed (or only warned about) the CR checks. Exempt Backups, empty snapshot
/// names, fail-open answers and warn-only would-be denials are left alone.
pub fn is_eligible(decision: &Decision) -> bool {
    matches!(
        decision,
        Decision::Allow {
            reason: Reason::Checked
                | Reason::SnapshotNotReady
                | Reason::VolumeMissing
                | Reason::TargetUnavailable,
            ..
        }
    )
}

fn subject(req: &BackupRequest, volume: &str) -> String {
    format!(
        "{} in namespace {:?} (snapshot {:?}, volume {volume:?})",
        req.display_name(),
        req.namespace,
        req.snapshot
    )
}

/// What the engine's answer says against the Snapshot CR: `Ok` a problem (reason, what,
/// what to do) that denies or warns as the modes say; `Err` the CR decision stands, with
/// this warning if any (present; absent but the Snapshot is still being taken; no definite
/// answer).
fn engine_problem(
    req: &BackupRequest,
    finding: &Finding,
    what: &str,
) -> Result<(Reason, String, &'static str), Option<String>> {
    match finding.outcome {
        Outcome::Present => Err(None),
        Outcome::Absent if finding.cr_ready != Some(true) => {
            // A Snapshot being taken exists as a CR before the engine has it.
            Err(Some(format!(
                "longhorn-guard: {what}: the volume's {} does not list snapshot {:?} yet and the Snapshot is not readyToUse; if it never becomes ready this Backup stays Pending [engine_check]",
                finding.engine_and_node(),
                req.snapshot
            )))
        }
        Outcome::Absent => Ok((
            Reason::SnapshotLost,
            format!(
                "the volume's {} does not have snapshot {:?} although its Snapshot CR exists (the engine lost it, e.g. after a power failure)",
                finding.engine_and_node(),
                req.snapshot
            ),
            "Take a new snapshot of the volume and back that one up; delete the stale Snapshot.",
        )),
        Outcome::Removed => Ok((
            Reason::SnapshotRemoved,
            format!(
                "the volume's {} lists snapshot {:?} as removed although its Snapshot CR does not say so",
                finding.engine_and_node(),
                req.snapshot
            ),
            "Back up a current snapshot of the volume instead.",
        )),
        skipped => Err(Some(format!(
            "longhorn-guard: engine check skipped: {} [{}]; {what} allowed on the Snapshot CR alone",
            finding.detail,
            skipped.as_str()
        ))),
    }
}

/// Applies `finding` to the CR decision `decision` (see the module docs).
pub fn apply(
    check: EngineCheckMode,
    policy_mode: Mode,
    req: &BackupRequest,
    decision: Decision,
    finding: &Finding,
) -> Decision {
    if check == EngineCheckMode::Off || !is_eligible(&decision) {
        return decision;
    }
    let Decision::Allow {
        reason: cr_reason,
        warnings: mut cr_warnings,
    } = decision
    else {
        return decision;
    };
    let what = subject(req, &finding.volume);
    let (reason, problem, todo) = match engine_problem(req, finding, &what) {
        Ok(problem) => problem,
        Err(warning) => {
            cr_warnings.extend(warning);
            return Decision::Allow {
                reason: cr_reason,
                warnings: cr_warnings,
            };
        }
    };
    if check == EngineCheckMode::Enforce && policy_mode == Mode::Enforce {
        Decision::Deny(Denial {
            reason,
            code: reason.status_code(),
            message: format!(
                "longhorn-guard denied {what}: {problem} [{}]. {todo}",
                reason.as_str()
            ),
            warnings: cr_warnings,
        })
    } else {
        let mut warnings = vec![format!(
            "longhorn-guard: engine check ({}), would deny {what}: {problem} [{}]",
            if check == EngineCheckMode::Warn {
                "engineCheck: warn"
            } else {
                "warn-only mode"
            },
            reason.as_str()
        )];
        warnings.extend(cr_warnings);
        Decision::Allow { reason, warnings }
    }
}
