#!/usr/bin/env bash
# Benchmark (issue 5): herd-agent's pod start latency from a cached,
# verified image against `crun run` of the same bundle in the same run
# (target <= 1.2x), and its resident memory with 10 pods running (target
# <= 25 MiB). Needs root, crun, docker-registry and skopeo (scripts/setup.sh).
# Usage: bench/agent.sh [RUNS]   (default 15)
set -euo pipefail
cd "$(dirname "$0")/.."
RUSTFLAGS='-C target-feature=+crt-static' \
  cargo build --release -q --target x86_64-unknown-linux-gnu -p herd-agent
exec cargo bench -q -p herd-tests --bench agent -- "${1:-15}"
