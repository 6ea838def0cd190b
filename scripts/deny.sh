#!/usr/bin/env bash
# scripts/deny.sh — supply-chain checks: `cargo deny check bans licenses sources` (offline).
#
# Installs cargo-deny from crates.io if missing (~4 min on 2 cores, which is why it is not a
# prerequisite of scripts/test.sh). Also checks that openmetrics-parser (LGPL-3.0, allowed by
# deny.toml as a dev-dependency only) is not reachable through normal or build dependencies.
# `advisories` is not run: it needs the RustSec database from GitHub (see RELIABILITY.md).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
cd "${ROOT}"

if ! cargo deny --version >/dev/null 2>&1; then
  log "installing cargo-deny from crates.io (~4 min)"
  cargo install --locked cargo-deny >&2 || die "cargo install cargo-deny failed"
fi

log "openmetrics-parser must be a dev-dependency only"
if cargo tree --workspace --locked -e normal,build --prefix none 2>/dev/null | grep -q '^openmetrics-parser '; then
  die "openmetrics-parser (LGPL-3.0) is reachable through a normal/build dependency: deny.toml's exception no longer holds"
fi

log "cargo deny check bans licenses sources"
cargo deny --locked check bans licenses sources
