//! The admission decision for a Backup CREATE: a pure function of the policy, the index
//! view and the request. No I/O here; when the index does not know the snapshot, the
//! decision asks the caller for a live lookup ([`Decision::NeedsLiveSnapshot`]) and is
//! made again with the answer overlaid on the view.
//!
//! # Status codes of denials
//!
//! | reason | code | meaning |
//! |---|---|---|
//! | `snapshot_missing` | 404 | the Snapshot is neither indexed nor known to the API server |
//! | `snapshot_removed` | 410 | the Snapshot has `status.markRemoved` |
//! | `snapshot_lost` | 410 | Longhorn lost the Snapshot inside the volume engine |
//! | `snapshot_other_volume` | 422 | the Snapshot belongs to another volume than the Backup's `backup-volume` label |
//! | `snapshot_not_ready` | 409 | the Snapshot is not `readyToUse` (only when the policy denies it) |
//! | `volume_missing` | 404 | the Backup's volume does not exist (only when the policy denies it) |
//! | `target_unavailable` | 503 | the Backup's BackupTarget is missing or unavailable (only when the policy denies it) |
//! | `empty_snapshot_name` | 403 | empty `spec.snapshotName` from someone other than Longhorn (only with `denyUnlessLonghorn`) |
//! | `deadline_exceeded`, `lookup_failed` | 503 | fail-closed answers when no decision could be made in time |
//! | `throttled` | 429 | the throttle (`crate::throttle`): an in-flight cap, a creation rate or a duplicate |
//!
//! # Longhorn releases
//!
//! [`BackupRequest::longhorn`] carries the detected release (`crate::version`); `None` =
//! unknown. The Backup's BackupTarget is `default` on 1.7 (one target); on 1.8+ and when
//! unknown it is the Backup's `backup-target` label, else its volume's
//! `spec.backupTargetName`, else `default`. On 1.10+ Longhorn's own validator also refuses
//! a Backup whose Snapshot is missing (from its informer cache) or of another volume: the
//! guard gives the same verdict there, and every snapshot denial Longhorn would not also
//! make says so and why ([`longhorn_note`]). A Snapshot the guard found only by its live
//! GET (created moments ago) is allowed with a warning that Longhorn 1.10+ may still refuse
//! it from its cache ("snapshot <nil> is invalid", longhorn/longhorn#11451).

use std::collections::BTreeMap;
use std::fmt;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use kube::core::DynamicObject;
use longhorn_types::{DEFAULT_BACKUP_TARGET, Release, labels};

use crate::index::{IndexView, SnapshotLookup};
use crate::policy::{CheckAction, EmptySnapshotRule, Mode, Policy};

