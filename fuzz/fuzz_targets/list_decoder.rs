//! The webhook's streamed list decoder (`index::decode_list_into`, what `list_into` runs on a
//! list response body) on arbitrary JSON and on the same body cut short.
//!
//! Input: `KIND CUT_LO CUT_HI BODY…`: KIND picks Snapshot, Volume, Engine, Backup or
//! BackupTarget; the body is decoded whole and again cut at byte `CUT % len` (a response
//! whose connection dropped).
//! Invariants: no panic; a decoded list has a non-empty resourceVersion, holds at least as
//! many items as the index indexed, and completes the relist; a failed one leaves the kind
//! listing (not synced); a cut body that still decodes is the whole list (only trailing
//! whitespace was cut).
#![no_main]

use libfuzzer_sys::fuzz_target;
use longhorn_guard_webhook::index::{IndexEvent, IndexedKind, Listed, decode_list_into};
use longhorn_guard_webhook::{Index, IndexOptions};
use longhorn_types::{Backup, BackupTarget, Engine, Snapshot, Volume};

/// Relists kind `K` from `body` into a fresh index, as the webhook's watch does.
fn relist<K: IndexedKind>(body: &[u8]) -> Option<Listed> {
    let index = Index::new(IndexOptions::default());
    index.apply::<K>(IndexEvent::RelistStart);
    let listed = decode_list_into::<K, _>(body, &index).ok();
    match &listed {
        Some(listed) => {
            assert!(!listed.resource_version.is_empty());
            index.apply::<K>(IndexEvent::RelistDone);
            assert!(index.synced(K::KIND));
            let indexed = index.count(K::KIND);
            assert!(
                indexed <= listed.items,
                "{indexed} entries from a list of {} items",
                listed.items
            );
        }
        None => assert!(!index.synced(K::KIND), "a failed list left the kind synced"),
    }
    listed
}

fn run<K: IndexedKind>(body: &[u8], cut: usize) {
    let whole = relist::<K>(body);
    if body.is_empty() {
        return;
    }
    let cut = cut % body.len();
    if let (Some(whole), Some(part)) = (whole, relist::<K>(&body[..cut])) {
        assert_eq!(part, whole, "a cut list decoded as a different list");
        assert!(body[cut..].iter().all(u8::is_ascii_whitespace));
    }
}

fuzz_target!(|data: &[u8]| {
    let [kind, lo, hi, body @ ..] = data else {
        return;
    };
    let cut = usize::from(u16::from_le_bytes([*lo, *hi]));
    match kind % 5 {
        0 => run::<Snapshot>(body, cut),
        1 => run::<Volume>(body, cut),
        2 => run::<Engine>(body, cut),
        3 => run::<Backup>(body, cut),
        _ => run::<BackupTarget>(body, cut),
    }
});
