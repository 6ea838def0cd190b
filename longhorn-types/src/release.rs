//! Longhorn releases as longhorn-guard tells them apart: a version string parser and the
//! three rule sets whose Backup handling differs (see the reference's version tags).
//!
//! | [`Release`] | covers | what changes for the guard |
//! |---|---|---|
//! | `1.7` | 1.7.x and older | one backup target (the BackupTarget `default`); Backups carry `backup-volume` only |
//! | `1.8` | 1.8.x, 1.9.x | several backup targets: the `backup-target` label / `status.backupTargetName`; BackupVolume names differ from volume names; state `Deleting` (terminal) |
//! | `1.10` | 1.10.x and later | as 1.8, and Longhorn's own validator refuses a Backup whose Snapshot is not in its cache |

use std::fmt;
use std::str::FromStr;

/// A Longhorn rule set (see the module docs). Ordered: later releases compare greater.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Release {
    /// 1.7.x (and older): one backup target.
    V1_7,
    /// 1.8.x and 1.9.x: several backup targets, `Deleting`.
    V1_8,
    /// 1.10.x and later: Longhorn validates the Backup's snapshot itself.
    V1_10,
}

impl Release {
    pub const ALL: [Release; 3] = [Release::V1_7, Release::V1_8, Release::V1_10];

    /// `1.7`, `1.8` or `1.10`: the metric label and what `--longhorn-version` accepts.
    pub fn as_str(self) -> &'static str {
        match self {
            Release::V1_7 => "1.7",
            Release::V1_8 => "1.8",
            Release::V1_10 => "1.10",
        }
    }

    /// The rule set of a Longhorn version: 1.7 and older, 1.8–1.9, 1.10 and later.
    pub fn of(version: &LonghornVersion) -> Release {
        match (version.major, version.minor) {
            (0, _) | (1, 0..=7) => Release::V1_7,
            (1, 8..=9) => Release::V1_8,
            _ => Release::V1_10,
        }
    }

    /// The first version of the rule set (what shapes and CRDs of this release model).
    pub fn first_version(self) -> LonghornVersion {
        match self {
            Release::V1_7 => LonghornVersion::new(1, 7, 2),
            Release::V1_8 => LonghornVersion::new(1, 8, 0),
            Release::V1_10 => LonghornVersion::new(1, 10, 0),
        }
    }

    /// Backups name their BackupTarget (`backup-target` label, `status.backupTargetName`).
    pub fn has_backup_targets(self) -> bool {
        self >= Release::V1_8
    }

    /// Longhorn's validating webhook refuses a Backup whose Snapshot it cannot find.
    pub fn validates_snapshots(self) -> bool {
        self >= Release::V1_10
    }
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Release {
    type Err = String;

    /// `1.7`, `1.8`, `1.10`, or any version [`LonghornVersion`] parses (`v1.9.2` → `1.8`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(r) = Release::ALL.into_iter().find(|r| r.as_str() == s.trim()) {
            return Ok(r);
        }
        s.parse::<LonghornVersion>().map(|v| Release::of(&v))
    }
}

/// A Longhorn version as Longhorn writes it: `v1.7.2`, `1.10.0`, `v1.9.2-rc1`,
/// `v1.8.1-hotfix-2`. Only major, minor and patch are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LonghornVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl LonghornVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }

    pub fn release(&self) -> Release {
        Release::of(self)
    }
}

impl fmt::Display for LonghornVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl FromStr for LonghornVersion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let core = t.strip_prefix('v').unwrap_or(t);
        // Pre-release / build suffixes (`-rc1`, `-hotfix-2`, `+meta`) do not change the rules.
        let core = core.split(['-', '+']).next().unwrap_or_default();
        let mut parts = core.split('.');
        let mut num = |what: &str, required: bool| -> Result<u32, String> {
            match parts.next() {
                Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p
                    .parse()
                    .map_err(|_| format!("Longhorn version {s:?}: {what} {p:?} is too large")),
                None if !required => Ok(0),
                Some(p) => Err(format!(
                    "Longhorn version {s:?}: {what} {p:?} is not a number"
                )),
                None => Err(format!("Longhorn version {s:?}: no {what}")),
            }
        };
        let major = num("major", true)?;
        let minor = num("minor", true)?;
        let patch = num("patch", false)?;
        if parts.next().is_some() {
            return Err(format!("Longhorn version {s:?}: more than three numbers"));
        }
        Ok(Self::new(major, minor, patch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_as_longhorn_writes_them() {
        let ok = [
            ("v1.7.2", (1, 7, 2), Release::V1_7),
            ("1.7.3", (1, 7, 3), Release::V1_7),
            ("v1.6.4", (1, 6, 4), Release::V1_7),
            ("v1.8.0-rc4", (1, 8, 0), Release::V1_8),
            ("v1.9.2", (1, 9, 2), Release::V1_8),
            ("v1.10.0", (1, 10, 0), Release::V1_10),
            ("v1.11.1-hotfix-2", (1, 11, 1), Release::V1_10),
            (" v1.10 ", (1, 10, 0), Release::V1_10),
            ("v2.0.0", (2, 0, 0), Release::V1_10),
        ];
        for (s, (ma, mi, pa), release) in ok {
            let v: LonghornVersion = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(v, LonghornVersion::new(ma, mi, pa), "{s}");
            assert_eq!(v.release(), release, "{s}");
        }
        for bad in [
            "",
            "v",
            "latest",
            "v1",
            "v1.x.2",
            "1.7.2.1",
            "v-1.7",
            "v1.99999999999.0",
        ] {
            let err = bad.parse::<LonghornVersion>().unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }

    #[test]
    fn releases_parse_from_their_names_or_any_version() {
        assert_eq!("1.7".parse::<Release>(), Ok(Release::V1_7));
        assert_eq!("1.8".parse::<Release>(), Ok(Release::V1_8));
        assert_eq!("1.10".parse::<Release>(), Ok(Release::V1_10));
        assert_eq!("v1.9.2".parse::<Release>(), Ok(Release::V1_8));
        assert!("one-ten".parse::<Release>().is_err());
        for r in Release::ALL {
            assert_eq!(r.first_version().release(), r);
            assert_eq!(r.to_string().parse::<Release>(), Ok(r));
        }
        assert!(Release::V1_7 < Release::V1_8 && Release::V1_8 < Release::V1_10);
        assert!(!Release::V1_7.has_backup_targets() && Release::V1_8.has_backup_targets());
        assert!(!Release::V1_8.validates_snapshots() && Release::V1_10.validates_snapshots());
    }
}
