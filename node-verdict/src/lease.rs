//! How a verdict is written into a `coordination.k8s.io/v1` Lease and read back. The agent
//! builds the Lease from [`Published::annotations`], [`labels`] and [`lease_name`]; the webhook
//! lists Leases with [`LABEL_SELECTOR`] and reads each with [`Published::from_annotations`].

use std::collections::BTreeMap;

use crate::{Evidence, Verdict};

/// Label on every verdict Lease (what the webhook's list and watch select).
pub const LABEL_KEY: &str = "longhorn-guard.io/node-verdict";
pub const LABEL_VALUE: &str = "true";
/// `LABEL_KEY=LABEL_VALUE`, for a list or watch.
pub const LABEL_SELECTOR: &str = "longhorn-guard.io/node-verdict=true";
/// The node the verdict is about (the truth; the Lease name is only a lookup key).
pub const ANNOTATION_NODE: &str = "longhorn-guard.io/node";
/// [`Verdict::as_str`].
pub const ANNOTATION_VERDICT: &str = "longhorn-guard.io/verdict";
/// [`Evidence`] as JSON.
pub const ANNOTATION_EVIDENCE: &str = "longhorn-guard.io/evidence";
/// Lease names start with this.
pub const NAME_PREFIX: &str = "longhorn-guard-node-";
/// Object names are DNS subdomains: at most 253 characters.
const MAX_NAME: usize = 253;

/// The Lease name for `node`: [`NAME_PREFIX`] + the node, or, when that is longer than an object
/// name may be, a cut of it + `-` + 16 hex digits of the node's FNV-1a hash (still one per node).
pub fn lease_name(node: &str) -> String {
    let name = format!("{NAME_PREFIX}{node}");
    if name.len() <= MAX_NAME {
        return name;
    }
    let hash = fnv1a(node.as_bytes());
    let keep = MAX_NAME - 17;
    // Node names are ASCII (DNS subdomains), so any byte index is a char boundary; stay safe
    // for anything else.
    let mut cut = keep;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}-{hash:016x}", name[..cut].trim_end_matches(['-', '.']))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The labels of a verdict Lease.
pub fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_KEY.to_owned(), LABEL_VALUE.to_owned()),
        (
            "app.kubernetes.io/name".to_owned(),
            "longhorn-guard".to_owned(),
        ),
        (
            "app.kubernetes.io/component".to_owned(),
            "node-verdict".to_owned(),
        ),
    ])
}

/// A node's verdict as it travels in a Lease's annotations.
#[derive(Clone, Debug, PartialEq)]
pub struct Published {
    pub node: String,
    pub verdict: Verdict,
    pub evidence: Evidence,
}

/// A verdict Lease that cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ContractError {
    #[error("verdict Lease has no annotation {0}")]
    Missing(&'static str),
    #[error("unknown verdict {0:?} (expected healthy, degrading or leaking)")]
    UnknownVerdict(String),
    #[error("annotation {ANNOTATION_EVIDENCE} is not valid evidence JSON: {0}")]
    Evidence(String),
}

impl Published {
    /// The annotations the agent writes.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        // Evidence holds only numbers and strings: serializing it cannot fail.
        let evidence = serde_json::to_string(&self.evidence).unwrap_or_else(|_| "{}".to_owned());
        BTreeMap::from([
            (ANNOTATION_NODE.to_owned(), self.node.clone()),
            (
                ANNOTATION_VERDICT.to_owned(),
                self.verdict.as_str().to_owned(),
            ),
            (ANNOTATION_EVIDENCE.to_owned(), evidence),
        ])
    }

    /// Reads a verdict back from a Lease's annotations. Missing or unparsable evidence is an
    /// error, not a default: a verdict is only acted on with the figures that justify it.
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Result<Self, ContractError> {
        let get = |key: &'static str| {
            annotations
                .get(key)
                .map(String::as_str)
                .ok_or(ContractError::Missing(key))
        };
        let node = get(ANNOTATION_NODE)?.to_owned();
        let verdict = get(ANNOTATION_VERDICT)?.parse()?;
        let evidence = serde_json::from_str(get(ANNOTATION_EVIDENCE)?)
            .map_err(|e| ContractError::Evidence(e.to_string()))?;
        Ok(Published {
            node,
            verdict,
            evidence,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_round_trip() {
        let p = Published {
            node: "node-a".into(),
            verdict: Verdict::Leaking,
            evidence: Evidence {
                connections: 900,
                connections_per_minute: 120.5,
                reason: "connections +120/min for 3m".into(),
                ..Evidence::default()
            },
        };
        assert_eq!(Published::from_annotations(&p.annotations()), Ok(p));
    }

    #[test]
    fn unreadable_leases_are_errors_naming_what_is_wrong() {
        let mut a = Published {
            node: "n".into(),
            verdict: Verdict::Healthy,
            evidence: Evidence::default(),
        }
        .annotations();
        a.insert(ANNOTATION_EVIDENCE.into(), "{not json".into());
        assert!(matches!(
            Published::from_annotations(&a),
            Err(ContractError::Evidence(_))
        ));
        a.remove(ANNOTATION_VERDICT);
        assert_eq!(
            Published::from_annotations(&a),
            Err(ContractError::Missing(ANNOTATION_VERDICT))
        );
    }

    #[test]
    fn lease_names_fit_an_object_name_and_stay_distinct() {
        assert_eq!(lease_name("node-a"), "longhorn-guard-node-node-a");
        let long_a = "a".repeat(253);
        let mut long_b = long_a.clone();
        long_b.replace_range(252.., "b");
        let (a, b) = (lease_name(&long_a), lease_name(&long_b));
        assert!(a.len() <= 253 && b.len() <= 253);
        assert_ne!(a, b);
    }
}