/// Why a review ended as it did. Also the `reason` metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Every check passed.
    Checked,
    Exempt,
    EmptySnapshotName,
    SnapshotMissing,
    SnapshotRemoved,
    SnapshotLost,
    SnapshotOtherVolume,
    SnapshotNotReady,
    VolumeMissing,
    TargetUnavailable,
    /// Not a CREATE of longhorn.io/v1beta2 backups: the registration should not send it.
    Unexpected,
    DeadlineExceeded,
    LookupFailed,
    Malformed,
    /// Mutating endpoint: `spec.backupMode` set to `full`.
    FullBackupPatched,
    /// Mutating endpoint: nothing to change.
    Unchanged,
    /// Allowed with a warning: the Snapshot was found only by the live GET, and Longhorn
    /// 1.10+'s validator, which reads its cache, may still refuse the Backup.
    SnapshotNotYetCached,
    /// Denied (or, allowed, warned) by the throttle; the scope is in the message and in
    /// `throttled_reviews_total{scope}`.
    Throttled,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Checked => "checked",
            Reason::Exempt => "exempt",
            Reason::EmptySnapshotName => "empty_snapshot_name",
            Reason::SnapshotMissing => "snapshot_missing",
            Reason::SnapshotRemoved => "snapshot_removed",
            Reason::SnapshotLost => "snapshot_lost",
            Reason::SnapshotOtherVolume => "snapshot_other_volume",
            Reason::SnapshotNotReady => "snapshot_not_ready",
            Reason::VolumeMissing => "volume_missing",
            Reason::TargetUnavailable => "target_unavailable",
            Reason::Unexpected => "unexpected",
            Reason::DeadlineExceeded => "deadline_exceeded",
            Reason::LookupFailed => "lookup_failed",
            Reason::Malformed => "malformed",
            Reason::FullBackupPatched => "full_backup_patched",
            Reason::Unchanged => "unchanged",
            Reason::SnapshotNotYetCached => "snapshot_not_yet_cached",
            Reason::Throttled => "throttled",
        }
    }

    /// The HTTP-style status code a denial for this reason carries (see the module docs).
    pub fn status_code(self) -> u16 {
        match self {
            Reason::SnapshotMissing | Reason::VolumeMissing => 404,
            Reason::SnapshotRemoved | Reason::SnapshotLost => 410,
            Reason::SnapshotOtherVolume => 422,
            Reason::SnapshotNotReady => 409,
            Reason::TargetUnavailable | Reason::DeadlineExceeded | Reason::LookupFailed => 503,
            Reason::EmptySnapshotName => 403,
            Reason::Malformed => 400,
            Reason::Throttled => 429,
            _ => 200,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the decision needs from a Backup CREATE request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackupRequest {
    pub namespace: String,
    /// `metadata.name`; empty when the client uses `generateName`.
    pub name: String,
    pub generate_name: String,
    /// `spec.snapshotName`.
    pub snapshot: String,
    /// `spec.backupMode`, if set.
    pub backup_mode: Option<String>,
    pub has_spec: bool,
    /// `metadata.labels` of the Backup.
    pub labels: BTreeMap<String, String>,
    pub username: String,
    pub groups: Vec<String>,
    /// The cluster's Longhorn release (`crate::version`), `None` when unknown. Not read from
    /// the object: the caller sets it.
    pub longhorn: Option<Release>,
}

impl BackupRequest {
    /// Reads a Backup object leniently: unknown fields are ignored, missing ones are empty;
    /// only fields of the wrong JSON type are errors.
    pub fn from_object(
        obj: &DynamicObject,
        request_namespace: Option<&str>,
        username: &str,
        groups: &[String],
    ) -> Result<Self, String> {
        let spec = obj.data.get("spec");
        let field = |key: &str| -> Result<Option<String>, String> {
            match spec.and_then(|s| s.get(key)) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(format!(
                    "spec.{key} must be a string, got {}",
                    json_type(other)
                )),
            }
        };
        if let Some(s) = spec
            && !(s.is_object() || s.is_null())
        {
            return Err(format!("spec must be an object, got {}", json_type(s)));
        }
        let namespace = request_namespace
            .filter(|n| !n.is_empty())
            .or(obj.metadata.namespace.as_deref())
            .unwrap_or_default()
            .to_string();
        Ok(Self {
            namespace,
            name: obj.metadata.name.clone().unwrap_or_default(),
            generate_name: obj.metadata.generate_name.clone().unwrap_or_default(),
            snapshot: field("snapshotName")?.unwrap_or_default(),
            backup_mode: field("backupMode")?,
            has_spec: spec.is_some_and(|s| s.is_object()),
            labels: obj
                .metadata
                .labels
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            username: username.to_string(),
            groups: groups.to_vec(),
            longhorn: None,
        })
    }

    /// `backup-volume` label, if set and non-empty.
    pub fn volume_label(&self) -> Option<&str> {
        self.label(labels::BACKUP_VOLUME)
    }

    /// `backup-target` label (1.8+), if set and non-empty.
    pub fn target_label(&self) -> Option<&str> {
        self.label(labels::BACKUP_TARGET)
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .get(key)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    /// `Backup "name"` or `Backup with generateName "prefix"`, for messages.
    pub fn display_name(&self) -> String {
        if !self.name.is_empty() {
            format!("Backup {:?}", self.name)
        } else if !self.generate_name.is_empty() {
            format!("Backup with generateName {:?}", self.generate_name)
        } else {
            "Backup (no name)".to_string()
        }
    }
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The outcome of [`decide`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; `warnings` go to the client. `reason` is the first warning's reason, or
    /// what allowed it.
    Allow {
        reason: Reason,
        warnings: Vec<String>,
    },
    Deny(Denial),
    /// The index does not have the snapshot: GET it from the API server, overlay the answer
    /// on the view ([`IndexView::with_live_snapshot`]) and decide again.
    NeedsLiveSnapshot,
}

/// A denial: reason, HTTP-style code and a message that names the Backup, snapshot and
/// volume and says what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    pub reason: Reason,
    pub code: u16,
    pub message: String,
    pub warnings: Vec<String>,
}

impl Decision {
    /// `allowed`, `warned` (allowed with warnings) or `denied`; the metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Decision::Allow { warnings, .. } if warnings.is_empty() => "allowed",
            Decision::Allow { .. } => "warned",
            Decision::Deny(_) => "denied",
            Decision::NeedsLiveSnapshot => "pending",
        }
    }

    pub fn reason(&self) -> Option<Reason> {
        match self {
            Decision::Allow { reason, .. } => Some(*reason),
            Decision::Deny(d) => Some(d.reason),
            Decision::NeedsLiveSnapshot => None,
        }
    }
}

