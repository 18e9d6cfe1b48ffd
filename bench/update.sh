#!/usr/bin/env bash
# Benchmark (issue 4): apply a SIZE MiB /usr payload (default 256) from a
# loopback HTTP server (`herd serve`) into a slot — plain files here — with
# every check on: the release metadata's signatures, the payload's sha256
# and size, and the dm-verity tree against the signed root hash.
# Baseline in the same run, same server, same target directory:
#   curl URL | dd of=TARGET bs=1M conv=fsync
# Prints the median of RUNS alternating runs of each, the ratio (target
# <= 1.10x) and herd-update's peak resident memory (target <= 20 MiB).
# Usage: bench/update.sh [RUNS] [SIZE_MIB]   (run scripts/setup.sh first)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-7}
mib=${2:-256}
command -v curl >/dev/null || { echo "bench/update.sh needs curl (apt-get install curl)"; exit 1; }
[ -x /usr/bin/time ] || { echo "bench/update.sh needs GNU time (apt-get install time)"; exit 1; }
cargo build --release -q -p herd -p herd-update --bins --example bench_repo
herd=target/release/herd
upd=$PWD/target/release/herd-update
work=$(mktemp -d -p "${TMPDIR:-/var/tmp}"); trap 'rm -rf "$work"; jobs -p | xargs -r kill 2>/dev/null || true' EXIT
echo "making a ${mib} MiB release with its verity tree in $work" >&2
sha=$(target/release/examples/bench_repo "$work" "$mib")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
$herd serve "$work/repo" --listen "127.0.0.1:$port" 2>/dev/null &
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/root/1.json" >/dev/null && break; sleep 0.1; done
median() { sort -n | awk '{a[NR]=$1} END{print (NR%2)? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
base=(); mine=(); rss=()
for i in $(seq "$runs"); do
  rm -f "$work/t.usr" "$work/t.verity"; rm -rf "$work/state"; sync
  t=$( { /usr/bin/time -f "%e" bash -c "curl -sf http://127.0.0.1:$port/payloads/$sha | dd of='$work/t.usr' bs=1M conv=fsync status=none"; } 2>&1 )
  base+=("$t")
  rm -f "$work/t.usr"; sync
  out=$( { /usr/bin/time -f "TIME %e %M" "$upd" write-slot --repository "http://127.0.0.1:$port" \
      --root "$work/repo/root/1.json" --usr "$work/t.usr" --verity "$work/t.verity" \
      --state-dir "$work/state" >/dev/null; } 2>&1 )
  read -r _ t m <<<"$(grep '^TIME' <<<"$out")"
  mine+=("$t"); rss+=("$m")
  echo "run $i: curl|dd ${base[-1]} s, herd-update $t s (peak RSS $m kB)" >&2
done
b=$(printf '%s\n' "${base[@]}" | median)
h=$(printf '%s\n' "${mine[@]}" | median)
r=$(printf '%s\n' "${rss[@]}" | sort -n | tail -1)
echo "payload:           ${mib} MiB over HTTP on 127.0.0.1 into a file"
echo "curl | dd (fsync): ${b} s (median of $runs)"
echo "herd-update:       ${h} s (median of $runs, sha256 + verity + signatures on)"
echo "ratio:             $(awk -v h="$h" -v b="$b" 'BEGIN{printf "%.2fx", h/b}') (target <= 1.10x)"
echo "peak RSS:          ${r} kB (target <= 20480 kB)"
