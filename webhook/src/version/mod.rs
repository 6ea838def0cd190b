//! Which Longhorn the cluster runs, detected at start and re-detected periodically, so each
//! release's Backups are judged by its own rules ([`Release`]).
//!
//! | source (metric label) | what is read | reliable because |
//! |---|---|---|
//! | `override` | `--longhorn-version` | the operator says so; nothing is read |
//! | `setting` | Setting `current-longhorn-version` (`value`, e.g. `v1.9.2`) in Longhorn's namespace | longhorn-manager (1.5+) writes it after it has upgraded; absent where no manager runs |
//! | `crd-label` | label `app.kubernetes.io/version` on `backups.longhorn.io` | Longhorn's chart and `longhorn.yaml` label every CRD with the release they come from |
//! | `crd-schema` | fields of `backups.longhorn.io` `v1beta2`: `spec.backupBlockSize` → 1.10+, `status.backupTargetName` → 1.8+, neither → 1.7 | CRDs are applied before the manager upgrades, and objects are shaped by them; works on a bare API server |
//! | `none` | nothing answered | the webhook keeps running with rules that hold for every release, and warns |
//!
//! The first source that answers wins, in the order above. The required CRDs are checked
//! through API discovery (`/apis/longhorn.io/v1beta2`), which every authenticated client may
//! read: the webhook refuses to start, naming them, only when one of them is not served.
//! Reading the CRD needs `get` on `customresourcedefinitions` (`backups.longhorn.io`); when it
//! is forbidden the CRD sources are skipped with a warning.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::ListParams;
use kube::{Api, Client};
use longhorn_types::{LonghornVersion, Release, Setting, VERSION};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The resources (of `longhorn.io/v1beta2`) the webhook watches: it cannot judge without them.
pub const REQUIRED_RESOURCES: [&str; 5] = [
    "backups",
    "snapshots",
    "volumes",
    "engines",
    "backuptargets",
];

/// The CRD whose schema and labels tell the release.
pub const BACKUP_CRD: &str = "backups.longhorn.io";
/// The Setting longhorn-manager writes with its own version.
pub const VERSION_SETTING: &str = "current-longhorn-version";
/// The label Longhorn's chart puts on its CRDs.
pub const CRD_VERSION_LABEL: &str = "app.kubernetes.io/version";

/// Where the detected version came from (the `source` metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    Override,
    Setting,
    CrdLabel,
    CrdSchema,
    None,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Override => "override",
            Source::Setting => "setting",
            Source::CrdLabel => "crd-label",
            Source::CrdSchema => "crd-schema",
            Source::None => "none",
        }
    }
}

/// What the webhook knows about the cluster's Longhorn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LonghornInfo {
    /// The rule set; `None` when nothing answered.
    pub release: Option<Release>,
    /// The exact version, when the source names one (setting, CRD label).
    pub version: Option<LonghornVersion>,
    pub source: Source,
    /// The evidence, for logs.
    pub detail: String,
}

impl Default for LonghornInfo {
    fn default() -> Self {
        Self::unknown("not detected yet".into())
    }
}

impl LonghornInfo {
    pub fn unknown(detail: String) -> Self {
        Self {
            release: None,
            version: None,
            source: Source::None,
            detail,
        }
    }

    fn exact(version: LonghornVersion, source: Source, detail: String) -> Self {
        Self {
            release: Some(version.release()),
            version: Some(version),
            source,
            detail,
        }
    }

    /// The operator's `--longhorn-version`.
    pub fn pinned(release: Release) -> Self {
        Self {
            release: Some(release),
            version: None,
            source: Source::Override,
            detail: format!("pinned to {release} by --longhorn-version"),
        }
    }

    /// The `version` metric label: `v1.9.2` when known exactly, else `1.8+`-style from the
    /// rule set, else `unknown`.
    pub fn version_label(&self) -> String {
        match (&self.version, self.release) {
            (Some(v), _) => v.to_string(),
            (None, Some(Release::V1_10)) => "1.10+".into(),
            (None, Some(Release::V1_8)) => "1.8-1.9".into(),
            (None, Some(Release::V1_7)) => "1.7".into(),
            (None, None) => "unknown".into(),
        }
    }

    /// The `release` metric label.
    pub fn release_label(&self) -> &'static str {
        self.release.map_or("unknown", Release::as_str)
    }
}

/// What the cluster said, gathered by [`gather`].
#[derive(Clone, Debug, Default)]
pub struct Evidence {
    /// `value` of the Setting `current-longhorn-version`, if one was found.
    pub setting: Option<String>,
    /// `backups.longhorn.io`, if it could be read.
    pub backup_crd: Option<CustomResourceDefinition>,
    /// Lookups that failed (not "absent"), for logs.
    pub errors: Vec<String>,
}

