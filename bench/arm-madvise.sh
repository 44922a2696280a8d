#!/usr/bin/env bash
# bench/arm-madvise.sh: arming time with MADV_SWAPSTUB (mm-patch-madvise)
# against the stock-kernel recipe, for 1 and 4 GiB regions, in the same VM
# (TCG, the kernel `make kernel` builds, nbd-pagesrv behind /dev/nbd0), same
# run. Prints a table; results are in docs/performance.md.
#
#   [BENCH_METHODS="madv_swapstub stock"] bench/arm-madvise.sh [SIZES_MIB...]
#   (default sizes: 1024 4096)
#
# For MADV_SWAPSTUB it also shows the kernel's part alone (bench/madv-time:
# the madvise call and one pagemap read of the region); the rest of
# libswapstub's arming time is its checks, pagemap reads and one control
# connection to nbd-pagesrv per run of consecutive slots ('map').
#
# Needs root (the VM's initramfs, the kernel build on first use: ~10 min).
# Touches nothing on the host but the caches under /var/cache/swapcopy.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/.." && pwd)
build=${SWAPCOPY_BUILD:-$src/build}
sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(1024 4096)

die() { echo "arm-madvise.sh: $*" >&2; exit 1; }
[ -x "$build/bench/arm-time" ] || die "$build/bench/arm-time missing: run make"
kernel=$("$src/mm-patch-madvise/build.sh" | tail -n 1) || die "mm-patch-madvise/build.sh failed"
# The largest region is resident once while the stock recipe writes markers.
max=0; for m in "${sizes[@]}"; do [ "$m" -gt "$max" ] && max=$m; done
mem=$(( max + 2048 ))M

echo "# arming: MADV_SWAPSTUB vs stock recipe ($(date -u '+%F %T') UTC)"
echo "# host: $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), git $(git -C "$src" rev-parse --short HEAD 2>/dev/null || echo '?'); VM: TCG, -m $mem, $(basename "$(dirname "$kernel")")"
log=$(mktemp /tmp/arm-madvise.XXXXXX)
trap 'rm -f "$log"' EXIT
SWAPCOPY_BUILD=$build "$src/tests/vm/run" --kernel "$kernel" --mem "$mem" --timeout 3000 \
    -- env ARM_BENCH_METHODS="${BENCH_METHODS:-madv_swapstub stock}" \
    tests/vm/guest/arm-bench.sh "${sizes[@]}" | tee "$log" >&2 ||
    die "the benchmark failed in the VM (output above)"
printf '\n%-8s %-14s %9s %10s %7s %9s\n' size_mib method arm_s GiB/s rounds map_runs
sed -n 's/^RESULT //p' "$log" | python3 -c '
import json, sys
for l in sys.stdin:
    d = json.loads(l)
    print("%-8d %-14s %9.3f %10.2f %7d %9d" % (d["mib"], d["method"], d["arm_s"], d["arm_gib_s"], d["rounds"], d["map_runs"]))'
echo
echo "# MADV_SWAPSTUB, the kernel's part alone (bench/madv-time)"
printf '%-8s %10s %10s %10s\n' size_mib madvise_s pagemap_s munmap_s
sed -n 's/^KERNEL //p' "$log" | python3 -c '
import json, sys
for l in sys.stdin:
    d = json.loads(l)
    print("%-8d %10.3f %10.3f %10.3f" % (d["mib"], d["madvise_s"], d["pagemap_s"], d["munmap_s"]))'
