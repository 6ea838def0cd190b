//! The webhook's policy: what to deny, what to warn about, who is exempt, and the limits that
//! protect the API server. Loaded from YAML at start and hot-reloaded from the same file
//! ([`reload`]); every field has a default. The sections other modules act on live beside it
//! ([`throttle`], [`events`], [`engine_check`]), so the policy depends on nothing but the
//! index's staleness default, and the throttle, Events writer and engine checks depend on it.

pub mod engine_check;
pub mod events;
pub mod node_protection;
pub mod reload;
pub mod throttle;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use engine_check::{DEFAULT_BUDGET_MS, EngineCheckMode};
pub use events::EventsPolicy;
pub use node_protection::{LeaseWriters, ManualBackups, NodeProtectionPolicy, ProtectionMode};
pub use reload::{PolicyCell, PolicyFileWatch, ReloadOutcome};

/// Enforce denials, or only report them as warnings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Denials are returned as denials.
    #[default]
    Enforce,
    /// Every would-be denial is allowed with a warning naming what would have been denied.
    WarnOnly,
}

/// What a configurable check does when it fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckAction {
    Deny,
    Warn,
    Ignore,
}

/// What happens when the webhook cannot decide in time (deadline, live lookup error).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailMode {
    /// Allow, with a warning saying the check was skipped.
    #[default]
    Open,
    /// Deny with 503 so the client retries.
    Closed,
}

/// Backups with an empty `spec.snapshotName`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EmptySnapshotRule {
    /// Allowed for everyone (Longhorn creates these when it syncs Backups from the target).
    #[default]
    Allow,
    /// Allowed only when Longhorn's own service account asks.
    DenyUnlessLonghorn,
}

/// Requests the checks do not apply to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Exemptions {
    /// Backup `metadata.labels` that exempt it: key → value (`"*"` = any value).
    pub labels: BTreeMap<String, String>,
    /// Exact usernames.
    pub users: Vec<String>,
    /// Service accounts as `namespace:name` (`*:name` = that name in any namespace).
    pub service_accounts: Vec<String>,
    /// Groups of the requester.
    pub groups: Vec<String>,
}

impl Exemptions {
    /// Whether these exemptions cover a request with these Backup `labels` from `username`
    /// in `groups` (label `"*"` = any value; service accounts as `namespace:name`, `*:name`).
    pub fn cover(
        &self,
        labels: &BTreeMap<String, String>,
        username: &str,
        groups: &[String],
    ) -> bool {
        if self
            .labels
            .iter()
            .any(|(k, v)| labels.get(k).is_some_and(|have| v == "*" || v == have))
        {
            return true;
        }
        if self.users.iter().any(|u| u == username) {
            return true;
        }
        if let Some(rest) = username.strip_prefix("system:serviceaccount:")
            && let Some((ns, name)) = rest.split_once(':')
            && self.service_accounts.iter().any(|sa| {
                sa.split_once(':')
                    .is_some_and(|(wn, wname)| (wn == "*" || wn == ns) && wname == name)
            })
        {
            return true;
        }
        self.groups.iter().any(|g| groups.contains(g))
    }

    /// The entries (`field: "value"`) that exempt the service account `name` of
    /// `namespace` (`None`: of any namespace): `serviceAccounts` naming it, `users` spelling
    /// its username, and the groups every service account of a namespace (or of the cluster)
    /// belongs to.
    pub fn covering_service_account(&self, name: &str, namespace: Option<&str>) -> Vec<String> {
        let in_namespace = |ns: &str| ns == "*" || namespace.is_none_or(|want| want == ns);
        let mut entries: Vec<String> = self
            .service_accounts
            .iter()
            .filter(|sa| {
                sa.split_once(':')
                    .is_some_and(|(ns, sa_name)| sa_name == name && in_namespace(ns))
            })
            .map(|sa| format!("serviceAccounts: {sa:?}"))
            .collect();
        entries.extend(
            self.users
                .iter()
                .filter(|user| {
                    user.strip_prefix("system:serviceaccount:")
                        .and_then(|rest| rest.split_once(':'))
                        .is_some_and(|(ns, sa_name)| sa_name == name && in_namespace(ns))
                })
                .map(|user| format!("users: {user:?}")),
        );
        entries.extend(
            self.groups
                .iter()
                .filter(|group| match group.as_str() {
                    "system:authenticated" | "system:serviceaccounts" => true,
                    g => g
                        .strip_prefix("system:serviceaccounts:")
                        .is_some_and(in_namespace),
                })
                .map(|group| format!("groups: {group:?}")),
        );
        entries
    }
}

