//! Tests only: the cross-crate end-to-end tests live in `e2e/tests/`; the test support they
//! use is the testkit (`testkit/`, `longhorn-guard-testkit`). The one module here reads the
//! workspace's sources for `tests/test_scheme.rs`.

pub mod source_scan;
