#!/usr/bin/env bats
# nbd-pagesrv's migration roles: a source serving a RAM image read-only on
# TCP (127.0.0.1 only), and a destination swap device that pulls the pages
# its slots map to, in the background and on demand. Every test starts its
# own source (on a port of its own) and destination (on a Unix socket), and
# checks data byte for byte against the image mkimage wrote, by the
# per-page checksum list or by cmp.
#
# Test programs (tests/progs): mkimage (source images), pull-plan (shuffled
# slot maps), pull-verify (slot-order check of a whole device), pull-faults
# (timed random 4 KiB reads), pull-rw (single writes/trims/checks),
# pull-expect (the image a finished destination must equal).

load lib/common

bats_require_minimum_version 1.5.0   # run ! CMD

setup_file() {
    local t
    for t in nbdkit nbdinfo nbdcopy nbdfuse losetup python3 timeout cmp; do
        command -v "$t" >/dev/null ||
            { echo "prerequisite '$t' is missing: run scripts/install-deps.sh" >&2; return 1; }
    done
    for t in mkimage pull-plan pull-verify pull-faults pull-rw pull-expect; do
        [ -x "$SWAPCOPY_BUILD/tests/$t" ] ||
            { echo "test program $SWAPCOPY_BUILD/tests/$t is missing: run make" >&2; return 1; }
    done
}

setup() {
    T=$BATS_TEST_TMPDIR
    # Fixed per run unless PULL_SEED is given; printed when a test fails.
    SEED=${PULL_SEED:-$(( RANDOM + 1 ))}
    echo "# seed $SEED (rerun with PULL_SEED=$SEED)"
}

teardown() {
    if [ -z "${BATS_TEST_COMPLETED:-}" ]; then
        local f
        for f in "$T"/src*.log "$T"/pagesrv.log "$T"/nbdkit*.log; do
            [ -f "$f" ] || continue
            echo "--- last lines of $f:"
            tail -n 25 "$f"
        done
    fi
    run_deferred
}

ctl() { "$PAGESRV_CTL" "$CTL_SOCK" "$@"; }

# jfield JSON PATH: one value of a JSON document, e.g. pages.demand or
# exports.0.size (list indexes are numbers).
jfield() {
    python3 -c 'import json,sys
v=json.loads(sys.argv[1])
for k in sys.argv[2].split("."): v = v[int(k)] if isinstance(v, list) else v[k]
print(str(v).lower() if isinstance(v,bool) else v)' "$1" "$2"
}

status_field() { jfield "$(ctl status)" "$1"; }

# minor_faults PID: the process's minor page faults so far (/proc/PID/stat).
minor_faults() { awk '{ print $10 }' "/proc/$1/stat"; }

local_at_least() { [ "$(status_field pages.local)" -ge "$1" ]; }

# mk_src MIB [mkimage options]: the source image $IMG and its checksum list
# $CRC; sets PAGES.
mk_src() {
    local mib=$1; shift
    IMG=$T/src.img CRC=$T/src.crc
    "$TESTBIN/mkimage" --seed "$SEED" "$@" "$IMG" "$mib" "$CRC"
    PAGES=$(( mib * 256 ))
}

# src_start [--port PORT] [nbd-pagesrv options]: serve $IMG as export "mem"
# on 127.0.0.1, on a random free port (retrying if it is busy) or on PORT
# (retrying while it is still held). Readiness comes from the log, not from
# a connection, so --exit-when-idle sees no client but the destination.
# Sets SRC_PID, SRC_PORT, SRC_LOG.
src_start() {
    local fixed='' try i port log
    if [ "${1:-}" = --port ]; then fixed=$2; shift 2; fi
    for (( try=0; try<20; try++ )); do
        port=${fixed:-$(free_port)}
        log=$T/src.$port.$try.log
        "$PAGESRV" --export "mem=$IMG" --listen "127.0.0.1:$port" "$@" >"$log" 2>&1 &
        SRC_PID=$!
        defer kill_wait "$SRC_PID"
        SRC_PORT=$port SRC_LOG=$log
        for (( i=0; i<100; i++ )); do
            grep -q "serving NBD on TCP 127.0.0.1:$port" "$log" && return 0
            kill -0 "$SRC_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$SRC_PID" 2>/dev/null; then
            echo "the source did not report listening on 127.0.0.1:$port within 10 s:"
            cat "$log"
            return 1
        fi
        grep -q "in use" "$log" || { echo "the source failed to start:"; cat "$log"; return 1; }
        sleep 0.2
    done
    echo "no usable port for the source after 20 tries (last log: $log)"
    return 1
}

# dst_start SLOTS [nbd-pagesrv options]: the destination swap device of SLOTS
# 4 KiB slots pulling from the running source. Sets URI (and what
# pagesrv_start sets).
dst_start() {
    local slots=$1; shift
    SLOTS=$slots
    pagesrv_start --size $(( slots * 4096 )) --src "127.0.0.1:$SRC_PORT" "$@"
    URI="nbd+unix:///swap?socket=$NBD_SOCK"
}

# map_file FILE: one 'map' command per "SLOT PAGE COUNT" line.
map_file() {
    local s p c out
    while read -r s p c; do
        out=$(ctl map "$s" mem "$p" "$c") || { echo "map $s mem $p $c failed: $out"; return 1; }
    done <"$1"
}

# wait_local SECS: wait-all-local, failing (with the status) after SECS.
wait_local() {
    if ! timeout "$1" "$PAGESRV_CTL" "$CTL_SOCK" wait-all-local >"$T/final.json"; then
        echo "wait-all-local did not answer within $1 s; status now:"
        ctl status
        return 1
    fi
}

# slot_of_page PAGE: the slot the map file $MAP gives source page PAGE.
slot_of_page() {
    awk -v P="$1" '$2 <= P && P < $2 + $3 { print $1 + P - $2; found=1; exit }
                   END { if (!found) exit 1 }' "$MAP"
}

# data_pages: source pages that are not all zeros, one a line.
data_pages() {
    local z
    z=$(python3 -c 'import zlib; print("%08x" % zlib.crc32(bytes(4096)))')
    awk -v z="$z" '$2 != z { print $1 }' "$CRC"
}

verify_all() {
    "$TESTBIN/pull-verify" --uri "$URI" "$@" "$MAP" "$CRC" "$SLOTS"
}