/// The release the schema of `backups.longhorn.io` shows (see the module docs).
pub fn release_from_schema(crd: &CustomResourceDefinition) -> Release {
    let has = |path: &[&str]| longhorn_types::crds::declares(crd, VERSION, path);
    if longhorn_types::crds::SINCE_1_10
        .iter()
        .any(|(_, path)| has(path))
    {
        Release::V1_10
    } else if has(&["status", "backupTargetName"]) {
        Release::V1_8
    } else {
        Release::V1_7
    }
}

/// Decides the version from the evidence: setting, then CRD label, then CRD schema.
pub fn detect(evidence: &Evidence) -> LonghornInfo {
    let mut skipped = Vec::new();
    if let Some(value) = &evidence.setting {
        match value.parse::<LonghornVersion>() {
            Ok(v) => {
                return LonghornInfo::exact(
                    v,
                    Source::Setting,
                    format!("Setting {VERSION_SETTING} = {value:?}"),
                );
            }
            Err(e) => skipped.push(format!("Setting {VERSION_SETTING}: {e}")),
        }
    }
    let Some(crd) = &evidence.backup_crd else {
        skipped.extend(evidence.errors.iter().cloned());
        if skipped.is_empty() {
            skipped.push(format!(
                "no Setting {VERSION_SETTING} and no CRD {BACKUP_CRD}"
            ));
        }
        return LonghornInfo::unknown(skipped.join("; "));
    };
    if let Some(label) = crd
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(CRD_VERSION_LABEL))
    {
        match label.parse::<LonghornVersion>() {
            Ok(v) => {
                return LonghornInfo::exact(
                    v,
                    Source::CrdLabel,
                    format!("CRD {BACKUP_CRD} label {CRD_VERSION_LABEL}={label}"),
                );
            }
            Err(e) => skipped.push(format!("CRD label {CRD_VERSION_LABEL}: {e}")),
        }
    }
    let release = release_from_schema(crd);
    let mut detail = format!(
        "CRD {BACKUP_CRD} {VERSION} schema: {}",
        match release {
            Release::V1_10 => "has spec.backupBlockSize (1.10+)",
            Release::V1_8 => "has status.backupTargetName, no spec.backupBlockSize (1.8-1.9)",
            Release::V1_7 => "no status.backupTargetName (1.7 or older)",
        }
    );
    if !skipped.is_empty() {
        detail.push_str(&format!(" (skipped: {})", skipped.join("; ")));
    }
    LonghornInfo {
        release: Some(release),
        version: None,
        source: Source::CrdSchema,
        detail,
    }
}

/// The required resources that `served` (resource names of `longhorn.io/v1beta2`) lacks, as
/// CRD names.
pub fn missing_crds(served: &[String]) -> Vec<String> {
    REQUIRED_RESOURCES
        .iter()
        .filter(|r| !served.iter().any(|s| s == *r))
        .map(|r| format!("{r}.{}", longhorn_types::GROUP))
        .collect()
}

/// Asks API discovery which required CRDs are not served. `Err` when discovery itself failed
/// (the API server is unreachable): that is not "missing".
pub async fn missing_required_crds(client: &Client) -> Result<Vec<String>, kube::Error> {
    match client
        .list_api_group_resources(longhorn_types::API_VERSION)
        .await
    {
        Ok(list) => {
            let served: Vec<String> = list.resources.into_iter().map(|r| r.name).collect();
            Ok(missing_crds(&served))
        }
        // The group version is not served at all.
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(missing_crds(&[])),
        Err(e) => Err(e),
    }
}

/// Reads the Setting (in `namespace`, else in any namespace) and the Backup CRD. Absent
/// objects are not errors; failed lookups are recorded in [`Evidence::errors`].
pub async fn gather(client: &Client, namespace: Option<&str>) -> Evidence {
    let mut evidence = Evidence::default();
    let setting = match namespace {
        Some(ns) => Api::<Setting>::namespaced(client.clone(), ns)
            .get_opt(VERSION_SETTING)
            .await
            .map(|s| s.map(|s| s.value)),
        None => Api::<Setting>::all(client.clone())
            .list(&ListParams::default().fields(&format!("metadata.name={VERSION_SETTING}")))
            .await
            .map(|l| l.items.into_iter().next().map(|s| s.value)),
    };
    match setting {
        Ok(v) => evidence.setting = v.filter(|v| !v.is_empty()),
        // Longhorn not installed yet, or no RBAC for Settings: the other sources remain.
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 403 => {}
        Err(e) => evidence
            .errors
            .push(format!("reading Setting {VERSION_SETTING}: {e}")),
    }
    match Api::<CustomResourceDefinition>::all(client.clone())
        .get_opt(BACKUP_CRD)
        .await
    {
        Ok(crd) => evidence.backup_crd = crd,
        Err(e) => evidence
            .errors
            .push(format!("reading CRD {BACKUP_CRD}: {e}")),
    }
    evidence
}

