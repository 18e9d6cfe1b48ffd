#!/usr/bin/env bash
# Benchmark (issue 17): bytes a delta update downloads, against the full
# payloads and against the physical floor, for two releases of the default
# image that differ by
#   (c) only the image version (0.1.0 -> 0.2.0), and
#   (a) the version and one rebuilt herd binary: /usr/bin/herd-agent is
#       replaced by another build of it (the dynamically linked one from
#       target/release: every byte differs, so its floor is its whole
#       compressed size).
#   (b) the version and one upgraded Debian library package: libzstd1
#       1.5.4+dfsg2-5 (the lock's) -> 1.5.4+dfsg2-5+deb12u1 (bookworm's
#       security update of 2026-11-27), through a copy of debian.lock with
#       that one entry changed; the build fetches the .deb with apt-get
#       into the package cache like any locked package (set-up, not timed).
# usr.img and usr.verity go through `herd-update write-slot --from-usr
# --from-verity` against `herd serve` on 127.0.0.1 (the node's code path;
# bytes from state.json), timed against the same write-slot without the old
# slot (full download); the UKI (a node assembles it from the running UKI on
# the ESP) is planned with the same chunking by examples/delta_plan.
# The floor: the changed files compressed as squashfs stores them (zstd -15
# in 128 KiB blocks); for (b) every file that differs between the two /usr
# trees (unsquashfs of both, compared file by file). Apply times: RUNS (default 5) runs of each, full and
# delta alternating, median. BASELINE_UPD=path/to/another/herd-update times
# that binary's delta in the same runs (an A/B). WORK=dir keeps the built
# releases there and reuses them on the next run.
# Usage: bench/delta.sh   (run scripts/setup.sh first)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p herd -p herd-update --bins --example delta_plan
herd=$PWD/target/release/herd
upd=$PWD/target/release/herd-update
plan=$PWD/target/release/examples/delta_plan
bins=$PWD/target/x86_64-unknown-linux-gnu/release
[ -x "$bins/herd-init" ] || { echo "run scripts/setup.sh first"; exit 1; }
if [ -n "${WORK:-}" ]; then
  work=$WORK; mkdir -p "$work"; trap 'jobs -p | xargs -r kill 2>/dev/null || true' EXIT
else
  work=$(mktemp -d -p "${TMPDIR:-/var/tmp}"); trap 'rm -rf "$work"; jobs -p | xargs -r kill 2>/dev/null || true' EXIT
fi
runs=${RUNS:-5}
export HERD_CACHE=${HERD_CACHE:-$PWD/.cache/debs} SOURCE_DATE_EPOCH=1700000000
lock=$PWD/buildroot/debian.lock

toml() { # VERSION OUT [LOCK]
  sed -e "s/^version = \"0.1.0\"/version = \"$1\"/" -e "s|^lock = .*|lock = \"${3:-$lock}\"|" images/default.toml >"$2"
}
lock_b() { # OUT: debian.lock with libzstd1 upgraded, pinned as the lock pins
  python3 - "$lock" "$1" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
old = re.search(r'\[\[package\]\]\nname = "libzstd1"\n(?:.+\n)+', text)
assert old, "no libzstd1 entry in " + sys.argv[1]
new = '''[[package]]
name = "libzstd1"
version = "1.5.4+dfsg2-5+deb12u1"
arch = "amd64"
sha256 = "67dc1ee693e5c22b1a2be2bb70d8244b040836ce3f5dd79e006f7806bc3d9f1c"
data_sha256 = "401973046a97fefa5342de00cf73cf262bacdeb5bc99f31d8fc42597d3940a16"
'''
open(sys.argv[2], "w").write(text[:old.start()] + new + text[old.end():])
PY
}
build() { # TOML OUT BINDIR
  "$herd" build "$1" --out "$2" --bin-dir "$3" --quiet
}
floor() { # FILE: bytes of FILE compressed in 128 KiB blocks at zstd -15
  local d; d=$(mktemp -d -p "$work"); split -b 131072 "$1" "$d/b"
  for b in "$d"/b*; do zstd -q -15 -c "$b" | wc -c; done | awk '{s+=$1} END{print s}'
  rm -rf "$d"
}
changed_floor() { # OLD-USR-IMG NEW-USR-IMG: the floor of the files that differ
  local d; d=$(mktemp -d -p "$work")
  unsquashfs -q -n -d "$d/old" "$1" >/dev/null; unsquashfs -q -n -d "$d/new" "$2" >/dev/null
  (cd "$d/new" && find . -type f -size +0) | while read -r f; do
    if ! cmp -s "$d/old/$f" "$d/new/$f"; then echo "  changed: ${f#./}" >&2; floor "$d/new/$f"; fi
  done | awk '{s+=$1} END{print s+0}'
  rm -rf "$d"
}

if [ -f "$work/a/build.json" ] && [ -f "$work/b/build.json" ] && [ -f "$work/c/build.json" ] && [ -f "$work/v1/build.json" ]; then
  echo "reusing the releases in $work" >&2
