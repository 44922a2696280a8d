#!/usr/bin/env bats
# Who may use a destination's sockets (issue 16): the NBD and control
# sockets are created 0600 (a missing directory 0700), and a peer that is
# neither root nor the daemon's own user is refused even where the file
# mode would let it in (SO_PEERCRED). And the control socket's policy
# commands refuse values the daemon cannot represent.

load lib/common

setup() {
    T=$BATS_TEST_TMPDIR
    id nobody >/dev/null 2>&1 || { echo "this test needs the user 'nobody'"; return 1; }
}

teardown() {
    if [ -z "${BATS_TEST_COMPLETED:-}" ]; then
        local f
        for f in "$T"/*.log "${OPEN_DIR:-/nonexistent}"/*.log; do
            [ -f "$f" ] && { echo "--- $f:"; tail -n 30 "$f"; }
        done
    fi
    run_deferred
}

mode_of() { stat -c %a "$1"; }

@test "the NBD and control sockets are 0600, a missing directory is created 0700" {
    local dir=$T/new/run
    "$PAGESRV" --size 16M --socket "$dir/nbd.sock" --control "$dir/ctl.sock" >"$T/pagesrv.log" 2>&1 &
    defer kill_wait "$!"
    wait_for test -S "$dir/ctl.sock"
    [ "$(mode_of "$dir/nbd.sock")" = 600 ]
    [ "$(mode_of "$dir/ctl.sock")" = 600 ]
    [ "$(mode_of "$dir")" = 700 ]
    [ "$(mode_of "$T/new")" = 700 ]
    # Its own user (root here) is served.
    nbdinfo --size "nbd+unix:///?socket=$dir/nbd.sock"
    "$PAGESRV_CTL" "$dir/ctl.sock" stats >/dev/null
}

@test "a socket in a directory others may write to is warned about" {
    OPEN_DIR=$(mktemp -d /tmp/scopen.XXXXXX)
    defer rm -rf "$OPEN_DIR"
    chmod 0777 "$OPEN_DIR"   # not sticky: anyone could replace the socket
    "$PAGESRV" --size 16M --socket "$OPEN_DIR/nbd.sock" >"$OPEN_DIR/pagesrv.log" 2>&1 &
    defer kill_wait "$!"
    wait_for test -S "$OPEN_DIR/nbd.sock"
    grep -q "users other than its owner may write to" "$OPEN_DIR/pagesrv.log"
}

# as_nobody PYTHON: run a python snippet as the user nobody.
as_nobody() {
    setpriv --reuid=nobody --regid=nogroup --clear-groups --inh-caps=-all /usr/bin/python3 -c "$1"
}

@test "a peer that is not root nor the daemon's user is refused by SO_PEERCRED" {
    # A directory nobody can reach, and sockets opened up by hand: only
    # the credential check stands between nobody and the daemon.
    OPEN_DIR=$(mktemp -d /tmp/scpeer.XXXXXX)
    defer rm -rf "$OPEN_DIR"
    chmod 0755 "$OPEN_DIR"
    "$PAGESRV" --size 16M --socket "$OPEN_DIR/nbd.sock" --control "$OPEN_DIR/ctl.sock" \
        >"$OPEN_DIR/pagesrv.log" 2>&1 &
    defer kill_wait "$!"
    wait_for test -S "$OPEN_DIR/ctl.sock"
    chmod 0666 "$OPEN_DIR/nbd.sock" "$OPEN_DIR/ctl.sock"

    run as_nobody "
import socket
s = socket.socket(socket.AF_UNIX); s.connect('$OPEN_DIR/ctl.sock')
try:
    s.sendall(b'stats\n')
except BrokenPipeError:
    pass   # refused and closed at once: the refusal is still there to read
print(s.makefile().readline().strip())"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *'"error":"permission denied'* ]]
    [[ "$output" != *uptime_s* ]]

    run as_nobody "
import socket
s = socket.socket(socket.AF_UNIX); s.connect('$OPEN_DIR/nbd.sock')
s.settimeout(5); print('got', len(s.recv(18)), 'bytes')"
    echo "$output"
    [ "$status" -eq 0 ]
    [ "$output" = "got 0 bytes" ]   # closed before the greeting

    grep -q "control: refusing a connection on $OPEN_DIR/ctl.sock from uid 65534" "$OPEN_DIR/pagesrv.log"
    grep -q "refusing a connection on $OPEN_DIR/nbd.sock from uid 65534" "$OPEN_DIR/pagesrv.log"
    # Root still gets in.
    "$PAGESRV_CTL" "$OPEN_DIR/ctl.sock" stats >/dev/null
    nbdinfo --size "nbd+unix:///?socket=$OPEN_DIR/nbd.sock"
}

@test "policy fault-timeout and bandwidth refuse values they cannot represent; --fault-timeout too" {
    local img=$T/src.img port ctl=$T/ctl.sock v
    head -c $((4 << 20)) /dev/urandom >"$img"
    port=$(free_port)
    "$PAGESRV" --export "mem=$img" --listen "127.0.0.1:$port" --no-mlock >"$T/src.log" 2>&1 &
    defer kill_wait "$!"
    wait_for nbdinfo --size "nbd://127.0.0.1:$port/mem"
    "$PAGESRV" --size 16M --socket "$T/nbd.sock" --control "$ctl" --src "127.0.0.1:$port" \
        --no-mlock >"$T/pagesrv.log" 2>&1 &
    defer kill_wait "$!"
    wait_for test -S "$ctl"

    for v in nan inf -inf -1 0 0.0001 1e300 3000000 60s 0x10 ''; do
        run "$PAGESRV_CTL" "$ctl" policy fault-timeout "$v"
        echo "fault-timeout '$v': $output"
        [ "$status" -eq 1 ]
        [[ "$output" == *"is not a duration nbd-pagesrv can honour"* ]] || [ -z "$v" ]
    done
    for v in nan inf -1 1e300; do
        run "$PAGESRV_CTL" "$ctl" policy bandwidth "$v"
        echo "bandwidth '$v': $output"
        [ "$status" -eq 1 ]
    done
    # The refusals changed nothing; good values are taken as given.
    run "$PAGESRV_CTL" "$ctl" status
    [[ "$output" == *'"fault_timeout_s":60.0'* ]]
    run "$PAGESRV_CTL" "$ctl" policy fault-timeout 0.5
    [[ "$output" == *'"fault_timeout_s":0.5'* ]]
    run "$PAGESRV_CTL" "$ctl" policy fault-timeout 2147483
    [[ "$output" == *'"fault_timeout_s":2147483.0'* ]]

    for v in inf nan -5 1e300; do
        run "$PAGESRV" --size 16M --socket "$T/x.sock" --src "127.0.0.1:$port" --fault-timeout "$v"
        echo "--fault-timeout '$v': $output"
        [ "$status" -eq 1 ]
        [[ "$output" == *"--fault-timeout: '$v' is not a duration"* ]]
    done
}
