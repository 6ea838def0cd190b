#!/usr/bin/env bash
# scripts/demo.sh — the main job on a fresh machine: install what is needed, build
# longhorn-guard, and run `longhorn-guard demo`, which replays the Longhorn v1.7.2 Backup storm
# twice (without, then with the guard) on a local control plane it starts and stops itself
# (a real kube-apiserver + etcd on 127.0.0.1), and prints the two runs side by side.
#
#   bash scripts/demo.sh [DEMO FLAGS]   e.g. --backups 1000 --duration 30 --out /tmp/demo
#   bash scripts/demo.sh down           stop a control plane left by an older version of this script
#
# Report, plot and logs go to ./demo-out (or --out DIR). Ctrl-C stops everything it started.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
cd "${ROOT}"

if [[ ${1:-} == down ]]; then
  cp_down "${LHG_DEMO_STATE:-${LHG_CACHE}/demo-cluster}"
  log "stopped; state removed"
  exit 0
fi

ensure_packages python3 curl jq openssl
ensure_rust
bash "${CP}/build.sh" >/dev/null
log "building longhorn-guard (release)"
cargo build --locked --release -p longhorn-guard --features demo >&2
BIN="${CARGO_TARGET_DIR:-${ROOT}/target}/release/longhorn-guard"

log "running: longhorn-guard demo $*"
export RUST_LOG="${RUST_LOG:-warn}"
exec "${BIN}" --log-format text demo --control-plane-dir "${CP}" "$@"
