#!/usr/bin/env bats
# Four guests migrated into this host at the same time (issue 17), with
# both paths: each migration gets its own swap device and its own
# nbd-pagesrv; preparations take turns (the host's preparation lock), the
# migrations and their landings overlap. Every guest must go on passing
# its memory check on the destination.

load lib/common
load lib/migration
load lib/guest
load lib/qemu
load lib/qemu-patched

N=4
MIB=64

setup() {
    [ "$(id -u)" = 0 ] || { echo "these tests need root (swap, QEMU)" >&2; return 1; }
    guest_check_prereqs
    BEFORE=$(machine_state)
}

teardown() {
    run_deferred
    [ "$(machine_state)" = "$BEFORE" ] || { echo "left behind:"; machine_state; false; }
}

# wait_migrations PID...: every background migration I (its output in
# migrate$I.out) succeeded; shows the output of those that did not.
wait_migrations() {
    local i=0 pid st=0
    for pid in "$@"; do
        i=$((i + 1))
        wait "$pid" || { st=1; echo "---- migration $i failed:"; cat "$BATS_TEST_TMPDIR/migrate$i.out"; }
    done
    return "$st"
}

# stock_pair I: memwalk on a stock source (RAM in /dev/shm) and a stock
# destination waiting with -incoming defer; files src$I.* and dst$I.*.
stock_pair() {
    local i=$1 ram=/dev/shm/swapcopy-test-$$-$BATS_TEST_NUMBER-$1.ram pid
    defer rm -f "$ram"
    # shellcheck disable=SC2046
    _qemu_start "src$i" pid $(qemu_common_args "$MIB") -kernel "$SWAPCOPY_BUILD/guest/memwalk.elf" \
        -object "memory-backend-file,id=mem,size=${MIB}M,mem-path=$ram,share=on" \
        -serial "file:$BATS_TEST_TMPDIR/src$i.serial" || return 1
    # shellcheck disable=SC2046
    _qemu_start "dst$i" pid $(qemu_common_args "$MIB") -kernel "$SWAPCOPY_BUILD/guest/memwalk.elf" \
        -object "memory-backend-ram,id=mem,size=${MIB}M" \
        -serial "file:$BATS_TEST_TMPDIR/dst$i.serial" -incoming defer || return 1
    wait_for test -S "$BATS_TEST_TMPDIR/src$i.qmp" && wait_for test -S "$BATS_TEST_TMPDIR/dst$i.qmp"
}

@test "four stock-QEMU guests migrated into this host at once: every one completes and goes on passing" {
    local i pids=() sport mport
    for i in $(seq $N); do stock_pair "$i"; done
    for i in $(seq $N); do wait_for_pass "$BATS_TEST_TMPDIR/src$i.serial" 2 120; done
    for i in $(seq $N); do
        free_port_pair sport mport
        defer "$SWAPCOPY_SRC/scripts/teardown-swap.sh" --name "m$$-$i" --state-dir "$BATS_TEST_TMPDIR/run"
        (
            exec "$SWAPCOPY_SRC/scripts/swapcopy-migrate" --src-qmp "$BATS_TEST_TMPDIR/src$i.qmp" \
                --dst-qmp "$BATS_TEST_TMPDIR/dst$i.qmp" --name "m$$-$i" \
                --state-dir "$BATS_TEST_TMPDIR/run" --source-listen "127.0.0.1:$sport" \
                --migrate-uri "tcp:127.0.0.1:$mport" --progress-interval 5 \
                --json "$BATS_TEST_TMPDIR/summary$i.json" >"$BATS_TEST_TMPDIR/migrate$i.out" 2>&1
        ) 3>&- &
        pids+=($!)
    done
    wait_migrations "${pids[@]}"
    # They ran at once: some migrate -> detached intervals overlap (their
    # preparations took turns, on the host's lock).
    python3 - "$BATS_TEST_TMPDIR"/summary*.json <<'PY'
import json, sys
spans = [(e["migrate"], e["finished"]) for e in (json.load(open(f))["epoch"] for f in sys.argv[1:])]
print("migrate -> detached:", [(round(a % 1000, 2), round(b % 1000, 2)) for a, b in spans])
assert any(a1 < b2 and a2 < b1 for i, (a1, b1) in enumerate(spans) for (a2, b2) in spans[i + 1:]), \
    "the migrations ran one after another"
PY
    for i in $(seq $N); do
        grep -h "waiting for another migration\|refused" "$BATS_TEST_TMPDIR/migrate$i.out" || true
        s=$(cat "$BATS_TEST_TMPDIR/summary$i.json")
        echo "migration $i: $(json_get "$s" total_s) s, $(json_get "$s" pages.total) pages"
        [ "$(json_get "$s" pages.total)" -gt 0 ]
    done
    for i in $(seq $N); do
        f=$BATS_TEST_TMPDIR/dst$i.serial
        wait_for_pass "$f" $(( $(grep -c '^PASS' "$f") + 2 )) 300
    done
    run grep '^ERROR' "$BATS_TEST_TMPDIR"/src*.serial "$BATS_TEST_TMPDIR"/dst*.serial
    [ "$status" -eq 1 ]
}

