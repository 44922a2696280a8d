#!/usr/bin/env bash
# pull-throughput.sh: how fast a destination nbd-pagesrv pulls a 1 GiB RAM
# image from a source nbd-pagesrv over loopback TCP, against nbdcopy
# reading the same export from the same source (the best shipped reader),
# and what a demand fault costs with and without the background stream.
#
#   (a) background pull: a fresh destination, one 'map' of the whole image
#       (fully random, so nothing can be skipped), timed from 'map' until
#       'wait-all-local' answers; vs 'nbdcopy nbd://127.0.0.1:PORT/mem null:'.
#       Goal: ours/nbdcopy throughput >= 0.9. The destination runs with
#       --mem-prealloc (its RAM pool mapped and touched before 'map'), and
#       again without it ("cold store"): on these machines a page's first
#       write costs ~18 us, which nbdcopy writing to null: never pays.
#   (b) demand faults: 4 KiB reads at queue depth 1 of random slots holding
#       the upper half of the image (still remote: the stream goes in page
#       order), with background streaming off, and at full speed.
#
# Environment (all optional):
#   SWAPCOPY_BUILD   build directory (default: <source>/build; make bench sets it)
#   BENCH_PULL_MIB   image size in MiB (default 1024)
#   BENCH_REPEAT     runs per measurement; medians / pooled samples (default 3)
#   BENCH_FAULTS     faults per run (default 200; with the stream on, they
#                    must end before the stream does: the table says if not)
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
: "${SWAPCOPY_BUILD:=$SRC/build}"
MIB=${BENCH_PULL_MIB:-1024}
REPEAT=${BENCH_REPEAT:-3}
NFAULTS=${BENCH_FAULTS:-200}
PAGESRV=$SWAPCOPY_BUILD/nbd-pagesrv
CTL=$SWAPCOPY_BUILD/pagesrv-ctl
MKIMAGE=$SWAPCOPY_BUILD/tests/mkimage
FAULTS=$SWAPCOPY_BUILD/tests/pull-faults

die() { echo "pull-throughput.sh: $*" >&2; exit 1; }

for p in "$PAGESRV" "$CTL" "$MKIMAGE" "$FAULTS"; do
    [[ -x $p ]] || die "$p not found: run 'make' first (or set SWAPCOPY_BUILD)"
done
for t in nbdcopy nbdinfo python3; do
    command -v "$t" >/dev/null || die "$t not installed: run scripts/install-deps.sh"
done
[[ $MIB =~ ^[1-9][0-9]*$ ]] || die "BENCH_PULL_MIB must be a positive integer, not '$MIB'"
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || die "BENCH_REPEAT must be a positive integer, not '$REPEAT'"
[[ $NFAULTS =~ ^[1-9][0-9]*$ ]] || die "BENCH_FAULTS must be a positive integer, not '$NFAULTS'"
PAGES=$(( MIB * 256 ))

TMP=$(mktemp -d /tmp/pull-throughput.XXXXXX)
PIDS=()
stop_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for (( i=0; i<50; i++ )); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s%N; }      # nanoseconds

echo "== Pulling from the source over loopback (bench/pull-throughput.sh) =="
echo "date:     $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "machine:  $(nproc) CPUs (source, destination and client share them), kernel $(uname -r)"
echo "ours:     $PAGESRV (source $(git -C "$SRC" describe --always --dirty 2>/dev/null || echo 'not a git checkout'))"
echo "nbdcopy:  $(nbdcopy --version | head -1), defaults (to null:)"
echo "image:    $MIB MiB, every page random (mkimage --all-random), in the page cache"
echo "runs:     $REPEAT per measurement, alternating ours/nbdcopy; medians; faults pooled over runs"
echo

"$MKIMAGE" --all-random "$TMP/src.img" "$MIB" "$TMP/src.crc" >/dev/null
echo "0 0 $PAGES" >"$TMP/map"

