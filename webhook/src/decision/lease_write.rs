//! Who may write a node's verdict Lease (issue #19): only that node's agent. RBAC cannot say
//! so (resourceNames cannot be templated per node), so the webhook admits CREATE and UPDATE of
//! the verdict Leases (`node_verdict::lease::LABEL_SELECTOR`, the guard's namespace) only
//! when:
//!
//! - the requester is the agent's service account (`nodeProtection.agentServiceAccount` in the
//!   Lease's namespace);
//! - the Lease names its node (annotation `longhorn-guard.io/node`) and its name is
//!   `lease_name(node)` (and an UPDATE does not change the node);
//! - the requester runs on that node: the userInfo extra `authentication.kubernetes.io/node-name`
//!   (Kubernetes >= 1.30 puts it in pod-bound service account tokens). Without it (older API
//!   servers) `nodeProtection.leaseWriters` decides: `allow-service-account` (default) admits
//!   the agent's service account for any node, `require-node-identity` refuses.
//!
//! Pure: the caller passes what the AdmissionReview says.

use std::collections::BTreeMap;

use node_verdict::lease::{ANNOTATION_NODE, LABEL_KEY, LABEL_VALUE, lease_name};

use crate::policy::{LeaseWriters, Policy};

/// The userInfo extra key with the requester's node.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// What the review says about one Lease write.
#[derive(Clone, Debug, Default)]
pub struct LeaseWrite<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    /// The Lease as it would be stored (`None`: no object, e.g. a DELETE).
    pub labels: Option<&'a BTreeMap<String, String>>,
    pub annotations: Option<&'a BTreeMap<String, String>>,
    /// The Lease before an UPDATE.
    pub old_labels: Option<&'a BTreeMap<String, String>>,
    pub old_annotations: Option<&'a BTreeMap<String, String>>,
    pub username: &'a str,
    /// `authentication.kubernetes.io/node-name`, when the API server gave it.
    pub requester_node: Option<&'a str>,
}

fn is_verdict(labels: Option<&BTreeMap<String, String>>) -> bool {
    labels.is_some_and(|l| l.get(LABEL_KEY).is_some_and(|v| v == LABEL_VALUE))
}

fn node_of(annotations: Option<&BTreeMap<String, String>>) -> Option<&str> {
    annotations
        .and_then(|a| a.get(ANNOTATION_NODE))
        .map(String::as_str)
        .filter(|n| !n.is_empty())
}

