#!/usr/bin/env bash
# scripts/long-run.sh — the guard for hours, not seconds: `longhorn-guard demo --long-run-minutes N`
# (demo/src/long_run) on a local control plane it starts and stops itself. The demo's topology
# (webhook, an agent per node, the simulated v1.7.2 controller, fake engines) runs N minutes with a
# storm wave every 5 minutes (a quarter of the run if shorter), a fault in the engines during each
# wave, and one API server outage for the guard a quarter of the way in. Every 10 s it samples the
# guard's processes (/proc: RSS, fds, threads; /metrics: channels, leases, leak gauges, index size,
# watch restarts); at the end each series is judged flat or not over the second half, leaked leases
# and channels must be 0 and every denial is checked against the simulated cluster's truth.
#
#   bash scripts/long-run.sh [--minutes N] [--out DIR] [OTHER DEMO FLAGS]   (default: 60 minutes,
#                                                                           docs/long-run)
#
# Exit status 0 when every goal is met, 1 when one is missed (the report says which).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
cd "${ROOT}"

minutes=60
out="${ROOT}/docs/long-run"
args=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --minutes) minutes=${2:?--minutes needs a value}; shift 2 ;;
    --out) out=${2:?--out needs a value}; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
[[ ${minutes} =~ ^[1-9][0-9]*$ ]] || die "--minutes must be a whole number of minutes >= 1, not '${minutes}'"

ensure_packages python3 curl jq openssl
ensure_rust
bash "${CP}/build.sh" >/dev/null
# LHG_LONG_RUN_PROFILE=dev runs the debug build (no release build on a busy machine).
profile="${LHG_LONG_RUN_PROFILE:-release}"
log "building longhorn-guard (${profile})"
cargo build --locked --profile "${profile}" -p longhorn-guard --features demo >&2
dir=${profile}
[[ ${profile} == dev ]] && dir=debug
BIN="${CARGO_TARGET_DIR:-${ROOT}/target}/${dir}/longhorn-guard"

log "long run of ${minutes} minutes into ${out} (load before: $(cut -d' ' -f1-3 /proc/loadavg))"
export RUST_LOG="${RUST_LOG:-warn}"
rc=0
"${BIN}" --log-format text demo --control-plane-dir "${CP}" --out "${out}" \
  --long-run-minutes "${minutes}" "${args[@]}" || rc=$?
log "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
exit "${rc}"
