#!/usr/bin/env bash
# scripts/reliability.sh — fault injection against the real binaries (not part of test.sh).
#
# Starts its OWN local control plane (it stops and restarts it), the real `longhorn-guard
# webhook` and `longhorn-guard agent` binaries on 127.0.0.1, and a steady stream of reviews
# (scripts/reliability/stream.py), then:
#   1. API server faults: stop kube-apiserver + etcd mid-run (LHG_CP_KEEP_STATE=1 down.sh),
#      compact etcd past the watches' resourceVersion, restart (up.sh): /readyz over time,
#      decisions during the outage and after resync, watch_restarts_total / watch_errors_total.
#   2. Process faults: kill -9 the webhook (registered with failurePolicy: Ignore, as shipped)
#      and the agent; a Backup of a missing snapshot is admitted while the webhook is down;
#      restarted processes are ready, their metrics start from zero, no listener is left over.
# Every phase is bounded; everything started is stopped by a trap. Results: stdout and
# $LHG_REL_OUT (default /tmp/lhg-reliability), summarised in RELIABILITY.md.
#
# `scripts/reliability.sh engine-faults` instead runs only the engine-fault soak: the agent's
# real pool against the fake engine over loopback gRPC, each fault (black-hole, reset, error)
# for LHG_REL_ENGINE_FAULT_SECS (default 60) then recovery, with fds, RSS, the lease book and
# breaker transitions sampled at each fault's start, middle and end (~3.3 min at 60 s).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
cd "${ROOT}"

if [[ ${1:-} == engine-faults ]]; then
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${ROOT}/target}"
  LHG_TEST_ENGINE_FAULT_SECS="${LHG_REL_ENGINE_FAULT_SECS:-60}" exec cargo nextest run --locked \
    -p longhorn-guard-agent -E 'binary(engine_faults)' --no-capture
fi

OUT="${LHG_REL_OUT:-/tmp/lhg-reliability}"
OUTAGE_SECONDS="${LHG_REL_OUTAGE_SECONDS:-20}"
rm -rf "${OUT}" && mkdir -p "${OUT}"
export LHG_RUN_ID="lhg-rel-$$-${RANDOM}"
STATE="$(mktemp -d "${TMPDIR:-/tmp}/lhg-rel.XXXXXX")"
CPDIR="${STATE}/cluster"
PIDS=()

cleanup() {
  local rc=$? left
  set +e
  touch "${STATE}/stop"
  for p in "${PIDS[@]}"; do kill "${p}" 2>/dev/null; done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -KILL "${p}" 2>/dev/null; done
  cp_down "${CPDIR}"
  sleep 0.5
  left="$(procs_of_run "${LHG_RUN_ID}")"
  if [[ -n ${left} ]]; then
    log "ERROR: processes started by this run are still alive: ${left}"
    # shellcheck disable=SC2086
    kill -KILL ${left} 2>/dev/null
    rc=1
  fi
  rm -rf "${STATE}"
  exit "${rc}"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ensure_packages python3 curl jq openssl etcd-client
bash "${CP}/build.sh" >/dev/null
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${ROOT}/target}"
log "building longhorn-guard (debug)"
cargo build --locked -p longhorn-guard >&2
BIN="${CARGO_TARGET_DIR}/debug/longhorn-guard"

# --- control plane on ports we keep across its restart ---------------------------------
API_PORT="$(free_port)"; ETCD_PORT="$(free_port)"; PEER_PORT="$(free_port)"
cp_start() {
  LHG_CP_API_PORT="${API_PORT}" LHG_CP_ETCD_PORT="${ETCD_PORT}" LHG_CP_ETCD_PEER_PORT="${PEER_PORT}" \
    bash "${CP}/up.sh" "${CPDIR}" >/dev/null
}
cp_start || die "control plane failed to start"
# shellcheck disable=SC1091
source "${CPDIR}/env"
KC="${CPDIR}/kubectl-config"; cp "${KUBECONFIG}" "${KC}"
k() { kubectl --kubeconfig "${KC}" "$@"; }
NS=lhg-rel
"${BIN}" crds | k apply -f - >/dev/null
k wait --for=condition=Established crd --all --timeout=30s >/dev/null
k create namespace "${NS}" >/dev/null
obj() { # kind name spec-json
  printf '{"apiVersion":"longhorn.io/v1beta2","kind":"%s","metadata":{"name":"%s","namespace":"%s"},"spec":%s}' "$1" "$2" "${NS}" "$3"
}
obj Volume vol-1 '{"size":"1073741824","numberOfReplicas":1}' | k create -f - >/dev/null
obj Snapshot snap-ok '{"volume":"vol-1","createSnapshot":true}' | k create -f - >/dev/null
obj BackupTarget default '{"backupTargetURL":"s3://b@r/"}' | k create -f - >/dev/null