/// `Ok` to admit, `Err` with the refusal's message.
pub fn check_lease_write(policy: &Policy, w: &LeaseWrite<'_>) -> Result<(), String> {
    if !is_verdict(w.labels) && !is_verdict(w.old_labels) {
        return Ok(());
    }
    let what = format!("verdict Lease {:?} in namespace {:?}", w.name, w.namespace);
    let agent = policy.node_protection.agent_username(w.namespace);
    if w.username != agent {
        return Err(format!(
            "longhorn-guard: only the agent ({agent}) writes node verdicts; {:?} may not write {what}",
            w.username
        ));
    }
    let Some(node) = node_of(w.annotations) else {
        return Err(format!(
            "longhorn-guard: {what} has no annotation {ANNOTATION_NODE} naming its node (or lost label {LABEL_KEY})"
        ));
    };
    if w.name != lease_name(node) {
        return Err(format!(
            "longhorn-guard: {what} names node {node:?}, whose verdict Lease is {:?}",
            lease_name(node)
        ));
    }
    if let Some(old) = node_of(w.old_annotations)
        && old != node
    {
        return Err(format!(
            "longhorn-guard: {what} is node {old:?}'s verdict; it cannot be changed to node {node:?}"
        ));
    }
    match w.requester_node {
        Some(from) if from == node => Ok(()),
        Some(from) => Err(format!(
            "longhorn-guard: the agent on node {from:?} may not write node {node:?}'s {what}: each agent writes only its own node's verdict"
        )),
        None => match policy.node_protection.lease_writers {
            LeaseWriters::AllowServiceAccount => Ok(()),
            LeaseWriters::RequireNodeIdentity => Err(format!(
                "longhorn-guard: the API server did not say which node the requester runs on (userInfo extra {NODE_NAME_EXTRA}, Kubernetes 1.30+), and policy nodeProtection.leaseWriters: require-node-identity refuses {what} without it"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::LeaseWriters;

    const AGENT: &str = "system:serviceaccount:guard:longhorn-guard-agent";

    fn maps(node: &str) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        let labels = node_verdict::lease::labels();
        let annotations = BTreeMap::from([(ANNOTATION_NODE.to_string(), node.to_string())]);
        (labels, annotations)
    }

    fn write<'a>(
        name: &'a str,
        maps: &'a (BTreeMap<String, String>, BTreeMap<String, String>),
        username: &'a str,
        requester_node: Option<&'a str>,
    ) -> LeaseWrite<'a> {
        LeaseWrite {
            namespace: "guard",
            name,
            labels: Some(&maps.0),
            annotations: Some(&maps.1),
            username,
            requester_node,
            ..LeaseWrite::default()
        }
    }

    #[test]
    fn only_the_nodes_own_agent_writes_its_verdict() {
        let p = Policy::default();
        let a = maps("node-a");
        let name_a = lease_name("node-a");
        assert_eq!(
            check_lease_write(&p, &write(&name_a, &a, AGENT, Some("node-a"))),
            Ok(())
        );
        let err = check_lease_write(&p, &write(&name_a, &a, AGENT, Some("node-b"))).unwrap_err();
        assert!(
            err.contains("on node \"node-b\" may not write node \"node-a\""),
            "{err}"
        );
        let err = check_lease_write(&p, &write(&name_a, &a, "alice", Some("node-a"))).unwrap_err();
        assert!(err.contains("only the agent"), "{err}");
        // The name must be the node's.
        let name_b = lease_name("node-b");
        let err = check_lease_write(&p, &write(&name_b, &a, AGENT, Some("node-a"))).unwrap_err();
        assert!(err.contains("whose verdict Lease is"), "{err}");
        // An UPDATE cannot re-point the Lease to another node.
        let b = maps("node-b");
        let mut w = write(&name_b, &b, AGENT, Some("node-b"));
        w.old_labels = Some(&a.0);
        w.old_annotations = Some(&a.1);
        assert!(check_lease_write(&p, &w).is_err());
        // Other Leases pass.
        let other = (BTreeMap::new(), BTreeMap::new());
        assert_eq!(
            check_lease_write(&p, &write("kube-scheduler", &other, "x", None)),
            Ok(())
        );
    }

    #[test]
    fn a_sidecar_agent_in_another_namespace_is_named_namespace_colon_name() {
        let mut p = Policy::default();
        let a = maps("node-a");
        let name_a = lease_name("node-a");
        let sidecar = "system:serviceaccount:longhorn-system:longhorn-service-account";
        assert!(check_lease_write(&p, &write(&name_a, &a, sidecar, Some("node-a"))).is_err());
        p.node_protection.agent_service_account = "longhorn-system:longhorn-service-account".into();
        assert_eq!(
            check_lease_write(&p, &write(&name_a, &a, sidecar, Some("node-a"))),
            Ok(())
        );
        assert!(check_lease_write(&p, &write(&name_a, &a, AGENT, Some("node-a"))).is_err());
    }

    #[test]
    fn without_node_identity_the_policy_decides() {
        let mut p = Policy::default();
        let a = maps("node-a");
        let name_a = lease_name("node-a");
        assert_eq!(
            check_lease_write(&p, &write(&name_a, &a, AGENT, None)),
            Ok(())
        );
        p.node_protection.lease_writers = LeaseWriters::RequireNodeIdentity;
        let err = check_lease_write(&p, &write(&name_a, &a, AGENT, None)).unwrap_err();
        assert!(err.contains("require-node-identity"), "{err}");
    }
}