/// Which exemptions an entry belongs to, and so what it switches off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExemptedSection {
    /// Top-level `exemptions`: every check, and the throttle.
    Checks,
    /// `throttle.exemptions`: the throttle.
    Throttle,
    /// `nodeProtection.exemptions`: the node-verdict check.
    NodeProtection,
}

impl ExemptedSection {
    /// The policy key, also the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Checks => "exemptions",
            Self::Throttle => "throttle.exemptions",
            Self::NodeProtection => "nodeProtection.exemptions",
        }
    }

    fn switches_off(self) -> &'static str {
        match self {
            Self::Checks => "every check and the throttle are",
            Self::Throttle => "the throttle is",
            Self::NodeProtection => "the node-verdict check (holding Backups of a leaking node) is",
        }
    }
}

/// An exemption entry that covers Longhorn's own service account ([`Policy::longhorn_exemptions`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LonghornExemption {
    pub section: ExemptedSection,
    /// The entry as written, e.g. `serviceAccounts: "*:longhorn-service-account"`.
    pub entry: String,
    /// Longhorn's service account (`longhornServiceAccount`).
    pub account: String,
}

impl std::fmt::Display for LonghornExemption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "policy {}.{} exempts Longhorn's own service account {:?}: Longhorn's recurring jobs create their Backups as it, so {} off for exactly the Backup storm the guard exists to stop; exempt a dedicated account instead",
            self.section.as_str(),
            self.entry,
            self.account,
            self.section.switches_off()
        )
    }
}

/// The mutating endpoint: force `spec.backupMode: full` for some volumes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct FullBackupRule {
    /// Off by default: `/mutate/backups` then allows everything unchanged.
    pub enabled: bool,
    /// Volume names whose Backups are always full.
    pub volumes: Vec<String>,
    /// A Volume label `key` or `key=value` that asks for full Backups.
    pub volume_label: Option<String>,
}

impl FullBackupRule {
    /// The volume label selector as (key, optional value).
    pub fn label_selector(&self) -> Option<(&str, Option<&str>)> {
        let sel = self.volume_label.as_deref()?.trim();
        if sel.is_empty() {
            return None;
        }
        Some(match sel.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (sel, None),
        })
    }
}