# --- TLS, policy, the webhook and the agent ---------------------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=127.0.0.1 \
  -addext subjectAltName=IP:127.0.0.1,DNS:localhost -keyout "${STATE}/tls.key" -out "${STATE}/tls.crt" 2>/dev/null
# A 5 s staleness bound (default 30 s) so the 20 s outage shows readiness turning false.
printf 'throttle:\n  enabled: false\nindexStalenessMs: 5000\n' > "${STATE}/policy.yaml"
WH_PORT="$(free_port)"; WH_OPS="$(free_port)"; AG_PORT="$(free_port)"; AG_OPS="$(free_port)"
start_webhook() {
  KUBECONFIG="${KC}" RUST_LOG=info "${BIN}" --log-format text webhook --namespace "${NS}" \
    --listen "127.0.0.1:${WH_PORT}" --metrics-listen "127.0.0.1:${WH_OPS}" \
    --tls-cert "${STATE}/tls.crt" --tls-key "${STATE}/tls.key" --policy "${STATE}/policy.yaml" \
    >>"${OUT}/webhook.log" 2>&1 &
  WH_PID=$!; PIDS+=("${WH_PID}")
}
start_agent() {
  KUBECONFIG="${KC}" RUST_LOG=info "${BIN}" --log-format text agent --node node-1 --namespace "${NS}" \
    --listen "127.0.0.1:${AG_PORT}" --metrics-listen "127.0.0.1:${AG_OPS}" \
    --tls-cert "${STATE}/tls.crt" --tls-key "${STATE}/tls.key" >>"${OUT}/agent.log" 2>&1 &
  AG_PID=$!; PIDS+=("${AG_PID}")
}
code() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" || true; }
wait_code() { # url want seconds
  local i
  for ((i = 0; i < $3 * 10; i++)); do [[ $(code "$1") == "$2" ]] && return 0; sleep 0.1; done
  return 1
}
metric() { curl -s --max-time 2 "$1/metrics" | awk -v m="$2" 'index($0, m) == 1 { s += $NF } END { print s + 0 }'; }
WH="http://127.0.0.1:${WH_OPS}"; AG="http://127.0.0.1:${AG_OPS}"
start_webhook; start_agent
wait_code "${WH}/readyz" 200 30 || die "webhook not ready: $(tail -5 "${OUT}/webhook.log")"
wait_code "${AG}/readyz" 200 30 || die "agent not ready: $(tail -5 "${OUT}/agent.log")"
log "webhook (pid ${WH_PID}) and agent (pid ${AG_PID}) ready"

STREAM="${OUT}/stream.jsonl"; PHASES="${OUT}/phases.txt"
phase() { printf '%s %s\n' "$(date +%s.%N)" "$1" >>"${PHASES}"; log "phase: $1"; }
python3 "${ROOT}/scripts/reliability/stream.py" "https://127.0.0.1:${WH_PORT}/validate/backups" "${WH}" \
  "${NS}" "${STREAM}" "${STATE}/stop" 240 &
PIDS+=("$!")

