#!/usr/bin/env bash
# Benchmark: boot the default image under TCG (OVMF -> systemd-boot -> kernel
# -> herd-init) and report medians of
#   - guest time from kernel start to `herd-init: ready` (herd-init prints it), target <= 1.0 s
#   - wall time from QEMU start to the ready line
#   - herd-init's resident memory after boot (it logs VmRSS), target <= 2 MiB
#   - the two shares of the guest time: kernel start -> herd-init runs, and
#     herd-init -> ready
# separately for first boots and later boots: each run copies the disk,
# boots it (first boot: provisioning, growing /var, ...), shuts it down
# cleanly through the power button (SIGTERM to `herd vm run`, which must
# exit 0), and boots the same disk again (later boot), shut down the same way.
# The baseline measured in the same run: the same kernel booted straight to a
# one-line busybox /init through the same firmware path is not available
# without a second image, so the ratio printed is guest-ready time / target.
# Usage: [KEEP=DIR] bench/boot.sh [RUNS]   (run scripts/setup.sh first)
# KEEP=DIR keeps every boot's console (first1.log, later1.log, ...) in DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
herd=target/release/herd
work=$(mktemp -d); trap 'rm -rf "$work"; jobs -p | xargs -r kill 2>/dev/null || true' EXIT
export SOURCE_DATE_EPOCH=1700000000
$herd build images/default.toml --out "$work/out" --quiet
now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END{print (NR%2)? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# boot KIND DISK LOG: one boot to ready, then a clean power-off; appends
# "guest wall rss kernel init" (ms, s, kB, ms, ms) to $work/KIND.
boot() {
  local kind=$1 disk=$2 log=$3 t0 t1 pid ms kb k w st
  : >"$log"
  t0=$(now)
  $herd vm run "$disk" --timeout 300 >"$log" 2>"$log.err" &
  pid=$!
  until grep -q "herd-init: ready" "$log"; do
    kill -0 $pid 2>/dev/null || { echo "VM ended before ready:"; tail -20 "$log" "$log.err"; exit 1; }
    sleep 0.05
  done
  t1=$(now)
  until grep -q "herd-init: memory" "$log"; do sleep 0.1; done
  # A press before herd-init watches the button is lost; herd vm run presses
  # again every 5 s, waiting on it is only quicker.
  until grep -q "herd-init: watching the power button" "$log"; do sleep 0.1; done
  kill -TERM $pid
  st=0; wait $pid || st=$?
  [ "$st" = 0 ] || { echo "$kind boot: no clean power-off (herd vm run exited $st):"; tail -20 "$log" "$log.err"; exit 1; }
  grep -q "herd-init: STATE unmounted" "$log" || { echo "$kind boot: STATE not unmounted:"; tail -20 "$log"; exit 1; }
  ms=$(grep -o 'herd-init: ready .* in [0-9]* ms' "$log" | grep -o '[0-9]* ms' | cut -d' ' -f1)
  kb=$(grep -o 'VmRSS: [0-9]* kB' "$log" | grep -o '[0-9]*')
  # herd-init's first line is stamped when the kernel has run /init: the
  # boot splits into the kernel's share and herd-init's.
  k=$(grep -m1 'herd-init:' "$log" | grep -oE '^\[ *[0-9]+\.[0-9]+' | tr -d '[ ' | awk '{printf "%d", $1*1000}')
  w=$(echo "$t1 - $t0" | bc)
  echo "$ms $w $kb $k $((ms - k))" >>"$work/$kind"
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$log" "$KEEP/"; fi
  echo "$kind boot $i: guest ${ms} ms to ready (kernel ${k} ms + herd-init $((ms - k)) ms), wall ${w} s, herd-init VmRSS ${kb} kB"
}

for i in $(seq "$runs"); do
  cp --sparse=always "$work/out/disk.raw" "$work/disk$i.raw"
  boot first "$work/disk$i.raw" "$work/first$i.log"
  boot later "$work/disk$i.raw" "$work/later$i.log"
  rm -f "$work/disk$i.raw"
done
col() { awk -v c="$2" '{print $c}' "$work/$1" | median; }
for kind in first later; do
  g=$(col $kind 1); w=$(col $kind 2); r=$(col $kind 3); km=$(col $kind 4); im=$(col $kind 5)
  printf '%s boots, median of %d: kernel start -> ready %s ms (target <= 1000 ms, ratio %.2fx), QEMU start -> ready %.2f s wall, herd-init RSS %s kB (target <= 2048 kB, ratio %.2fx)\n' \
    "$kind" "$runs" "$g" "$(echo "$g / 1000" | bc -l)" "$w" "$r" "$(echo "$r / 2048" | bc -l)"
  printf '%s boots, medians of the two shares: kernel start -> herd-init runs %s ms, herd-init -> ready %s ms\n' "$kind" "$km" "$im"
done
