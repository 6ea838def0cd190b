//! The policy's `engineCheck` switch and `engineCheckBudgetMs` default: what the webhook does
//! with an engine's answer about a Snapshot (the checks themselves are `crate::engine_truth`).

use serde::{Deserialize, Serialize};

/// Default per-check budget (policy `engineCheckBudgetMs`).
pub const DEFAULT_BUDGET_MS: u64 = 250;

/// What the webhook does with the engine's answer (policy `engineCheck`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineCheckMode {
    /// No agent call.
    Off,
    /// Ask the engine; a definite "absent" or "removed" becomes a warning, never a denial.
    #[default]
    Warn,
    /// Ask the engine; a definite "absent" or "removed" denies (410). Anything less than a
    /// definite answer (error, timeout, open breaker, no agent) still falls back to the
    /// Snapshot CR's decision with a warning.
    Enforce,
}

impl EngineCheckMode {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineCheckMode::Off => "off",
            EngineCheckMode::Warn => "warn",
            EngineCheckMode::Enforce => "enforce",
        }
    }
}