/// Whether the requester or the Backup is exempt from the checks.
pub fn is_exempt(policy: &Policy, req: &BackupRequest) -> bool {
    let ex = &policy.exemptions;
    if ex
        .labels
        .iter()
        .any(|(k, v)| req.labels.get(k).is_some_and(|have| v == "*" || v == have))
    {
        return true;
    }
    if ex.users.contains(&req.username) {
        return true;
    }
    if let Some(rest) = req.username.strip_prefix("system:serviceaccount:")
        && let Some((ns, name)) = rest.split_once(':')
        && ex
            .service_accounts
            .iter()
            .any(|sa| match sa.split_once(':') {
                Some((want_ns, want_name)) => {
                    (want_ns == "*" || want_ns == ns) && want_name == name
                }
                None => false,
            })
    {
        return true;
    }
    ex.groups
        .iter()
        .any(|g| req.groups.iter().any(|have| have == g))
}

/// True when Longhorn's own service account (in the Backup's namespace) is asking.
pub fn is_longhorn(policy: &Policy, req: &BackupRequest) -> bool {
    req.username
        == format!(
            "system:serviceaccount:{}:{}",
            req.namespace, policy.longhorn_service_account
        )
}

/// Decides a Backup CREATE. See the module docs for the status codes.
pub fn decide(policy: &Policy, view: &IndexView<'_>, req: &BackupRequest) -> Decision {
    let decision = decide_enforced(policy, view, req);
    match (policy.mode, decision) {
        (Mode::WarnOnly, Decision::Deny(d)) => {
            let mut warnings = vec![format!("warn-only mode, would deny: {}", d.message)];
            warnings.extend(d.warnings);
            Decision::Allow {
                reason: d.reason,
                warnings,
            }
        }
        (_, other) => other,
    }
}

struct Subject<'r> {
    req: &'r BackupRequest,
    volume: Option<String>,
}

impl Subject<'_> {
    fn describe(&self) -> String {
        format!(
            "{} in namespace {:?} (snapshot {:?}, volume {})",
            self.req.display_name(),
            self.req.namespace,
            self.req.snapshot,
            match &self.volume {
                Some(v) => format!("{v:?}"),
                None => "unknown".to_string(),
            }
        )
    }

    fn deny(&self, reason: Reason, what: &str, todo: &str) -> Denial {
        let note = longhorn_note(self.req.longhorn, reason)
            .map(|n| format!(" {n}"))
            .unwrap_or_default();
        Denial {
            reason,
            code: reason.status_code(),
            message: format!(
                "longhorn-guard denied {}: {what} [{}]. {todo}{note}",
                self.describe(),
                reason.as_str()
            ),
            warnings: Vec::new(),
        }
    }

    fn warning(&self, reason: Reason, what: &str) -> String {
        format!(
            "longhorn-guard: {}: {what} [{}]",
            self.describe(),
            reason.as_str()
        )
    }
}

/// What a denial means next to Longhorn's own validator, on releases that have one that
/// checks snapshots (1.10+): whether Longhorn refuses the Backup too, or, when it would
/// admit it, why the guard does not. `None` on other releases and for other reasons.
pub fn longhorn_note(release: Option<Release>, reason: Reason) -> Option<&'static str> {
    if !release.is_some_and(Release::validates_snapshots) {
        return None;
    }
    Some(match reason {
        Reason::SnapshotMissing => {
            "Longhorn 1.10+ refuses this Backup too (its validator answers \"snapshot <nil> is invalid\")."
        }
        Reason::SnapshotOtherVolume => {
            "Longhorn 1.10+ refuses this Backup too (its validator: \"snapshot volume name ... and label volume name ... does not match\")."
        }
        Reason::SnapshotRemoved | Reason::SnapshotLost => {
            "Longhorn 1.10+ alone would admit it (its validator only checks that the Snapshot object exists); longhorn-guard refuses it because such a Backup never completes: it waits in Pending, then Error, keeping the volume attached meanwhile."
        }
        Reason::SnapshotNotReady => {
            "Longhorn 1.10+ alone would admit it and wait for the snapshot; longhorn-guard refuses it because its policy says snapshotNotReady: deny."
        }
        Reason::EmptySnapshotName => {
            "Longhorn 1.10+ alone would admit it (an empty snapshotName is allowed); longhorn-guard refuses it because its policy says emptySnapshotName: deny-unless-longhorn."
        }
        _ => return None,
    })
}

