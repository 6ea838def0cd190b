#!/usr/bin/env bash
# scripts/test.sh — run every test of longhorn-guard, on a fresh machine or a warm one.
#
# Installs what it needs (Debian packages, cargo-nextest, the cached kube-apiserver build),
# checks formatting and clippy, then owns ONE local control plane (real kube-apiserver +
# etcd on loopback) for the whole test run, plus a second one holding Longhorn's own v1.7.2
# CRDs (../shared/longhorn, or LHG_TEST_LONGHORN_CRDS). Both are stopped in a trap, even when tests
# fail. Every test that needs a control plane or Longhorn's CRDs is #[ignore = "needs ..."]d,
# so a plain `cargo nextest run` lists it skipped (e2e/tests/test_scheme.rs fails on a
# control-plane test without the mark); this script runs all of them (`--run-ignored all`),
# and here a missing control plane or missing data fails them.
# Fails if any process the run started is still alive at the end.
#
# Extra arguments go to `cargo nextest run` (e.g. a test filter).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
cd "${ROOT}"

t0=${SECONDS}
ensure_packages python3 curl jq openssl prometheus
ensure_rust
ensure_helm_kubectl   # helm v4.1.4 + kubectl v1.33.9 for the chart tests (exports LHG_TEST_HELM, LHG_TEST_KUBECTL)
bash "${CP}/build.sh" >/dev/null   # installs etcd; builds kube-apiserver once into $LHG_CACHE
log "prerequisites ready after $((SECONDS - t0)) s"

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "building tests"
cargo nextest run --workspace --locked --no-run

export LHG_RUN_ID="lhg-test-$$-${RANDOM}"
STATE="$(mktemp -d "${TMPDIR:-/tmp}/lhg-test.XXXXXX")"
status=0
cleanup() {
  local rc=$? left
  set +e
  cp_down "${STATE}/cluster"
  cp_down "${STATE}/longhorn"
  sleep 0.5
  left="$(procs_of_run "${LHG_RUN_ID}")"
  if [[ -n ${left} ]]; then
    log "ERROR: processes started by this run are still alive:"
    for pid in ${left}; do ps -o pid=,args= -p "${pid}" >&2; done
    # shellcheck disable=SC2086
    kill -KILL ${left} 2>/dev/null
    rc=1
  fi
  rm -rf "${STATE}"
  log "done in $((SECONDS - t0)) s (exit ${rc})"
  exit "${rc}"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "starting the local control plane"
LHG_TEST_KUBECONFIG="$(cp_up "${STATE}/cluster")" || die "control plane failed to start"
export LHG_TEST_KUBECONFIG
unset KUBECONFIG   # tests must never reach a developer's own cluster

LONGHORN_CRDS="${LHG_TEST_LONGHORN_CRDS:-${ROOT}/../shared/longhorn/crds-v1.7.2.yaml}"
if [[ -f ${LONGHORN_CRDS} ]]; then
  log "starting a second control plane for Longhorn's own CRDs (${LONGHORN_CRDS})"
  LHG_TEST_LONGHORN_KUBECONFIG="$(cp_up "${STATE}/longhorn")" || die "second control plane failed to start"
  export LHG_TEST_LONGHORN_KUBECONFIG LHG_TEST_LONGHORN_CRDS="${LONGHORN_CRDS}"
else
  log "ERROR: ${LONGHORN_CRDS} is absent: the tests that need Longhorn's own CRDs will fail"
fi

log "running tests, the ones a plain cargo nextest run skips included"
cargo nextest run --workspace --locked --no-fail-fast --run-ignored all "$@" || status=$?
exit "${status}"
