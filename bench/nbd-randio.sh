#!/usr/bin/env bash
# nbd-randio.sh: 4 KiB random reads and writes at queue depth 1 and 32 against
# nbd-pagesrv ("ours") and nbdkit's memory plugin ("nbdkit", the best shipped
# alternative, run with its defaults), both on Unix sockets, same export size,
# same client (build/bench/nbd-randio). Each cell runs BENCH_REPEAT times,
# alternating servers, and the table shows medians.
#
# Environment (all optional):
#   SWAPCOPY_BUILD  build directory (default: <source>/build; make bench sets it)
#   BENCH_SECONDS   measured seconds per run (default 2)
#   BENCH_WARMUP    unmeasured warm-up seconds per run (default 0.5)
#   BENCH_REPEAT    runs per cell and server; the median is shown (default 5)
#   BENCH_SIZE      export size for both servers (default 1G)
#   BENCH_OURS_ARGS extra nbd-pagesrv arguments, e.g. "--mem-limit 1G"
#   BENCH_SELFTEST  1 = run nbdkit in place of nbd-pagesrv too, to check that
#                   the harness reports ratios near 1.0 for equal servers
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
: "${SWAPCOPY_BUILD:=$SRC/build}"
RUN_SECONDS=${BENCH_SECONDS:-2}
WARMUP=${BENCH_WARMUP:-0.5}
REPEAT=${BENCH_REPEAT:-5}
SIZE=${BENCH_SIZE:-1G}
SELFTEST=${BENCH_SELFTEST:-0}
read -r -a OURS_ARGS <<<"${BENCH_OURS_ARGS:-}"
CLIENT=$SWAPCOPY_BUILD/bench/nbd-randio
PAGESRV=$SWAPCOPY_BUILD/nbd-pagesrv

die() { echo "nbd-randio.sh: $*" >&2; exit 1; }
# die_log NAME MSG: die, showing the end of server NAME's log (the log's
# directory is removed on exit).
die_log() {
    echo "nbd-randio.sh: $2; last lines of the $1 server's log:" >&2
    tail -n 20 "$TMP/$1.log" >&2
    exit 1
}

[[ -x $CLIENT ]] || die "$CLIENT not found: run 'make' first (or set SWAPCOPY_BUILD)"
if [[ $SELFTEST != 1 && ! -x $PAGESRV ]]; then
    die "$PAGESRV not found: run 'make' first (or BENCH_SELFTEST=1 to test the harness with nbdkit only)"
fi
command -v nbdkit >/dev/null || die "nbdkit not installed: apt-get install nbdkit"
command -v nbdinfo >/dev/null || die "nbdinfo not installed: apt-get install libnbd-bin"
command -v python3 >/dev/null || die "python3 not installed: apt-get install python3"
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || die "BENCH_REPEAT must be a positive integer, not '$REPEAT'"

