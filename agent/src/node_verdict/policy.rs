//! The thresholds from the policy file (the webhook's ConfigMap, mounted into the agent): read
//! at start and again whenever its content changes. No file: the defaults. A bad file: the last
//! good thresholds stay, with a warning and `node_verdict_policy_errors_total`.

use std::path::PathBuf;

use ::node_verdict::Thresholds;

/// What one look at the file found.
#[derive(Debug, PartialEq)]
pub enum PolicyCheck {
    /// Same content as last time (or still no file): nothing to do.
    Unchanged,
    /// New thresholds to apply (the defaults when the file went away).
    Changed(Thresholds),
    /// The file could not be read or its `nodeProtection.thresholds` are invalid; the message
    /// names the file and the problem.
    Bad(String),
}

/// Follows one policy file by content (a ConfigMap volume swaps a symlink; only the content
/// says whether it changed).
#[derive(Debug)]
pub struct PolicyFile {
    path: Option<PathBuf>,
    /// The content last looked at, good or bad; `None` for no file.
    last: Option<String>,
}

impl PolicyFile {
    pub fn new(path: Option<PathBuf>) -> Self {
        PolicyFile { path, last: None }
    }

    /// The thresholds to start with: the file's, else the defaults (and the problem, if the
    /// file is bad: the agent starts anyway).
    pub fn initial(&mut self) -> (Thresholds, Option<String>) {
        match self.check() {
            PolicyCheck::Changed(t) => (t, None),
            PolicyCheck::Unchanged => (Thresholds::default(), None),
            PolicyCheck::Bad(why) => (Thresholds::default(), Some(why)),
        }
    }

    pub fn check(&mut self) -> PolicyCheck {
        let Some(path) = &self.path else {
            return PolicyCheck::Unchanged;
        };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return PolicyCheck::Bad(format!(
                    "cannot read the policy file {}: {e}",
                    path.display()
                ));
            }
        };
        if text == self.last {
            return PolicyCheck::Unchanged;
        }
        self.last = text.clone();
        match text {
            None => PolicyCheck::Changed(Thresholds::default()),
            Some(text) => match Thresholds::from_policy_yaml(&text) {
                Ok(t) => PolicyCheck::Changed(t),
                Err(e) => PolicyCheck::Bad(format!("policy file {}: {e}", path.display())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_file_keeps_nothing_bad_and_falls_back_to_defaults() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("policy.yaml");
        let mut file = PolicyFile::new(Some(path.clone()));
        assert_eq!(file.initial(), (Thresholds::default(), None));
        assert_eq!(file.check(), PolicyCheck::Unchanged);

        std::fs::write(
            &path,
            "nodeProtection:\n  thresholds:\n    windowSeconds: 120\n",
        )?;
        let PolicyCheck::Changed(t) = file.check() else {
            anyhow::bail!("a new file is read");
        };
        assert_eq!(t.window_seconds, 120);
        assert_eq!(file.check(), PolicyCheck::Unchanged);

        std::fs::write(
            &path,
            "nodeProtection:\n  thresholds:\n    windowSeconds: 0\n",
        )?;
        let PolicyCheck::Bad(why) = file.check() else {
            anyhow::bail!("a bad file is reported");
        };
        assert!(
            why.contains("policy.yaml") && why.contains("windowSeconds"),
            "{why}"
        );
        // Reported once, not at every look.
        assert_eq!(file.check(), PolicyCheck::Unchanged);

        std::fs::remove_file(&path)?;
        assert_eq!(file.check(), PolicyCheck::Changed(Thresholds::default()));

        let mut bad_at_start = PolicyFile::new(Some(path.clone()));
        std::fs::write(&path, "nodeProtection: [")?;
        let (t, why) = bad_at_start.initial();
        assert_eq!(t, Thresholds::default());
        assert!(why.is_some_and(|w| w.contains("policy.yaml")));
        Ok(())
    }
}
