#!/usr/bin/env bash
# bench/prepare-time.sh: preparing a migration destination on this machine
# (issue 14's goal: at most 1 s per GiB), for both paths, same run:
#   stock   the swap device set up (setup-swap.sh --src-later) and another
#           process's RAM armed from outside, as swapcopy-migrate
#           --prepare-only does to a stock QEMU (hold-region --thp, swapstub
#           arm --pid --map-later)
#   inproc  the same device, the RAM armed in-process, as the patched QEMU
#           does at start-up (bench/arm-time --thp)
# Each round sets a device up, arms, and tears the device down again, the
# paths alternating. QEMU's own postcopy prepares nothing (0 s): this is
# time swapcopy spends before `migrate`, while the destination waits.
#
# Usage: bench/prepare-time.sh [--rounds N] [--build DIR ...] [--attach HOW ...]
#                              [--busy N] [SIZES_MIB...]
#   (default: 3 rounds, 1024 4096 MiB, the tree's build/, setup-swap.sh's
#   default attach). Several --build compare builds side by side (e.g. an
#   older commit's, built in a git worktree), several --attach the ways of
#   attaching the device (fuse, nbdfuse: setup-swap.sh --attach), round by
#   round. --busy N keeps N CPUs busy meanwhile (a spinning process each), as
#   the TCG source guest of bench/vs-qemu-postcopy does on this same host.
#   Needs root; leaves swap, loop devices and files as it found them.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/.." && pwd)
rounds=3 builds=() sizes=() attaches=() busy=0
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds=$2; shift 2 ;;
        --build) builds+=("$(cd "$2" && pwd)"); shift 2 ;;
        --attach) attaches+=("$2"); shift 2 ;;
        --busy) busy=$2; shift 2 ;;
        -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) sizes+=("$1"); shift ;;
    esac
