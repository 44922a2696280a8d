#!/usr/bin/env bats
# Issue 5, part 1: a real QEMU guest (Debian's stock qemu-system-x86 7.2,
# TCG) migrated through swapcopy with scripts/swapcopy-migrate.

load lib/common
load lib/migration
load lib/qemu

bats_require_minimum_version 1.5.0   # run ! CMD

setup() {
    [ "$(id -u)" = 0 ] || { echo "needs root" >&2; return 1; }
    BEFORE=$(machine_state)
}

teardown() {
    run_deferred
    [ "$(machine_state)" = "$BEFORE" ] || { echo "left behind:"; machine_state; false; }
}

@test "stock QEMU, paused source: the destination's RAM is the source's, byte for byte" {
    qemu_pair_start 128
    sleep 1   # let the firmware write something into RAM
    qmp "$SRC_QMP" stop
    run swapcopy_migrate
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"swapcopy migration summary"* ]]
    # The destination stays paused like the source, so its RAM must be
    # exactly what the source had.
    [ "$(qmp "$DST_QMP" query-status | json_get "$(cat)" status)" = paused ]
    qmp "$DST_QMP" pmemsave '{"val":0,"size":134217728,"filename":"'"$BATS_TEST_TMPDIR/dst.ram"'"}'
    cmp "$BATS_TEST_TMPDIR/dst.ram" "$SRC_RAM"
    s=$(cat "$BATS_TEST_TMPDIR/summary.json")
    [ "$(json_get "$s" pages.total)" -eq 32768 ]
    # Landed: every page went to the destination QEMU once, none stayed in
    # nbd-pagesrv's store but zero pages (which cost nothing to keep), and
    # none came by the stream.
    [ "$(json_get "$s" pages.remote)" -eq 0 ]
    [ "$(( $(json_get "$s" pages.local) + $(json_get "$s" pages.landed) ))" -eq 32768 ]
    [ "$(json_get "$s" pages.streamed)" -eq 0 ]
    [ "$(json_get "$s" pages.landed)" -gt 0 ]
}

@test "stock QEMU, running source: migration completes and the destination runs" {
    qemu_pair_start 128
    run swapcopy_migrate
    echo "$output"
    [ "$status" -eq 0 ]
    [ "$(qmp "$DST_QMP" query-status | json_get "$(cat)" status)" = running ]
    [ "$(qmp "$SRC_QMP" query-status | json_get "$(cat)" status)" = postmigrate ]
    s=$(cat "$BATS_TEST_TMPDIR/summary.json")
    [ "$(json_get "$s" downtime_ms)" -ge 0 ]
}

@test "stock QEMU: a mismatched destination is refused before anything changes" {
    SRC_RAM=/dev/shm/swapcopy-test-$$-$BATS_TEST_NUMBER.ram
    defer rm -f "$SRC_RAM"
    SRC_QMP=$BATS_TEST_TMPDIR/src.qmp DST_QMP=$BATS_TEST_TMPDIR/dst.qmp
    _qemu_start src SRC_QPID $(qemu_common_args 128) \
        -object "memory-backend-file,id=mem,size=128M,mem-path=$SRC_RAM,share=on"
    _qemu_start dst DST_QPID -accel tcg -m 64M -machine pc,memory-backend=mem -display none \
        -nodefaults -object memory-backend-ram,id=mem,size=64M -incoming defer
    wait_for test -S "$DST_QMP"
    run swapcopy_migrate
    echo "$output"
    [ "$status" -ne 0 ]
    [[ "$output" == *"134217728 bytes on the source but 67108864 on the destination"* ]]
    [ "$(qmp "$SRC_QMP" query-status | json_get "$(cat)" status)" = running ]
}

