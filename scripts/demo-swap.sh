#!/usr/bin/env bash
# demo-swap.sh (make demo-swap): watch the kernel swap to nbd-pagesrv. Starts the
# server, attaches its export as a block device, makes it the top-priority
# swap device, pages a region out to it and back in, checks every byte,
# shows the server's statistics, and undoes everything on exit, Ctrl-C or
# failure.
#
#   demo-swap.sh [--mib N]      (default 256; SWAPCOPY_BUILD = the build directory)
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/blockdev.sh
. "$here/lib/blockdev.sh"

build=${SWAPCOPY_BUILD:-$here/../build}
pagesrv=$build/nbd-pagesrv
ctl=$build/pagesrv-ctl
roundtrip=$build/tests/swap-roundtrip
mib=256
prio=32767

while [ $# -gt 0 ]; do
    case "$1" in
        --mib) mib=${2:-}; shift 2 ;;
        -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "demo: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
done

bold() { if [ -t 1 ]; then printf '\033[1m%s\033[0m\n' "$*"; else printf '%s\n' "$*"; fi; }
step() { printf '\n'; bold "== $*"; }
fail() {
    echo "demo: $*" >&2
    result="FAIL: $*"
    exit 1
}

[[ "$mib" =~ ^[1-9][0-9]*$ ]] || { echo "demo: --mib needs a positive number of MiB" >&2; exit 2; }
if [ "$(id -u)" != 0 ]; then
    echo "demo: must run as root: it adds a swap device (swapon), a loop device and a FUSE mount." >&2
    echo "      run: sudo make demo" >&2
    exit 1
fi
for f in "$pagesrv" "$ctl" "$roundtrip"; do
    [ -x "$f" ] || { echo "demo: $f is missing: run 'make' first (or set SWAPCOPY_BUILD)" >&2; exit 1; }
done
while read -r name _ _ _ p; do
    [ "$name" = Filename ] && continue
    if [ "$p" -ge "$prio" ]; then
        echo "demo: swap device $name is active at priority $p; the demo needs priority $prio to itself: swapoff $name first" >&2
        exit 1
    fi
done </proc/swaps

# The device is four times the region: swap must stay under half full for
# the pages to stay on it once read back (see docs, kernel facts).
size_mib=$(( mib * 4 ))
state=$(mktemp -d /tmp/swapcopy-demo.XXXXXX) || { echo "demo: mktemp failed" >&2; exit 1; }
sock=$state/nbd.sock control=$state/ctl.sock
pagesrv_pid="" dev="" swapped_on=0 result="FAIL: interrupted" cleaned=0

cleanup() {
    local status=$?
    [ "$cleaned" = 1 ] && return
    cleaned=1
    trap '' INT TERM   # a second Ctrl-C must not leave half a teardown
    step "cleaning up"
    local ok=1
    if [ "$swapped_on" = 1 ]; then
        echo "swapoff $dev"
        swapoff "$dev" || { echo "demo: swapoff $dev failed; nbd-pagesrv is left running so that it can be retried" >&2; ok=0; }
    fi
    if [ "$ok" = 1 ]; then
        echo "detaching the block device"
        blockdev_detach "$state/blockdev" || ok=0
    fi
    if [ "$ok" = 1 ] && [ -n "$pagesrv_pid" ]; then
        echo "stopping nbd-pagesrv ($pagesrv_pid)"
        kill -TERM "$pagesrv_pid" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$pagesrv_pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pagesrv_pid" 2>/dev/null; then
            echo "demo: nbd-pagesrv ignored SIGTERM for 5 s; killing it" >&2
            kill -KILL "$pagesrv_pid" 2>/dev/null
        fi
    fi
    if [ "$ok" = 1 ]; then
        # Keep the logs only when something went wrong.
        case "$result" in PASS:*|"FAIL: interrupted") rm -rf "$state" ;; esac
    else
        result="FAIL: cleanup incomplete (${result})"
    fi
    printf '\n'
    bold "$result"
    if [ "${result%%:*}" != PASS ]; then
        [ -d "$state" ] && echo "logs: $state"
        [ "$status" -ne 0 ] || status=1
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'result="FAIL: interrupted"; exit 130' INT TERM

