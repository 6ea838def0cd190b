#!/usr/bin/env bash
# scripts/bench-webhook-memory.sh — webhook memory and start-up with 100k Backups + 100k
# Snapshots + 10k Volumes in a real kube-apiserver, beside a kube reflector store holding the
# full objects. Starts its own control plane on free loopback ports, stops it on exit.
# Filling the API server takes minutes. Arguments go to the bench (e.g. --backups 20000).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
cd "${ROOT}"
ensure_packages python3 curl jq openssl
bash "${CP}/build.sh" >/dev/null
cargo build --release --locked -p longhorn-guard-webhook --bench index_memory >&2
# LHG_BENCH_STATE=DIR keeps the filled control plane running in DIR for another run
# (stop it with: source scripts/lib.sh; cp_down DIR/cluster).
if [[ -n ${LHG_BENCH_STATE:-} ]]; then
  STATE="${LHG_BENCH_STATE}"
  mkdir -p "${STATE}"
else
  STATE="$(mktemp -d "${TMPDIR:-/tmp}/lhg-bench-memory.XXXXXX")"
  trap 'cp_down "${STATE}/cluster"; rm -rf "${STATE}"' EXIT
fi
LHG_TEST_KUBECONFIG="$(cp_up "${STATE}/cluster")"
export LHG_TEST_KUBECONFIG
cargo bench --locked -p longhorn-guard-webhook --bench index_memory -- "$@"
