#!/usr/bin/env bash
# scripts/demo.sh — the main job on a fresh machine: set up everything and run the demo on the
# embedded local control plane (a real kube-apiserver + etcd on 127.0.0.1).
#
#   bash scripts/demo.sh        start (or reuse) the local control plane, install the Longhorn
#                               CRDs, and print how to use it
#   bash scripts/demo.sh down   stop it and delete its state
#
# The storm demo (`longhorn-guard demo`) replaces the body of this script once it exists.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
cd "${ROOT}"

STATE="${LHG_DEMO_STATE:-${LHG_CACHE}/demo-cluster}"
if [[ ${1:-} == down ]]; then
  cp_down "${STATE}"
  log "stopped; state removed"
  exit 0
fi

ensure_packages python3 curl jq openssl
ensure_rust
bash "${CP}/build.sh" >/dev/null
log "building longhorn-guard"
cargo build --locked --release -p longhorn-guard >&2
BIN="${ROOT}/target/release/longhorn-guard"

mkdir -p "$(dirname "${STATE}")"
if [[ -f ${STATE}/kubeconfig ]] && bash "${CP}/up.sh" "${STATE}" >/dev/null 2>&1; then
  log "reusing the running local control plane in ${STATE}"
else
  cp_down "${STATE}"
  cp_up "${STATE}" >/dev/null || die "the local control plane did not start"
fi
export KUBECONFIG="${STATE}/kubeconfig"
"${BIN}" crds | kubectl apply -f - >&2
kubectl create namespace longhorn-system --dry-run=client -o yaml | kubectl apply -f - >&2

cat <<EOT

longhorn-guard: a local control plane is running on 127.0.0.1 with the Longhorn CRDs installed.

  export KUBECONFIG=${STATE}/kubeconfig
  kubectl get crds | grep longhorn.io
  kubectl -n longhorn-system get backups.longhorn.io

Stop it:  bash scripts/demo.sh down
EOT