/// The whole policy. YAML keys are camelCase; unknown keys are refused so a typo is not
/// silently ignored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    pub mode: Mode,
    pub empty_snapshot_name: EmptySnapshotRule,
    /// Name of Longhorn's service account, looked for in the Backup's own namespace.
    pub longhorn_service_account: String,
    /// GET the Snapshot from the API server before denying on an index miss.
    pub live_snapshot_lookup: bool,
    /// Snapshot exists but is not `readyToUse` (Longhorn waits for it).
    pub snapshot_not_ready: CheckAction,
    /// The Backup's volume is not in the index.
    pub volume_missing: CheckAction,
    /// The Backup's BackupTarget is missing or not available.
    pub target_unavailable: CheckAction,
    pub exemptions: Exemptions,
    /// Per-review deadline in milliseconds; keep it well under the registration's
    /// `timeoutSeconds`.
    pub deadline_ms: u64,
    /// What to answer when the deadline passes or the live lookup fails.
    pub on_deadline: FailMode,
    /// Reviews processed at once; the rest wait (within their deadline).
    pub max_concurrent_reviews: usize,
    /// Largest AdmissionReview body accepted.
    pub max_body_bytes: usize,
    pub full_backup: FullBackupRule,
    /// Throttling of bulk Backup creation (see `THROTTLING.md`).
    pub throttle: throttle::ThrottlePolicy,
    /// Ask the volume's engine (through the node's agent) whether the snapshot really exists:
    /// `off`, `warn` or `enforce` (`crate::engine_truth`).
    pub engine_check: EngineCheckMode,
    /// Budget of one engine check in milliseconds (never past the review's deadline).
    pub engine_check_budget_ms: u64,
    /// How long a listed kind's watch may keep failing before the index is no longer trusted
    /// for it and `/readyz` answers 503 (until a relist completes).
    pub index_staleness_ms: u64,
    /// Kubernetes Events on the Volume of a refused Backup (`crate::events`).
    pub events: EventsPolicy,
    /// Backups of a node whose longhorn-manager leaks (`crate::decision::node_protection`).
    pub node_protection: NodeProtectionPolicy,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            mode: Mode::Enforce,
            empty_snapshot_name: EmptySnapshotRule::Allow,
            longhorn_service_account: "longhorn-service-account".to_string(),
            live_snapshot_lookup: true,
            snapshot_not_ready: CheckAction::Warn,
            volume_missing: CheckAction::Warn,
            target_unavailable: CheckAction::Warn,
            exemptions: Exemptions::default(),
            deadline_ms: 2_000,
            on_deadline: FailMode::Open,
            max_concurrent_reviews: 64,
            max_body_bytes: 1024 * 1024,
            full_backup: FullBackupRule::default(),
            throttle: throttle::ThrottlePolicy::default(),
            engine_check: EngineCheckMode::default(),
            engine_check_budget_ms: DEFAULT_BUDGET_MS,
            index_staleness_ms: crate::index::DEFAULT_STALENESS.as_millis() as u64,
            events: EventsPolicy::default(),
            node_protection: NodeProtectionPolicy::default(),
        }
    }
}

/// A policy file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("policy file {path} is not a valid policy: {source}")]
    Parse {
        path: String,
        source: serde_yaml::Error,
    },
    #[error("policy file {path}: {message}")]
    Invalid { path: String, message: String },
}