@test "mkimage: random, written-zero, hole and repeated pages, and a matching checksum list" {
    "$TESTBIN/mkimage" --seed 5 "$T/a.img" 8 "$T/a.crc"
    [ "$(stat -c %s "$T/a.img")" -eq $(( 8 << 20 )) ]
    [ "$(wc -l <"$T/a.crc")" -eq 2048 ]
    # Every checksum is right, and each kind of page is there: holes (as
    # SEEK_HOLE sees them), zero pages that are data, duplicated data pages.
    python3 - "$T/a.img" "$T/a.crc" <<'PY'
import os, sys, zlib
img, crcs = sys.argv[1], [l.split() for l in open(sys.argv[2])]
fd = os.open(img, os.O_RDONLY)
size = os.fstat(fd).st_size
hole = [False] * (size // 4096)
off = 0
while off < size:
    h = os.lseek(fd, off, os.SEEK_HOLE)
    if h >= size:
        break
    try:
        d = os.lseek(fd, h, os.SEEK_DATA)
    except OSError:
        d = size
    for p in range(h // 4096, (d + 4095) // 4096):
        hole[p] = True
    off = d
zero = bytes(4096)
seen, dup, holes, zdata = set(), 0, 0, 0
for i, (p, c) in enumerate(crcs):
    data = os.pread(fd, 4096, i * 4096)
    assert int(p) == i, "line %d names page %s" % (i, p)
    assert int(c, 16) == zlib.crc32(data), "page %d: checksum %s is wrong" % (i, c)
    if hole[i]:
        assert data == zero, "hole page %d is not zero" % i
        holes += 1
    elif data == zero:
        zdata += 1
    elif data in seen:
        dup += 1
    else:
        seen.add(data)
print("holes %d, zero data %d, duplicates %d, distinct data %d" % (holes, zdata, dup, len(seen)))
assert holes > 0 and zdata > 0 and dup > 0 and len(seen) > 0, "a kind of page is missing"
PY
    # Same seed, same image; another seed, another image.
    "$TESTBIN/mkimage" --seed 5 "$T/b.img" 8 "$T/b.crc"
    cmp "$T/a.img" "$T/b.img"
    "$TESTBIN/mkimage" --seed 6 "$T/c.img" 8 "$T/c.crc"
    if cmp -s "$T/a.img" "$T/c.img"; then echo "seeds 5 and 6 gave the same image"; return 1; fi
    # --all-random: no zero page at all.
    "$TESTBIN/mkimage" --all-random "$T/r.img" 4 "$T/r.crc"
    z=$(python3 -c 'import zlib; print("%08x" % zlib.crc32(bytes(4096)))')
    if grep -q " $z\$" "$T/r.crc"; then echo "--all-random wrote a zero page"; return 1; fi
}

@test "source: the image's holes are reported as hole,zero extents; data is served read-only" {
    mk_src 16
    src_start
    # The hole pages by the checksum list and SEEK_HOLE must be exactly the
    # hole|zero (type 3) extents the source reports.
    holes=$(python3 - "$IMG" <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY); size = os.fstat(fd).st_size; off = n = 0
while off < size:
    h = os.lseek(fd, off, os.SEEK_HOLE)
    if h >= size: break
    try: d = os.lseek(fd, h, os.SEEK_DATA)
    except OSError: d = size
    n += d - h; off = d
print(n)
PY
)
    [ "$holes" -gt 0 ]
    reported=$(nbdinfo --map "nbd://127.0.0.1:$SRC_PORT/mem" | awk '$3 == 3 { n += $2 } END { print n + 0 }')
    echo "holes in the file: $holes bytes; reported hole,zero: $reported bytes"
    [ "$reported" -eq "$holes" ]
    nbdcopy "nbd://127.0.0.1:$SRC_PORT/mem" "$T/copy.img"
    cmp "$IMG" "$T/copy.img"
    info=$(nbdinfo --json "nbd://127.0.0.1:$SRC_PORT/mem")
    [ "$(jfield "$info" exports.0.is_read_only)" = true ]
}

@test "source: --exports-on-stdin waits, listening nowhere, until told its export; told none, it exits" {
    mk_src 4
    port=$(free_port)
    # Told nothing: it exits 0, serving nothing, having listened nowhere.
    run "$PAGESRV" --exports-on-stdin --listen "127.0.0.1:$port" </dev/null
    [ "$status" -eq 0 ]
    [[ "$output" == *"standard input ended with no export: nothing to serve"* ]]
    [[ "$output" != *"serving NBD"* ]]
    run "$PAGESRV" --exports-on-stdin --export "mem=$IMG" --listen "127.0.0.1:$port" </dev/null
    [ "$status" -ne 0 ]
    [[ "$output" == *"--exports-on-stdin replaces --export"* ]]
    # Started ahead, then told: it serves exactly that file.
    mkfifo "$T/exports"
    "$PAGESRV" --exports-on-stdin --listen "127.0.0.1:$port" <"$T/exports" >"$T/ahead.log" 2>&1 &
    pid=$!
    defer kill_wait "$pid"
    exec {w}>"$T/exports"
    sleep 0.5
    kill -0 "$pid"
    run ! port_bound "$port"
    printf 'mem=%s\n\n' "$IMG" >&$w
    exec {w}>&-
    wait_for grep -q "serving NBD on TCP 127.0.0.1:$port" "$T/ahead.log"
    nbdcopy "nbd://127.0.0.1:$port/mem" "$T/copy.img"
    cmp "$IMG" "$T/copy.img"
}

@test "pull: a shuffled map is pulled byte for byte (libnbd, nbdcopy and the kernel's view)" {
    mk_src 64
    SLOTS=20000 MAP=$T/map
    "$TESTBIN/pull-plan" --seed "$SEED" "$PAGES" "$SLOTS" >"$MAP"
    echo "$(wc -l <"$MAP") map commands"
    src_start
    dst_start "$SLOTS" --mem-limit 1G
    map_file "$MAP"
    # First read while the stream runs (demand faults mixed in), then again
    # once everything is local.
    verify_all
    wait_local 60
    final=$(cat "$T/final.json")
    echo "final status: $final"
    [ "$(jfield "$final" state)" = complete ]
    [ "$(jfield "$final" pages.total)" -eq "$PAGES" ]
    [ "$(jfield "$final" pages.local)" -eq "$PAGES" ]
    [ "$(jfield "$final" pages.remote)" -eq 0 ]
    # The image's holes are installed as zero pages without a transfer
    # (by the stream, which at full speed is far ahead of the reads above).
    [ "$(jfield "$final" pages.streamed)" -gt 0 ]
    [ "$(jfield "$final" pages.zero)" -gt 0 ]
    verify_all
    # The whole device against the image it must equal, with cmp.
    "$TESTBIN/pull-expect" "$IMG" "$MAP" "$SLOTS" "$T/expected.img"
    nbdcopy "$URI" "$T/got.img"
    cmp "$T/expected.img" "$T/got.img"
    # The kernel's view: the export as a block device.
    source "$SWAPCOPY_SRC/scripts/lib/blockdev.sh"
    dev=$(blockdev_attach "$NBD_SOCK" "$T/bdev")
    defer blockdev_detach "$T/bdev"
    echo "attached as $dev"
    [ -b "$dev" ]
    cmp "$T/expected.img" "$dev"
    "$TESTBIN/pull-verify" --file "$dev" "$MAP" "$CRC" "$SLOTS"
}

@test "pull: pages mapped after the stream went past them, or after completion, are pulled too" {
    mk_src 16 --all-random
    SLOTS=8192 MAP=$T/map
    src_start
    dst_start "$SLOTS"
    # A slow stream over the upper pages first...
    ctl policy bandwidth 4 >/dev/null
    ctl map 0 mem 2048 1024
    echo "0 2048 1024" >"$MAP"
    wait_for local_at_least 1
    # ...then pages below where it already is (a guest swaps out as it goes).
    ctl map 2000 mem 0 16
    echo "2000 0 16" >>"$MAP"
    ctl policy bandwidth 0 >/dev/null
    wait_local 30
    [ "$(jfield "$(cat "$T/final.json")" pages.local)" -eq 1040 ]
    verify_all
    # A map after completion starts pulling again.
    ctl map 5000 mem 3500 100
    echo "5000 3500 100" >>"$MAP"
    wait_local 30
    [ "$(jfield "$(cat "$T/final.json")" pages.local)" -eq 1140 ]
    verify_all
}

@test "pull: demand faults with background streaming off; wait-all-local waits for it" {
    mk_src 32
    SLOTS=10000 MAP=$T/map
    "$TESTBIN/pull-plan" --seed "$SEED" "$PAGES" "$SLOTS" >"$MAP"
    src_start
    dst_start "$SLOTS"
    ctl policy background off >/dev/null
    map_file "$MAP"
    run "$TESTBIN/pull-faults" --uri "$URI" --count 5 --seed "$SEED" "$MAP" "$CRC" "$SLOTS"
    echo "$output"
    [ "$status" -eq 0 ]
    st=$(ctl status)
    echo "$st"
    [ "$(jfield "$st" state)" = demand-only ]
    [ "$(jfield "$st" pages.demand)" -gt 0 ]
    [ "$(jfield "$st" pages.streamed)" -eq 0 ]
    [ "$(jfield "$st" pages.remote)" -gt 0 ]
    # Nothing pulls the rest while background is off.
    run timeout 3 "$PAGESRV_CTL" "$CTL_SOCK" wait-all-local
    [ "$status" -eq 124 ]
    [ "$(status_field pages.streamed)" -eq 0 ]
    ctl policy background on >/dev/null
    wait_local 60
    [ "$(jfield "$(cat "$T/final.json")" pages.streamed)" -gt 0 ]
    verify_all
}

@test "pull: demand faults are served promptly while the background stream runs at full speed" {
    mk_src 512 --all-random
    SLOTS=$PAGES MAP=$T/map
    echo "0 0 $PAGES" >"$MAP"
    src_start
    dst_start "$SLOTS" --mem-limit 1G
    ctl map 0 mem 0 "$PAGES"
    # Reads of pages in the upper half: the stream goes in page order, so
    # they are still remote when the reads start.
    faults=$("$TESTBIN/pull-faults" --uri "$URI" --count 100 --seed "$SEED" \
             --min-page $(( PAGES / 2 )) "$MAP" "$CRC" "$SLOTS")
    during=$(ctl status)
    wait_local 120
    final=$(cat "$T/final.json")
    echo "faults: $faults"
    echo "status right after the faults: $during"
    stream_s=$(jfield "$final" elapsed_s)
    max_us=$(jfield "$faults" max_us)
    printf '# 100 faults during a %s s stream of %d MiB: p50 %s us, p99 %s us, max %s us\n' \
        "$stream_s" $(( PAGES / 256 )) "$(jfield "$faults" p50_us)" "$(jfield "$faults" p99_us)" \
        "$max_us" >&3
    [ "$(jfield "$faults" ok)" -eq 100 ]
    # The faults overlapped the stream (it was not finished when they were),
    # and at least some were real demand fetches.
    [ "$(jfield "$during" pages.remote)" -gt 0 ]
    [ "$(jfield "$final" pages.demand)" -gt 0 ]
    # If a fault waited for the stream to come by (queued behind it), the
    # first one, for a page in the upper half issued as the stream started,
    # would take at least the half of the stream's time it needs to get
    # there. Served on its own, every fault takes a small fraction of that:
    # a quarter still leaves room for scheduling noise on a busy machine.
    python3 -c 'import sys; m, s = float(sys.argv[1]), float(sys.argv[2])
sys.exit(0 if m < s * 1e6 / 4 else "slowest fault %.0f us is not below a quarter of the %.3f s stream" % (m, s))' \
        "$max_us" "$stream_s"
    cmp "$IMG" <(nbdcopy "$URI" -)
}

@test "pull: source killed mid-stream and restarted; faults wait for it or fail with EIO, never wrong data" {
    mk_src 64 --all-random
    SLOTS=18000 MAP=$T/map
    "$TESTBIN/pull-plan" --seed "$SEED" "$PAGES" "$SLOTS" >"$MAP"
    src_start
    dst_start "$SLOTS"
    # Everything mapped first, then a slow stream (64 MiB take ~16 s), so
    # the kill lands mid-stream even when a busy machine makes each status
    # check take a second.
    ctl policy background off >/dev/null
    map_file "$MAP"
    ctl policy bandwidth 4 >/dev/null
    ctl policy background on >/dev/null
    wait_for local_at_least 1024
    kill -KILL "$SRC_PID"
    wait "$SRC_PID" 2>/dev/null || true
    lost() { [ "$(status_field state)" = source-lost ]; }
    wait_for lost
    st=$(ctl status)
    echo "after the kill: $st"
    [ "$(jfield "$st" pages.remote)" -gt 0 ]
    # The upper pages are not here yet (the stream goes in page order).
    slot_a=$(slot_of_page $(( PAGES - 10 )))
    slot_b=$(slot_of_page $(( PAGES - 1000 )))
    # A read of a missing page waits for the source...
    "$TESTBIN/pull-faults" --uri "$URI" --slot "$slot_a" "$MAP" "$CRC" "$SLOTS" >"$T/wait.out" 2>&1 &
    reader=$!
    defer kill_wait "$reader"
    sleep 2
    kill -0 "$reader"
    # ...and with a short fault timeout fails with EIO instead of guessing.
    ctl policy fault-timeout 1 >/dev/null
    run timeout 30 "$TESTBIN/pull-faults" --uri "$URI" --slot "$slot_b" "$MAP" "$CRC" "$SLOTS"
    echo "$output"
    [ "$status" -eq 3 ]
    [[ $output == *'"first_errno":"EIO"'* ]]
    ctl policy fault-timeout 60 >/dev/null
    kill -0 "$reader"
    # The source comes back on the same port: the waiting read gets the
    # right page, the failed one can be read now, and the pull completes.
    src_start --port "$SRC_PORT"
    wait "$reader" || { echo "the waiting read failed:"; cat "$T/wait.out"; return 1; }
    cat "$T/wait.out"
    "$TESTBIN/pull-faults" --uri "$URI" --slot "$slot_b" "$MAP" "$CRC" "$SLOTS"
    ctl policy bandwidth 0 >/dev/null
    wait_local 60
    final=$(cat "$T/final.json")
    [ "$(jfield "$final" reconnects)" -gt 0 ]
    [ "$(jfield "$final" pages.local)" -eq "$PAGES" ]
    verify_all
    "$TESTBIN/pull-expect" "$IMG" "$MAP" "$SLOTS" "$T/expected.img"
    cmp "$T/expected.img" <(nbdcopy "$URI" -)
}

@test "pull: a read waiting for a missing page gets it when the stream brings the page first" {
    mk_src 16 --all-random
    SLOTS=$PAGES MAP=$T/map
    echo "0 0 $PAGES" >"$MAP"
    src_start
    dst_start "$SLOTS"
    ctl policy background off >/dev/null
    ctl map 0 mem 0 "$PAGES"
    kill -KILL "$SRC_PID"
    wait "$SRC_PID" 2>/dev/null || true
    "$TESTBIN/pull-faults" --uri "$URI" --slot 3000 "$MAP" "$CRC" "$SLOTS" >"$T/wait.out" 2>&1 &
    reader=$!
    defer kill_wait "$reader"
    # The demand connection retries with a backoff doubling from 0.1 s to
    # 5 s: attempts about 3.1, 6.3 and 11.3 s after the loss. The source
    # comes back in that last gap; the stream, off until now, connects at
    # once when turned on and brings every page (the waiting one too)
    # before the demand connection is back.
    sleep 7.5
    kill -0 "$reader"
    src_start --port "$SRC_PORT"
    ctl policy background on >/dev/null
    wait_local 30
    wait "$reader" || { echo "the waiting read failed although its page is local:"; cat "$T/wait.out"; return 1; }
    cat "$T/wait.out"
    verify_all
}

# sample_local FILE: append "NANOSECONDS LOCAL_PAGES" every ~20 ms until
# the destination says complete.
sample_local() {
    local st re='"local":([0-9]+)'
    while st=$(ctl status); do
        [[ $st =~ $re ]] && echo "$(date +%s%N) ${BASH_REMATCH[1]}" >>"$1"
        [[ $st == *'"state":"complete"'* ]] && return 0
        sleep 0.02
    done
}

@test "pull: policy bandwidth caps the stream, also right after the source comes back" {
    mk_src 16 --all-random
    SLOTS=$PAGES MAP=$T/map
    echo "0 0 $PAGES" >"$MAP"
    src_start
    dst_start "$SLOTS"
    ctl policy bandwidth 4 >/dev/null         # 1024 pages a second
    ctl map 0 mem 0 "$PAGES"
    sample_local "$T/samples" &
    sampler=$!
    defer kill_wait "$sampler"
    wait_for local_at_least 256
    kill -KILL "$SRC_PID"
    wait "$SRC_PID" 2>/dev/null || true
    # An outage long enough to pull everything left at the capped rate: a
    # cap that counts from the start of the stream would now allow a burst.
    sleep 3
    src_start --port "$SRC_PORT"
    wait_local 30
    wait "$sampler"
    # Between any two samples the stream may gain at most the cap's rate
    # times the time between them, plus 512 pages (chunks already in
    # flight, timer slack), before or after the outage.
    python3 - "$T/samples" <<'PY'
import sys
s = [tuple(map(int, l.split())) for l in open(sys.argv[1])]
over, a, b = max(((b[1] - a[1]) - (1024 * (b[0] - a[0]) / 1e9 + 512), a, b)
                 for i, a in enumerate(s) for b in s[i + 1:])
print("%d samples; worst: %d pages in %.0f ms from %d local (%+.0f pages over the cap)"
      % (len(s), b[1] - a[1], (b[0] - a[0]) / 1e6, a[1], over))
sys.exit(0 if over <= 0 else "the stream went faster than 4 MiB/s")
PY
    verify_all
}

@test "pull: map refuses a slot that holds a page the kernel wrote, and changes nothing" {
    mk_src 16
    SLOTS=$(( PAGES + 64 ))
    src_start
    dst_start "$SLOTS"
    ctl policy background off >/dev/null
    # Slot 10 holds a page swapped out to the device (another process's:
    # the device is the top-priority swap), slots 0-9 and 11-19 nothing.
    "$TESTBIN/pull-rw" "$URI" write 10 77
    run ctl map 0 mem 0 20
    echo "$output"
    [ "$status" -ne 0 ]
    [[ "$output" == *"slot 10 holds a page the kernel swapped out"* ]]
    [[ "$output" == *"nothing of this map was applied"* ]]
    "$TESTBIN/pull-rw" "$URI" check 10 fill 77
    ctl slot-states 0 20 | grep -q '"states":"EEEEEEEEEELEEEEEEEEE"'
    [ "$(status_field pages.total)" -eq 0 ]
    # The slots around it map as usual.
    ctl map 0 mem 0 10 >/dev/null
    ctl map 11 mem 11 9 >/dev/null
    "$TESTBIN/pull-rw" "$URI" check 5 image "$IMG" 5
    "$TESTBIN/pull-rw" "$URI" check 10 fill 77
}

@test "pull: guest writes and trims win over the source's pages; unmapped slots read zeros" {
    mk_src 16
    SLOTS=$(( PAGES + 64 )) MAP=$T/map
    "$TESTBIN/pull-plan" --seed "$SEED" "$PAGES" "$SLOTS" >"$MAP"
    src_start
    dst_start "$SLOTS"
    ctl policy background off >/dev/null
    map_file "$MAP"
    mapfile -t data < <(data_pages)
    [ "${#data[@]}" -gt 1600 ]   # data[1600] is used below
    a=$(slot_of_page "${data[100]}")       # written while remote
    d=$(slot_of_page "${data[600]}")       # read (fetched), then written
    e=$(slot_of_page "${data[1100]}")      # partly written while remote
    b=$(slot_of_page "${data[1600]}")      # trimmed while remote
    # Four slots in a row, trimmed together while remote.
    read -r f _ _ < <(awk '$3 >= 4 { print; exit }' "$MAP")
    # A slot no map command covers.
    c=$(python3 - "$MAP" "$SLOTS" <<'PY'
import sys
used = set()
for l in open(sys.argv[1]):
    s, p, n = map(int, l.split()); used.update(range(s, s + n))
print(min(set(range(int(sys.argv[2]))) - used))
PY
)
    echo "slots: write $a, fetch+write $d, partial $e, trim $b, trim range $f..$((f + 3)), unmapped $c"
    rw() { "$TESTBIN/pull-rw" "$URI" "$@"; }
    rw write "$a" 171
    rw check "$a" fill 171
    rw check "$d" image "$IMG" "${data[600]}"
    rw write "$d" 205
    rw check "$d" fill 205
    rw write "$e" 238 1024 512
    rw check "$e" image "$IMG" "${data[1100]}" 238 1024 512
    rw trim "$b" 1
    rw check "$b" zero
    rw trim "$f" 4
    for i in 0 1 2 3; do rw check $(( f + i )) zero; done
    rw check "$c" zero
    [ "$(status_field pages.streamed)" -eq 0 ]
    # Now let everything else arrive: none of it may overwrite the above.
    ctl policy background on >/dev/null
    wait_local 60
    rw check "$a" fill 171
    rw check "$d" fill 205
    rw check "$e" image "$IMG" "${data[1100]}" 238 1024 512
    rw check "$b" zero
    for i in 0 1 2 3; do rw check $(( f + i )) zero; done
    rw check "$c" zero
    verify_all --skip "$a" --skip "$d" --skip "$e" --skip "$b" \
        --skip "$f" --skip $(( f + 1 )) --skip $(( f + 2 )) --skip $(( f + 3 ))
}

@test "pull: trimming spilled slots reads zeros, gives the spill file's space back, and spares the neighbours" {
    mk_src 16 --all-random
    # One run in slot order, not a shuffled plan: a plan's gaps can leave
    # the trimmed range nearly empty (seed 3245 mapped only 163 of its
    # 600 slots), and this test is about what a trim of spilled slots
    # does, not about the map.
    SLOTS=5000 MAP=$T/map
    echo "0 0 $PAGES" >"$MAP"
    src_start
    # 1 MiB of RAM: all but 256 of the 4096 pages go to the spill file,
    # so at least 600 - 256 of the 600 trimmed slots are spilled.
    dst_start "$SLOTS" --mem-limit 1M --store "$T/spill"
    map_file "$MAP"
    wait_local 60
    file_before=$(stat_field store.file_pages)
    [ "$file_before" -gt 3000 ]
    blocks_before=$(stat -c %b "$T/spill")
    # 600 slots from 1000: not aligned to the store's 256-slot discard
    # steps.
    rw() { "$TESTBIN/pull-rw" "$URI" "$@"; }
    rw trim 1000 600
    file_after=$(stat_field store.file_pages)
    freed=$(( file_before - file_after ))
    echo "spilled slots trimmed: $freed; spill file blocks $blocks_before -> $(stat -c %b "$T/spill")"
    [ "$freed" -ge $(( 600 - 256 )) ]
    # Every trimmed spilled page gave its 4 KiB (8 blocks of 512) back.
    [ $(( blocks_before - $(stat -c %b "$T/spill") )) -eq $(( freed * 8 )) ]
    for s in 1000 1001 1255 1256 1599; do rw check "$s" zero; done
    skips=()
    for (( s = 1000; s < 1600; s++ )); do skips+=(--skip "$s"); done
    verify_all "${skips[@]}"
    # Written again after the trim, a slot holds the new page.
    rw write 1300 77
    rw check 1300 fill 77
}

@test "pull: a destination whose source is unreachable exits non-zero naming the address" {
    port=$(free_port)   # nothing listens there
    run timeout 30 "$PAGESRV" --size 4M --socket "$T/d.sock" --control "$T/c.sock" \
        --src "127.0.0.1:$port"
    echo "$output"
    [ "$status" -ne 0 ]
    [ "$status" -ne 124 ]                       # it did not hang
    [[ $output == *"127.0.0.1:$port"* ]]
    [ ! -e "$T/d.sock" ]
    run timeout 30 "$PAGESRV" --size 4M --socket "$T/d.sock" --src "no-port-here"
    echo "$output"
    [ "$status" -ne 0 ]
    [[ $output == *"no-port-here"* ]]
    # Something that accepts connections and never speaks NBD: the
    # handshake gives up after the fault timeout instead of hanging.
    port=$(free_port)
    hold_port "$port"
    start=$SECONDS
    run timeout 30 "$PAGESRV" --size 4M --socket "$T/d.sock" --src "127.0.0.1:$port" \
        --fault-timeout 2
    echo "$output"
    [ "$status" -ne 0 ]
    [ "$status" -ne 124 ]
    [ $(( SECONDS - start )) -lt 10 ]
    [[ $output == *"127.0.0.1:$port"*"did not complete the NBD handshake within 2.0 s"* ]]
}

@test "pull: with --src-later the destination starts before its source; map waits for the source to be up" {
    mk_src 16
    SLOTS=5000 MAP=$T/map
    "$TESTBIN/pull-plan" --seed "$SEED" "$PAGES" "$SLOTS" >"$MAP"
    port=$(free_port)   # nothing listens there yet
    SRC_PORT=$port
    dst_start "$SLOTS" --src-later
    grep -q "its exports will be listed at the first map" "$PAGESRV_LOG"
    # A map before the source is up is refused, naming the address, and
    # leaves nothing mapped.
    run ctl map 0 mem 0 1
    echo "$output"
    [[ $output == *"map refused"*"127.0.0.1:$port"* ]]
    [ "$(status_field state)" = idle ]
    src_start --port "$port"
    map_file "$MAP"
    wait_local 60
    "$TESTBIN/pull-verify" --uri "$URI" "$MAP" "$CRC" "$SLOTS"
    # --src-later means nothing without --src.
    run "$PAGESRV" --size 4M --socket "$T/x.sock" --src-later
    [ "$status" -ne 0 ]
    [[ $output == *"--src-later goes with --src"* ]]
}

@test "pull: --mem-prealloc maps the whole RAM pool before any page arrives, and the pull is byte for byte" {
    mk_src 16 --all-random
    SLOTS=5000 MAP=$T/map
    "$TESTBIN/pull-plan" --seed "$SEED" "$PAGES" "$SLOTS" >"$MAP"
    src_start
    dst_start "$SLOTS" --mem-limit 32M --mem-prealloc
    prealloc_done() { [ "$(stat_field store.prealloc_done)" = True ]; }
    wait_for prealloc_done
    [ "$(stat_field store.pool_pages)" -eq 8192 ]
    [ "$(stat_field store.ram_pages)" -eq 0 ]
    map_file "$MAP"
    wait_local 60
    "$TESTBIN/pull-verify" --uri "$URI" "$MAP" "$CRC" "$SLOTS"
    [ "$(stat_field store.ram_pages)" -eq "$PAGES" ]
    [ "$(stat_field store.pool_pages)" -eq 8192 ]
    run "$PAGESRV" --export "mem=$IMG" --listen 127.0.0.1:1 --mem-prealloc
    [ "$status" -ne 0 ]
    [[ $output == *"--mem-prealloc goes with --size"* ]]
}

# window_src HOLD-REGION-ARGS...: a process holding a region (hold-region),
# served by the source as the window /proc/PID/mem@ADDR+LEN, as a patched
# QEMU source serves its RAM. Sets WINDOW_LEN (and what src_start sets).
window_src() {
    local out=$T/hold.$RANDOM line pid
    "$TESTBIN/hold-region" "$@" >"$out" &
    pid=$!
    defer kill_wait "$pid"
    wait_for grep -q '^ADDR=' "$out"
    line=$(head -n 1 "$out")
    local addr=${line#ADDR=}; addr=${addr%% *}
    WINDOW_LEN=${line##*LEN=}
    IMG="/proc/$pid/mem@$addr+$WINDOW_LEN"
    src_start
}

# data_bytes: bytes the source's block status reports as data.
data_bytes() {
    nbdinfo --json --map "nbd://127.0.0.1:$SRC_PORT/mem" | python3 -c 'import json,sys
print(sum(e["length"] for e in json.load(sys.stdin) if not e["type"] & 2))'
}

@test "source: a window of a process's memory reports untouched pages as holes, and the pull skips them" {
    # The first page of every 64 (one per stream chunk) of a private
    # anonymous region written, the rest never touched: like an idle
    # guest's RAM behind a patched QEMU source.
    window_src --mib 16 --touch-every 64
    [ "$(data_bytes)" -eq $(( 64 * 4096 )) ]
    SLOTS=4096
    dst_start "$SLOTS"
    ctl map 0 mem 0 4096 >/dev/null
    wait_local 60
    final=$(cat "$T/final.json")
    [ "$(jfield "$final" pages.zero)" -eq $(( 4096 - 64 )) ]
    [ "$(jfield "$final" pages.streamed)" -eq 64 ]
    [ "$(jfield "$final" bytes_fetched)" -eq $(( 64 * 4096 )) ]
    cmp <(nbdcopy "nbd://127.0.0.1:$SRC_PORT/mem" -) <(nbdcopy "$URI" -)
    # Shared memory is never reported as holes: its pages live elsewhere.
    window_src --mib 4 --shared
    [ "$(data_bytes)" -eq "$WINDOW_LEN" ]
}

# kit_start [--OPTION...] [KEY=VALUE...]: nbdkit serving $IMG read-only as
# export "mem" on a free port; options (a filter, say) go before the
# plugin, parameters after it. Sets SRC_PORT. nbdkit's plain 'file FILE' export is named "", which the
# control protocol's whitespace-separated 'map SLOT EXPORT ...' cannot name
# (and nbdkit's -e does not rename it): dir= serves each file of a
# directory as an export named after the file.
kit_start() {
    local opts=() params=() a
    for a in "$@"; do
        if [[ $a == --* ]]; then opts+=("$a"); else params+=("$a"); fi
    done
    mkdir -p "$T/kit"
    ln -f "$IMG" "$T/kit/mem"
    for (( try=0; try<20; try++ )); do
        SRC_PORT=$(free_port)
        nbdkit -f --exit-with-parent -i 127.0.0.1 -p "$SRC_PORT" -r "${opts[@]}" file dir="$T/kit" "${params[@]}" \
            >"$T/nbdkit.$try.log" 2>&1 &
        kit=$!
        defer kill_wait "$kit"
        wait_for nbdinfo --list "nbd://127.0.0.1:$SRC_PORT" && break
        kill_wait "$kit"
    done
    nbdinfo --list "nbd://127.0.0.1:$SRC_PORT" | grep -q 'export="mem"'
}

@test "pull: a standard NBD server (nbdkit, read-only file) works as the source" {
    mk_src 32
    SLOTS=9000 MAP=$T/map
    "$TESTBIN/pull-plan" --seed "$SEED" "$PAGES" "$SLOTS" >"$MAP"
    kit_start
    dst_start "$SLOTS"
    # (Mapped before streaming starts: the incremental case has its own test.)
    ctl policy background off >/dev/null
    map_file "$MAP"
    ctl policy background on >/dev/null
    wait_local 60
    [ "$(jfield "$(cat "$T/final.json")" pages.local)" -eq "$PAGES" ]
    verify_all
    "$TESTBIN/pull-expect" "$IMG" "$MAP" "$SLOTS" "$T/expected.img"
    cmp "$T/expected.img" <(nbdcopy "$URI" -)
}

@test "pull: a source answering a third of its reads with EIO: reads get the page or EIO, the stream retries sparingly and completes" {
    [ -e /usr/lib/x86_64-linux-gnu/nbdkit/filters/nbdkit-error-filter.so ] ||
        ls /usr/lib/*/nbdkit/filters/nbdkit-error-filter.so >/dev/null ||
        { echo "nbdkit's error filter is missing (package nbdkit)"; return 1; }
    mk_src 16 --all-random
    SLOTS=$PAGES MAP=$T/map
    echo "0 0 $PAGES" >"$MAP"
    kit_start --filter=error error-pread=EIO error-pread-rate=33%
    dst_start "$SLOTS"
    ctl policy background off >/dev/null
    map_file "$MAP"
    # Demand reads: each is the source's page, or EIO when the source said
    # so; never anything else.
    good=0 failed=0
    for slot in $(seq 100 37 3000); do
        if out=$("$TESTBIN/pull-rw" "$URI" check "$slot" image "$IMG" "$slot" 2>&1); then
            good=$(( good + 1 ))
        else
            [[ $out == *EIO* ]] || { echo "slot $slot: $out"; return 1; }
            failed=$(( failed + 1 ))
        fi
    done
    echo "# demand reads: $good right, $failed EIO"
    [ "$good" -gt 0 ]
    [ "$failed" -gt 0 ]
    # The stream tries every failed chunk again, later, and gets there.
    ctl policy background on >/dev/null
    wait_local 120
    verify_all
    # Its warnings are sampled: the first few, then every hundredth.
    n=$(grep -c "answered error .* reading pages" "$PAGESRV_LOG" || true)
    echo "# stream error warnings: $n"
    [ "$n" -ge 1 ]
    [ "$n" -le 20 ]
}

@test "pull: a source with --exit-when-idle exits by itself once the destination has everything" {
    mk_src 16
    SLOTS=$PAGES MAP=$T/map
    echo "0 0 $PAGES" >"$MAP"
    src_start --exit-when-idle
    dst_start "$SLOTS"
    # The destination listed the exports at start and hung up: that is not
    # the end of the migration.
    sleep 1
    kill -0 "$SRC_PID" || { echo "the source exited before any page was mapped"; return 1; }
    ctl map 0 mem 0 "$PAGES"
    wait_local 60
    exited() { ! kill -0 "$SRC_PID" 2>/dev/null; }
    wait_for exited
    rc=0
    wait "$SRC_PID" || rc=$?
    [ "$rc" -eq 0 ]
    grep -q "exit-when-idle" "$SRC_LOG"
    # It left on the destination's word, not on a count of connections.
    grep -q "reports that it has every page" "$SRC_LOG"
    grep -q "told the source 127.0.0.1:$SRC_PORT that it is no longer needed" "$PAGESRV_LOG"
    # The destination keeps serving what it pulled.
    verify_all
}

@test "pull: a source restarted with other RAM is refused loudly; reads of missing pages fail, never wrong" {
    mk_src 16 --all-random
    SLOTS=$PAGES MAP=$T/map
    echo "0 0 $PAGES" >"$MAP"
    src_start
    dst_start "$SLOTS" --fault-timeout 3
    ctl policy background off >/dev/null
    map_file "$MAP"
    "$TESTBIN/pull-rw" "$URI" check 1 image "$IMG" 1
    grep -q "offers export 'mem' (16 MiB, RAM 'file:" "$PAGESRV_LOG"
    # The source goes away and another comes up on the same port, with an
    # export of the same name and size but other RAM (another file).
    kill -KILL "$SRC_PID"
    wait "$SRC_PID" 2>/dev/null || true
    "$TESTBIN/mkimage" --seed $(( SEED + 1 )) --all-random "$T/other.img" 16 "$T/other.crc" >/dev/null
    good_img=$IMG
    IMG=$T/other.img
    src_start --port "$SRC_PORT"
    IMG=$good_img
    # Its pages are not this guest's: a read of a missing page fails (the
    # guest would get SIGBUS and stop) instead of returning one of them.
    run "$TESTBIN/pull-rw" "$URI" check 500 image "$IMG" 500
    echo "$output"
    [ "$status" -ne 0 ]
    [[ $output == *EIO* ]]
    grep -q "now serves a different export 'mem'.*Refusing it" "$PAGESRV_LOG"
    [ "$(status_field state)" = source-lost ]
    # A page that was already here is still served.
    "$TESTBIN/pull-rw" "$URI" check 1 image "$IMG" 1
}

# iptables_rule on|off RULE...: insert the rule, or delete it if it is
# there (so that a deferred "off" is harmless).
iptables_rule() {
    local op=$1; shift
    if [ "$op" = on ]; then
        iptables -I "$@"
    elif iptables -C "$@" 2>/dev/null; then
        iptables -D "$@"
    fi
}

# drop_syns PORT on|off: new TCP connections to 127.0.0.1:PORT are dropped
# (SYNs vanish, as on a dead link) or let through again.
drop_syns() { iptables_rule "$2" INPUT -i lo -p tcp --dport "$1" --tcp-flags SYN,ACK,FIN,RST SYN -j DROP; }

# blackhole PORT on|off: every packet to or from 127.0.0.1:PORT vanishes (a
# link that died silently: no reset, no FIN), or flows again.
blackhole() {
    iptables_rule "$2" INPUT -i lo -p tcp --dport "$1" -j DROP
    iptables_rule "$2" INPUT -i lo -p tcp --sport "$1" -j DROP
}

# link_fault_setup MIB: for the link-fault tests, a source of MIB random
# MiB with --exit-when-idle, a destination with every page mapped and
# background streaming off, one page already read (the link works).
link_fault_setup() {
    command -v iptables >/dev/null || { echo "iptables is missing: run scripts/install-deps.sh"; return 1; }
    mk_src "$1" --all-random
    SLOTS=$PAGES MAP=$T/map
    echo "0 0 $PAGES" >"$MAP"
    src_start --exit-when-idle
    dst_start "$SLOTS" --fault-timeout 60
    ctl policy background off >/dev/null
    map_file "$MAP"
    "$TESTBIN/pull-rw" "$URI" check 1 image "$IMG" 1
}

@test "pull: a link that drops for 0.5, 5 and 30 s loses nothing, and the source waits for the destination's word" {
    command -v ss >/dev/null || { echo "ss is missing: apt-get install iproute2"; return 1; }
    link_fault_setup 64
    defer drop_syns "$SRC_PORT" off
    slot=100
    for blip in 0.5 5 30; do
        # The link goes: every connection to the source is reset, and new
        # ones get no answer.
        drop_syns "$SRC_PORT" on
        ss -K -t dst 127.0.0.1 dport = ":$SRC_PORT" >/dev/null
        # A read of a missing page while the link is down waits for it.
        "$TESTBIN/pull-rw" "$URI" check "$slot" image "$IMG" "$slot" &
        reader=$!
        sleep "$blip"
        kill -0 "$SRC_PID" || { echo "the source exited during a ${blip} s blip"; return 1; }
        [ "$(status_field state)" = source-lost ]
        drop_syns "$SRC_PORT" off
        wait "$reader" || { echo "the read waiting through the ${blip} s blip failed"; return 1; }
        echo "# ${blip} s blip: the waiting read got the source's page; reconnects $(status_field reconnects)"
        slot=$(( slot + 1000 ))
    done
    # Nothing was lost: everything arrives and reads right, and only then
    # does the source, told so, exit.
    kill -0 "$SRC_PID"
    ctl policy background on >/dev/null
    wait_local 120
    verify_all
    exited() { ! kill -0 "$SRC_PID" 2>/dev/null; }
    wait_for exited
    grep -q "reports that it has every page" "$SRC_LOG"
}

@test "markers: only the cookie of the arm in progress makes a page a marker; look-alikes stay data" {
    mk_src 16
    src_start
    dst_start 16384
    # No arm in progress: a page that looks like a marker is the guest's data.
    "$TESTBIN/marker-check" "$NBD_SOCK" 1234abcd 10 data
    "$PAGESRV_CTL" "$CTL_SOCK" markers 1234abcd
    "$TESTBIN/marker-check" "$NBD_SOCK" 1234abcd 11 marker
    [ "$(stat_field store.marker_pages)" -eq 1 ]
    # Another cookie, even while arming: data.
    "$TESTBIN/marker-check" "$NBD_SOCK" 99 12 data
    "$PAGESRV_CTL" "$CTL_SOCK" markers off
    "$TESTBIN/marker-check" "$NBD_SOCK" 1234abcd 13 data
    [ "$(stat_field store.marker_pages)" -eq 1 ]
}

@test "pull: a full spill file system leaves pages remote and every read right, never zeros" {
    # A real ext4 of 16 MiB for the spill file, 8 MiB of pool, 64 MiB to
    # pull: most pages can be stored nowhere. Each must still read back as
    # the source's page (fetched again and served), never as zeros.
    command -v mkfs.ext4 >/dev/null || { echo "mkfs.ext4 is missing: apt-get install e2fsprogs"; return 1; }
    truncate -s 16M "$T/fs.img"
    mkfs.ext4 -q -F "$T/fs.img"
    mkdir "$T/mnt"
    mount -o loop "$T/fs.img" "$T/mnt"
    defer umount "$T/mnt"
    mk_src 64 --all-random
    SLOTS=$PAGES MAP=$T/map
    echo "0 0 $PAGES" >"$MAP"
    src_start
    dst_start "$SLOTS" --mem-limit 8M --store "$T/mnt/spill"
    map_file "$MAP"
    # The stream runs into the full disk: wait until it has gone through.
    for (( i = 0; i < 300; i++ )); do
        grep -q "No space left on device" "$PAGESRV_LOG" && [ "$(stat_field store.remote_pages)" -lt "$PAGES" ] && break
        sleep 0.1
    done
    grep -q "No space left on device" "$PAGESRV_LOG"
    sleep 2
    remote=$(stat_field store.remote_pages)
    echo "pages still remote after the stream: $remote of $PAGES"
    [ "$remote" -gt 0 ]
    # Every page, stored or not, reads as the source's.
    verify_all
    # What could not be stored is still remote: nothing counts as local
    # that is not there.
    [ "$(stat_field store.remote_pages)" -gt 0 ]
    [ "$(status_field pages.remote)" -gt 0 ]
    # The log is sampled, not flooded.
    [ "$(grep -c "No space left on device" "$PAGESRV_LOG")" -lt 40 ]
}

@test "pull: a spill file on tmpfs is refused, saying why; a tmpfs TMPDIR is warned about" {
    mkdir "$T/shm"
    mount -t tmpfs -o size=8M tmpfs "$T/shm"
    defer umount "$T/shm"
    run timeout 30 "$PAGESRV" --size 4M --socket "$T/d.sock" --store "$T/shm/spill"
    echo "$output"
    [ "$status" -ne 0 ]
    [ "$status" -ne 124 ]
    [[ $output == *"$T/shm/spill"*"tmpfs"* ]]
    [ ! -e "$T/d.sock" ]
    # TMPDIR on tmpfs, no --store: a loud warning (a host booted from RAM
    # has no disk), and the daemon runs.
    env TMPDIR="$T/shm" "$PAGESRV" --size 4M --socket "$T/d.sock" >"$T/tmpdir.log" 2>&1 &
    pid=$!
    defer kill_wait "$pid"
    for (( i = 0; i < 100; i++ )); do [ -S "$T/d.sock" ] && break; sleep 0.1; done
    cat "$T/tmpdir.log"
    [ -S "$T/d.sock" ]
    grep -q "on tmpfs.*set TMPDIR or --store" "$T/tmpdir.log"
}

@test "pull: a link blackholed for 10 s is noticed within seconds, its connection recycled, nothing lost" {
    link_fault_setup 16
    defer blackhole "$SRC_PORT" off
    blackhole "$SRC_PORT" on
    # A read of a missing page goes out on the dead link and waits.
    "$TESTBIN/pull-rw" "$URI" check 500 image "$IMG" 500 &
    reader=$!
    sleep 10
    # TCP alone would keep retransmitting for ~15 minutes; the destination
    # gave the connection up within seconds (TCP_USER_TIMEOUT) and is
    # trying a new one.
    grep -q "demand connection for export 'mem' to the source 127.0.0.1:$SRC_PORT lost" "$PAGESRV_LOG"
    [ "$(status_field state)" = source-lost ]
    kill -0 "$reader"
    blackhole "$SRC_PORT" off
    wait "$reader"
    grep -q "demand connection for export 'mem' re-established" "$PAGESRV_LOG"
    # And the migration completes, every page right; the source's end of
    # the dead connection is probed away too (keepalive), so it can exit.
    ctl policy background on >/dev/null
    wait_local 60
    verify_all
    for (( i = 0; i < 300; i++ )); do kill -0 "$SRC_PID" 2>/dev/null || break; sleep 0.1; done
    run ! kill -0 "$SRC_PID"
}

@test "land: a read hands each page over without keeping it; a second read fetches it again; writes are kept" {
    mk_src 64
    SLOTS=$(( PAGES + 64 )) MAP=$T/map
    "$TESTBIN/pull-plan" --seed "$SEED" "$PAGES" "$SLOTS" >"$MAP"
    src_start
    # A pool far smaller than the image: landing must not need one.
    dst_start "$SLOTS" --mem-limit 4M
    ctl policy background off >/dev/null
    [ "$(jfield "$(ctl policy land on)" policy.land)" = true ]
    map_file "$MAP"
    mapfile -t data < <(data_pages)
    ndata=${#data[@]}
    # Every page read once, as the kernel would swap it in: all right.
    verify_all
    st=$(ctl status)
    echo "after the first read: $st"
    [ "$(jfield "$st" state)" = landed ]
    [ "$(jfield "$st" pages.remote)" -eq 0 ]
    # Data pages are handed over and not kept; zero pages cost nothing to
    # keep (empty slots), so only data pages are landed.
    [ "$(jfield "$st" pages.landed)" -eq "$ndata" ]
    [ "$(stat_field store.ram_pages)" -eq 0 ]
    [ "$(stat_field store.file_pages)" -eq 0 ]
    ctl slot-states "$(slot_of_page "${data[0]}")" 1 | grep -q '"states":"D"'
    # Each page crossed once: what came from the source is the image, once.
    first=$(jfield "$st" bytes_fetched)
    [ "$first" -eq $(( PAGES * 4096 )) ]
    # The kernel dropped its clean copy and reads again: fetched again, right.
    verify_all
    [ "$(status_field bytes_fetched)" -eq $(( first + ndata * 4096 )) ]
    # A write to a landed slot is the kernel's data from now on.
    a=$(slot_of_page "${data[7]}")
    "$TESTBIN/pull-rw" "$URI" write "$a" 171
    "$TESTBIN/pull-rw" "$URI" check "$a" fill 171
    ctl slot-states "$a" 1 | grep -q '"states":"L"'
    [ "$(status_field pages.landed)" -eq $(( ndata - 1 )) ]
    # The source is needed until no slot is landed: the kernel's discards
    # of freed slots empty them...
    half=$(( SLOTS / 2 ))
    "$TESTBIN/pull-rw" "$URI" trim 0 "$half"
    left=$(status_field pages.landed)
    [ "$left" -gt 0 ]
    [ "$left" -lt $(( ndata - 1 )) ]
    sleep 0.3
    [ "$(status_field state)" = landed ]
    # ...and a lander that wrote every page in place releases the rest.
    [ "$(jfield "$(ctl release-landed)" pages.landed)" -eq 0 ]
    grep -q "released $left landed slots" "$PAGESRV_LOG"
    for (( i = 0; i < 50; i++ )); do [ "$(status_field state)" = complete ] && break; sleep 0.1; done
    [ "$(status_field state)" = complete ]
}

@test "land: a batch the kernel reads comes from the source in big reads, not one per page" {
    mk_src 64 --all-random
    SLOTS=$PAGES MAP=$T/map
    echo "0 0 $PAGES" >"$MAP"
    src_start
    dst_start "$SLOTS"
    ctl policy background off >/dev/null
    ctl policy land on >/dev/null
    map_file "$MAP"
    # 1 MiB reads, as a merged swap-in batch arrives: 64 MiB in 64 reads.
    faults0=$(minor_faults "$PAGESRV_PID")
    nbdcopy --connections=1 --request-size=1048576 --requests=4 "$URI" "$T/got.img"
    faults=$(( $(minor_faults "$PAGESRV_PID") - faults0 ))
    cmp "$IMG" "$T/got.img"
    [ "$(status_field pages.landed)" -eq "$PAGES" ]
    # The 1 MiB buffers of the pull (demand runs, worker reads) are reused
    # from glibc's heap: were each a fresh mapping (an mmap threshold below
    # them), every page of every buffer would fault, twice per page pulled.
    # A sanitizer's allocator hands out fresh memory by design (quarantine).
    echo "destination minor faults during the pull: $faults for $PAGES pages"
    if sanitized_build; then
        echo "# $PAGESRV has a sanitizer's allocator: its faults say nothing of glibc's heap" >&3
    else
        [ "$faults" -lt $(( PAGES / 2 )) ]
    fi
    reqs=$(stat_field requests.read)
    echo "source: $(grep -o 'requests: read [0-9]*' "$SRC_LOG" || true); device reads $reqs"
    # The source saw big reads, not one per page: the destination's
    # statistics at the source's exit tell how many.
    kill -TERM "$SRC_PID"
    for (( i = 0; i < 50; i++ )); do grep -q "statistics at exit" "$SRC_LOG" && break; sleep 0.1; done
    src_reads=$(sed -n 's/.*requests: read \([0-9]*\),.*/\1/p' "$SRC_LOG" | tail -n 1)
    echo "source reads: $src_reads for $PAGES pages"
    [ "$src_reads" -le $(( PAGES / 64 )) ]
}
