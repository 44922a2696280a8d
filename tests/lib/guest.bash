# Helpers to run memwalk, swapcopy's test guest (guest/README.md), under
# QEMU/TCG. Load after lib/common.
#
# Every guest gets a name (GUEST_NAME, default "guest"; set it to run two,
# e.g. a migration source and destination) and these files in the test's
# temp dir:
#   NAME.log       the guest's serial output, one line per serial line,
#                  each prefixed with the host time it arrived:
#                  "<epoch seconds with microseconds> <serial line>",
#                  e.g. "1712345678.123456 PASS 3"
#   NAME.qmp       QEMU's QMP socket (guest_qmp talks to it)
#   NAME.qemu.log  QEMU's own stdout/stderr
#   NAME.serial    the FIFO between QEMU's serial port and the timestamper
# The helpers below work on GUEST_LOG / GUEST_PID / GUEST_QMP, which
# guest_boot sets; to act on another guest, save them after its boot and
# pass them as prefix assignments:
#   GUEST_LOG=$DST_LOG GUEST_PID=$DST_PID guest_wait_pass 10 60

GUEST_ELF=${GUEST_ELF:-$SWAPCOPY_BUILD/guest/memwalk.elf}
GUEST_QEMU=${GUEST_QEMU:-qemu-system-x86_64}

# guest_check_prereqs: fail loudly (for setup_file) if QEMU, python3 or the
# guest image is missing.
guest_check_prereqs() {
    command -v "$GUEST_QEMU" >/dev/null ||
        { echo "$GUEST_QEMU is missing: apt-get install qemu-system-x86" >&2; return 1; }
    command -v python3 >/dev/null ||
        { echo "python3 is missing: apt-get install python3" >&2; return 1; }
    [ -f "$GUEST_ELF" ] ||
        { echo "test guest $GUEST_ELF is missing: run make" >&2; return 1; }
}

# Copies stdin to stdout, prefixing each line with the host time. printf
# is a builtin and writes each line at once, so the log is never behind.
_guest_timestamp() {
    local line
    while IFS= read -r line || [ -n "$line" ]; do
        printf '%s %s\n' "$EPOCHREALTIME" "$line"
    done
}

# guest_boot QEMU_ARGS...: boot memwalk under TCG in the background (in
# network namespace $GUEST_NETNS if set, lib/netns.bash) with
# the serial port logged to $GUEST_LOG (see above) and QMP on $GUEST_QMP;
# QEMU_ARGS add to it (-m 128M, -append "walk_mib=16", -object ...,
# -incoming ...). Sets GUEST_PID GUEST_LOG GUEST_QMP GUEST_QEMU_LOG. QEMU
# and the timestamper are stopped at teardown. Returns once QMP listens.
# -no-reboot: a guest that crashes (triple fault) makes QEMU exit, which the
# wait helpers notice, instead of silently rebooting and starting over.
guest_boot() {
    local name=${GUEST_NAME:-guest} dir=$BATS_TEST_TMPDIR fifo reader i
    fifo=$dir/$name.serial
    GUEST_LOG=$dir/$name.log
    GUEST_QMP=$dir/$name.qmp
    GUEST_QEMU_LOG=$dir/$name.qemu.log
    rm -f "$fifo" "$GUEST_QMP"
    mkfifo "$fifo" || { echo "cannot create FIFO $fifo" >&2; return 1; }
    : >"$GUEST_LOG"
    # 3>&-: bats waits for fd 3 to close; background helpers must not hold it.
    _guest_timestamp <"$fifo" >"$GUEST_LOG" 3>&- &
    reader=$!
    defer kill_wait "$reader"
    ${GUEST_NETNS:+nsenter "--net=/run/netns/$GUEST_NETNS"} \
    "$GUEST_QEMU" -accel tcg -kernel "$GUEST_ELF" -nodefaults -display none -no-reboot \
        -chardev "file,id=serial0,path=$fifo" -serial chardev:serial0 \
        -qmp "unix:$GUEST_QMP,server=on,wait=off" "$@" \
        </dev/null >"$GUEST_QEMU_LOG" 2>&1 3>&- &
    GUEST_PID=$!
    defer kill_wait "$GUEST_PID"
    for (( i = 0; i < 100; i++ )); do
        [ -S "$GUEST_QMP" ] && return 0
        kill -0 "$GUEST_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "QEMU ($GUEST_QEMU $*) did not start (no QMP socket $GUEST_QMP); its output:" >&2
    cat "$GUEST_QEMU_LOG" >&2
    return 1
}

