//! The webhook's policy hot reload (`PolicyFileWatch::apply_content`, what `poll` does with
//! each read of the file) on a sequence of file contents, good and bad, against a model.
//!
//! Input: the contents one after another, separated by NUL bytes (at most 16).
//! Invariants: no panic; the same content twice is `Unchanged`; a new valid content is
//! swapped in with the next generation; an invalid one is `Rejected` with an error naming the
//! file, and the cell keeps the last good policy and its generation.
#![no_main]

use std::path::Path;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use longhorn_guard_webhook::Policy;
use longhorn_guard_webhook::policy::reload::parse_policy;
use longhorn_guard_webhook::policy::{PolicyCell, PolicyFileWatch, ReloadOutcome};

const FILE: &str = "/etc/longhorn-guard/policy.yaml";

fuzz_target!(|data: &[u8]| {
    let cell = PolicyCell::new(Arc::new(Policy::default()));
    let mut watch = PolicyFileWatch::new(FILE.into(), None);
    let mut last_content: Option<&[u8]> = None;
    let mut good = Policy::default();
    let mut generation = 1;
    for content in data.split(|b| *b == 0).take(16) {
        let outcome = watch.apply_content(content.to_vec(), &cell);
        if last_content == Some(content) {
            assert_eq!(outcome, ReloadOutcome::Unchanged);
        } else {
            last_content = Some(content);
            let parsed = std::str::from_utf8(content)
                .ok()
                .and_then(|text| parse_policy(Path::new(FILE), text).ok());
            match (parsed, outcome) {
                (Some(policy), ReloadOutcome::Reloaded { generation: g }) => {
                    generation += 1;
                    assert_eq!(g, generation);
                    good = policy;
                }
                (None, ReloadOutcome::Rejected { error }) => {
                    assert!(
                        error.contains(FILE),
                        "error does not name the file: {error}"
                    );
                }
                (parsed, outcome) => {
                    panic!("valid: {}, outcome {outcome:?}", parsed.is_some())
                }
            }
        }
        assert_eq!(cell.generation(), generation);
        assert_eq!(*cell.get(), good, "the cell lost the last good policy");
    }
});
