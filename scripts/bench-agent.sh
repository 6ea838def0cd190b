#!/usr/bin/env bash
# scripts/bench-agent.sh — the agent's benchmarks (BENCHMARKS.md, "Agent: ..."):
#   1. pool: pooled calls vs the v1.7.2 connect-per-call pattern and the raw-channel ceiling,
#      plaintext and TLS instance managers, then a soak with 30 % injected faults;
#   1b. the same through the link emulator at 0.1, 0.5 and 1 ms RTT (`--rtt-ms`), with the plot
#      docs/plots/agent-pool-rtt.svg, and the emulator's own overhead (link-emulator's bench);
#   2. agent_rss: RSS of the real `longhorn-guard-agent` (and `longhorn-guard agent`) process
#      against a local control plane it starts on free loopback ports and stops on exit.
# Environment: LHG_BENCH_SOAK (default 1000000), LHG_BENCH_AGENT_CALLS (default 100000).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
cd "${ROOT}"
ensure_packages python3 curl jq openssl
ensure_rust
bash "${CP}/build.sh" >/dev/null

cargo bench --locked -p longhorn-guard-agent --bench pool -- \
  --calls 50000 --connect-calls 5000 --soak "${LHG_BENCH_SOAK:-1000000}"
cargo bench --locked -p link-emulator --bench link_overhead
cargo bench --locked -p longhorn-guard-agent --bench pool -- --rtt-ms 0.1,0.5,1 \
  --rtt-calls 20000 --rtt-connect-calls 2000 --svg "${ROOT}/docs/plots/agent-pool-rtt.svg"

cargo build --release --locked -p longhorn-guard -p longhorn-guard-agent >&2
STATE="$(mktemp -d "${TMPDIR:-/tmp}/lhg-bench-agent.XXXXXX")"
trap 'cp_down "${STATE}/cluster"; rm -rf "${STATE}"' EXIT
LHG_TEST_KUBECONFIG="$(cp_up "${STATE}/cluster")"
export LHG_TEST_KUBECONFIG
cargo bench --locked -p longhorn-guard-agent --bench agent_rss -- --calls "${LHG_BENCH_AGENT_CALLS:-100000}"
