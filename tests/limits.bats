#!/usr/bin/env bats
# What a hostile or broken NBD peer can make a source spend (issue 16,
# nbd-pagesrv/limits.h): memory under 64 connections announcing 32 MiB
# requests, connection slots held by silent peers, options without end.
# Each test starts its own source (nbd-pagesrv --export on 127.0.0.1,
# memory locked as in production) and attacks it with tests/progs/
# hostile-conns; an honest client must still get every byte right.

load lib/common

setup() {
    T=$BATS_TEST_TMPDIR
    [ -x "$TESTBIN/hostile-conns" ] || { echo "missing $TESTBIN/hostile-conns (run make)"; return 1; }
}

teardown() {
    if [ -z "${BATS_TEST_COMPLETED:-}" ] && [ -f "$T/src.log" ]; then
        echo "--- last lines of the source's log:"
        tail -n 30 "$T/src.log"
    fi
    run_deferred
}

# src_up [nbd-pagesrv options]: a 64 MiB random image served as export
# "mem" on a free loopback port, with a control socket. Sets SRC_PID
# SRC_PORT SRC_CTL IMG.
src_up() {
    local try
    IMG=$T/src.img
    [ -f "$IMG" ] || head -c $((64 << 20)) /dev/urandom >"$IMG"
    SRC_CTL=$T/src.ctl
    for (( try=0; try<5; try++ )); do
        SRC_PORT=$(free_port)
        "$PAGESRV" --export "mem=$IMG" --listen "127.0.0.1:$SRC_PORT" --control "$SRC_CTL" "$@" \
            >"$T/src.log" 2>&1 &
        SRC_PID=$!
        if wait_for grep -q "serving NBD on TCP" "$T/src.log" && wait_for test -S "$SRC_CTL"; then
            defer kill_wait "$SRC_PID"
            return 0
        fi
        kill_wait "$SRC_PID"
    done
    return 1
}

src_stat() { stat_field_of "$SRC_CTL" "$1"; }

# no_connections_left: for wait_for, which reruns it until it holds.
no_connections_left() { [ "$(src_stat connections.current)" -eq 0 ]; }

# peak_rss_mib: the source's VmHWM (peak resident set) in MiB.
peak_rss_mib() {
    awk '/^VmHWM:/ { print int($2 / 1024) }' "/proc/$SRC_PID/status"
}

# honest_copy: nbdcopy the whole export and compare it with the image.
honest_copy() {
    rm -f "$T/copy.img"
    timeout 60 nbdcopy "nbd://127.0.0.1:$SRC_PORT/mem" "$T/copy.img" &&
        cmp "$IMG" "$T/copy.img"
}

# attack MODE N HOLD_S: hostile-conns in the background; waits until its
# connections are in place. Sets ATTACK_PID, ATTACK_OUT.
attack() {
    ATTACK_OUT=$T/attack.out
    "$TESTBIN/hostile-conns" "127.0.0.1:$SRC_PORT" mem "$@" >"$ATTACK_OUT" 2>&1 &
    ATTACK_PID=$!
    defer kill_wait "$ATTACK_PID"
    local i
    for (( i=0; i<600; i++ )); do
        grep -q '^ready' "$ATTACK_OUT" && return 0
        kill -0 "$ATTACK_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "hostile-conns did not get its connections in place:"
    cat "$ATTACK_OUT"
    return 1
}

@test "64 connections sending 32 MiB WRITEs to a read-only source: peak RSS under 256 MiB, honest copy exact" {
    src_up
    attack write 64 4
    # The refused payloads are skipped as they come, never buffered.
    honest_copy
    wait "$ATTACK_PID"
    cat "$ATTACK_OUT"
    local hwm
    hwm=$(peak_rss_mib)
    echo "# source VmHWM under the WRITE attack: $hwm MiB (was 1995 MiB before issue 16)"
    echo "# VmHWM $hwm MiB" >&3
    [ "$hwm" -lt 256 ]
    # Every connection the attack opened is gone, the source is still up.
    wait_for no_connections_left
    kill -0 "$SRC_PID"
}

@test "64 connections asking for 32 MiB READs and never reading the replies: peak RSS under 256 MiB" {
    src_up
    attack read 64 4
    honest_copy
    wait "$ATTACK_PID"
    cat "$ATTACK_OUT"
    local hwm
    hwm=$(peak_rss_mib)
    echo "# source VmHWM under the READ attack: $hwm MiB"
    echo "# VmHWM $hwm MiB" >&3
    [ "$hwm" -lt 256 ]
    kill -0 "$SRC_PID"
}

@test "silent connections are closed at the handshake deadline" {
    src_up --handshake-timeout 1
    attack silent 10 3
    wait "$ATTACK_PID"
    cat "$ATTACK_OUT"
    grep -qx 'closed 10' "$ATTACK_OUT"
    [ "$(src_stat connections.handshakes_failed)" -ge 10 ]
    grep -q "handshake was not over within 1 s" "$T/src.log"
    honest_copy
}

@test "connections over --max-connections are closed at accept, then service resumes" {
    src_up --max-connections 4
    attack silent 10 2
    wait "$ATTACK_PID"
    cat "$ATTACK_OUT"
    # Four were served (and wait in their handshake), six refused.
    grep -qx 'closed 6' "$ATTACK_OUT"
    [ "$(src_stat connections.refused)" -eq 6 ]
    grep -q "refusing the connection from 127.0.0.1" "$T/src.log"
    wait_for no_connections_left
    honest_copy
}

@test "a handshake of endless options is closed after the cap" {
    src_up
    run "$TESTBIN/hostile-conns" "127.0.0.1:$SRC_PORT" mem options 1 0
    echo "$output"
    [ "$status" -eq 0 ]
    local answered
    answered=$(sed -n 's/^answered //p' <<<"$output")
    # 64 + 2 per export (limits.h), then the connection is closed.
    [ "$answered" -eq 66 ]
    grep -q "more than 66 options in one handshake" "$T/src.log"
}
