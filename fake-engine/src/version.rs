//! What an engine answers to `ServerVersionGet`: Longhorn engine's `pkg/meta` constants plus the
//! build's version, commit and date, with presets of real releases.
//!
//! The API constants of each preset are those of `pkg/meta/version.go` of
//! github.com/longhorn/longhorn-engine at the release tag (read from the tag, see the commit):
//!
//! | preset | tag commit | cliAPI / min | controllerAPI / min | dataFormat / min |
//! |---|---|---|---|---|
//! | `v1.7.2` (default) | 6f8fb28c87be373ec11287fccf6971a1a677dbe3 | 10 / 8 | 5 / 4 | 1 / 1 |
//! | `v1.8.2` | 554a84e4f14d1a6acf80d75facc5a330e51f5bee | 10 / 8 | 5 / 4 | 1 / 1 |
//! | `v1.10.2` | 85f8e81961b07e0d5aa0b0793316d29f23d857be | 10 / 8 | 5 / 4 | 1 / 1 |
//!
//! (v1.8.0, v1.8.1, v1.9.x, v1.10.0 and v1.10.1 carry the same constants; v1.11.0 raised them to
//! 11 / 8, 6 / 4, 1 / 1.) `gitCommit` is what the engine's `scripts/version` stamps
//! (`git rev-parse HEAD`, the tag's commit); `buildDate` is stamped per build
//! (`date -u --rfc-3339=seconds` with a `T`): the presets use the tag commit's time in that form.

use longhorn_guard_proto::ptypes;
use serde::{Deserialize, Serialize};

/// The `VersionOutput` one engine answers, field names as in Longhorn's JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineVersion {
    pub version: String,
    #[serde(rename = "gitCommit")]
    pub git_commit: String,
    #[serde(rename = "buildDate")]
    pub build_date: String,
    #[serde(rename = "cliAPIVersion")]
    pub cli_api_version: i64,
    #[serde(rename = "cliAPIMinVersion")]
    pub cli_api_min_version: i64,
    #[serde(rename = "controllerAPIVersion")]
    pub controller_api_version: i64,
    #[serde(rename = "controllerAPIMinVersion")]
    pub controller_api_min_version: i64,
    #[serde(rename = "dataFormatVersion")]
    pub data_format_version: i64,
    #[serde(rename = "dataFormatMinVersion")]
    pub data_format_min_version: i64,
}

/// Names accepted by [`EngineVersion::preset`].
pub const VERSION_PRESETS: [&str; 3] = ["v1.7.2", "v1.8.2", "v1.10.2"];

impl EngineVersion {
    /// A release whose `pkg/meta` constants are 10 / 8, 5 / 4, 1 / 1 (every release from v1.7.2 to
    /// v1.10.2).
    fn api_10_5_1(version: &str, git_commit: &str, build_date: &str) -> Self {
        Self {
            version: version.to_string(),
            git_commit: git_commit.to_string(),
            build_date: build_date.to_string(),
            cli_api_version: 10,
            cli_api_min_version: 8,
            controller_api_version: 5,
            controller_api_min_version: 4,
            data_format_version: 1,
            data_format_min_version: 1,
        }
    }

    /// Longhorn engine v1.7.2 (the default).
    pub fn v1_7_2() -> Self {
        Self::api_10_5_1(
            "v1.7.2",
            "6f8fb28c87be373ec11287fccf6971a1a677dbe3",
            "2024-10-18T00:35:43+00:00",
        )
    }

    /// Longhorn engine v1.8.2.
    pub fn v1_8_2() -> Self {
        Self::api_10_5_1(
            "v1.8.2",
            "554a84e4f14d1a6acf80d75facc5a330e51f5bee",
            "2025-06-08T23:47:18+00:00",
        )
    }

    /// Longhorn engine v1.10.2.
    pub fn v1_10_2() -> Self {
        Self::api_10_5_1(
            "v1.10.2",
            "85f8e81961b07e0d5aa0b0793316d29f23d857be",
            "2026-01-28T00:32:55+00:00",
        )
    }

    /// The preset named `name` (one of [`VERSION_PRESETS`]).
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "v1.7.2" => Some(Self::v1_7_2()),
            "v1.8.2" => Some(Self::v1_8_2()),
            "v1.10.2" => Some(Self::v1_10_2()),
            _ => None,
        }
    }

    pub(crate) fn to_proto(&self) -> ptypes::VersionOutput {
        ptypes::VersionOutput {
            version: self.version.clone(),
            git_commit: self.git_commit.clone(),
            build_date: self.build_date.clone(),
            cli_api_version: self.cli_api_version,
            cli_api_min_version: self.cli_api_min_version,
            controller_api_version: self.controller_api_version,
            controller_api_min_version: self.controller_api_min_version,
            data_format_version: self.data_format_version,
            data_format_min_version: self.data_format_min_version,
        }
    }
}

impl Default for EngineVersion {
    fn default() -> Self {
        Self::v1_7_2()
    }
}
