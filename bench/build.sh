#!/usr/bin/env bash
# Benchmark: `herd build` of the default image (warm package cache) against a
# baseline on the same /usr tree, in the same run: `mksquashfs` (zstd, same
# level, default block size, all cores) followed by `veritysetup format`.
# Prints both medians and the ratio (target: herd <= 1.0x baseline), and the
# /usr payload size (target: <= 40 MiB). herd is timed three ways:
#  - a rebuild: nothing changed, its compressed-block cache warm;
#  - herd's own binaries changed (as after a code change: 8 bytes of every
#    128 KiB of herd-init, herd-agent and herd-provision differ each run, so
#    none of their blocks is in the cache), the packages' blocks cached;
#  - --recompress: every block compressed again, as on a first build.
# Usage: bench/build.sh [RUNS]   (run ./test or scripts/setup.sh first)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
herd=target/release/herd
[ -x "$herd" ] || { echo "build first: scripts/setup.sh" >&2; exit 1; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
export SOURCE_DATE_EPOCH=1700000000
cache=${HERD_CACHE:-.cache/debs}
level=$(awk -F= '/^compression_level/{gsub(/ /,"",$2); print $2}' images/default.toml)

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END{print (NR%2)? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# Warm the cache and get the /usr tree herd builds.
$herd build images/default.toml --out "$work/out" --cache "$cache" --quiet
unsquashfs -q -d "$work/usr" "$work/out/usr.img" >/dev/null

# A copy of herd's binaries with 8 random bytes in every 128 KiB block
# (past the ELF headers), so no run finds their blocks in the cache, not
# even from an earlier run of this script.
bins=$(grep -E '^binaries' images/default.toml | grep -oE '"[^"]+"' | tr -d '"')
bin_src=${HERD_BIN_DIR:-target/x86_64-unknown-linux-gnu/release}
changed_bins() {
  rm -rf "$work/bin"; mkdir -p "$work/bin"
  for b in $bins; do
    cp "$bin_src/$b" "$work/bin/$b"
    size=$(stat -c %s "$work/bin/$b")
    for ((off = 65536; off < size - 4096; off += 131072)); do
      head -c 8 /dev/urandom | dd of="$work/bin/$b" bs=1 seek="$off" conv=notrunc status=none
    done
  done
}

herd_t=(); cold_t=(); base_t=(); chg_t=()
for i in $(seq "$runs"); do
  t0=$(now); $herd build images/default.toml --out "$work/out" --cache "$cache" --offline --quiet; t1=$(now)
  herd_t+=("$(echo "$t1 - $t0" | bc)")
  changed_bins
  t0=$(now); $herd build images/default.toml --out "$work/out" --cache "$cache" --offline --quiet --bin-dir "$work/bin"; t1=$(now)
  chg_t+=("$(echo "$t1 - $t0" | bc)")
  t0=$(now); $herd build images/default.toml --out "$work/out" --cache "$cache" --offline --quiet --recompress; t1=$(now)
  cold_t+=("$(echo "$t1 - $t0" | bc)")
  rm -f "$work/b.sqfs" "$work/b.verity"
  t0=$(now)
  mksquashfs "$work/usr" "$work/b.sqfs" -comp zstd -Xcompression-level "$level" -noappend -quiet -no-progress >/dev/null
  veritysetup format "$work/b.sqfs" "$work/b.verity" >/dev/null
  t1=$(now)
  base_t+=("$(echo "$t1 - $t0" | bc)")
done
h=$(printf '%s\n' "${herd_t[@]}" | median)
c=$(printf '%s\n' "${cold_t[@]}" | median)
g=$(printf '%s\n' "${chg_t[@]}" | median)
b=$(printf '%s\n' "${base_t[@]}" | median)
sq=$(stat -c %s "$work/out/usr.img"); vy=$(stat -c %s "$work/out/usr.verity")
bsq=$(stat -c %s "$work/b.sqfs")
printf 'herd build (whole image, %d runs, median): %.3f s\n' "$runs" "$h"
printf 'herd build, its own binaries changed (packages'"'"' blocks cached, median): %.3f s\n' "$g"
printf 'herd build --recompress (no block reused, median): %.3f s\n' "$c"
printf 'baseline mksquashfs -comp zstd -Xcompression-level %s + veritysetup format (median): %.3f s\n' "$level" "$b"
printf 'ratio herd/baseline: %.2fx rebuild (target <= 1.00x); %.2fx with herd'"'"'s binaries changed; %.2fx with --recompress\n' \
  "$(echo "$h / $b" | bc -l)" "$(echo "$g / $b" | bc -l)" "$(echo "$c / $b" | bc -l)"
printf '/usr payload: squashfs %.1f MiB + verity %.2f MiB = %.1f MiB (target <= 40 MiB); mksquashfs gives %.1f MiB\n' \
  "$(echo "$sq/1048576" | bc -l)" "$(echo "$vy/1048576" | bc -l)" "$(echo "($sq+$vy)/1048576" | bc -l)" "$(echo "$bsq/1048576" | bc -l)"
# The same work as the baseline, inside herd's build: its squashfs and verity
# steps (from the progress output of one more build).
steps=$($herd build images/default.toml --out "$work/out" --cache "$cache" --offline --recompress 2>&1 |
  grep -A1 -E 'compressing /usr|hashing /usr' | grep -oE '\([0-9.]+ s\)' | tr -d '(s) ' | paste -sd+ | bc)
printf 'herd squashfs + verity steps alone (--recompress): %.3f s, ratio %.2fx against the same baseline\n' "$steps" "$(echo "$steps / $b" | bc -l)"
