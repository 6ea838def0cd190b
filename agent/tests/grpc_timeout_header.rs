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

/// Was a latent bug: `value.split_at(value.len() - 1)` sliced inside a multi-byte last character
/// and panicked ("byte index 2 is not a char boundary") until `parse_grpc_timeout` refused
/// non-ASCII values before splitting.
#[test]
fn non_ascii_values_are_none_not_a_panic() {
    for v in ["1é", "5€", "12\u{00b5}", "9\u{1F600}"] {
        assert_eq!(parse_grpc_timeout(v), None, "{v:?}");
    }
}
