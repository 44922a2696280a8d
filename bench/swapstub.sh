#!/usr/bin/env bash
# bench/swapstub.sh: swapcopy's own steps on this machine, same run:
#   arming throughput and finish throughput for 1 and 4 GiB regions;
#   demand-fault latency a workload sees, against the physical floor: a
#   plain local swap-in from a loop device on tmpfs (no network, no daemon).
# Usage: bench/swapstub.sh [SIZES_MIB...]   (default: 1024 4096)
# Needs root; leaves swap, loops and files as it found them.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/.." && pwd)
build=${SWAPCOPY_BUILD:-$src/build}
sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(1024 4096)
faults=${BENCH_FAULTS:-2000}

die() { echo "swapstub.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root"
for b in nbd-pagesrv pagesrv-ctl bench/arm-finish bench/local-swapin tests/mkimage; do
    [ -x "$build/$b" ] || die "$build/$b missing: run make"
done
awk 'NR>1 && $5 >= 32767 {exit 1}' /proc/swaps || die "another swap device has priority 32767: stop it first"

work=$(mktemp -d /tmp/swapstub-bench.XXXXXX)
cleanup_cmds=()
cleanup() {
    local i
    for (( i=${#cleanup_cmds[@]}-1; i>=0; i-- )); do eval "${cleanup_cmds[$i]}" || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

json() { python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d[sys.argv[2]])' "$1" "$2"; }

echo "# swapcopy: arming, demand faults and finishing ($(date -u '+%F %T') UTC)"
echo "# $(nproc) CPUs, kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg), git $(git -C "$src" rev-parse --short HEAD 2>/dev/null || echo '?')"

# 1. The floor: a loop device on a tmpfs file.
floor_mib=256
shmfile=/dev/shm/swapstub-bench-$$.swap
truncate -s $(( 4 * floor_mib ))M "$shmfile"
cleanup_cmds+=("rm -f $shmfile")
loop=$(losetup -f --show "$shmfile")
cleanup_cmds+=("losetup -d $loop")
mkswap "$loop" >/dev/null
swapon -p 32767 "$loop"
cleanup_cmds+=("swapoff $loop")
floor=$("$build/bench/local-swapin" --mib $floor_mib --faults "$faults")
swapoff "$loop"; unset 'cleanup_cmds[-1]'
losetup -d "$loop"; unset 'cleanup_cmds[-1]'
rm -f "$shmfile"; unset 'cleanup_cmds[-1]'
echo "# local swap-in floor (loop on tmpfs, $floor_mib MiB): $floor"

printf '\n%-8s %9s %11s %7s %11s %12s %12s %13s %13s %11s %12s\n' \
    size_mib arm_s arm_GiB/s rounds finish_s finish_GiB/s fault_p50us fault_p99us \
    floor_p50us p50_ratio p99_ratio
for mib in "${sizes[@]}"; do
    img=/dev/shm/swapstub-bench-$$-$mib.img
    "$build/tests/mkimage" --all-random "$img" "$mib" "$work/crc" >/dev/null
    cleanup_cmds+=("rm -f $img")
    port=$(( 10000 + RANDOM % 20000 ))   # below the ephemeral range: no outgoing connection holds it
    "$build/nbd-pagesrv" --export "mem=$img" --listen "127.0.0.1:$port" --no-mlock \
        >"$work/source.log" 2>&1 &
    spid=$!
    cleanup_cmds+=("kill $spid; wait $spid 2>/dev/null")
    up=0
    for _ in $(seq 100); do
        nbdinfo --size "nbd://127.0.0.1:$port/mem" >/dev/null 2>&1 && { up=1; break; }
        sleep 0.1
    done
    [ "$up" = 1 ] || die "the source exporter on 127.0.0.1:$port did not start: $(tail -n 3 "$work/source.log")"
    name=bench$$-$mib
    cleanup_cmds+=("$src/scripts/teardown-swap.sh --name $name --state-dir $work/run >/dev/null")
    out=$(SWAPCOPY_BUILD=$build "$src/scripts/setup-swap.sh" --src "127.0.0.1:$port" --name "$name" \
          --state-dir "$work/run" --size $(( 2 * mib + 64 ))M)
    dev=$(sed -n 's/^DEVICE=//p' <<<"$out"); ctl=$(sed -n 's/^CONTROL=//p' <<<"$out")
    r=$("$build/bench/arm-finish" --control "$ctl" --device "$dev" --export mem --mib "$mib" --faults "$faults")
    echo "# $mib MiB: $r" >&2
    "$src/scripts/teardown-swap.sh" --name "$name" --state-dir "$work/run" >/dev/null; unset 'cleanup_cmds[-1]'
    kill "$spid"; wait "$spid" 2>/dev/null || true; unset 'cleanup_cmds[-1]'
    rm -f "$img"; unset 'cleanup_cmds[-1]'
    python3 - "$r" "$floor" <<'PY'
import json, sys
r, f = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"{r['mib']:<8} {r['arm_s']:9.2f} {r['arm_gib_s']:11.2f} {r['arm_rounds']:7} {r['finish_s']:11.2f} "
      f"{r['finish_gib_s']:12.2f} {r['fault_us_p50']:12.1f} {r['fault_us_p99']:12.1f} "
      f"{f['fault_us_p50']:13.1f} {r['fault_us_p50']/f['fault_us_p50']:11.2f} {r['fault_us_p99']/f['fault_us_p99']:12.2f}")
PY
done
echo
echo "# ratios are swapcopy / local floor (goal for p99: <= 3, see docs/performance.md)"
