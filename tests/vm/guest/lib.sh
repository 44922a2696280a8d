# Sourced by the scripts that run inside the test VM (tests/vm/guest/*.sh):
# failing and progress lines, a source nbd-pagesrv on the VM's loopback,
# and a cleanup on exit that tears down the swap device NAME under
# STATE_ROOT and stops the source (and HOLD_PID, if a script set it).
# The sourcing script sets B, S, name and state_root first.

fail() { echo "FAIL: $*"; exit 1; }
step() { echo "== $* (t=$(( $(date +%s) - t0 ))s)"; }
t0=$(date +%s)

src_pid="" hold_pid=""
guest_cleanup() {
    local rc=$?
    "$S/scripts/teardown-swap.sh" --name "$name" --state-dir "$state_root" >/dev/null 2>&1 || true
    [ -n "$hold_pid" ] && kill "$hold_pid" 2>/dev/null
    [ -n "$src_pid" ] && kill "$src_pid" 2>/dev/null
    exit $rc
}
trap guest_cleanup EXIT

# source_start IMG PORT CONTROL LOG: nbd-pagesrv exporting IMG as "mem" on
# 127.0.0.1:PORT; returns once it is up (its control socket comes after its
# listening sockets). Sets src_pid.
source_start() {
    local img=$1 port=$2 ctl=$3 log=$4
    "$B/nbd-pagesrv" --export "mem=$img" --listen "127.0.0.1:$port" --no-mlock \
        --control "$ctl" >"$log" 2>&1 &
    src_pid=$!
    for _ in $(seq 100); do
        [ -S "$ctl" ] && return 0
        kill -0 "$src_pid" 2>/dev/null || { cat "$log"; fail "the source nbd-pagesrv exited"; }
        sleep 0.1
    done
    cat "$log"
    fail "the source nbd-pagesrv did not start within 10 s"
}
