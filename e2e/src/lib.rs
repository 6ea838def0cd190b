//! Tests only: the cross-crate end-to-end tests live in `e2e/tests/`. This crate has no library
//! code; the test support they use is the testkit (`testkit/`, `longhorn-guard-testkit`).
