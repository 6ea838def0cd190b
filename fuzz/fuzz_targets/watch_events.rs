//! The webhook's watch: each line of a watch response decoded as kube decodes it
//! (`serde_json` into `WatchEvent<K>`) and applied by `index::apply_watch_event`, what the
//! watch loop does with every event, after a completed (empty) list.
//!
//! Input: `KIND LINE \n LINE \n …`; KIND picks Snapshot, Volume, Engine, Backup or
//! BackupTarget.
//! Invariants: no panic; the watch's resourceVersion is never emptied; an `ERROR` event and
//! only it ends the watch (its Status handed back); watch events never unsync the kind; the
//! index never holds more entries than ADDED/MODIFIED events brought.
#![no_main]

use kube::api::WatchEvent;
use libfuzzer_sys::fuzz_target;
use longhorn_guard_webhook::index::{IndexEvent, IndexedKind, apply_watch_event};
use longhorn_guard_webhook::{Index, IndexOptions};
use longhorn_types::{Backup, BackupTarget, Engine, Snapshot, Volume};

fn run<K: IndexedKind>(lines: &[u8]) {
    let index = Index::new(IndexOptions::default());
    index.apply::<K>(IndexEvent::RelistStart);
    index.apply::<K>(IndexEvent::RelistDone);
    let mut resource_version = String::from("1");
    let mut upserts = 0;
    for line in lines.split(|b| *b == b'\n') {
        let Ok(event) = serde_json::from_slice::<WatchEvent<K>>(line) else {
            continue;
        };
        let is_error = matches!(event, WatchEvent::Error(_));
        upserts += usize::from(matches!(
            event,
            WatchEvent::Added(_) | WatchEvent::Modified(_)
        ));
        let applied = apply_watch_event(&index, event, &mut resource_version);
        assert_eq!(
            applied.is_err(),
            is_error,
            "only an ERROR event ends the watch"
        );
        assert!(!resource_version.is_empty(), "resourceVersion emptied");
        assert!(index.synced(K::KIND), "a watch event unsynced the kind");
        assert!(index.count(K::KIND) <= upserts);
        if applied.is_err() {
            return;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [kind, lines @ ..] = data else {
        return;
    };
    match kind % 5 {
        0 => run::<Snapshot>(lines),
        1 => run::<Volume>(lines),
        2 => run::<Engine>(lines),
        3 => run::<Backup>(lines),
        _ => run::<BackupTarget>(lines),
    }
});