/// Start-up: refuses when a required CRD is missing (the error names them), else detects the
/// version (or takes `pinned`). An unreachable API server or an unknown version is logged
/// and the webhook starts anyway.
pub async fn check_at_start(
    client: &Client,
    namespace: Option<&str>,
    pinned: Option<Release>,
) -> anyhow::Result<LonghornInfo> {
    match missing_required_crds(client).await {
        Ok(missing) if !missing.is_empty() => anyhow::bail!(
            "Longhorn's CRDs are missing: {} (the API server does not serve them under {}). \
             longhorn-guard judges Longhorn Backups and cannot run without them: install \
             Longhorn first (on a local control plane without Longhorn: \
             `longhorn-guard crds | kubectl apply -f -`), then start the webhook again.",
            missing.join(", "),
            longhorn_types::API_VERSION
        ),
        Ok(_) => {}
        Err(error) => tracing::warn!(
            %error,
            "cannot check Longhorn's CRDs through API discovery; starting anyway (the watches retry)"
        ),
    }
    let info = match pinned {
        Some(release) => LonghornInfo::pinned(release),
        None => detect(&gather(client, namespace).await),
    };
    log_info(&info, None);
    Ok(info)
}

fn log_info(info: &LonghornInfo, previous: Option<&LonghornInfo>) {
    let (version, release, source) = (
        info.version_label(),
        info.release_label(),
        info.source.as_str(),
    );
    match (info.release, previous) {
        (None, _) => tracing::warn!(
            detail = %info.detail,
            "Longhorn version unknown: judging with the rules that hold for every release \
             (a Backup's own backup-target, else its volume's, else \"default\"); \
             pin it with --longhorn-version if this persists"
        ),
        (Some(_), None) => {
            tracing::info!(%version, release, source, detail = %info.detail, "Longhorn detected")
        }
        (Some(_), Some(prev)) => tracing::warn!(
            %version, release, source, detail = %info.detail,
            previous_version = %prev.version_label(), previous_release = prev.release_label(),
            "Longhorn version changed: judging Backups by the new release's rules"
        ),
    }
}

/// The detected Longhorn, shared by the review handlers.
#[derive(Debug, Default)]
pub struct LonghornCell {
    info: RwLock<LonghornInfo>,
}

impl LonghornCell {
    pub fn get(&self) -> LonghornInfo {
        self.info.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The rule set in force, `None` when unknown.
    pub fn release(&self) -> Option<Release> {
        self.info.read().unwrap_or_else(|p| p.into_inner()).release
    }

    /// Stores `info`; returns the previous value when the version, release or source changed.
    pub fn set(&self, info: LonghornInfo) -> Option<LonghornInfo> {
        let mut cur = self.info.write().unwrap_or_else(|p| p.into_inner());
        let changed =
            (cur.release, cur.version, cur.source) != (info.release, info.version, info.source);
        let previous = std::mem::replace(&mut *cur, info);
        changed.then_some(previous)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InfoLabels {
    pub version: String,
    pub release: &'static str,
    pub source: &'static str,
}

/// `longhorn_guard_webhook_longhorn_info{version,release,source} 1`: one series, the current
/// detection; `longhorn_version_changes_total`.
#[derive(Clone, Debug, Default)]
pub struct VersionMetrics {
    pub info: Family<InfoLabels, Gauge>,
    pub changes: prometheus_client::metrics::counter::Counter,
}

impl VersionMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "longhorn_info",
            "The Longhorn the webhook judges for (always 1): exact version when known, rule set (1.7, 1.8, 1.10 or unknown) and where it was read",
            m.info.clone(),
        );
        registry.register(
            "longhorn_version_changes",
            "Times the detected Longhorn version changed after start",
            m.changes.clone(),
        );
        m
    }

    pub fn set(&self, info: &LonghornInfo) {
        self.info.clear();
        self.info
            .get_or_create(&InfoLabels {
                version: info.version_label(),
                release: info.release_label(),
                source: info.source.as_str(),
            })
            .set(1);
    }
}

/// Publishes `info` to the cell and the metric, logging a change.
pub fn publish(cell: &LonghornCell, metrics: &VersionMetrics, info: LonghornInfo) {
    metrics.set(&info);
    if let Some(previous) = cell.set(info.clone()) {
        metrics.changes.inc();
        log_info(&info, Some(&previous));
    }
}

/// Re-detects every `interval` (an upgrade changes the CRDs first, then the Setting). A
/// round where every lookup failed keeps the previous answer instead of turning unknown.
pub async fn run_redetection(
    client: Client,
    namespace: Option<String>,
    cell: Arc<LonghornCell>,
    metrics: VersionMetrics,
    interval: Duration,
) {
    loop {
        tokio::time::sleep(interval).await;
        let evidence = gather(&client, namespace.as_deref()).await;
        let info = detect(&evidence);
        if info.release.is_none() && !evidence.errors.is_empty() {
            tracing::debug!(detail = %info.detail, "Longhorn re-detection failed; keeping the previous answer");
            continue;
        }
        publish(&cell, &metrics, info);
    }
}

#[cfg(test)]
mod tests;