@test "four patched-QEMU guests migrated into this host at once: every one completes and goes on passing" {
    local i state=$BATS_TEST_TMPDIR/run sport mport pids=()
    qp_binary
    for i in $(seq $N); do
        free_port_pair sport mport
        printf -v "URI_$i" '%s' "tcp:127.0.0.1:$mport"
        defer "$SWAPCOPY_SRC/scripts/teardown-swap.sh" --name "mp$$-$i" --state-dir "$state"
        GUEST_QEMU=$QP_QEMU GUEST_NAME=src$i guest_boot -m "${MIB}M" \
            -postcopy "swap,server=$PAGESRV,listen=127.0.0.1:$sport"
        printf -v "SPID_$i" '%s' "$GUEST_PID"
        # The design card's spelling of the option, on the destinations.
        GUEST_QEMU=$QP_QEMU GUEST_NAME=dst$i guest_boot -m "${MIB}M" -incoming "tcp:127.0.0.1:$mport" \
            "-postcopy=swap,src=127.0.0.1:$sport,setup=$SWAPCOPY_SRC/scripts/setup-swap.sh,name=mp$$-$i,state-dir=$state,server=$PAGESRV"
        printf -v "DPID_$i" '%s' "$GUEST_PID"
        wait_for _qp_listening "$mport"
    done
    for i in $(seq $N); do
        pid=SPID_$i
        GUEST_LOG=$BATS_TEST_TMPDIR/src$i.log GUEST_PID=${!pid} \
            GUEST_QEMU_LOG=$BATS_TEST_TMPDIR/src$i.qemu.log guest_wait_pass 2 120
    done
    for i in $(seq $N); do
        uri=URI_$i
        SRC_QMP=$BATS_TEST_TMPDIR/src$i.qmp DST_QMP=$BATS_TEST_TMPDIR/dst$i.qmp QP_URI=${!uri} \
            qp_migrate >"$BATS_TEST_TMPDIR/migrate$i.out" 2>&1 &
        pids+=($!)
    done
    wait_migrations "${pids[@]}"
    for i in $(seq $N); do
        last=$(GUEST_LOG=$BATS_TEST_TMPDIR/src$i.log guest_last_pass)
        pid=DPID_$i
        GUEST_LOG=$BATS_TEST_TMPDIR/dst$i.log GUEST_PID=${!pid} \
            GUEST_QEMU_LOG=$BATS_TEST_TMPDIR/dst$i.qemu.log guest_wait_pass $(( last + 2 )) 300
    done
    for i in $(seq $N); do
        GUEST_LOG=$BATS_TEST_TMPDIR/dst$i.log run guest_errors
        [ "$status" -ne 0 ]
    done
}
