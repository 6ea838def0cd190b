#!/usr/bin/env bash
# scripts/fuzz.sh [SECONDS]            — run every cargo-fuzz target of fuzz/ for SECONDS each (default 60).
# scripts/fuzz.sh --runs [N] [TARGET…] — run each target (all, or those named) until N executions
#                                        (default 10000000), one at a time, then minimise its corpus.
# scripts/fuzz.sh --cmin [TARGET…]     — only minimise (see below).
#
# Needs the nightly toolchain (rustup) and cargo-fuzz (installed from crates.io if missing,
# ~3 min). Builds into fuzz/target (gitignored) with `-O -a -s none`: release, debug assertions
# (integer overflow panics), no sanitizer (the fuzzed crates are safe Rust; ASan would halve
# the rate and find nothing a panic does not). The lockfile fuzz/Cargo.lock is checked first
# (`--locked`).
#
# Corpus: fuzz/corpus/TARGET holds the committed inputs, `seed-*` (written by hand, and every
# input that ever crashed) and `min-*` (the minimised corpus of the last --runs run). A run
# writes what it finds to fuzz/corpus-run/TARGET (gitignored) and reads both folders.
#
# --runs mode, per target: `nice -n 10`, a single job, `-runs=N`; then minimise() (below: the
# `-merge=1` that `cargo fuzz cmin` runs, into the seeds). Prints per target: executions,
# exec/s, cov and ft (libFuzzer's final line), corpus files before and after minimisation, and
# the committed part (files, KiB, the cov/ft it alone reaches). LHG_FUZZ_MAX_SECS bounds each target's run (default
# none): a target stopped by it prints "stopped at the time bound" with the executions reached.
#
# Exits non-zero on any crash; the crashing input is in fuzz/artifacts/TARGET/. Not part of
# scripts/test.sh.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
cd "${ROOT}/fuzz"

ALL_TARGETS=(admission_review policy_yaml agent_requests list_decoder watch_events policy_reload
  engine_responses procfs node_verdict)
BUILD=(-O -a -s none)
LIBFUZZER=(-timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1)