/// The BackupTarget a Backup goes to, and why: `default` on 1.7 (Longhorn 1.7 has one
/// target and ignores any `backup-target` label); else the Backup's `backup-target` label
/// (which Longhorn 1.8+'s mutator fills from the volume before validators run), else the
/// volume's `spec.backupTargetName`, else `default`.
pub fn backup_target(
    view: &IndexView<'_>,
    req: &BackupRequest,
    volume: Option<&str>,
) -> (String, &'static str) {
    if req.longhorn.is_some_and(|r| !r.has_backup_targets()) {
        return (
            DEFAULT_BACKUP_TARGET.to_string(),
            "Longhorn 1.7 has one backup target",
        );
    }
    if let Some(label) = req.target_label() {
        return (label.to_string(), "the Backup's backup-target label");
    }
    if let Some(t) = volume
        .and_then(|v| view.volume(&req.namespace, v))
        .and_then(|v| v.backup_target.as_deref())
    {
        return (t.to_string(), "the volume's spec.backupTargetName");
    }
    (DEFAULT_BACKUP_TARGET.to_string(), "the default target")
}

fn decide_enforced(policy: &Policy, view: &IndexView<'_>, req: &BackupRequest) -> Decision {
    if is_exempt(policy, req) {
        return Decision::Allow {
            reason: Reason::Exempt,
            warnings: Vec::new(),
        };
    }
    let mut subject = Subject {
        req,
        volume: req.volume_label().map(str::to_string),
    };
    if req.snapshot.is_empty() {
        if policy.empty_snapshot_name == EmptySnapshotRule::DenyUnlessLonghorn
            && !is_longhorn(policy, req)
        {
            return Decision::Deny(subject.deny(
                Reason::EmptySnapshotName,
                &format!(
                    "spec.snapshotName is empty and the requester {:?} is not Longhorn's service account {:?}",
                    req.username, policy.longhorn_service_account
                ),
                "Set spec.snapshotName to an existing Snapshot of the volume; only Longhorn itself creates Backups without one.",
            ));
        }
        return Decision::Allow {
            reason: Reason::EmptySnapshotName,
            warnings: Vec::new(),
        };
    }

    let mut found_live = false;
    let facts = match view.snapshot(&req.namespace, &req.snapshot) {
        SnapshotLookup::Indexed(f) => f,
        SnapshotLookup::Live(f) => {
            found_live = true;
            f
        }
        SnapshotLookup::NotIndexed if policy.live_snapshot_lookup => {
            return Decision::NeedsLiveSnapshot;
        }
        SnapshotLookup::NotIndexed => {
            return Decision::Deny(subject.deny(
                Reason::SnapshotMissing,
                &format!(
                    "Snapshot {:?} is not in the webhook's index (live lookup is disabled by policy)",
                    req.snapshot
                ),
                "Create the Snapshot first and retry; a Backup of a missing snapshot stays Pending forever.",
            ));
        }
        SnapshotLookup::ConfirmedMissing => {
            return Decision::Deny(subject.deny(
                Reason::SnapshotMissing,
                &format!(
                    "Snapshot {:?} does not exist (the API server answered 404 NotFound)",
                    req.snapshot
                ),
                "Create the Snapshot first (or back up an existing one) and retry; check recurring jobs that refer to deleted snapshots. A Backup of a missing snapshot stays Pending forever.",
            ));
        }
    };

    if subject.volume.is_none() {
        subject.volume = facts.volume.clone();
    }
    if facts.lost_in_engine {
        return Decision::Deny(subject.deny(
            Reason::SnapshotLost,
            &format!(
                "Longhorn lost track of Snapshot {:?} inside the volume engine",
                req.snapshot
            ),
            "Take a new snapshot of the volume and back that one up; delete the stale Snapshot.",
        ));
    }
    if facts.mark_removed {
        return Decision::Deny(subject.deny(
            Reason::SnapshotRemoved,
            &format!("Snapshot {:?} is marked removed", req.snapshot),
            "Back up a current snapshot of the volume instead.",
        ));
    }
    if let (Some(label), Some(of_snapshot)) = (req.volume_label(), facts.volume.as_deref())
        && label != of_snapshot
    {
        return Decision::Deny(subject.deny(
            Reason::SnapshotOtherVolume,
            &format!(
                "Snapshot {:?} belongs to volume {of_snapshot:?}, but the Backup's backup-volume label says {label:?}",
                req.snapshot
            ),
            "Fix the backup-volume label or spec.snapshotName so they name the same volume.",
        ));
    }

    let mut warnings = Vec::new();
    let mut first_warning: Option<Reason> = None;
    if found_live && req.longhorn.is_some_and(Release::validates_snapshots) {
        warnings.push(subject.warning(
            Reason::SnapshotNotYetCached,
            &format!(
                "Snapshot {:?} exists (the API server has it) but was created moments ago; Longhorn 1.10+'s own validator reads its cache and may still refuse this Backup with \"snapshot <nil> is invalid\" (longhorn/longhorn#11451): if it does, retry in a few seconds",
                req.snapshot
            ),
        ));
        first_warning = Some(Reason::SnapshotNotYetCached);
    }
    let mut check = |action: CheckAction,
                     reason: Reason,
                     what: String,
                     todo: &str,
                     subject: &Subject<'_>|
     -> Option<Denial> {
        match action {
            CheckAction::Ignore => None,
            CheckAction::Warn => {
                warnings.push(subject.warning(reason, &what));
                first_warning.get_or_insert(reason);
                None
            }
            CheckAction::Deny => Some(subject.deny(reason, &what, todo)),
        }
    };

    if !facts.ready_to_use
        && let Some(d) = check(
            policy.snapshot_not_ready,
            Reason::SnapshotNotReady,
            format!("Snapshot {:?} is not readyToUse yet", req.snapshot),
            "Wait until the Snapshot is ready and retry.",
            &subject,
        )
    {
        return Decision::Deny(d);
    }
    if let Some(volume) = subject.volume.as_deref()
        && view.volume(&req.namespace, volume).is_none()
        && let Some(d) = check(
            policy.volume_missing,
            Reason::VolumeMissing,
            format!(
                "volume {volume:?} does not exist in namespace {:?}",
                req.namespace
            ),
            "Back up a snapshot of an existing volume.",
            &subject,
        )
    {
        return Decision::Deny(d);
    }
    let (target, why) = backup_target(view, req, subject.volume.as_deref());
    let target_problem = match view.target(&req.namespace, &target) {
        None => Some(format!(
            "BackupTarget {target:?} does not exist in namespace {:?} (the target of this Backup: {why})",
            req.namespace
        )),
        Some(t) if !t.available => Some(format!(
            "BackupTarget {target:?} is not available (status.available is false; the target of this Backup: {why})"
        )),
        Some(_) => None,
    };
    if let Some(what) = target_problem
        && let Some(d) = check(
            policy.target_unavailable,
            Reason::TargetUnavailable,
            what,
            "Fix the backup target (URL, credentials, reachability) until Longhorn reports it available, then retry.",
            &subject,
        )
    {
        let mut d = d;
        d.warnings = warnings;
        return Decision::Deny(d);
    }
    Decision::Allow {
        reason: first_warning.unwrap_or(Reason::Checked),
        warnings,
    }
}