# --- 1. API server faults ---------------------------------------------------------------
phase baseline; sleep 8
restarts0="$(metric "${WH}" longhorn_guard_webhook_watch_restarts_total)"
errors0="$(metric "${WH}" longhorn_guard_webhook_watch_errors_total)"
# Advance etcd's revision past the watches' resourceVersion, then compact: the watches' next
# resume from their old resourceVersion can only get 410 Gone (forced relist).
for i in $(seq 1 30); do k -n "${NS}" create configmap "churn-${i}" >/dev/null; done
REV="$(ETCDCTL_API=3 etcdctl --endpoints "${LHG_CP_ETCD_URL}" endpoint status -w json | jq '.[0].Status.header.revision')"
ETCDCTL_API=3 etcdctl --endpoints "${LHG_CP_ETCD_URL}" compact "${REV}" >"${OUT}/compact.txt" 2>&1 || true
phase "apiserver+etcd down (compacted at ${REV})"
LHG_CP_KEEP_STATE=1 bash "${CP}/down.sh" "${CPDIR}" >/dev/null 2>&1
sleep "${OUTAGE_SECONDS}"
errors_outage="$(metric "${WH}" longhorn_guard_webhook_watch_errors_total)"
phase "apiserver+etcd up"
cp_start || die "control plane failed to restart"
# A snapshot created right after the restart must be allowed (index or live GET).
obj Snapshot snap-new '{"volume":"vol-1","createSnapshot":true}' | k create -f - >/dev/null
sleep 15
phase "after resync"
sleep 5
restarts1="$(metric "${WH}" longhorn_guard_webhook_watch_restarts_total)"
errors1="$(metric "${WH}" longhorn_guard_webhook_watch_errors_total)"
new_verdict="$(python3 - "https://127.0.0.1:${WH_PORT}/validate/backups" "${NS}" <<'PY'
import json, ssl, sys, urllib.request
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
body = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "snap-new",
  "kind": {"group": "longhorn.io", "version": "v1beta2", "kind": "Backup"},
  "resource": {"group": "longhorn.io", "version": "v1beta2", "resource": "backups"}, "namespace": sys.argv[2],
  "operation": "CREATE", "userInfo": {"username": "reliability"}, "object": {"apiVersion": "longhorn.io/v1beta2",
  "kind": "Backup", "metadata": {"name": "b-new", "namespace": sys.argv[2]}, "spec": {"snapshotName": "snap-new"}}}}
r = urllib.request.urlopen(urllib.request.Request(sys.argv[1], data=json.dumps(body).encode(),
    headers={"content-type": "application/json"}), context=ctx, timeout=5)
print("allowed" if json.load(r)["response"]["allowed"] else "denied")
PY
)"

# --- 2. process faults ----------------------------------------------------------------
cacert="$(base64 -w0 "${STATE}/tls.crt")"
k apply -f - >/dev/null <<YAML
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {name: lhg-reliability}
webhooks:
- name: backups.longhorn-guard.io
  clientConfig: {url: "https://127.0.0.1:${WH_PORT}/validate/backups", caBundle: "${cacert}"}
  rules: [{apiGroups: [longhorn.io], apiVersions: [v1beta2], operations: [CREATE], resources: [backups], scope: Namespaced}]
  sideEffects: None
  admissionReviewVersions: [v1]
  failurePolicy: Ignore
  timeoutSeconds: 5
YAML
create_backup() { # name -> "created" or the denial
  obj Backup "$1" '{"snapshotName":"snap-missing"}' | k create -f - 2>&1 >/dev/null && echo created || true
}
registered=""
for _ in $(seq 1 50); do
  out="$(create_backup "probe-$RANDOM")"
  if [[ ${out} == *"denied the request"* ]]; then registered=yes; break; fi
  sleep 0.2
done
[[ -n ${registered} ]] || log "WARNING: the API server never called the webhook"
reviews_before="$(metric "${WH}" 'longhorn_guard_webhook_reviews_total{')"
phase "kill -9 webhook"
kill -KILL "${WH_PID}"; wait "${WH_PID}" 2>/dev/null || true
t_down="$(date +%s.%N)"
down_create="$(create_backup bk-while-down)"
t_admitted="$(date +%s.%N)"
listeners_after_kill="$(ss -Htln "sport = :${WH_PORT}" | wc -l)"
sleep 2
phase "webhook restarted"
start_webhook
wait_code "${WH}/readyz" 200 30 && wh_ready=yes || wh_ready=no
reviews_after="$(metric "${WH}" 'longhorn_guard_webhook_reviews_total{')"
listeners_after_restart="$(ss -Htlnp "sport = :${WH_PORT}" | grep -c "pid=${WH_PID}," || true)"
up_create=""
for _ in $(seq 1 25); do
  up_create="$(create_backup "bk-after-restart-$RANDOM")"
  [[ ${up_create} == *"denied the request"* ]] && break
  sleep 0.2