@test "stock QEMU: an exporter port already taken fails at once, saying why, and the source keeps running" {
    qemu_pair_start 128
    busy=$(free_port)
    hold_port "$busy"
    start=$SECONDS
    run swapcopy_migrate --source-listen "127.0.0.1:$busy"
    echo "$output"
    [ "$status" -ne 0 ]
    # It did not wait on the port's holder, which accepts and never answers.
    [ $(( SECONDS - start )) -lt 30 ]
    [[ "$output" == *"source exporter on 127.0.0.1:$busy did not start"* ]]
    [[ "$output" == *"is the port already in use?"* ]]
    [ "$(qmp "$SRC_QMP" query-status | json_get "$(cat)" status)" = running ]
    # It stopped before setting anything up: no swap device, loop or FUSE mount.
    [ "$(machine_state)" = "$BEFORE" ]
}

@test "stock QEMU: the memwalk guest, migrated mid-run, goes on passing and never finds a wrong page" {
    qemu_pair_start 128 -kernel "$SWAPCOPY_BUILD/guest/memwalk.elf"
    wait_for_pass "$SRC_SERIAL" 2 60
    run swapcopy_migrate
    echo "$output"
    [ "$status" -eq 0 ]
    last_src=$(grep -c '^PASS' "$SRC_SERIAL")
    # The destination carries on from the source's pass count.
    wait_for_pass "$DST_SERIAL" $(( $(grep -c '^PASS' "$DST_SERIAL") + 5 )) 120
    run grep '^ERROR' "$SRC_SERIAL" "$DST_SERIAL"
    [ "$status" -eq 1 ]                # no ERROR line on either side
    first_dst=$(grep '^PASS' "$DST_SERIAL" | head -1 | awk '{print $2}')
    [ "$first_dst" -ge $(( last_src - 1 )) ]
    s=$(cat "$BATS_TEST_TMPDIR/summary.json")
    [ "$(json_get "$s" pages.demand)" -gt 0 ]
}

@test "stock QEMU: a Linux guest (Debian's kernel, busybox) checksumming its memory survives migration" {
    linux_guest
    qemu_pair_start 256 -kernel "$LINUX_KERNEL" -initrd "$LINUX_INITRD" -append "console=ttyS0 quiet memcheck_mib=48"
    wait_for_lines "$SRC_SERIAL" '^LPASS' 2 180
    run swapcopy_migrate
    echo "$output"
    [ "$status" -eq 0 ]
    wait_for_lines "$DST_SERIAL" '^LPASS' 2 180
    run grep '^LERROR' "$SRC_SERIAL" "$DST_SERIAL"
    [ "$status" -eq 1 ]                # no LERROR line on either side
    s=$(cat "$BATS_TEST_TMPDIR/summary.json")
    [ "$(json_get "$s" pages.demand)" -gt 0 ]
}

# prepare_ahead: swapcopy-migrate --prepare-only for the pair; sets prep
# (the command line, to run again with --prepare-only or --unprepare) and
# the ports sport mport a later swapcopy_migrate must use.
# agent_of STATEDIR: the pid of the agent --prepare-only left there.
agent_of() {
    python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["agent_pid"])' "$1/prepared.json"
}

prepare_ahead() {
    free_port_pair sport mport || return 1
    prep=("$SWAPCOPY_SRC/scripts/swapcopy-migrate" --dst-qmp "$DST_QMP" --name "t$$-$BATS_TEST_NUMBER"
          --state-dir "$BATS_TEST_TMPDIR/run" --source-listen "127.0.0.1:$sport")
    # Undone even if the test fails: --unprepare stops the agent the
    # preparation leaves, and runs before the QEMUs are killed.
    defer "${prep[@]}" --unprepare
    run "${prep[@]}" --prepare-only
    echo "$output"
    [ "$status" -eq 0 ]
}

