#!/usr/bin/env bash
# Runs inside the test VM booted from the kernel of mm-patch-madvise
# (tests/vm/run --kernel ... --file .../swapstub-selftest -- THIS): the
# series' selftest, then swapcopy's end-to-end process migration with the
# device stub-only and swapstub arming with MADV_SWAPSTUB, in-process
# (e2e-workload) and for another process (swapstub arm --pid, as
# swapcopy-migrate arms a QEMU). Prints what it checks; exits non-zero at
# the first failure.
#
#   kernel-patch.sh selftest       the selftest only
#   kernel-patch.sh e2e [MIB]      the migrations (regions of MIB, default 64)
set -euo pipefail

mode=${1:?give selftest or e2e} mib=${2:-64}
case "$mode" in selftest|e2e) ;; *) echo "FAIL: unknown mode '$mode' (selftest, e2e)"; exit 2 ;; esac
B=${SWAPCOPY_BUILD:?} S=${SWAPCOPY_SRC:?}
selftest=$S/extra/swapstub-selftest
work=/tmp/kernel-patch state_root=/run/swapcopy name=kp port=4444
mkdir -p "$work"

. "$S/tests/vm/guest/lib.sh"

echo "kernel: $(uname -r) $(uname -v)"
[ -e /sys/kernel/mm/swap/swapstub ] ||
    fail "/sys/kernel/mm/swap/swapstub is missing: this is not a kernel with mm-patch-madvise"
echo "MADV_SWAPSTUB is advice $(cat /sys/kernel/mm/swap/swapstub)"
[ -d /sys/module/nbd ] || fail "no nbd driver in this kernel"

if [ "$mode" = selftest ]; then
    step "selftest: $selftest"
    [ -x "$selftest" ] || fail "$selftest is missing (tests/vm/run --file .../swapstub-selftest)"
    rc=0
    "$selftest" || rc=$?
    [ "$rc" = 0 ] || fail "the selftest failed (exit $rc)"
    step "done: selftest"
    exit 0
fi

step "source: mkimage $mib MiB, nbd-pagesrv --export mem=IMG --listen 127.0.0.1:$port"
"$B/tests/mkimage" "$work/src.img" "$mib" "$work/src.crc" >/dev/null
source_start "$work/src.img" "$port" "$work/src.ctl" "$work/source.log"

setup() {
    local out
    out=$("$S/scripts/setup-swap.sh" --src "127.0.0.1:$port" --name "$name" \
          --size 512M --state-dir "$state_root") || fail "setup-swap.sh failed (its errors are above)"
    echo "$out"
    device=$(sed -n 's/^DEVICE=//p' <<<"$out")
    control=$(sed -n 's/^CONTROL=//p' <<<"$out")
    state=$(sed -n 's/^STATE=//p' <<<"$out")
    # Without --stub/--no-stub, setup-swap.sh makes the device stub-only
    # because this kernel offers it.
    grep -qx 'STUB=yes' <<<"$out" || fail "setup-swap.sh did not make $device stub-only on this kernel"
    [[ "$device" =~ ^/dev/nbd[0-9]+$ ]] || fail "setup-swap.sh attached $device, not a /dev/nbdN"
}

teardown() {
    "$S/scripts/teardown-swap.sh" --name "$name" --state-dir "$state_root" || fail "teardown-swap.sh failed"
    [ "$(awk 'NR > 1' /proc/swaps)" = "" ] || fail "swap still active after teardown: $(cat /proc/swaps)"
    [ ! -e "$state" ] || fail "teardown left $state behind"
}

step "destination: setup-swap.sh (stub-only device)"
setup
swaptotal=$(awk '$1 == "SwapTotal:" { print $2 }' /proc/meminfo)
echo "SwapTotal with only the stub device: $swaptotal kB"
[ "$swaptotal" = 0 ] || fail "SwapTotal is $swaptotal kB: the stub-only device should not count"

step "in-process: e2e-workload --mib $mib, SWAPSTUB_ARM_METHOD=madv_swapstub"
# Forced: if MADV_SWAPSTUB could not be used, arming fails instead of
# quietly taking the stock path.
SWAPSTUB_ARM_METHOD=madv_swapstub "$B/tests/e2e-workload" --control "$control" --device "$device" \
    --export mem --mib "$mib" --sums "$work/src.crc" 2>&1 | tee "$work/workload.log"
[ "${PIPESTATUS[0]}" = 0 ] || fail "e2e-workload failed"
grep -q 'method=madv_swapstub' "$work/workload.log" || fail "e2e-workload did not arm with MADV_SWAPSTUB"
grep -q 'wrong=0' "$work/workload.log" || fail "e2e-workload reports wrong pages"
status=$("$B/pagesrv-ctl" "$control" status)
echo "destination status: $status"
[[ "$status" == *'"state":"complete"'* ]] || fail "the destination is not complete"
# MADV_SWAPSTUB wrote nothing: the daemon saw no marker pages at all.
stats=$("$B/pagesrv-ctl" "$control" stats)
[[ "$stats" == *'"marker_pages":0'* ]] || fail "nbd-pagesrv received marker pages: $stats"
echo "nbd-pagesrv marker_pages=0: arming wrote nothing to the device"
step "teardown-swap.sh"
teardown

step "another process: hold-region --mib $mib, swapstub arm --pid (auto method), finish"
setup
coproc HOLD { exec "$B/tests/hold-region" --mib "$mib" --sums "$work/src.crc"; }
# shellcheck disable=SC2153  # HOLD_PID is set by coproc
hold_pid=$HOLD_PID
read -r -t 30 line <&"${HOLD[0]}" || fail "hold-region printed nothing"
addr=$(sed -n 's/^ADDR=\([^ ]*\) .*/\1/p' <<<"$line")
len=$(sed -n 's/.* LEN=//p' <<<"$line")
{ [ -n "$addr" ] && [ -n "$len" ]; } || fail "hold-region said '$line'"
arm_out=$("$B/swapstub" arm --pid "$hold_pid" --addr "$addr" --len "$len" --control "$control" \
          --device "$device" --export mem) || fail "swapstub arm --pid failed"
echo "$arm_out"
[[ "$arm_out" == *"method=madv_swapstub"* ]] || fail "swapstub arm did not choose MADV_SWAPSTUB"
"$B/swapstub" finish --quiet --pid "$hold_pid" --addr "$addr" --len "$len" --control "$control" \
    --device "$device" || fail "swapstub finish failed"
kill -USR1 "$hold_pid"
read -r -t 120 check <&"${HOLD[0]}" || fail "hold-region did not report its check"
echo "$check"
wait "$hold_pid" || fail "hold-region found wrong pages: $check"
hold_pid=""
[[ "$check" == *" wrong=0"* ]] || fail "hold-region: $check"
verified=$(sed -n 's/.*verified=\([0-9]*\).*/\1/p' <<<"$check")
[ "$verified" = $(( mib * 256 )) ] || fail "hold-region verified $verified pages, not $(( mib * 256 ))"
step "teardown-swap.sh"
teardown

kill "$src_pid"
wait "$src_pid" || fail "the source nbd-pagesrv did not exit cleanly on SIGTERM: $(tail -5 "$work/source.log")"
src_pid=""
step "done: MADV_SWAPSTUB end to end"
