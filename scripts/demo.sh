#!/usr/bin/env bash
# demo.sh (make demo): migrate a running QEMU guest on this host with
# swapcopy and print the summary.
#
# The guest is memwalk (guest/README.md): it walks and checks all of its
# RAM, printing "PASS n" after each pass and "ERROR ..." on any wrong page.
# The source QEMU keeps its RAM in /dev/shm; the destination waits with
# -incoming. scripts/swapcopy-migrate moves the guest; the destination
# must then go on printing PASS lines, and never ERROR.
#
#   demo.sh [--mib N] [--passes N]     (defaults: 256 MiB, 3 passes after the switch)
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
build=${SWAPCOPY_BUILD:-$here/../build}
mib=256 passes=3
while [ $# -gt 0 ]; do
    case "$1" in
        --mib) mib=$2; shift 2 ;;
        --passes) passes=$2; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "demo: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
done
bold() { if [ -t 1 ]; then printf '\033[1m%s\033[0m\n' "$*"; else printf '%s\n' "$*"; fi; }
die() { echo "demo: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (swap devices, loop devices, FUSE): try sudo make demo"
[ -f "$build/guest/memwalk.elf" ] || die "$build/guest/memwalk.elf missing: run make"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing: run make deps"

work=$(mktemp -d /tmp/swapcopy-demo.XXXXXX)
ram=/dev/shm/swapcopy-demo-$$.ram
pids=()
cleanup() {
    local p
    # A preparation whose migration did not happen (a failure, Ctrl-C) is
    # undone before the QEMUs go; after a migration there is nothing left.
    [ -e "$work/run/demo$$/prepared.json" ] &&
        "$here/swapcopy-migrate" --unprepare --name "demo$$" --state-dir "$work/run" --build "$build" >&2
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null
    done
    rm -f "$ram"
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

common=(-accel tcg -m "${mib}M" -machine pc,memory-backend=mem -display none -nodefaults
        -no-reboot -kernel "$build/guest/memwalk.elf")
start_qemu() {  # name args...
    local name=$1; shift
    qemu-system-x86_64 "${common[@]}" "$@" -serial "file:$work/$name.serial" \
        -qmp "unix:$work/$name.qmp,server=on,wait=off" -pidfile "$work/$name.pid" -daemonize \
        >"$work/$name.log" 2>&1 || { cat "$work/$name.log" >&2; die "cannot start the $name QEMU"; }
    pids+=("$(cat "$work/$name.pid")")
}
count_pass() { grep -c '^PASS' "$1" 2>/dev/null || true; }
wait_pass() {  # file n timeout
    local i
    for (( i = 0; i < $3 * 10; i++ )); do
        grep -q '^ERROR' "$1" 2>/dev/null && return 2
        [ "$(count_pass "$1")" -ge "$2" ] && return 0
        sleep 0.1
    done
    return 1
}

bold "1. Source: a $mib MiB guest walking its memory, RAM in $ram"
start_qemu src -object "memory-backend-file,id=mem,size=${mib}M,mem-path=$ram,share=on"
wait_pass "$work/src.serial" 2 120 || die "the source guest did not start walking; see $work/src.serial"
head -1 "$work/src.serial"; grep '^PASS' "$work/src.serial" | tail -2

bold "2. Destination: same machine, private RAM, waiting for the migration"
start_qemu dst -object "memory-backend-ram,id=mem,size=${mib}M" -incoming defer

bold "3. Preparing the destination ahead (swap device, RAM armed as swapped out; the source is not involved)"
"$here/swapcopy-migrate" --prepare-only --dst-qmp "$work/dst.qmp" \
    --name "demo$$" --state-dir "$work/run" --build "$build" ||
    die "swapcopy-migrate --prepare-only failed"

bold "4. Migrating with swapcopy (the guest keeps running until the switch)"
"$here/swapcopy-migrate" --src-qmp "$work/src.qmp" --dst-qmp "$work/dst.qmp" \
    --name "demo$$" --state-dir "$work/run" --build "$build" --json "$work/summary.json"
rc=$?
[ $rc = 0 ] || die "swapcopy-migrate failed ($rc)"

bold "5. The guest goes on on the destination"
before=$(count_pass "$work/dst.serial")
wait_pass "$work/dst.serial" $(( before + passes )) 300
case $? in
    0) grep '^PASS' "$work/dst.serial" | tail -"$passes" ;;
    2) grep '^ERROR' "$work/dst.serial"; bold "FAIL: the guest found a wrong page after migration"; exit 1 ;;
    *) bold "FAIL: the destination guest stopped making progress"; exit 1 ;;
esac
echo "source serial after the switch: $(tail -1 "$work/src.serial")"
if grep -q '^ERROR' "$work/src.serial" "$work/dst.serial"; then
    bold "FAIL: ERROR in a serial log"; exit 1
fi
bold "PASS: the guest was migrated with swapcopy and every page it checked was right"