# The source, on a free port of 127.0.0.1.
for (( try=0; try<20; try++ )); do
    PORT=$(( 20000 + RANDOM % 20000 ))
    "$PAGESRV" --export "mem=$TMP/src.img" --listen "127.0.0.1:$PORT" >"$TMP/src.log" 2>&1 &
    SRC_PID=$!
    PIDS+=("$SRC_PID")
    for (( i=0; i<100; i++ )); do
        grep -q "serving NBD on TCP" "$TMP/src.log" && break 2
        kill -0 "$SRC_PID" 2>/dev/null || break
        sleep 0.1
    done
    grep -q "in use" "$TMP/src.log" || die "the source did not start: $(cat "$TMP/src.log")"
done
grep -q "serving NBD on TCP" "$TMP/src.log" || die "no free port for the source"
SRC_URI="nbd://127.0.0.1:$PORT/mem"
# Warm up: the image into the page cache, the source's threads started.
nbdcopy "$SRC_URI" null:

SOCK=$TMP/dst.sock CSOCK=$TMP/dst.ctl
DST_URI="nbd+unix:///swap?socket=$SOCK"
dst_start() {
    local i
    "$PAGESRV" --size $(( PAGES * 4096 )) --mem-limit $(( MIB + 64 ))M --socket "$SOCK" \
        --control "$CSOCK" --src "127.0.0.1:$PORT" "$@" >"$TMP/dst.log" 2>&1 &
    DST_PID=$!
    PIDS+=("$DST_PID")
    for (( i=0; i<100; i++ )); do
        [[ -S $CSOCK ]] && nbdinfo --size "$DST_URI" >/dev/null 2>&1 && return 0
        kill -0 "$DST_PID" 2>/dev/null || break
        sleep 0.1
    done
    die "the destination did not start: $(cat "$TMP/dst.log")"
}
dst_stop() { stop_pid "$DST_PID"; rm -f "$SOCK" "$CSOCK"; }
ctl() { "$CTL" "$CSOCK" "$@"; }

RESULTS=$TMP/results.jsonl
for (( rep=1; rep<=REPEAT; rep++ )); do
    if (( rep % 2 )); then order=(ours nbdcopy cold nbdcopy1); else order=(nbdcopy1 cold nbdcopy ours); fi
    for who in "${order[@]}"; do
        if [[ $who == ours || $who == cold ]]; then
            if [[ $who == ours ]]; then
                dst_start --mem-prealloc
                for (( i=0; i<600; i++ )); do
                    ctl stats | grep -q '"prealloc_done":true' && break
                    sleep 0.1
                done
            else
                dst_start
            fi
            t0=$(now)
            ctl map 0 mem 0 "$PAGES" >/dev/null
            st=$(timeout 300 "$CTL" "$CSOCK" wait-all-local) || die "wait-all-local failed: $(ctl status)"
            t1=$(now)
            dst_stop
            printf '{"kind":"pull","who":"%s","ns":%d,"status":%s}\n' "$who" $(( t1 - t0 )) "$st" >>"$RESULTS"
        else
            # nbdcopy1: one connection, as our stream has (for context).
            args=(); [[ $who == nbdcopy1 ]] && args=(--connections=1)
            t0=$(now)
            nbdcopy "${args[@]}" "$SRC_URI" null:
            t1=$(now)
            printf '{"kind":"pull","who":"%s","ns":%d}\n' "$who" $(( t1 - t0 )) >>"$RESULTS"
        fi
        echo "  run $rep/$REPEAT pull $who: $(python3 -c 'import json,sys; print("%.3f s" % (json.loads(sys.argv[1])["ns"] / 1e9))' "$(tail -n 1 "$RESULTS")")" >&2
    done

    # Faults without the stream: the pure demand path.
    dst_start
    ctl policy background off >/dev/null
    ctl map 0 mem 0 "$PAGES" >/dev/null
    f=$("$FAULTS" --uri "$DST_URI" --count "$NFAULTS" --seed "$rep" --min-page $(( PAGES / 2 )) \
        --latencies "$TMP/lat.off" "$TMP/map" "$TMP/src.crc" "$PAGES") || die "faults failed: $f"
    printf '{"kind":"faults","bg":false,"run":%s,"status":%s}\n' "$f" "$(ctl status)" >>"$RESULTS"
    dst_stop
    # Faults while the stream runs at full speed.
    dst_start
    ctl map 0 mem 0 "$PAGES" >/dev/null
    f=$("$FAULTS" --uri "$DST_URI" --count "$NFAULTS" --seed "$rep" --min-page $(( PAGES / 2 )) \
        --latencies "$TMP/lat.on" "$TMP/map" "$TMP/src.crc" "$PAGES") || die "faults failed: $f"
    during=$(ctl status)
    final=$(timeout 300 "$CTL" "$CSOCK" wait-all-local) || die "wait-all-local failed"
    printf '{"kind":"faults","bg":true,"run":%s,"during":%s,"status":%s}\n' "$f" "$during" "$final" >>"$RESULTS"
    dst_stop
    echo "  run $rep/$REPEAT faults done" >&2