# migrate_in_background: the migration to the destination prepare_ahead
# prepared, run as an operator would, in the background; its output in
# $BATS_TEST_TMPDIR/cmd.out. Sets cmd: the launcher execs swapcopy-handoff,
# so $! is the operator's command itself.
migrate_in_background() {
    "$SWAPCOPY_SRC/scripts/swapcopy-migrate" --src-qmp "$SRC_QMP" --dst-qmp "$DST_QMP" \
        --name "t$$-$BATS_TEST_NUMBER" --state-dir "$BATS_TEST_TMPDIR/run" \
        --source-listen "127.0.0.1:$sport" --migrate-uri "tcp:127.0.0.1:$mport" \
        >"$BATS_TEST_TMPDIR/cmd.out" 2>&1 &
    cmd=$!
    defer kill_wait "$cmd"
}

@test "stock QEMU: a destination prepared ahead is migrated to later; the migration only maps and switches" {
    qemu_pair_start 128 -kernel "$SWAPCOPY_BUILD/guest/memwalk.elf"
    wait_for_pass "$SRC_SERIAL" 2 60
    prepare_ahead
    [[ "$output" == *"destination prepared in"* ]]
    # Prepared without the source: no exporter listens yet, and nbd-pagesrv
    # holds every page of the RAM as an arming marker, none mapped.
    run ! port_bound "$sport"
    ctl=$BATS_TEST_TMPDIR/run/t$$-$BATS_TEST_NUMBER/ctl.sock
    st=$("$PAGESRV_CTL" "$ctl" stats)
    [ "$(json_get "$st" store.marker_pages)" -eq 32768 ]
    [ "$(json_get "$st" store.remote_pages)" -eq 0 ]
    # It left an agent waiting for the migration, detached from the caller.
    agent=$(agent_of "${ctl%/ctl.sock}")
    kill -0 "$agent"
    [ -S "${ctl%/ctl.sock}/agent.sock" ]
    [ "$(ps -o sid= -p "$agent")" -eq "$agent" ]
    # The source's exporter is started too, waiting to be told the RAM file
    # before it opens anything or listens.
    pgrep -P "$agent" -f -- "--exports-on-stdin --listen 127.0.0.1:$sport"
    # A second preparation of the same name is refused, not stacked.
    run "${prep[@]}" --prepare-only
    [ "$status" -ne 0 ]
    [[ "$output" == *"prepared already"* ]]
    # A map that takes hold of the region ahead (--wait-go, as the
    # migration below does) and is never told 'go' registers nothing.
    read -r dpid daddr dlen ddev dreads dtype < <(python3 -c 'import json, sys
s = json.load(open(sys.argv[1]))
print(s["dst_pid"], hex(s["addr"]), s["size"], s["swap"]["DEVICE"], s["marker_reads"], s["swap_type"])' \
        "${ctl%/ctl.sock}/prepared.json")
    run "$SWAPCOPY_BUILD/swapstub" map --pid "$dpid" --addr "$daddr" --len "$dlen" --control "$ctl" \
        --device "$ddev" --export mem --swap-type "$dtype" --marker-reads "$dreads" --wait-go </dev/null
    [ "$status" -ne 0 ]
    [[ "$output" == *"without 'go': nothing was mapped"* ]]
    st=$("$PAGESRV_CTL" "$ctl" stats)
    [ "$(json_get "$st" store.remote_pages)" -eq 0 ]
    [ "$(json_get "$st" store.marker_pages)" -eq 32768 ]
    # A command that does not match the preparation (another address for
    # the source's exporter) is declined by the agent, then refused by the
    # command itself, and undoes nothing.
    run swapcopy_migrate --source-listen "127.0.0.1:$mport" --migrate-uri "tcp:127.0.0.1:$sport"
    echo "$output"
    [ "$status" -ne 0 ]
    [[ "$output" == *"or declined this command"* ]]
    grep -q "declined a command" "${ctl%/ctl.sock}.agent.log"
    process_running "$agent"
    [ -S "${ctl%/ctl.sock}/agent.sock" ]
    [ "$(json_get "$("$PAGESRV_CTL" "$ctl" stats)" store.marker_pages)" -eq 32768 ]
    # The source guest kept walking meanwhile.
    wait_for_pass "$SRC_SERIAL" $(( $(grep -c '^PASS' "$SRC_SERIAL") + 1 )) 60
    run swapcopy_migrate --source-listen "127.0.0.1:$sport" --migrate-uri "tcp:127.0.0.1:$mport"
    echo "$output"
    [ "$status" -eq 0 ]
    # The agent ran it, writing to this command's output; then it exited.
    [[ "$output" == *"prepared "*" s ago in "*"(its agent, pid $agent, migrates)"* ]]
    [[ "$output" == *"read while the sides were checked"* ]]
    [[ "$output" != *Traceback* ]]
    wait_exited "$agent"   # the command returns as the agent closes its connection, while it exits
    grep -q "took the migration" "${ctl%/ctl.sock}.agent.log"
    # The exporter started ahead served the source's RAM file.
    grep -q "source export 'mem': $SRC_RAM" "${ctl%/ctl.sock}.exporter.log"
    [[ "$output" == *"mapped pages=32768"* ]]
    [[ "$output" != *"armed pages="* ]]       # not armed again
    s=$(cat "$BATS_TEST_TMPDIR/summary.json")
    [ "$(json_get "$s" prepared_ahead)" = True ]
    python3 -c 'import sys; assert float(sys.argv[1]) > 0' "$(json_get "$s" prepare_s)"
    wait_for_pass "$DST_SERIAL" $(( $(grep -c '^PASS' "$DST_SERIAL") + 3 )) 120
    run grep '^ERROR' "$SRC_SERIAL" "$DST_SERIAL"
    [ "$status" -eq 1 ]
}

@test "stock QEMU: the command of a prepared migration killed after the switch: its agent finishes the landing" {
    qemu_pair_start 128 -kernel "$SWAPCOPY_BUILD/guest/memwalk.elf"
    wait_for_pass "$SRC_SERIAL" 2 60
    prepare_ahead
    dir=$BATS_TEST_TMPDIR/run/t$$-$BATS_TEST_NUMBER
    agent=$(agent_of "$dir")
    migrate_in_background
    wait_for grep -q "switched over" "$BATS_TEST_TMPDIR/cmd.out"
    kill -KILL "$cmd"
    wait_exited "$agent"
    cat "$dir.agent.log"
    grep -q "the caller went away after the switch" "$dir.agent.log"
    grep -q "swap device detached" "$dir.agent.log"
    [ "$(machine_state)" = "$BEFORE" ]
    wait_for_pass "$DST_SERIAL" $(( $(grep -c '^PASS' "$DST_SERIAL") + 2 )) 120
    run grep '^ERROR' "$SRC_SERIAL" "$DST_SERIAL"
    [ "$status" -eq 1 ]
}

@test "stock QEMU: Ctrl-C on the command of a prepared migration before the switch: the agent cancels and undoes it" {
    qemu_pair_start 64
    prepare_ahead
    dir=$BATS_TEST_TMPDIR/run/t$$-$BATS_TEST_NUMBER
    agent=$(agent_of "$dir")
    # A stopped source QEMU does not answer QMP: the agent waits there,
    # before the switch, as long as the test needs.
    kill -STOP "$SRC_QPID"
    defer kill -CONT "$SRC_QPID"
    migrate_in_background
    wait_for grep -q "took the migration" "$dir.agent.log"
    # While it migrates, --unprepare is refused.
    run "${prep[@]}" --unprepare
    [ "$status" -ne 0 ]
    [[ "$output" == *"is migrating it"* ]]
    kill -INT "$cmd"
    kill -CONT "$SRC_QPID"
    st=0
    wait "$cmd" || st=$?
    cat "$BATS_TEST_TMPDIR/cmd.out"
    [ "$st" -eq 130 ]
    grep -q "FAILED: interrupted" "$BATS_TEST_TMPDIR/cmd.out"
    wait_exited "$agent"
    [ "$(machine_state)" = "$BEFORE" ]
    [ "$(qmp "$SRC_QMP" query-status | json_get "$(cat)" status)" = running ]
    [ "$(qmp "$DST_QMP" query-status | json_get "$(cat)" status)" = inmigrate ]
}

@test "stock QEMU: --unprepare undoes a preparation never migrated to: device gone, RAM zero, source untouched" {
    qemu_pair_start 64
    prepare_ahead
    [ "$(machine_state)" != "$BEFORE" ]      # a swap device is up
    agent=$(agent_of "$BATS_TEST_TMPDIR/run/t$$-$BATS_TEST_NUMBER")
    run "${prep[@]}" --unprepare
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"destination unprepared"* ]]
    run ! process_running "$agent"            # the agent was stopped first (and waited for)
    run ! pgrep -f -- "--exports-on-stdin --listen 127.0.0.1:$sport"   # its exporter too
    [ "$(machine_state)" = "$BEFORE" ]
    [ ! -e "$BATS_TEST_TMPDIR/run/t$$-$BATS_TEST_NUMBER" ]
    # The destination still waits, its RAM plain zeros as a fresh QEMU's;
    # the source never heard of any of it.
    [ "$(qmp "$DST_QMP" query-status | json_get "$(cat)" status)" = inmigrate ]
    [ "$(qmp "$SRC_QMP" query-status | json_get "$(cat)" status)" = running ]
    python3 - "$DST_QPID" <<'PY'
