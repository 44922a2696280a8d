# Shared helpers for the bats suites. Load with: load lib/common
# Every resource a test creates is registered with `defer` right after it is
# created; `run_deferred` (called from teardown) undoes them in reverse order,
# so cleanup happens also when the test fails halfway.

: "${SWAPCOPY_BUILD:?SWAPCOPY_BUILD must point at the build directory (make check sets it)}"
: "${SWAPCOPY_SRC:=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
PAGESRV=$SWAPCOPY_BUILD/nbd-pagesrv
PAGESRV_CTL=$SWAPCOPY_BUILD/pagesrv-ctl
TESTBIN=$SWAPCOPY_BUILD/tests

# sanitized_build: true if the daemon under test is built with ASan or
# TSan, whose allocators and costs differ from glibc's.
sanitized_build() { ldd "$PAGESRV" | grep -q 'lib[at]san'; }

# linux_guest: Debian's kernel and a busybox initramfs that checksums its
# memory (tests/vm/linux-guest.sh, built once); sets LINUX_KERNEL and
# LINUX_INITRD.
linux_guest() {
    local out
    out=$("$SWAPCOPY_SRC/tests/vm/linux-guest.sh") || return 1
    LINUX_KERNEL=$(sed -n 's/^KERNEL=//p' <<<"$out")
    LINUX_INITRD=$(sed -n 's/^INITRD=//p' <<<"$out")
}

_DEFERRED=()

# defer CMD...: run CMD at teardown (last registered runs first).
defer() {
    local q
    printf -v q '%q ' "$@"
    _DEFERRED+=("$q")
}

run_deferred() {
    local i rc=0
    for (( i=${#_DEFERRED[@]}-1; i>=0; i-- )); do
        eval "${_DEFERRED[$i]}" || rc=1
    done
    _DEFERRED=()
    return $rc
}

# kill_wait PID: SIGTERM, then SIGKILL after 5 s; never fails.
kill_wait() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for (( i=0; i<50; i++ )); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 0
}

# process_running PID: the process exists and has not exited (a zombie,
# not reaped yet by a parent that is not ours, has). /proc/PID/cmdline
# cannot tell: test -s sees size 0 for every /proc file.
process_running() {
    local st
    st=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    [ -n "$st" ] && [ "${st:0:1}" != Z ]
}

# wait_exited PID: wait up to 30 s for the process to exit.
wait_exited() {
    local i
    for (( i = 0; i < 300; i++ )); do
        process_running "$1" || return 0
        sleep 0.1
    done
    echo "process $1 is still running after 30 s" >&2
    return 1
}

# wait_for CMD...: retry CMD for up to 10 s.
wait_for() {
    local i
    for (( i=0; i<100; i++ )); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "timed out waiting for: $*" >&2
    return 1
}

# pagesrv_start ARGS...: start nbd-pagesrv in the background with a socket
# and a control socket in the test's temp dir; sets PAGESRV_PID, NBD_SOCK,
# CTL_SOCK, PAGESRV_LOG. Stopped at teardown.
pagesrv_start() {
    NBD_SOCK=$BATS_TEST_TMPDIR/nbd.sock
    CTL_SOCK=$BATS_TEST_TMPDIR/ctl.sock
    PAGESRV_LOG=$BATS_TEST_TMPDIR/pagesrv.log
    "$PAGESRV" --socket "$NBD_SOCK" --control "$CTL_SOCK" "$@" >"$PAGESRV_LOG" 2>&1 &
    PAGESRV_PID=$!
    defer kill_wait "$PAGESRV_PID"
    if ! wait_for test -S "$CTL_SOCK" || ! wait_for nbdinfo --size "nbd+unix:///?socket=$NBD_SOCK"; then
        cat "$PAGESRV_LOG" >&2
        return 1
    fi
}

# stat_field JSONPATH: one number from `pagesrv-ctl stats`, e.g. requests.write
stat_field() {
    "$PAGESRV_CTL" "$CTL_SOCK" stats | python3 -c 'import json,sys
v=json.load(sys.stdin)
for k in sys.argv[1].split("."): v=v[k]
print(v)' "$1"
}

# stat_field_of CONTROL JSONPATH: like stat_field, for another control socket.
stat_field_of() {
    "$PAGESRV_CTL" "$1" stats | python3 -c 'import json,sys
v=json.load(sys.stdin)
for k in sys.argv[1].split("."): v=v[k]
print(v)' "$2"
}

# swap_used_kib DEV: the "Used" column of DEV in /proc/swaps.
swap_used_kib() {
    local real
    real=$(readlink -f "$1")
    D=$real awk 'NR > 1 && $1 == ENVIRON["D"] { print $4; found = 1 } END { exit !found }' /proc/swaps
}

# port_bound PORT: true if a TCP socket of this host is bound to PORT.
port_bound() {
    awk -v hex="$(printf ':%04X' "$1")" \
        'FNR > 1 && substr($2, length($2) - 4) == hex { found = 1 } END { exit !found }' \
        /proc/net/tcp /proc/net/tcp6
}

# free_port: print a loopback TCP port no socket uses. It is picked below
# the kernel's ephemeral range (ip_local_port_range), so an outgoing
# connection made later by another process cannot take it before the test
# listens on it; /proc/net/tcp{,6} rule out ports already bound.
free_port() {
    local low p i
    read -r low _ </proc/sys/net/ipv4/ip_local_port_range
    (( low > 11000 )) || { echo "free_port: ephemeral range starts at $low, leaving no room below it" >&2; return 1; }
    for (( i=0; i<100; i++ )); do
        p=$(( 10000 + RANDOM % (low - 10000) ))
        if ! port_bound "$p"; then
            echo "$p"
            return 0
        fi
    done
    echo "free_port: no unused loopback port found in 100 tries" >&2
    return 1
}

# free_port_pair VAR1 VAR2: two different free ports, into VAR1 and VAR2.
free_port_pair() {
    local -n _fp1=$1 _fp2=$2
    _fp1=$(free_port) || return 1
    _fp2=$_fp1
    while [ "$_fp2" = "$_fp1" ]; do _fp2=$(free_port) || return 1; done
}

# hold_port PORT: a process listening on 127.0.0.1:PORT that accepts
# connections and never answers (a stranger on the port), until teardown.
hold_port() {
    python3 -c "import socket, time; s = socket.socket(); s.bind(('127.0.0.1', $1)); s.listen(); time.sleep(3600)" \
        3>&- &
    defer kill_wait "$!"
    wait_for port_bound "$1"
}
