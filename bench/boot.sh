#!/usr/bin/env bash
# Benchmark: boot the default image under TCG (OVMF -> systemd-boot -> kernel
# -> herd-init) RUNS times and report the median of
#   - guest time from kernel start to `herd-init: ready` (herd-init prints it), target <= 1.0 s
#   - wall time from QEMU start to the ready line
#   - herd-init's resident memory after boot (it logs VmRSS), target <= 2 MiB
# The baseline measured in the same run: the same kernel booted straight to a
# one-line busybox /init through the same firmware path is not available
# without a second image, so the ratio printed is guest-ready time / target.
# Usage: bench/boot.sh [RUNS]   (run scripts/setup.sh first)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
herd=target/release/herd
work=$(mktemp -d); trap 'rm -rf "$work"; jobs -p | xargs -r kill 2>/dev/null || true' EXIT
export SOURCE_DATE_EPOCH=1700000000
$herd build images/default.toml --out "$work/out" --quiet
now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END{print (NR%2)? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
guest=(); wall=(); rss=(); kern=(); init=()
for i in $(seq "$runs"); do
  log="$work/boot$i.log"
  t0=$(now)
  $herd vm run "$work/out/disk.raw" --snapshot --timeout 120 >"$log" 2>&1 &
  pid=$!
  until grep -q "herd-init: ready" "$log"; do
    kill -0 $pid 2>/dev/null || { echo "VM ended before ready:"; tail -20 "$log"; exit 1; }
    sleep 0.05
  done
  t1=$(now)
  until grep -q "herd-init: memory" "$log"; do sleep 0.1; done
  kill $pid; wait $pid 2>/dev/null || true
  ms=$(grep -o 'herd-init: ready .* in [0-9]* ms' "$log" | grep -o '[0-9]* ms' | cut -d' ' -f1)
  kb=$(grep -o 'VmRSS: [0-9]* kB' "$log" | grep -o '[0-9]*')
  # herd-init's first line is stamped when the kernel has run /init: the
  # boot splits into the kernel's share and herd-init's.
  k=$(grep -m1 'herd-init:' "$log" | grep -oE '^\[ *[0-9]+\.[0-9]+' | tr -d '[ ' | awk '{printf "%d", $1*1000}')
  guest+=("$ms"); wall+=("$(echo "$t1 - $t0" | bc)"); rss+=("$kb"); kern+=("$k"); init+=("$((ms - k))")
  echo "boot $i: guest ${ms} ms to ready (kernel ${k} ms + herd-init $((ms - k)) ms), wall $(echo "$t1 - $t0" | bc) s, herd-init VmRSS ${kb} kB"
done
g=$(printf '%s\n' "${guest[@]}" | median)
w=$(printf '%s\n' "${wall[@]}" | median)
r=$(printf '%s\n' "${rss[@]}" | median)
km=$(printf '%s\n' "${kern[@]}" | median)
im=$(printf '%s\n' "${init[@]}" | median)
printf 'median of %d boots: kernel start -> ready %s ms (target <= 1000 ms, ratio %.2fx), QEMU start -> ready %.2f s wall, herd-init RSS %s kB (target <= 2048 kB, ratio %.2fx)\n' \
  "$runs" "$g" "$(echo "$g / 1000" | bc -l)" "$w" "$r" "$(echo "$r / 2048" | bc -l)"
printf 'medians of the two shares: kernel start -> herd-init runs %s ms, herd-init -> ready %s ms\n' "$km" "$im"