else
  echo "building the releases in $work" >&2
  toml 0.1.0 "$work/v1.toml"; toml 0.2.0 "$work/v2.toml"
  build "$work/v1.toml" "$work/v1" "$bins"
  build "$work/v2.toml" "$work/c" "$bins"
  mkdir -p "$work/bins-a"; cp -a "$bins"/herd-init "$bins"/herd-provision "$work/bins-a/"
  cp target/release/herd-agent "$work/bins-a/herd-agent"
  build "$work/v2.toml" "$work/a" "$work/bins-a"
  lock_b "$work/debian-b.lock"; toml 0.2.0 "$work/v2b.toml" "$work/debian-b.lock"
  build "$work/v2b.toml" "$work/b" "$bins"
fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
size() { stat -c %s "$1"; }
ms() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
timed() { # BINARY ARGS...: milliseconds of one write-slot into fresh files
  rm -rf "$work/t"; mkdir -p "$work/t"; sync
  local t0; t0=$(ms)
  "$@" --usr "$work/t/usr" --verity "$work/t/verity" --state-dir "$work/t/s" >/dev/null
  echo $(( ($(ms) - t0) / 1000000 ))
}
case_run() { # NAME OUT FLOOR (a file to compress, or a number of bytes)
  local name=$1 out=$2 repo=$work/repo-$1 key=$work/key-$1.json
  rm -rf "$repo" "$key"
  "$herd" key generate --out "$key" >/dev/null
  "$herd" release init --repo "$repo" --key "$key" >/dev/null
  "$herd" release publish --repo "$repo" --key "$key" --image-out "$work/v1" >/dev/null
  "$herd" release publish --repo "$repo" --key "$key" --image-out "$out" >/dev/null
  "$herd" serve "$repo" --listen "127.0.0.1:$port" 2>/dev/null & local srv=$!
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/root/1.json" >/dev/null && break; sleep 0.1; done
  local args=(write-slot --repository "http://127.0.0.1:$port" --root "$repo/root/1.json")
  local from=(--from-usr "$work/v1/usr.img" --from-verity "$work/v1/usr.verity")
  local fulls=() deltas=() bases=()
  for _ in $(seq "$runs"); do
    fulls+=("$(timed "$upd" "${args[@]}")")
    [ -n "${BASELINE_UPD:-}" ] && bases+=("$(timed "$BASELINE_UPD" "${args[@]}" "${from[@]}")")
    deltas+=("$(timed "$upd" "${args[@]}" "${from[@]}")")
  done
  local full_ms delta_ms
  full_ms=$(printf '%s\n' "${fulls[@]}" | median); delta_ms=$(printf '%s\n' "${deltas[@]}" | median)
  kill "$srv"; wait "$srv" 2>/dev/null || true
  cmp -s "$work/t/usr" "$out/usr.img" || { echo "$name: the delta result differs from usr.img"; exit 1; }
  local net # usr.img and usr.verity, delta or full, with their indexes
  net=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['delta']['network'])" "$work/t/s/state.json")
  read -r uki_fetch uki_index uki_size <<<"$("$plan" "$work/v1/boot/uki-a.efi" "$out/boot/uki-b.efi")"
  local full=$(( $(size "$out/usr.img") + $(size "$out/usr.verity") + uki_size ))
  local delta=$(( net + uki_fetch + uki_index ))
  local fl="-"
  if [[ "$3" =~ ^[0-9]+$ ]]; then fl=$3; elif [ -n "$3" ]; then fl=$(floor "$3"); fi
  echo "($name) full payloads (usr.img + usr.verity + one UKI): $full bytes"
  echo "($name) delta download: $delta bytes = $(awk -v d="$delta" -v f="$full" 'BEGIN{printf "%.2f", d*100/f}') % of full (usr.img + usr.verity + indexes $net, UKI $uki_fetch + index $uki_index)"
  [ "$fl" != "-" ] && echo "($name) floor (changed file, compressed): $fl bytes; delta / floor = $(awk -v d="$delta" -v f="$fl" 'BEGIN{printf "%.2f", d/f}')x"
  echo "($name) write-slot on loopback, median of $runs: delta $delta_ms ms, full $full_ms ms (delta / full $(awk -v d="$delta_ms" -v f="$full_ms" 'BEGIN{printf "%.2f", d/f}')x; runs: delta ${deltas[*]}, full ${fulls[*]})"
  if [ -n "${BASELINE_UPD:-}" ]; then
    echo "($name) baseline $BASELINE_UPD delta: median $(printf '%s\n' "${bases[@]}" | median) ms (runs: ${bases[*]})"
  fi
}
case_run c "$work/c" ""
case_run a "$work/a" target/release/herd-agent
echo "(b) files that differ from 0.1.0:" >&2
case_run b "$work/b" "$(changed_floor "$work/v1/usr.img" "$work/b/usr.img")"
idx=$(python3 - "$work/repo-c" <<'EOF'
import json, sys, os
d = sys.argv[1]
env = json.load(open(os.path.join(d, "channels/stable.json")))
rel = json.loads(env["signed"])["release"]
for role in ("usr.img", "usr.verity", "uki-a"):
    p = rel["payloads"][role]
    print(f"index of {role}: {p['chunks']['size']} bytes = {p['chunks']['size']*100/p['size']:.3f} % of {p['size']}")
EOF
)
echo "$idx"
echo "load average (1, 5, 15 min) at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