# guest_wait_line REGEX TIMEOUT_S: wait until the start of a serial line
# (after its timestamp) matches the extended REGEX. Fails if QEMU exits or on timeout.
guest_wait_line() {
    local re=$1 deadline=$(( SECONDS + $2 ))
    while :; do
        grep -qE "^[0-9.]+ ($re)" "$GUEST_LOG" && return 0
        if ! kill -0 "$GUEST_PID" 2>/dev/null; then
            echo "QEMU (pid $GUEST_PID) exited while waiting for '$re'; its output:" >&2
            cat "$GUEST_QEMU_LOG" >&2
            _guest_log_tail
            return 1
        fi
        if (( SECONDS >= deadline )); then
            echo "timed out after $2 s waiting for serial line '$re'" >&2
            _guest_log_tail
            return 1
        fi
        sleep 0.1
    done
}

# guest_errors: print the guest's ERROR and FATAL lines; true if any.
guest_errors() {
    grep -E '^[0-9.]+ (ERROR|FATAL) ' "$GUEST_LOG"
}

# guest_wait_pass N TIMEOUT_S: wait for a "PASS n" line with n >= N (a
# migration destination's log starts at the pass the guest was in). Fails
# at once on an ERROR or FATAL line, if QEMU exits, or on timeout.
guest_wait_pass() {
    local n=$1 deadline=$(( SECONDS + $2 ))
    while :; do
        if guest_errors >&2; then
            echo "memwalk reported a failure (above) while waiting for PASS $n" >&2
            return 1
        fi
        [ "$(guest_last_pass)" -ge "$n" ] && return 0
        if ! kill -0 "$GUEST_PID" 2>/dev/null; then
            echo "QEMU (pid $GUEST_PID) exited while waiting for PASS $n; its output:" >&2
            cat "$GUEST_QEMU_LOG" >&2
            _guest_log_tail
            return 1
        fi
        if (( SECONDS >= deadline )); then
            echo "timed out after $2 s waiting for PASS $n" >&2
            _guest_log_tail
            return 1
        fi
        sleep 0.1
    done
}

# guest_last_pass: the highest pass number logged so far, -1 if none.
guest_last_pass() {
    awk 'BEGIN { m = -1 } $2 == "PASS" && $3 + 0 > m { m = $3 + 0 } END { print m }' "$GUEST_LOG"
}

# guest_pass_times: "N TIMESTAMP" for every PASS line, for benchmarks that
# turn pass intervals into guest progress over time.
guest_pass_times() {
    awk '$2 == "PASS" { print $3, $1 }' "$GUEST_LOG"
}

# guest_qmp JSON: send one QMP command to $GUEST_QMP (after the capabilities
# handshake) and print the reply as one JSON line; events are skipped.
# Fails if QEMU answers with an error. QEMU serves one QMP client at a time.
guest_qmp() {
    python3 - "$GUEST_QMP" "$1" <<'EOF'
import json, socket, sys
path, cmd = sys.argv[1], sys.argv[2]
try:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(path)
except OSError as e:
    sys.exit(f"cannot connect to QMP socket {path}: {e}; is QEMU running?")
f = s.makefile("rw")
def reply():
    while True:
        line = f.readline()
        if not line:
            sys.exit(f"QEMU closed QMP socket {path} before answering {cmd}")
        msg = json.loads(line)
        if "return" in msg or "error" in msg:
            return msg
f.readline()  # greeting
f.write('{"execute": "qmp_capabilities"}\n'); f.flush()
reply()
f.write(cmd + "\n"); f.flush()
msg = reply()
print(json.dumps(msg))
sys.exit(1 if "error" in msg else 0)
EOF
}

_guest_log_tail() {
    echo "--- last serial lines ($GUEST_LOG):" >&2
    tail -n 10 "$GUEST_LOG" >&2
}