done
phase "kill -9 agent"
ag_leases_before="$(metric "${AG}" longhorn_guard_agent_pool_leases_acquired_total)"
kill -KILL "${AG_PID}"; wait "${AG_PID}" 2>/dev/null || true
ag_listeners_after_kill="$(ss -Htln "sport = :${AG_PORT}" | wc -l)"
start_agent
wait_code "${AG}/readyz" 200 30 && ag_ready=yes || ag_ready=no
ag_listeners_after_restart="$(ss -Htlnp "sport = :${AG_PORT}" | grep -c "pid=${AG_PID}," || true)"
ag_fds="$(ls "/proc/${AG_PID}/fd" | wc -l)"
sleep 3
phase end
touch "${STATE}/stop"; sleep 0.5

# --- report -----------------------------------------------------------------------------
python3 - "${STREAM}" "${PHASES}" <<'PY' | tee "${OUT}/summary.txt"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
phases = [(float(l.split(" ", 1)[0]), l.split(" ", 1)[1].strip()) for l in open(sys.argv[2])]
bounds = phases + [(float("inf"), "")]
for (t0, name), (t1, _) in zip(bounds, bounds[1:]):
    if not name:
        continue
    rs = [r for r in rows if t0 <= r["t"] < t1]
    if not rs:
        print(f"{name}: no rounds"); continue
    ready = {}
    for r in rs: ready[r["ready"]] = ready.get(r["ready"], 0) + 1
    def count(key):
        c = {}
        for r in rs: c[r[key].split(":")[0]] = c.get(r[key].split(":")[0], 0) + 1
        return c
    warn = sorted({w.split("[")[-1].rstrip("]") for r in rs for w in r["ok_warn"]})
    miss_warn = sorted({r["missing_msg"][:60] for r in rs if r["missing"] != "denied"})[:2]
    print(f"{name}: {len(rs)} rounds over {rs[-1]['t'] - rs[0]['t']:.1f} s; /readyz {ready}; "
          f"snap-ok {count('ok')} (warnings {warn}); snap-missing {count('missing')}")
# Readiness transitions relative to the phase marks.
down = next((t for t, n in phases if n.startswith("apiserver+etcd down")), None)
up = next((t for t, n in phases if n == "apiserver+etcd up"), None)
if down and up:
    first_503 = next((r["t"] for r in rows if r["t"] >= down and r["ready"] != 200), None)
    back = next((r["t"] for r in rows if r["t"] >= up and r["ready"] == 200), None)
    print("readiness: first non-200 " + (f"{first_503 - down:.1f} s after the outage began" if first_503 else "never")
          + "; 200 again " + (f"{back - up:.1f} s after the restart began" if back else "never"))
PY
cat <<EOF | tee -a "${OUT}/summary.txt"
watch_restarts_total: ${restarts0} before the outage, ${restarts1} after the restart
watch_errors_total: ${errors0} before, ${errors_outage} at the end of the outage, ${errors1} after
Backup of a snapshot created right after the restart (snap-new): ${new_verdict}
API server calls the webhook (failurePolicy Ignore): ${registered:-no}
webhook kill -9: Backup of a missing snapshot while down: ${down_create} ($(python3 -c "print(f'{${t_admitted}-${t_down}:.2f}')") s)
webhook kill -9: listeners left on :${WH_PORT} after the kill: ${listeners_after_kill}; restarted ready: ${wh_ready}; new pid listening: ${listeners_after_restart}
webhook reviews_total: ${reviews_before} before the kill, ${reviews_after} right after the restart (metrics reset)
webhook after restart, Backup of a missing snapshot: ${up_create:0:160}
agent kill -9: leases acquired before ${ag_leases_before}; listeners left after the kill: ${ag_listeners_after_kill}; restarted ready: ${ag_ready}; new pid listening: ${ag_listeners_after_restart}; fds ${ag_fds}
EOF
