#!/usr/bin/env bash
# Soak (issue 14): power cuts while a node takes an update. A node boots the
# probe image 0.1.0 (plus herd-update) from slot A in QEMU (TCG, OVMF,
# systemd-boot) and updates to 0.2.0 from `herd serve` on 127.0.0.1 (through a
# guestfwd). The script kills QEMU (`kill -9`, a power cut: what the guest had
# not flushed is lost) at N moments. Each round starts from a fresh 0.1.0 disk
# and cuts once in each phase, in order, at a random moment after the line
# that starts it:
#   download   after "installing herd 0.2.0 into slot b"
#   switch     after "slot b verified against usrhash" (UKI fetch, GPT
#              rewrite with slot B's new PARTUUIDs, ESP write)
#   first-boot after "0.2.0 is ready in slot b" (reboot, firmware, slot B)
#   blessing   after "ready slot=b version=0.2.0"
# (A cut that lands past its phase counts where it fell; when the node has
# finished the update before the next planned phase, the round ends there.)
# After every cut the same disk boots again and must reach `herd-init: ready`
# (either slot) within READY_SECS, else it is a brick. A round ends when the
# node runs 0.2.0 from slot B, blessed. Where a cut fell is read from the
# console at the moment of the kill (the last phase line seen).
# Usage: bench/powercut.sh N   (run scripts/setup.sh first; one VM at a time)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:?usage: bench/powercut.sh N (number of power cuts)}
ready_secs=${READY_SECS:-240}
ws=$PWD
herd=$ws/target/release/herd
bins=$ws/target/x86_64-unknown-linux-gnu/release
[ -x "$herd" ] && [ -x "$bins/herd-init" ] || { echo "build first: scripts/setup.sh" >&2; exit 1; }
work=$(mktemp -d -p "${TMPDIR:-/var/tmp}" herd-powercut.XXXXXX)
qpid=
cleanup() {
  [ -n "$qpid" ] && kill -9 "$qpid" 2>/dev/null || true
  jobs -p | xargs -r kill 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

# Two releases of the probe image with the updater, in a signed repository.
$herd key generate --out "$work/key" >/dev/null
$herd release init --repo "$work/repo" --key "$work/key" >/dev/null
for v in 0.1.0 0.2.0; do
  sed -e "s|^version = \"0.1.0\"|version = \"$v\"|" \
      -e "s|^lock = .*|lock = \"$ws/buildroot/debian.lock\"|" \
      -e 's|^binaries = \["herd-init"\]|binaries = ["herd-init", "herd-update"]|' \
      tests/images/probe.toml > "$work/image-$v.toml"
  cat >> "$work/image-$v.toml" <<EOF

[[init.service]]
name = "updater"
exec = ["/usr/bin/herd-update", "run"]

[update]
repository = "http://10.0.2.100:8080"
channel = "stable"
interval_secs = 2
root = "$work/repo/root/1.json"
EOF
  log "building $v"
  HERD_CACHE=${HERD_CACHE:-$ws/.cache/debs} SOURCE_DATE_EPOCH=1700000000 \
    $herd build "$work/image-$v.toml" --out "$work/out-$v" --bin-dir "$bins" --quiet
  $herd release publish --image-out "$work/out-$v" --repo "$work/repo" --key "$work/key" >/dev/null
done
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
$herd serve "$work/repo" --listen "127.0.0.1:$port" 2>/dev/null &

phases=(download switch first-boot blessing)
declare -A start=(
  [download]="updater: installing herd 0.2.0 into slot b"
  [switch]="updater: slot b verified against usrhash"
  [first-boot]="updater: herd 0.2.0 is ready in slot b"
  [blessing]="ready slot=b version=0.2.0"
)
# The longest a cut waits after the phase's first line (seconds, random in
# [0, this)); a cut that waits past the phase's end lands in the next one
# and is counted there.
declare -A spread=([download]=1.5 [switch]=1.5 [first-boot]=6 [blessing]=3)
done_line="blessed boot entry herd-b"

# The phase the console shows last: the one whose start line came last.
where() {
  local best="boot" at=0 p l
  for p in "${phases[@]}"; do
    l=$(grep -an -- "${start[$p]}" "$1" | tail -1 | cut -d: -f1 || true)
    if [ -n "$l" ] && [ "$l" -gt "$at" ]; then best=$p; at=$l; fi
  done
  l=$(grep -an -- "$done_line" "$1" | tail -1 | cut -d: -f1 || true)
  if [ -n "$l" ] && [ "$l" -gt "$at" ]; then best="after-blessing"; fi
  echo "$best"
}

boot() { # disk vars log
  qemu-system-x86_64 -machine q35 -accel tcg -m 512 -smp 1 -nodefaults -display none \
    -serial "file:$3" \
    -drive "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd" \
    -drive "if=pflash,format=raw,unit=1,file=$2" \
    -drive "if=virtio,format=raw,file=$1" \
    -netdev "user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:8080-cmd:busybox nc 127.0.0.1 $port" \
    -device virtio-net-pci,netdev=n0 >/dev/null 2>&1 &
  qpid=$!
}

# Waits until the log has one of the lines; prints the first found. 1 on timeout.
wait_any() { # log timeout line...
  local f=$1 t=$2; shift 2
  local end=$((SECONDS + t)) s
  while [ $SECONDS -lt $end ]; do
    for s in "$@"; do
      if grep -aq -- "$s" "$f" 2>/dev/null; then echo "$s"; return 0; fi
    done
    if ! kill -0 "$qpid" 2>/dev/null; then return 1; fi
    sleep 0.05
  done
  return 1
}

poweroff() { kill -9 "$qpid" 2>/dev/null || true; wait "$qpid" 2>/dev/null || true; qpid=; }

# The round's last boot: it must end on 0.2.0 in slot B, blessed.
end_round() {
  # No cut left for this round: it must end on 0.2.0 in slot B, blessed.
  # (After a cut before the install finished, slot A boots and the updater
  # carries on, in this same boot.)
  local fail="release 0.2.0 failed to boot from slot b"
  r=$(wait_any "$clog" 600 "ready slot=b version=0.2.0" "$fail" || echo timeout)
  [ "$r" = "$fail" ] || wait_any "$clog" 20 "$done_line" >/dev/null || true
  sleep 2
  poweroff
  entries=$(mdir -b -i "$disk@@1M" ::/EFI/Linux 2>/dev/null | tr '\n' ' ')
  if [ "$r" != "$fail" ] && [[ "$entries" == *"/herd-b.efi"* ]]; then
    new_version=$((new_version + 1))
    log "round $rounds: runs 0.2.0 from slot b, blessed"
  else
    fell_back=$((fell_back + 1))
    for ((k = round_first_run; k <= runs; k++)); do
      cp "$work/console-$k.log" "$ws/target/powercut-round-$rounds-boot-$((k - round_first_run + 1)).log" 2>/dev/null || true
    done
    log "round $rounds: did not end on 0.2.0 blessed ($r; ESP: $entries); its consoles are kept as target/powercut-round-$rounds-boot-*.log"
  fi
}

cuts=0 bricks=0 rounds=0 new_version=0 fell_back=0
declare -A fell=()
t0=$SECONDS
runs=0
while [ "$cuts" -lt "$n" ]; do
  rounds=$((rounds + 1))
  disk=$work/disk.raw vars=$work/vars.fd
  cp --sparse=always "$work/out-0.1.0/disk.raw" "$disk"
  cp /usr/share/OVMF/OVMF_VARS_4M.fd "$vars"
  plan=("${phases[@]}")
  first=1
  round_first_run=$((runs + 1))
  while :; do
    runs=$((runs + 1))
    clog=$work/console-$runs.log
    : > "$clog"
    boot "$disk" "$vars" "$clog"
    if [ "$first" = 0 ] && ! wait_any "$clog" "$ready_secs" "herd-init: ready" >/dev/null; then
      bricks=$((bricks + 1))
      cp "$clog" "$ws/target/powercut-brick-$bricks.log" 2>/dev/null || true
      log "BRICK: no 'herd-init: ready' within ${ready_secs} s after the cut (console kept as target/powercut-brick-$bricks.log)"
      poweroff
      break
    fi
    first=0
    if [ "${#plan[@]}" -eq 0 ] || [ "$cuts" -ge "$n" ]; then
      end_round
      break
    fi
    p=${plan[0]}
    plan=("${plan[@]:1}")
    if ! r=$(wait_any "$clog" 600 "${start[$p]}" "$done_line"); then
      log "round $rounds: neither the start of $p nor blessing within 600 s"
      fell_back=$((fell_back + 1)); poweroff; break
    fi
    if [ "$r" = "$done_line" ]; then
      # An earlier cut fell past this phase; the node finished the update.
      end_round
      break
    fi
    delay=$(awk -v r="$RANDOM" -v s="${spread[$p]}" 'BEGIN{printf "%.2f", r / 32768 * s}')
    sleep "$delay"
    at=$(where "$clog")
    poweroff
    cuts=$((cuts + 1))
    fell[$at]=$(( ${fell[$at]:-0} + 1 ))
    log "cut $cuts/$n: aimed at $p (+${delay} s), fell in $at; ESP: $(mdir -b -i "$disk@@1M" ::/EFI/Linux 2>/dev/null | sed 's|.*/||' | tr '\n' ' ')"
  done
done
wall=$((SECONDS - t0))
echo "power cuts:      $cuts"
echo "bricks:          $bricks (a boot after a cut that did not reach herd-init: ready within ${ready_secs} s)"
echo "rounds:          $rounds ($new_version ended running 0.2.0 blessed in slot b, $fell_back did not)"
for p in boot "${phases[@]}" after-blessing; do
  echo "  cuts in $p: ${fell[$p]:-0}"
done
echo "wall time:       ${wall} s ($(awk -v w="$wall" -v c="$cuts" 'BEGIN{printf "%.1f", c ? w / c : 0}') s per cut, builds excluded)"
