#!/usr/bin/env bash
# Runs inside the test VM (tests/vm/run -- tests/vm/guest/e2e-nbd.sh): the
# end-to-end process migration of tests/e2e.bats, but with the swap device
# attached by the kernel's own nbd driver (nbd-client), the branch of
# scripts/lib/blockdev.sh the host cannot take. Everything runs on the VM's
# loopback. Prints what it checks; exits non-zero at the first failure.
#
#   e2e-nbd.sh [MIB]     size of the migrated region (default 64)
set -euo pipefail

mib=${1:-64}
B=${SWAPCOPY_BUILD:?} S=${SWAPCOPY_SRC:?}
work=/tmp/e2e-nbd state_root=/run/swapcopy name=vmtest port=4444
mkdir -p "$work"

. "$S/tests/vm/guest/lib.sh"

[ -d /sys/module/nbd ] || fail "the nbd driver is not loaded in this VM"

step "source: mkimage $mib MiB, nbd-pagesrv --export mem=IMG --listen 127.0.0.1:$port"
"$B/tests/mkimage" "$work/src.img" "$mib" "$work/src.crc" >/dev/null
source_start "$work/src.img" "$port" "$work/src.ctl" "$work/source.log"

step "destination: setup-swap.sh --src 127.0.0.1:$port --size 512M"
# --size: without it setup-swap.sh asks nbdinfo and python3, not in the VM.
out=$("$S/scripts/setup-swap.sh" --src "127.0.0.1:$port" --name "$name" \
      --size 512M --state-dir "$state_root") || fail "setup-swap.sh failed (its errors are above)"
echo "$out"
device=$(sed -n 's/^DEVICE=//p' <<<"$out")
control=$(sed -n 's/^CONTROL=//p' <<<"$out")
state=$(sed -n 's/^STATE=//p' <<<"$out")

# The branch taken: a real nbd device, attached by nbd-client, and swap on it.
[[ "$device" =~ ^/dev/nbd[0-9]+$ ]] || fail "setup-swap.sh attached $device, not a /dev/nbdN: it did not take the nbd-client branch"
grep -qx "nbd $device" "$state/blockdev" || fail "$state/blockdev does not record 'nbd $device': $(cat "$state/blockdev")"
[ -e "/sys/block/${device#/dev/}/pid" ] || fail "/sys/block/${device#/dev/}/pid is missing: nothing is connected to $device"
prio=$(sed -n 's/^PRIORITY=//p' <<<"$out")
awk -v d="$device" -v p="$prio" 'NR > 1 && $1 == d && $5 == p && p >= 32000 { ok = 1 } END { exit !ok }' /proc/swaps ||
    fail "$device is not swap at the priority setup-swap.sh gave ($prio): $(cat /proc/swaps)"
echo "BRANCH: nbd-client $device ($(cat "/sys/block/${device#/dev/}/size") sectors, client pid $(cat "/sys/block/${device#/dev/}/pid"))"

step "e2e-workload --mib $mib on $device"
"$B/tests/e2e-workload" --control "$control" --device "$device" --export mem \
    --mib "$mib" --sums "$work/src.crc" || fail "e2e-workload failed"
status=$("$B/pagesrv-ctl" "$control" status)
echo "destination status: $status"
[[ "$status" == *'"state":"complete"'* ]] || fail "the destination is not complete"
# "Used" is not 0 on this 6.1 kernel even when nothing is swapped out: it
# counts the per-CPU swap slot caches (up to 64 slots allocated ahead and 64
# freed ones not yet returned, per CPU; gone from kernels >= 6.15) and
# slots whose page is only left in the swap cache. Beyond that is a leak.
used=$(awk -v d="$device" '$1 == d { print $4 }' /proc/swaps)
cached=$(awk '$1 == "SwapCached:" { print $2 }' /proc/meminfo)
slot_caches=$(( $(nproc) * 2 * 64 * 4 ))
echo "after finish: $device used=${used} KiB, SwapCached=${cached} KiB, per-CPU slot caches up to ${slot_caches} KiB"
[ "$used" -le $(( cached + slot_caches )) ] ||
    fail "$used KiB are still on $device after finish: more than the swap cache ($cached KiB) and the slot caches (${slot_caches} KiB) can hold"

step "teardown-swap.sh"
"$S/scripts/teardown-swap.sh" --name "$name" --state-dir "$state_root" || fail "teardown-swap.sh failed"
[ "$(awk 'NR > 1' /proc/swaps)" = "" ] || fail "swap still active after teardown: $(cat /proc/swaps)"
[ ! -e "/sys/block/${device#/dev/}/pid" ] || fail "$device is still connected after teardown"
[ ! -e "$state" ] || fail "teardown left $state behind"
kill "$src_pid"
wait "$src_pid" || fail "the source nbd-pagesrv did not exit cleanly on SIGTERM: $(tail -5 "$work/source.log")"
src_pid=""
step "done: nbd-client branch end to end"