impl Policy {
    /// Loads and validates a YAML policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: shown.clone(),
            source,
        })?;
        let policy = Self::from_yaml(&text).map_err(|source| PolicyError::Parse {
            path: shown.clone(),
            source,
        })?;
        policy.validate().map_err(|message| PolicyError::Invalid {
            path: shown,
            message,
        })?;
        Ok(policy)
    }

    /// Parses YAML (an empty document is the default policy).
    pub fn from_yaml(text: &str) -> Result<Self, serde_yaml::Error> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_yaml::from_str(text)
    }

    /// Checks limits that serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.deadline_ms == 0 {
            return Err("deadlineMs must be > 0".into());
        }
        if self.max_concurrent_reviews == 0 {
            return Err("maxConcurrentReviews must be > 0".into());
        }
        if self.max_body_bytes < 1024 {
            return Err("maxBodyBytes must be at least 1024".into());
        }
        if self.engine_check_budget_ms == 0 {
            return Err("engineCheckBudgetMs must be > 0".into());
        }
        if self.index_staleness_ms == 0 {
            return Err("indexStalenessMs must be > 0".into());
        }
        self.events.validate()?;
        self.node_protection.validate()?;
        self.throttle.validate()
    }

    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms)
    }

    /// The exemptions (top-level, `throttle.exemptions`, `nodeProtection.exemptions`) that cover Longhorn's own service
    /// account ([`Policy::longhorn_service_account`]) in `longhorn_namespace` (`None`: any
    /// namespace, when the webhook watches them all). Longhorn's recurring jobs create their
    /// Backups as that account, so such an exemption switches the guard off for exactly the
    /// storm it exists to stop; the loader warns about each (log, metric, `doctor`).
    pub fn longhorn_exemptions(&self, longhorn_namespace: Option<&str>) -> Vec<LonghornExemption> {
        let account = self.longhorn_service_account.as_str();
        [
            (ExemptedSection::Checks, &self.exemptions),
            (ExemptedSection::Throttle, &self.throttle.exemptions),
            (
                ExemptedSection::NodeProtection,
                &self.node_protection.exemptions,
            ),
        ]
        .into_iter()
        .flat_map(|(section, ex)| {
            ex.covering_service_account(account, longhorn_namespace)
                .into_iter()
                .map(move |entry| LonghornExemption {
                    section,
                    entry,
                    account: account.to_string(),
                })
        })
        .collect()
    }

    /// The index's staleness bound (`indexStalenessMs`).
    pub fn index_staleness(&self) -> Duration {
        Duration::from_millis(self.index_staleness_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_yaml_is_the_default_policy() {
        assert_eq!(Policy::from_yaml("").ok(), Some(Policy::default()));
    }

    #[test]
    fn yaml_overrides_and_keeps_defaults() {
        let p = Policy::from_yaml(
            "mode: warn-only\nsnapshotNotReady: deny\nexemptions:\n  serviceAccounts: ['*:backup-bot']\nfullBackup:\n  enabled: true\n  volumeLabel: backup.example.com/mode=full\n",
        )
        .expect("valid policy");
        assert_eq!(p.mode, Mode::WarnOnly);
        assert_eq!(p.snapshot_not_ready, CheckAction::Deny);
        assert_eq!(p.volume_missing, CheckAction::Warn);
        assert_eq!(p.exemptions.service_accounts, vec!["*:backup-bot"]);
        assert_eq!(
            p.full_backup.label_selector(),
            Some(("backup.example.com/mode", Some("full")))
        );
        assert_eq!(p.deadline_ms, 2000);
    }

    #[test]
    fn exemptions_covering_longhorns_service_account_are_found() {
        let p = Policy::from_yaml(
            "exemptions:\n  serviceAccounts: ['*:longhorn-service-account', 'ops:backup-bot']\n  users: ['system:serviceaccount:longhorn-system:longhorn-service-account', 'alice']\n  groups: ['system:serviceaccounts:longhorn-system', 'system:serviceaccounts:ops', 'backup-admins']\nthrottle:\n  exemptions:\n    serviceAccounts: ['longhorn-system:longhorn-service-account']\n    groups: ['system:serviceaccounts']\n",
        )
        .expect("valid policy");
        let found: Vec<(&str, String)> = p
            .longhorn_exemptions(Some("longhorn-system"))
            .into_iter()
            .map(|e| (e.section.as_str(), e.entry))
            .collect();
        let want = |s: &'static str, e: &str| (s, e.to_string());
        assert_eq!(
            found,
            vec![
                want(
                    "exemptions",
                    "serviceAccounts: \"*:longhorn-service-account\""
                ),
                want(
                    "exemptions",
                    "users: \"system:serviceaccount:longhorn-system:longhorn-service-account\""
                ),
                want(
                    "exemptions",
                    "groups: \"system:serviceaccounts:longhorn-system\""
                ),
                want(
                    "throttle.exemptions",
                    "serviceAccounts: \"longhorn-system:longhorn-service-account\""
                ),
                want("throttle.exemptions", "groups: \"system:serviceaccounts\""),
            ]
        );
        // Watching every namespace, another namespace's group may hold Longhorn's account.
        assert_eq!(p.longhorn_exemptions(None).len(), 6);
        let message = p.longhorn_exemptions(Some("longhorn-system"))[0].to_string();
        assert!(
            message.contains("exempts Longhorn's own service account \"longhorn-service-account\"")
                && message.contains("every check and the throttle are off"),
            "{message}"
        );
    }

    #[test]
    fn other_accounts_and_a_renamed_longhorn_account_are_not_reported() {
        let mut p = Policy::from_yaml(
            "exemptions:\n  serviceAccounts: ['*:backup-bot', 'longhorn-system:longhorn-ui']\n  users: ['system:serviceaccount:ops:longhorn-service-account-reader']\n  groups: ['system:serviceaccounts:ops']\n",
        )
        .expect("valid policy");
        assert_eq!(p.longhorn_exemptions(Some("longhorn-system")), vec![]);
        assert_eq!(Policy::default().longhorn_exemptions(None), vec![]);
        // Longhorn installed with another account name: that name is the one looked for.
        p.longhorn_service_account = "backup-bot".into();
        assert_eq!(
            p.longhorn_exemptions(Some("longhorn-system"))[0].entry,
            "serviceAccounts: \"*:backup-bot\""
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Policy::from_yaml("snapshotNotRedy: deny\n").expect_err("typo must fail");
        assert!(err.to_string().contains("snapshotNotRedy"), "{err}");
    }
}