/// The mutating rule: the JSON patch setting `spec.backupMode: full` when the Backup's
/// volume is listed in the policy or carries the policy's volume label; `None` when
/// nothing is to change (disabled, already full, other volume).
pub fn full_backup_patch(
    policy: &Policy,
    view: &IndexView<'_>,
    req: &BackupRequest,
) -> Option<(String, Patch)> {
    let rule = &policy.full_backup;
    if !rule.enabled || req.backup_mode.as_deref() == Some("full") {
        return None;
    }
    let volume = match req.volume_label() {
        Some(v) => v.to_string(),
        None => match view.snapshot(&req.namespace, &req.snapshot) {
            SnapshotLookup::Indexed(f) | SnapshotLookup::Live(f) => f.volume?,
            _ => return None,
        },
    };
    let listed = rule.volumes.contains(&volume);
    let labelled = view
        .volume(&req.namespace, &volume)
        .is_some_and(|v| v.full_backup_label);
    if !(listed || labelled) {
        return None;
    }
    let op = if req.has_spec {
        PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["spec", "backupMode"]),
            value: serde_json::Value::String("full".into()),
        })
    } else {
        PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["spec"]),
            value: serde_json::json!({ "backupMode": "full" }),
        })
    };
    Some((volume, Patch(vec![op])))
}

#[cfg(test)]
mod tests;
