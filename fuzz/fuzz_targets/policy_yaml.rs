//! The webhook's policy parser: arbitrary text through `Policy::from_yaml` + `validate`.
//!
//! Invariants: no panic, no hang; a policy that parses and validates survives a YAML round
//! trip unchanged (what the hot reload compares), and its limits are usable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use longhorn_guard_webhook::Policy;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(policy) = Policy::from_yaml(text) else {
        return;
    };
    if policy.validate().is_err() {
        return;
    }
    assert!(policy.deadline_ms > 0 && policy.max_concurrent_reviews > 0);
    assert!(policy.max_body_bytes >= 1024);
    let again = serde_yaml::to_string(&policy).expect("a valid policy serializes");
    let back = Policy::from_yaml(&again).expect("a serialized policy parses");
    assert_eq!(back, policy, "round trip changed the policy:\n{again}");
});
