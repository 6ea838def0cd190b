#![allow(clippy::unwrap_used)]

use super::*;
use longhorn_types::crds::for_release;

fn backup_crd(release: Release, label: Option<&str>) -> CustomResourceDefinition {
    let mut crd = for_release(release)
        .into_iter()
        .find(|c| c.metadata.name.as_deref() == Some(BACKUP_CRD))
        .unwrap();
    if let Some(l) = label {
        crd.metadata.labels = Some([(CRD_VERSION_LABEL.to_string(), l.to_string())].into());
    }
    crd
}

fn evidence(setting: Option<&str>, crd: Option<CustomResourceDefinition>) -> Evidence {
    Evidence {
        setting: setting.map(str::to_string),
        backup_crd: crd,
        errors: Vec::new(),
    }
}

#[test]
fn schema_tells_each_release_apart() {
    for release in Release::ALL {
        assert_eq!(release_from_schema(&backup_crd(release, None)), release);
        let info = detect(&evidence(None, Some(backup_crd(release, None))));
        assert_eq!(info.release, Some(release));
        assert_eq!(info.version, None);
        assert_eq!(info.source, Source::CrdSchema);
    }
}

#[test]
fn detection_prefers_setting_then_label_then_schema() {
    let cases: Vec<(&str, Evidence, Option<Release>, &str, Source)> = vec![
        (
            "setting wins over label and schema",
            evidence(
                Some("v1.9.2"),
                Some(backup_crd(Release::V1_10, Some("v1.10.0"))),
            ),
            Some(Release::V1_8),
            "v1.9.2",
            Source::Setting,
        ),
        (
            "label wins over schema",
            evidence(None, Some(backup_crd(Release::V1_8, Some("v1.10.1")))),
            Some(Release::V1_10),
            "v1.10.1",
            Source::CrdLabel,
        ),
        (
            "unparsable setting falls back to the label",
            evidence(
                Some("master-head"),
                Some(backup_crd(Release::V1_7, Some("v1.7.2"))),
            ),
            Some(Release::V1_7),
            "v1.7.2",
            Source::CrdLabel,
        ),
        (
            "unparsable label falls back to the schema",
            evidence(None, Some(backup_crd(Release::V1_8, Some("custom")))),
            Some(Release::V1_8),
            "1.8-1.9",
            Source::CrdSchema,
        ),
        (
            "setting alone",
            evidence(Some("v1.11.0"), None),
            Some(Release::V1_10),
            "v1.11.0",
            Source::Setting,
        ),
        (
            "nothing",
            evidence(None, None),
            None,
            "unknown",
            Source::None,
        ),
        (
            "empty schema (bare API server CRD of 1.7)",
            evidence(None, Some(backup_crd(Release::V1_7, None))),
            Some(Release::V1_7),
            "1.7",
            Source::CrdSchema,
        ),
    ];
    for (name, ev, release, version, source) in cases {
        let info = detect(&ev);
        assert_eq!(info.release, release, "{name}: {info:?}");
        assert_eq!(info.version_label(), version, "{name}");
        assert_eq!(info.source, source, "{name}");
        assert!(!info.detail.is_empty(), "{name}");
    }
    let info = detect(&evidence(
        None,
        Some(backup_crd(Release::V1_8, Some("custom"))),
    ));
    assert!(info.detail.contains("skipped"), "{}", info.detail);
    let mut failed = evidence(None, None);
    failed
        .errors
        .push("reading CRD backups.longhorn.io: forbidden".into());
    assert!(detect(&failed).detail.contains("forbidden"));
}

#[test]
fn missing_crds_are_named() {
    let all: Vec<String> = REQUIRED_RESOURCES.iter().map(|s| s.to_string()).collect();
    assert!(missing_crds(&all).is_empty());
    let some: Vec<String> = ["backups", "volumes", "settings", "backups/status"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        missing_crds(&some),
        [
            "snapshots.longhorn.io",
            "engines.longhorn.io",
            "backuptargets.longhorn.io"
        ]
    );
    assert_eq!(missing_crds(&[]).len(), 5);
}

#[test]
fn cell_reports_changes_and_metric_has_one_series() {
    let cell = LonghornCell::default();
    let mut registry = Registry::default();
    let metrics = VersionMetrics::register(&mut registry);
    let encode = |r: &Registry| {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, r).unwrap();
        s
    };
    publish(&cell, &metrics, LonghornInfo::unknown("x".into()));
    assert_eq!(cell.release(), None);
    let v17 = detect(&evidence(Some("v1.7.2"), None));
    publish(&cell, &metrics, v17.clone());
    assert_eq!(cell.release(), Some(Release::V1_7));
    assert!(cell.set(v17).is_none(), "same answer is no change");
    publish(&cell, &metrics, detect(&evidence(Some("v1.10.0"), None)));
    let text = encode(&registry);
    assert!(
        text.contains(r#"longhorn_info{version="v1.10.0",release="1.10",source="setting"} 1"#),
        "{text}"
    );
    assert_eq!(text.matches("longhorn_info{").count(), 1, "{text}");
    assert!(text.contains("longhorn_version_changes_total 2"), "{text}");
}
