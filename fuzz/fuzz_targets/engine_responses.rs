//! The engine-proxy answers the agent decodes: arbitrary bytes prost-decoded as each response
//! message of the proxy RPCs the agent calls (what tonic does with a response frame), and a
//! `SnapshotList` answer run through the agent's conversions (`snapshot_in_list`,
//! `snapshots_in_list`, what `GetSnapshot` / `ListSnapshots` return).
//!
//! Input: `WHICH MESSAGE…`; WHICH picks SnapshotList, VolumeGet, ServerVersionGet or
//! SnapshotBackupStatus.
//! Invariants: no panic; a decoded message re-encodes to one that decodes equal; a listing
//! never contains `volume-head`, is sorted by name and has no more snapshots than the answer
//! had disks; every disk of the answer but the head is found by name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use longhorn_guard_agent::snapshot_service::{snapshot_in_list, snapshots_in_list};
use longhorn_guard_proto::VOLUME_HEAD;
use longhorn_guard_proto::imrpc::{
    EngineSnapshotBackupStatusProxyResponse, EngineSnapshotListProxyResponse,
    EngineVersionProxyResponse, EngineVolumeGetProxyResponse,
};
use prost::Message;

/// Decodes `bytes` as `M`; when it decodes, checks the re-encoding round trip.
fn decode<M: Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> Option<M> {
    let message = M::decode(bytes).ok()?;
    let again = M::decode(message.encode_to_vec().as_slice()).expect("re-encoded message decodes");
    assert_eq!(again, message, "prost round trip changed the message");
    Some(message)
}

fn snapshot_list(bytes: &[u8]) {
    let Some(list) = decode::<EngineSnapshotListProxyResponse>(bytes) else {
        return;
    };
    let listed = snapshots_in_list(list.clone());
    assert!(listed.len() <= list.disks.len());
    assert!(
        listed.iter().all(|s| s.name != VOLUME_HEAD),
        "volume-head listed as a snapshot"
    );
    assert!(
        listed.windows(2).all(|w| w[0].name <= w[1].name),
        "not sorted"
    );
    for name in list.disks.keys().filter(|n| *n != VOLUME_HEAD) {
        assert!(
            snapshot_in_list(list.clone(), name).is_some(),
            "{name:?} not found"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let [which, bytes @ ..] = data else {
        return;
    };
    match which % 4 {
        0 => snapshot_list(bytes),
        1 => drop(decode::<EngineVolumeGetProxyResponse>(bytes)),
        2 => drop(decode::<EngineVersionProxyResponse>(bytes)),
        _ => drop(decode::<EngineSnapshotBackupStatusProxyResponse>(bytes)),
    }
});