MODE=seconds
SECS=60
RUNS=10000000
TARGETS=("${ALL_TARGETS[@]}")
if [[ ${1:-} == --runs || ${1:-} == --cmin ]]; then
  [[ $1 == --runs ]] && MODE=runs || MODE=cmin
  shift
  if [[ ${1:-} =~ ^[0-9]+$ ]]; then
    RUNS="$1"
    shift
  fi
  [[ ${RUNS} -gt 0 ]] || die "usage: scripts/fuzz.sh --runs [N>0] [TARGET…]"
  [[ $# -eq 0 ]] || TARGETS=("$@")
  for t in "${TARGETS[@]}"; do
    [[ " ${ALL_TARGETS[*]} " == *" ${t} "* ]] || die "no fuzz target ${t} (targets: ${ALL_TARGETS[*]})"
  done
else
  SECS="${1:-60}"
  [[ ${SECS} =~ ^[0-9]+$ && ${SECS} -gt 0 ]] || die "usage: scripts/fuzz.sh [SECONDS>0] | --runs [N] [TARGET…]"
fi
MAX_SECS="${LHG_FUZZ_MAX_SECS:-0}"
[[ ${MAX_SECS} =~ ^[0-9]+$ ]] || die "LHG_FUZZ_MAX_SECS must be a number of seconds"

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal >&2
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz from crates.io"
  cargo install --locked cargo-fuzz >&2 || die "cargo install cargo-fuzz failed"
fi

# cargo fuzz has no --locked: check the lockfile covers the manifest before building.
cargo +nightly metadata --locked --format-version 1 >/dev/null ||
  die "fuzz/Cargo.lock is out of date with fuzz/Cargo.toml"
log "building the fuzz targets (nightly, ${BUILD[*]})"
cargo +nightly fuzz build "${BUILD[@]}" >&2
BIN_DIR="target/$(rustc +nightly -vV | sed -n 's/^host: //p')/release"

# final_stat OUT KEY: a stat::KEY number from libFuzzer's -print_final_stats output.
final_stat() { grep -Eo "stat::$2: *[0-9]+" "$1" | grep -Eo '[0-9]+$' | tail -1 || echo 0; }
# done_field OUT FIELD: cov / ft from the last status line (`#N DONE cov: X ft: Y …`).
done_field() { grep -E '^#[0-9]+' "$1" | tail -1 | grep -Eo "$2: [0-9]+" | grep -Eo '[0-9]+$' || echo 0; }
files_in() { find "$@" -maxdepth 1 -type f 2>/dev/null | wc -l; }
kib_in() { find "$@" -maxdepth 1 -type f -printf '%s\n' 2>/dev/null | awk '{s += $1} END {print int((s + 1023) / 1024)}'; }

# minimise TARGET: merges everything the target has (corpus-run/TARGET, corpus/TARGET) into its
# seeds with -merge=1 (what `cargo fuzz cmin` runs: it keeps the seeds and adds only inputs that
# bring new features); the result replaces corpus-run/TARGET, so the next run starts from all
# of it. What is committed is smaller: a second merge with -use_counters=0 keeps one input per
# new coverage edge (not per new hit count), and of those the smallest, up to
# LHG_FUZZ_CORPUS_KIB (default 256) KiB, become corpus/TARGET/min-<sha1>. Sets MERGED_N (files
# of the whole minimised corpus) and KEPT_COV (cov/ft the committed folder alone reaches).
merge_into() { # merge_into OUT_DIR INPUT_DIR_OR_-FLAG… (for target ${t})
  local out="$1" log
  shift
  log="$(mktemp)"
  nice -n 10 "${BIN_DIR}/${t}" -merge=1 "${LIBFUZZER[@]}" "${out}" "$@" >"${log}" 2>&1 ||
    { tail -20 "${log}" >&2; die "merging the corpus of ${t} failed"; }
  rm -f "${log}"
}
minimise() {
  local t="$1" merged edges budget
  budget=$((${LHG_FUZZ_CORPUS_KIB:-256} * 1024))
  merged="$(mktemp -d)"
  edges="$(mktemp -d)"
  mkdir -p "corpus-run/${t}"
  cp "corpus/${t}"/seed-* "${merged}/"
  cp "corpus/${t}"/seed-* "${edges}/"
  merge_into "${merged}" "corpus-run/${t}" "corpus/${t}"
  MERGED_N="$(files_in "${merged}")"
  merge_into "${edges}" "${merged}" -use_counters=0
  rm -f "corpus/${t}"/min-*
  local used=0 size f sha
  while read -r size f; do
    [[ $((used + size)) -le ${budget} ]] || break
    used=$((used + size))
    sha="$(sha1sum "${f}" | cut -c1-40)"
    cp "${f}" "corpus/${t}/min-${sha}"
  done < <(find "${edges}" -maxdepth 1 -type f ! -name 'seed-*' -printf '%s %p\n' | sort -n)
  rm -rf "corpus-run/${t}" "${edges}"
  mv "${merged}" "corpus-run/${t}"
  local out
  out="$(mktemp)"
  "${BIN_DIR}/${t}" "${LIBFUZZER[@]}" -runs=0 "corpus/${t}" >"${out}" 2>&1 || true
  KEPT_COV="cov $(done_field "${out}" cov), ft $(done_field "${out}" ft)"
  rm -f "${out}"
}

if [[ ${MODE} == cmin ]]; then
  for t in "${TARGETS[@]}"; do
    minimise "${t}"
    log "${t}: ${MERGED_N} minimised; committed $(files_in "corpus/${t}") files, $(kib_in "corpus/${t}") KiB, ${KEPT_COV}"
  done
  exit 0
fi

status=0
summary=()
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/${t}" "corpus-run/${t}" "artifacts/${t}"
  out="$(mktemp)"
  rc=0
  if [[ ${MODE} == seconds ]]; then
    log "fuzzing ${t} for ${SECS} s"
    # -max_total_time bounds the run; timeout(1) is a backstop should libFuzzer hang.
    timeout --kill-after=30 "$((SECS + 120))" \
      "${BIN_DIR}/${t}" "corpus-run/${t}" "corpus/${t}" "${LIBFUZZER[@]}" \
      -max_total_time="${SECS}" -artifact_prefix="artifacts/${t}/" >"${out}" 2>&1 || rc=$?
  else
    bound=()
    [[ ${MAX_SECS} -gt 0 ]] && bound=(-max_total_time="${MAX_SECS}")
    log "fuzzing ${t} until ${RUNS} executions ${bound[*]}"
    before_n="$(files_in "corpus/${t}" "corpus-run/${t}")"
    nice -n 10 "${BIN_DIR}/${t}" "corpus-run/${t}" "corpus/${t}" "${LIBFUZZER[@]}" \
      -runs="${RUNS}" "${bound[@]}" -artifact_prefix="artifacts/${t}/" >"${out}" 2>&1 || rc=$?
  fi
  runs="$(final_stat "${out}" number_of_executed_units)"
  rate="$(final_stat "${out}" average_exec_per_sec)"
  if [[ ${rc} -ne 0 ]]; then
    status=1
    log "CRASH in ${t} (exit ${rc}); last lines:"
    tail -40 "${out}" >&2
    ls -l "artifacts/${t}" >&2 || true
    summary+=("${t}: CRASH (exit ${rc}), ${runs} runs, ${rate} exec/s")
  elif [[ ${MODE} == seconds ]]; then
    summary+=("${t}: ok, ${runs} runs in ${SECS} s, ${rate} exec/s, corpus $(files_in "corpus/${t}" "corpus-run/${t}") files")
  else
    cov="$(done_field "${out}" cov)"
    ft="$(done_field "${out}" ft)"
    found_n="$(files_in "corpus/${t}" "corpus-run/${t}")"
    minimise "${t}"
    reached=""
    [[ ${runs} -lt ${RUNS} ]] && reached=" (stopped at the time bound, ${RUNS} not reached)"
    summary+=("${t}: ok, ${runs} runs${reached}, ${rate} exec/s, cov ${cov}, ft ${ft}; corpus ${before_n} files before, ${found_n} after the run, ${MERGED_N} minimised; committed $(files_in "corpus/${t}") files, $(kib_in "corpus/${t}") KiB, ${KEPT_COV}")
  fi
  log "${summary[-1]}"
  rm -f "${out}"
done
printf '%s\n' "${summary[@]}"
exit "${status}"