TMP=$(mktemp -d /tmp/nbd-randio.XXXXXX)
PIDS=()
cleanup() {
    local pid i
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || continue
        for (( i=0; i<50; i++ )); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

OURS_SOCK=$TMP/ours.sock
KIT_SOCK=$TMP/nbdkit.sock
declare -A URI=(
    [ours]="nbd+unix:///?socket=$OURS_SOCK"
    [nbdkit]="nbd+unix:///?socket=$KIT_SOCK"
)
declare -A PID=()

# start NAME CMD...: run a server in the background, log to $TMP/NAME.log and
# wait up to 10 s until it answers NBD.
start() {
    local name=$1 i; shift
    "$@" >"$TMP/$name.log" 2>&1 &
    PID[$name]=$!
    PIDS+=("$!")
    for (( i=0; i<100; i++ )); do
        nbdinfo --size "${URI[$name]}" >/dev/null 2>&1 && return 0
        kill -0 "${PID[$name]}" 2>/dev/null ||
            die_log "$name" "the $name server exited at startup ($*)"
        sleep 0.1
    done
    die "$name server did not answer on ${URI[$name]} within 10 s ($*)"
}

if [[ $SELFTEST == 1 ]]; then
    start ours nbdkit -f --exit-with-parent -U "$OURS_SOCK" memory "$SIZE"
    OURS_DESC="nbdkit memory (BENCH_SELFTEST=1: harness check, NOT nbd-pagesrv)"
else
    start ours "$PAGESRV" --size "$SIZE" --socket "$OURS_SOCK" "${OURS_ARGS[@]}"
    OURS_DESC="nbd-pagesrv --size $SIZE ${OURS_ARGS[*]} ($PAGESRV, source $(git -C "$SRC" describe --always --dirty 2>/dev/null || echo 'not a git checkout'))"
fi
start nbdkit nbdkit -f --exit-with-parent -U "$KIT_SOCK" memory "$SIZE"

# Sum of user+system CPU ticks of a process, all threads included.
cpu_ticks() {
    local stat
    stat=$(<"/proc/$1/stat") || die "cannot read /proc/$1/stat: the server process $1 has exited"
    stat=${stat##*) }        # drop "pid (comm) ", comm may contain spaces
    local -a f
    read -r -a f <<<"$stat"
    echo $(( f[11] + f[12] ))   # fields 14 and 15 (utime, stime) of proc(5)
}

echo "== NBD server: 4 KiB random I/O (bench/nbd-randio.sh) =="
echo "date:     $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "machine:  $(nproc) CPUs (no pinning: client and server share them), kernel $(uname -r)"
echo "load:     $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min) at start; other work on the machine skews results"
echo "ours:     $OURS_DESC"
echo "nbdkit:   $(nbdkit --version) memory plugin, defaults (thread model parallel, 16 threads per connection)"
echo "client:   $CLIENT, libnbd $(pkg-config --modversion libnbd 2>/dev/null || echo '?'), one connection"
echo "runs:     export $SIZE each, range prefilled with random data once, then per run ${WARMUP} s warm-up + ${RUN_SECONDS} s measured;"
echo "          $REPEAT runs per cell and server, servers alternating; medians shown"
echo "goal:     ours/nbdkit IOPS ratio >= 1.0 and ours/nbdkit p99 ratio <= 1.0 in every row"
echo "noise:    BENCH_SELFTEST=1 runs nbdkit on both sides and shows how far apart equal servers land"
echo

HZ=$(getconf CLK_TCK)
for name in ours nbdkit; do
    "$CLIENT" --uri "${URI[$name]}" --prefill-only ||
        die_log "$name" "prefilling the $name server failed"
done

RESULTS=$TMP/results.jsonl
for (( rep=1; rep<=REPEAT; rep++ )); do
    # Alternate which server goes first so drift (thermal, page cache, other
    # load) does not always favour the same one.
    if (( rep % 2 )); then order=(ours nbdkit); else order=(nbdkit ours); fi
    for op in read write; do
        for qd in 1 32; do
            for name in "${order[@]}"; do
                t0=$(cpu_ticks "${PID[$name]}")
                w0=$(date +%s.%N)
                line=$("$CLIENT" --uri "${URI[$name]}" --op "$op" --qd "$qd" \
                        --seconds "$RUN_SECONDS" --warmup "$WARMUP" --seed "$rep" \
                        --no-prefill --json) ||
                    die_log "$name" "$op qd $qd against the $name server failed"
                w1=$(date +%s.%N)
                t1=$(cpu_ticks "${PID[$name]}")
                printf '{"server":"%s","rep":%d,"ticks":%d,"hz":%d,"w0":%s,"w1":%s,"run":%s}\n' \
                    "$name" "$rep" "$(( t1 - t0 ))" "$HZ" "$w0" "$w1" "$line" >>"$RESULTS"
                printf '  run %d/%d %-5s qd %-2s %-6s %s\n' "$rep" "$REPEAT" "$op" "$qd" "$name" \
                    "$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print("%.0f IOPS p50 %.1f us p99 %.1f us" % (r["iops"], r["lat_us"]["p50"], r["lat_us"]["p99"]))' "$line")" >&2
            done
        done
    done
done

echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for r in rows:
    r["cpu_s"] = r["ticks"] / r["hz"]
    r["wall_s"] = r["w1"] - r["w0"]
def med(server, op, qd, f):
    return statistics.median(f(r) for r in rows
                             if r["server"] == server and r["run"]["op"] == op and r["run"]["qd"] == qd)
print("%-5s %3s %10s %11s %7s %15s %17s %7s  %s" % (
    "op", "qd", "ours IOPS", "nbdkit IOPS", "IOPS x", "ours p50/p99", "nbdkit p50/p99", "p99 x", "goal"))
all_met = True
cpu_lines = []
spread_lines = []
for op in ("read", "write"):
    for qd in (1, 32):
        get = lambda s, f: med(s, op, qd, f)
        oi, ki = get("ours", lambda r: r["run"]["iops"]), get("nbdkit", lambda r: r["run"]["iops"])
        o50, o99 = get("ours", lambda r: r["run"]["lat_us"]["p50"]), get("ours", lambda r: r["run"]["lat_us"]["p99"])
        k50, k99 = get("nbdkit", lambda r: r["run"]["lat_us"]["p50"]), get("nbdkit", lambda r: r["run"]["lat_us"]["p99"])
        met = oi / ki >= 1.0 and o99 / k99 <= 1.0
        all_met &= met
        print("%-5s %3d %10.0f %11.0f %7.2f %15s %17s %7.2f  %s" % (
            op, qd, oi, ki, oi / ki, "%.1f/%.1f" % (o50, o99), "%.1f/%.1f" % (k50, k99),
            o99 / k99, "met" if met else "NOT met"))
        # Server CPU per request: CPU time over the whole client run (warm-up
        # included) divided by the requests that run should have completed at
        # the measured rate; an estimate, 10 ms tick resolution.
        def cpu(s):
            pct = get(s, lambda r: 100 * r["cpu_s"] / r["wall_s"])
            per = get(s, lambda r: 1e6 * r["cpu_s"] / (r["run"]["iops"] * r["wall_s"]))
            return "%6.0f%% %8.1f" % (pct, per)
        cpu_lines.append("%-5s %3d   %s   %s" % (op, qd, cpu("ours"), cpu("nbdkit")))
        def spread(s):
            v = [r["run"]["iops"] for r in rows
                 if r["server"] == s and r["run"]["op"] == op and r["run"]["qd"] == qd]
            return "%7.0f..%-7.0f" % (min(v), max(v))
        spread_lines.append("%-5s %3d   %s   %s" % (op, qd, spread("ours"), spread("nbdkit")))
print("units: IOPS in 4 KiB requests/s, latency in microseconds (client-side, per request); x = ours/nbdkit")
print("goal (IOPS x >= 1.0 and p99 x <= 1.0): %s" % ("met in every row" if all_met else "NOT met in every row"))
print()
print("server CPU (medians): % of one CPU during the run, and CPU microseconds per request (estimate)")
print("%-5s %3s   %-13s   %-13s" % ("op", "qd", "ours: CPU us/req", "nbdkit: CPU us/req"))
for l in cpu_lines:
    print(l)
print()
print("IOPS spread over the runs (min..max); a wide spread means the median is fragile")
print("%-5s %3s   %-16s   %-16s" % ("op", "qd", "ours", "nbdkit"))
for l in spread_lines:
    print(l)
PY