done
[ ${#builds[@]} -gt 0 ] || builds=("${SWAPCOPY_BUILD:-$src/build}")
[ ${#sizes[@]} -gt 0 ] || sizes=(1024 4096)
[ ${#attaches[@]} -gt 0 ] || attaches=(auto)

die() { echo "prepare-time.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root"
for b in "${builds[@]}"; do
    for p in nbd-pagesrv swapstub bench/arm-time tests/hold-region; do
        [ -x "$b/$p" ] || die "$b/$p missing: run make there"
    done
done

work=$(mktemp -d /tmp/prepare-time.XXXXXX)
name=pt$$
hold="" source="" spinners=()
cleanup() {
    [ ${#spinners[@]} -eq 0 ] || kill "${spinners[@]}" 2>/dev/null
    [ -n "$hold" ] && kill "$hold" 2>/dev/null && wait "$hold" 2>/dev/null
    [ -n "$source" ] && kill "$source" 2>/dev/null && wait "$source" 2>/dev/null
    "$src/scripts/teardown-swap.sh" --name "$name" --state-dir "$work/run" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# arm-time maps its region and reads a few pages back: a source of zeros
# (a sparse image) serves them. Arming itself never asks it anything.
largest=$(printf '%s\n' "${sizes[@]}" | sort -n | tail -n 1)
truncate -s "${largest}M" "$work/img"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"${builds[0]}/nbd-pagesrv" --export "mem=$work/img" --listen "127.0.0.1:$port" --no-mlock \
    >"$work/source.log" 2>&1 &
source=$!

now() { date +%s.%N; }
# setup BUILD MIB: a device for MIB of RAM; sets CTL DEV and SETUP_S (its seconds).
setup() {
    local t0 out
    t0=$(now)
    out=$(SWAPCOPY_BUILD=$1 "$src/scripts/setup-swap.sh" --attach "$ATTACH" --src "127.0.0.1:$port" --src-later \
          --size "$(( 4 * $2 + 256 ))M" --name "$name" --state-dir "$work/run") ||
        die "setup-swap.sh failed"
    CTL=$(sed -n 's/^CONTROL=//p' <<<"$out") DEV=$(sed -n 's/^DEVICE=//p' <<<"$out")
    SETUP_S=$(python3 -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.3f}")' "$t0" "$(now)")
}
teardown() { "$src/scripts/teardown-swap.sh" --name "$name" --state-dir "$work/run" >/dev/null; }

# stock BUILD MIB: sets LINE to "setup_s arm_s markers pageout evict"
stock() {
    local b=$1 mib=$2 line addr len out
    setup "$b" "$mib"
    "$b/tests/hold-region" --mib "$mib" --thp >"$work/hold.out" 2>"$work/hold.err" &
    hold=$!
    for _ in $(seq 100); do grep -q ADDR= "$work/hold.out" && break; sleep 0.05; done
    line=$(head -n 1 "$work/hold.out")
    addr=${line#ADDR=}; addr=${addr%% *}; len=${line##*LEN=}
    out=$("$b/swapstub" arm --map-later --pid "$hold" --addr "$addr" --len "$len" \
          --control "$CTL" --device "$DEV" --export mem) || die "arm --pid failed: $out"
    kill "$hold"; wait "$hold" 2>/dev/null || true; hold=""
    teardown
    LINE="$SETUP_S $(sed -n 's/.* seconds=\([0-9.]*\) markers_s=\([0-9.]*\) pageout_s=\([0-9.]*\) evict_s=\([0-9.]*\) .*/\1 \2 \3 \4/p' <<<"$out")"
}

# inproc BUILD MIB: the same fields, armed by bench/arm-time in its own memory
inproc() {
    local b=$1 mib=$2 out
    setup "$b" "$mib"
    out=$("$b/bench/arm-time" --control "$CTL" --device "$DEV" --export mem --mib "$mib" --thp) ||
        die "arm-time failed: $out"
    teardown
    LINE=$(python3 -c 'import json,sys
j = json.loads(sys.argv[2])
print(sys.argv[1], *(j[k] for k in ("arm_s", "markers_s", "pageout_s", "evict_s")))' "$SETUP_S" "$(tail -n 1 <<<"$out")")
}

for (( i = 0; i < busy; i++ )); do
    bash -c 'while :; do :; done' &
    spinners+=($!)
done
results=$work/results.txt
: >"$results"
echo "prepare-time.sh: $(date -u '+%F %H:%M') UTC, git $(git -C "$src" rev-parse --short HEAD), load $(cut -d' ' -f1-3 /proc/loadavg), $busy CPU(s) kept busy" >&2
for (( r = 1; r <= rounds; r++ )); do
    for mib in "${sizes[@]}"; do
        for path in stock inproc; do
            for b in "${builds[@]}"; do
                for ATTACH in "${attaches[@]}"; do
                    "$path" "$b" "$mib"
                    label=$b; [ ${#attaches[@]} -eq 1 ] || label="$b[$ATTACH]"
                    echo "$label $mib $path $LINE" >>"$results"
                    echo "round $r: $label $mib MiB $path: setup arm markers page-out eviction: $LINE" >&2
                done
            done
        done
    done
done

python3 - "$results" <<'PY'
import collections, statistics, sys
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    b, mib, path, setup, arm, markers, pageout, evict = line.split()
    rows[(b, int(mib), path)].append(tuple(map(float, (setup, arm, markers, pageout, evict))))
print("| build | size | path | preparation s (median, min-max) | s per GiB | setup | arm | markers | page-out | eviction | goal <= 1 s/GiB |")
print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|")
for (b, mib, path), v in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
    tot = sorted(s + a for s, a, *_ in v)
    med = statistics.median(tot)
    m = [statistics.median(x[i] for x in v) for i in range(5)]
    print(f"| {b} | {mib} MiB | {path} | {med:.2f} ({tot[0]:.2f}-{tot[-1]:.2f}) | "
          f"{med / (mib / 1024):.2f} | {m[0]:.2f} | {m[1]:.2f} | {m[2]:.2f} | {m[3]:.2f} | "
          f"{m[4]:.2f} | {'met' if med / (mib / 1024) <= 1.0 else 'NOT met'} |")
PY