bold "swapcopy demo: the kernel swapping $mib MiB to nbd-pagesrv and back"

step "1. start nbd-pagesrv: a $size_mib MiB swap device on $sock"
# setsid: Ctrl-C must not stop the server while swap still needs it.
setsid "$pagesrv" --size "${size_mib}M" --mem-limit "$(( mib * 2 ))M" --socket "$sock" \
    --control "$control" </dev/null >"$state/pagesrv.log" 2>&1 &
pagesrv_pid=$!
for _ in $(seq 100); do
    [ -S "$control" ] && [ -S "$sock" ] && break
    kill -0 "$pagesrv_pid" 2>/dev/null || break
    sleep 0.1
done
[ -S "$control" ] || { cat "$state/pagesrv.log" >&2; fail "nbd-pagesrv did not start (log above)"; }
echo "running, pid $pagesrv_pid"

step "2. attach it as a block device"
dev=$(blockdev_attach "$sock" "$state/blockdev") || fail "could not attach the NBD export as a block device"
if grep -q '^fuse ' "$state/blockdev/blockdev"; then
    echo "$dev: a loop device (direct I/O) on an nbdfuse file; this kernel has no nbd driver"
    echo "(nbdfuse is a user-space process in the swap path: fine for a demo, nbd-client is the real thing)"
else
    echo "$dev: kernel nbd driver, via nbd-client -swap"
fi

step "3. make it the highest-priority swap device"
mkswap -L swapcopy-demo "$dev" >/dev/null || fail "mkswap $dev failed"
swapon -p "$prio" "$dev" || fail "swapon -p $prio $dev failed"
swapped_on=1
sed -n '1p' /proc/swaps
grep -F "$(readlink -f "$dev") " /proc/swaps

step "4. swap $mib MiB out to it and back in (tests/progs/swap-roundtrip)"
echo "every page gets its own pattern; MADV_PAGEOUT writes them to the device, the swap"
echo "cache is emptied, then the first touch of each page reads it back through the server."
"$roundtrip" --device "$dev" --mib "$mib" --progress
rt=$?

step "5. what nbd-pagesrv saw"
stats=$("$ctl" "$control" stats) || fail "pagesrv-ctl $control stats failed"
python3 - "$stats" <<'PY' || fail "could not read nbd-pagesrv's statistics: $stats"
import json, sys
s = json.loads(sys.argv[1])
r, b, l, st = s["requests"], s["bytes"], s["latency_us"], s["store"]
mib = lambda n: f"{n / 1048576:,.1f} MiB"
print(f"  requests    write {r['write']:,}   read {r['read']:,}   flush {r['flush']:,}   trim {r['trim']:,}")
print(f"  bytes       written {mib(b['written'])}   read {mib(b['read'])}")
print(f"  latency     p50 {l['p50']} us   p99 {l['p99']} us   max {l['max']} us")
print(f"  store       {st['slots']:,} slots, {st['ram_pages']:,} pages in RAM, {st['file_pages']:,} in the spill file")
print(f"  connections {s['connections']['total']} in total, errors {s['errors']}")
PY
written=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["bytes"]["written"])' "$stats")
read_b=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["bytes"]["read"])' "$stats")

region=$(( mib << 20 ))
if [ "$rt" -ne 0 ]; then
    result="FAIL: swap-roundtrip found errors (exit status $rt, see above)"
elif [ "$written" -lt "$region" ] || [ "$read_b" -lt "$region" ]; then
    result="FAIL: nbd-pagesrv saw only $written bytes written / $read_b read for a $region-byte region: the pages did not all go through it"
else
    result="PASS: $mib MiB went out to nbd-pagesrv through the kernel's swap path and came back byte for byte"
fi
[ "${result%%:*}" = PASS ]