import sys
pid, size = int(sys.argv[1]), 64 << 20
ram = [l.split() for l in open(f"/proc/{pid}/maps")]
ram = [int(w[0].split("-")[0], 16) for w in ram
       if len(w) == 5 and w[1] == "rw-p" and w[4] == "0"
       and int(w[0].split("-")[1], 16) - int(w[0].split("-")[0], 16) == size]
assert len(ram) == 1, f"expected one {size >> 20} MiB anonymous mapping, found {len(ram)}"
with open(f"/proc/{pid}/mem", "rb", buffering=0) as f:
    f.seek(ram[0])
    assert f.read(size) == bytes(size), "the destination's RAM is not zero after --unprepare"
PY
}

@test "stock QEMU: a prepared destination whose QEMU quits is undone by the agent waiting for it" {
    qemu_pair_start 64
    prepare_ahead
    dir=$BATS_TEST_TMPDIR/run/t$$-$BATS_TEST_NUMBER
    agent=$(agent_of "$dir")
    kill_wait_any "$DST_QPID"
    wait_exited "$agent"
    cat "$dir.agent.log"
    grep -q "exited: undoing the preparation" "$dir.agent.log"
    [ "$(machine_state)" = "$BEFORE" ]
    [ ! -e "$dir" ]
    [ "$(qmp "$SRC_QMP" query-status | json_get "$(cat)" status)" = running ]
}

@test "stock QEMU: with its agent killed, a prepared destination is still migrated to, by the command itself" {
    qemu_pair_start 64 -kernel "$SWAPCOPY_BUILD/guest/memwalk.elf"
    wait_for_pass "$SRC_SERIAL" 2 60
    prepare_ahead
    agent=$(agent_of "$BATS_TEST_TMPDIR/run/t$$-$BATS_TEST_NUMBER")
    kill -KILL "$agent"
    wait_exited "$agent"
    run swapcopy_migrate --source-listen "127.0.0.1:$sport" --migrate-uri "tcp:127.0.0.1:$mport"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"destination prepared "*" s ago in "* ]]
    [[ "$output" != *"its agent"* ]]
    [[ "$output" != *"armed pages="* ]]       # not armed again
    [ "$(json_get "$(cat "$BATS_TEST_TMPDIR/summary.json")" prepared_ahead)" = True ]
    wait_for_pass "$DST_SERIAL" $(( $(grep -c '^PASS' "$DST_SERIAL") + 2 )) 120
    run grep '^ERROR' "$SRC_SERIAL" "$DST_SERIAL"
    [ "$status" -eq 1 ]
}
