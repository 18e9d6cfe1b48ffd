#!/usr/bin/env bash
# Benchmark (issues 5 and 20): herd-agent's pod start latency from a cached,
# verified image against `crun run` of the same bundle in the same run
# (target <= 1.2x), and the node's overhead for running pods: PSS and RSS of
# the agent plus every non-container process it keeps, with 10 and 100 pods
# (targets <= 15 MiB PSS with 10, <= 100 KiB per extra pod). Needs root,
# crun, docker-registry and skopeo (scripts/setup.sh).
# Usage: bench/agent.sh [RUNS]   (default 15)
#        HERD_AGENT=/path/to/herd-agent bench/agent.sh [RUNS]
#          measures that agent binary instead (e.g. main's, for "before").
set -euo pipefail
cd "$(dirname "$0")/.."
RUSTFLAGS='-C target-feature=+crt-static' \
  cargo build --release -q --target x86_64-unknown-linux-gnu -p herd-agent
exec cargo bench -q -p herd-tests --bench agent -- "${1:-15}"