done

python3 - "$RESULTS" "$TMP/lat.off" "$TMP/lat.on" "$MIB" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
mib = int(sys.argv[4])
def lat(path):
    v = sorted(float(l) for l in open(path))
    q = lambda p: v[min(len(v) - 1, int(p * len(v)))]
    return len(v), q(0.5), q(0.99), v[-1]
pull = lambda who: statistics.median(r["ns"] / 1e9 for r in rows if r["kind"] == "pull" and r["who"] == who)
ours, cold, kit, kit1 = pull("ours"), pull("cold"), pull("nbdcopy"), pull("nbdcopy1")
# The destination's own clock: first map -> all local (its completion
# check runs every 100 ms, which the wall time above includes).
srv = statistics.median(r["status"]["elapsed_s"] for r in rows if r["kind"] == "pull" and r["who"] == "ours")
ratio = kit / ours
print("(a) background pull of %d MiB (medians)" % mib)
print("%-52s %9s %10s" % ("reader", "seconds", "MiB/s"))
print("%-52s %9.3f %10.0f" % ("nbd-pagesrv --mem-prealloc: map -> wait-all-local", ours, mib / ours))
print("%-52s %9.3f %10.0f" % ("  the same, destination's elapsed_s", srv, mib / srv))
print("%-52s %9.3f %10.0f" % ("nbd-pagesrv, cold store (no --mem-prealloc)", cold, mib / cold))
print("%-52s %9.3f %10.0f" % ("nbdcopy nbd://127.0.0.1:PORT/mem null: (defaults)", kit, mib / kit))
print("%-52s %9.3f %10.0f" % ("nbdcopy --connections=1 (context)", kit1, mib / kit1))
print("ratio ours/nbdcopy (wall times): %.2f  (goal >= 0.9: %s)" % (ratio, "met" if ratio >= 0.9 else "NOT met"))
print("ratio cold store/nbdcopy: %.2f  (first writes to fresh memory included)" % (kit / cold))
print()
print("(b) demand faults: 4 KiB reads at queue depth 1 of still-remote slots, client-side latency")
print("%-30s %7s %9s %9s %9s  %s" % ("background stream", "faults", "p50 us", "p99 us", "max us", "server fetch p50/p99 us"))
for bg, path in ((False, sys.argv[2]), (True, sys.argv[3])):
    n, p50, p99, mx = lat(path)
    fr = [r for r in rows if r["kind"] == "faults" and r["bg"] == bg]
    srv = "/".join("%d" % statistics.median(r["status"]["fetch_latency_us"][k] for r in fr) for k in ("p50", "p99"))
    label = "off" if not bg else "on, full speed"
    print("%-30s %7d %9.0f %9.0f %9.0f  %s" % (label, n, p50, p99, mx, srv))
on = [r for r in rows if r["kind"] == "faults" and r["bg"]]
still = sum(1 for r in on if r["during"]["pages"]["remote"] > 0)
print("stream still running when the faults ended: %d of %d runs; stream time %s s" % (
    still, len(on), "/".join("%.2f" % r["status"]["elapsed_s"] for r in on)))
PY
