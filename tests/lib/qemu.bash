# A source and a destination QEMU for migration tests. Load after lib/common.
#
# qemu_pair_start MIB [GUEST ARGS...]: source with its RAM block 'mem' in a
# shared file (/dev/shm), destination with private anonymous RAM waiting
# on -incoming defer. Sets SRC_QMP DST_QMP SRC_RAM SRC_QPID DST_QPID and
# SRC_SERIAL DST_SERIAL (serial output files). Both are killed, and the RAM
# file removed, at teardown. QEMU_NETNS_SRC / QEMU_NETNS_DST run either in a
# network namespace (lib/netns.bash), as on two hosts.

qemu_common_args() {
    echo -accel tcg -m "$1M" -machine pc,memory-backend=mem -display none -nodefaults \
        -no-reboot
}

_qemu_start() {   # name pidvar extra...
    local name=$1 pidvar=$2 ns=; shift 2
    [ "$name" = src ] && ns=${QEMU_NETNS_SRC:-}
    [ "$name" = dst ] && ns=${QEMU_NETNS_DST:-}
    ${ns:+nsenter "--net=/run/netns/$ns"} qemu-system-x86_64 "$@" -qmp "unix:$BATS_TEST_TMPDIR/$name.qmp,server=on,wait=off" \
        -pidfile "$BATS_TEST_TMPDIR/$name.pid" -daemonize \
        >"$BATS_TEST_TMPDIR/$name.log" 2>&1 || { cat "$BATS_TEST_TMPDIR/$name.log" >&2; return 1; }
    printf -v "$pidvar" '%s' "$(cat "$BATS_TEST_TMPDIR/$name.pid")"
    defer kill_wait_any "$(cat "$BATS_TEST_TMPDIR/$name.pid")"
}

# kill_wait_any PID: like kill_wait for a process that is not our child.
kill_wait_any() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for (( i=0; i<50; i++ )); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    for (( i=0; i<50; i++ )); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    return 0
}

qemu_pair_start() {
    local mib=$1; shift
    SRC_RAM=/dev/shm/swapcopy-test-$$-$BATS_TEST_NUMBER.ram
    defer rm -f "$SRC_RAM"
    SRC_QMP=$BATS_TEST_TMPDIR/src.qmp DST_QMP=$BATS_TEST_TMPDIR/dst.qmp
    SRC_SERIAL=$BATS_TEST_TMPDIR/src.serial DST_SERIAL=$BATS_TEST_TMPDIR/dst.serial
    # shellcheck disable=SC2046
    _qemu_start src SRC_QPID $(qemu_common_args "$mib") \
        -object "memory-backend-file,id=mem,size=${mib}M,mem-path=$SRC_RAM,share=on" \
        -serial "file:$SRC_SERIAL" "$@" || return 1
    # shellcheck disable=SC2046
    _qemu_start dst DST_QPID $(qemu_common_args "$mib") \
        -object "memory-backend-ram,id=mem,size=${mib}M" \
        -serial "file:$DST_SERIAL" -incoming defer "$@" || return 1
    wait_for test -S "$SRC_QMP" && wait_for test -S "$DST_QMP"
}

# qmp SOCKET COMMAND [JSON-ARGS]: run one QMP command, print its return value.
qmp() {
    python3 - "$@" <<'PY'
import json, os, sys
sys.path.insert(0, os.environ["SWAPCOPY_SRC"] + "/scripts")
from qmp import QMP
q = QMP(sys.argv[1])
args = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
print(json.dumps(q.cmd(sys.argv[2], **args)))
PY
}

# swapcopy_migrate ARGS...: scripts/swapcopy-migrate between the pair.
swapcopy_migrate() {
    local sport mport
    free_port_pair sport mport || return 1
    "$SWAPCOPY_SRC/scripts/swapcopy-migrate" --src-qmp "$SRC_QMP" --dst-qmp "$DST_QMP" \
        --name "t$$-$BATS_TEST_NUMBER" --state-dir "$BATS_TEST_TMPDIR/run" \
        --source-listen "127.0.0.1:$sport" \
        --migrate-uri "tcp:127.0.0.1:$mport" \
        --json "$BATS_TEST_TMPDIR/summary.json" "$@"
}

# wait_for_pass SERIAL N TIMEOUT: wait until the memwalk serial log has N
# PASS lines; fail at once on an ERROR line.
wait_for_pass() {
    local file=$1 n=$2 timeout=$3 i
    for (( i = 0; i < timeout * 10; i++ )); do
        if grep -q '^ERROR' "$file" 2>/dev/null; then
            grep '^ERROR' "$file" >&2
            return 1
        fi
        [ "$(grep -c '^PASS' "$file" 2>/dev/null || true)" -ge "$n" ] && return 0
        sleep 0.1
    done
    echo "$file: fewer than $n PASS lines after $timeout s" >&2
    tail -3 "$file" >&2
    return 1
}

# wait_for_lines FILE REGEX N TIMEOUT: wait until FILE has N lines matching
# REGEX; fail at once on an LERROR or ERROR line.
wait_for_lines() {
    local file=$1 re=$2 n=$3 timeout=$4 i
    for (( i = 0; i < timeout * 10; i++ )); do
        if grep -qE '^(L?ERROR)' "$file" 2>/dev/null; then
            grep -E '^(L?ERROR)' "$file" >&2
            return 1
        fi
        [ "$(grep -cE "$re" "$file" 2>/dev/null || true)" -ge "$n" ] && return 0
        sleep 0.1
    done
    echo "$file: fewer than $n lines matching $re after $timeout s" >&2
    tail -3 "$file" >&2
    return 1
}
