#!/usr/bin/env bash
# Benchmark (issue 18): a fleet of simulated nodes (default 10,000) updating
# through one real etcd on 127.0.0.1 (Debian's etcd-server, scripts/setup.sh
# installs it), with the real release repository, wave decision
# (verify_channel), reboot lock (max_concurrent 50), status records and halt.
# Simulated time runs SCALE (default 50) times faster than real time, so
# etcd sees SCALE times the request rate of a real fleet of that size.
# Prints, for a good release: the share of nodes per wave against the
# configured waves (±1 point), the peak of concurrent reboots from etcd's own
# history, etcd's request rate and latency at the peak second (against an
# idle etcd measured first), and the time to update the fleet (against the
# slot-limited lower bound of the same waves). Then a bad release (2 % of the
# first wave fail to boot it): when the controller's halt came and how many
# nodes took the release. Exits 1 when a check fails. About 6-12 minutes (each run stops after 8 min real).
# Usage: bench/fleet.sh [NODES] [SCALE]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x /usr/bin/etcd ] || { echo "/usr/bin/etcd is missing: run scripts/setup.sh" >&2; exit 1; }
# etcd (and the repository) on tmpfs: the shared disk's fsync is not what is measured.
export TMPDIR=/dev/shm
exec nice -n 10 cargo bench -q -p herd-tests --bench fleet -- "${1:-10000}" "${2:-50}"
