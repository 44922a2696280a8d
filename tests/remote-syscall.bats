#!/usr/bin/env bats
# swapstub/remote-syscall.c: mincore() run inside another process (how
# arming checks a stock QEMU's swap cache, docs/swapstub.md step 5).

load lib/common

# traced PID: another process has attached to PID with ptrace.
traced() { ! grep -q '^TracerPid:[[:space:]]*0$' "/proc/$1/status"; }

@test "mincore run inside a process waiting in ppoll, in nanosleep or in user space: right answers, and the process never notices" {
    for how in ppoll nanosleep busy; do
        run "$TESTBIN/remote-mincore" --rounds 200 --wait "$how"
        echo "$how: $output"
        [ "$status" -eq 0 ]
        [ "$output" = "OK rounds=200" ]
    done
}

@test "a process already traced (by a debugger) is refused, saying so, and left running" {
    sleep 30 &
    victim=$!
    defer kill_wait "$victim"
    # strace would do; a second ptrace attach is what matters.
    python3 - "$victim" <<'PY' &
import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
PTRACE_SEIZE = 0x4206
assert libc.ptrace(PTRACE_SEIZE, int(sys.argv[1]), 0, 0) == 0, "seize failed"
time.sleep(5)
PY
    tracer=$!
    defer kill_wait "$tracer"
    wait_for traced "$victim"
    run "$TESTBIN/remote-mincore" --pid "$victim"
    echo "$output"
    [ "$status" -ne 0 ]
    [[ "$output" == *"is a debugger or strace already attached?"* ]]
    kill -0 "$victim"
}
