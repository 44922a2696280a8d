#!/usr/bin/env bash
# Runs inside the test VM on the mm-patch-madvise kernel (bench/arm-madvise.sh
# boots it): arming time of regions of SIZES MiB, with MADV_SWAPSTUB on a
# stub-only device and with the stock-kernel recipe on an ordinary one, same
# VM, same run, alternating. One JSON line per measurement, tagged
# "RESULT "; after each MADV_SWAPSTUB arm, the kernel's part alone
# (bench/madv-time: the madvise call, a pagemap read), tagged "KERNEL ".
#
#   [ARM_BENCH_METHODS="madv_swapstub stock"] arm-bench.sh [SIZES_MIB...]
#   (default sizes: 1024 4096)
set -euo pipefail

B=${SWAPCOPY_BUILD:?} S=${SWAPCOPY_SRC:?}
sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(1024 4096)
work=/tmp/arm-bench state_root=/run/swapcopy name=bench port=4455
mkdir -p "$work"
. "$S/tests/vm/guest/lib.sh"

[ -e /sys/kernel/mm/swap/swapstub ] || fail "not a kernel with mm-patch-madvise"
echo "kernel $(uname -r), $(nproc) CPUs, $(awk '$1 == "MemTotal:" { print int($2 / 1024) }' /proc/meminfo) MiB"
for mib in "${sizes[@]}"; do
    # The source export: a sparse file (arming reads nothing from it).
    truncate -s "${mib}M" "$work/src.img"
    source_start "$work/src.img" "$port" "$work/src.ctl" "$work/source.log"
    for method in ${ARM_BENCH_METHODS:-madv_swapstub stock}; do
        if [ "$method" = stock ]; then stub=--no-stub; else stub=--stub; fi
        # Four times the region: the stock recipe must keep swap under half full.
        out=$("$S/scripts/setup-swap.sh" --src "127.0.0.1:$port" --name "$name" $stub \
              --size "$(( 4 * mib + 256 ))M" --state-dir "$state_root") || fail "setup-swap.sh $stub failed"
        device=$(sed -n 's/^DEVICE=//p' <<<"$out")
        control=$(sed -n 's/^CONTROL=//p' <<<"$out")
        sync; echo 3 >/proc/sys/vm/drop_caches
        res=$(SWAPSTUB_ARM_METHOD=$method "$B/bench/arm-time" --control "$control" \
              --device "$device" --export mem --mib "$mib") || fail "arm-time --mib $mib ($method) failed"
        echo "RESULT $res"
        if [ "$method" = madv_swapstub ]; then
            res=$("$B/bench/madv-time" --mib "$mib") || fail "madv-time --mib $mib failed"
            echo "KERNEL $res"
        fi
        "$S/scripts/teardown-swap.sh" --name "$name" --state-dir "$state_root" >/dev/null ||
            fail "teardown-swap.sh failed"
    done
    kill "$src_pid"; wait "$src_pid" || true; src_pid=""
    rm -f "$work/src.img" "$work/src.ctl"
done
echo "== done: arm-bench"
