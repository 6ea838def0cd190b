#!/usr/bin/env bash
# scripts/fuzz.sh [SECONDS] — run every cargo-fuzz target of fuzz/ for SECONDS each (default 60).
#
# Needs the nightly toolchain (rustup) and cargo-fuzz (installed from crates.io if missing,
# ~3 min). Builds into fuzz/target (gitignored). Each target starts from its committed seeds in
# fuzz/corpus/TARGET/seed-* and keeps what it finds in the same folder (only seed-* files are
# tracked by git). Prints executions/s per target and exits non-zero on any crash; the crashing
# input is in fuzz/artifacts/TARGET/. Not part of scripts/test.sh.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
cd "${ROOT}/fuzz"

SECS="${1:-60}"
[[ ${SECS} =~ ^[0-9]+$ && ${SECS} -gt 0 ]] || die "usage: scripts/fuzz.sh [SECONDS>0]"
TARGETS=(admission_review policy_yaml agent_requests)

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal >&2
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz from crates.io"
  cargo install --locked cargo-fuzz >&2 || die "cargo install cargo-fuzz failed"
fi

log "building the fuzz targets (nightly, ASan)"
cargo +nightly fuzz build -O >&2

status=0
summary=()
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/${t}" "artifacts/${t}"
  out="$(mktemp)"
  log "fuzzing ${t} for ${SECS} s"
  rc=0
  # -max_total_time bounds the run; timeout(1) is a backstop should libFuzzer hang.
  timeout --kill-after=30 "$((SECS + 120))" \
    cargo +nightly fuzz run -O "${t}" "corpus/${t}" -- \
      -max_total_time="${SECS}" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
      -artifact_prefix="artifacts/${t}/" -print_final_stats=1 >"${out}" 2>&1 || rc=$?
  runs="$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "${out}" | grep -Eo '[0-9]+$' || echo 0)"
  corpus_n="$(find "corpus/${t}" -type f | wc -l)"
  secs="$(grep -Eo 'stat::average_exec_per_sec: *[0-9]+' "${out}" | grep -Eo '[0-9]+$' || echo 0)"
  if [[ ${rc} -ne 0 ]]; then
    status=1
    log "CRASH in ${t} (exit ${rc}); last lines:"
    tail -40 "${out}" >&2
    ls -l "artifacts/${t}" >&2 || true
    summary+=("${t}: CRASH (exit ${rc}), ${runs} runs, ${secs} exec/s")
  else
    summary+=("${t}: ok, ${runs} runs in ${SECS} s, ${secs} exec/s, corpus ${corpus_n} files")
  fi
  rm -f "${out}"
done
printf '%s\n' "${summary[@]}"
exit "${status}"
