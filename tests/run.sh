#!/usr/bin/env bash
# Run the test suite (every tests/*.bats, or those named in $TESTS) and end
# with the one summary line CI reads: "N passed, N failed, N skipped".
#
# The tests set up swap devices, loop devices, FUSE mounts and daemons and
# undo them in their teardown. A bats killed part-way (SIGTERM, a CI
# timeout) runs no teardown, so this script undoes what is left itself: it
# runs bats in a session of its own under a temporary directory of its own,
# and afterwards stops what is left of that session and runs
# teardown-swap.sh over every state directory left in that directory.
set -u
cd "$(dirname "$0")/.."
export SWAPCOPY_BUILD=${SWAPCOPY_BUILD:-$PWD/build}
export SWAPCOPY_SRC=$PWD

if [ -n "${TESTS:-}" ]; then
    read -r -a files <<<"$TESTS"
else
    files=(tests/*.bats)
fi

# Short: unix socket paths below it must stay under 108 bytes.
run_tmp=$(mktemp -d /tmp/sct.XXXXXX) || { echo "run.sh: cannot create a directory under /tmp: mktemp failed" >&2; exit 1; }
log=$run_tmp/tap.log
bats_pid=""
interrupted=""

# machine_state: what the tests must leave as they found it (as
# tests/lib/migration.bash's machine_state, but swap devices by name only:
# their Used column moves with the host's own paging).
machine_state() {
    awk 'NR > 1 { print $1 }' /proc/swaps
    losetup -a
    grep -E ' fuse(\.|blk| )' /proc/mounts || true
}

# sweep: stop what a killed bats left running, undo every swap device set
# up under run_tmp (setup-swap.sh leaves pagesrv.pid, blockdev_attach
# leaves blockdev in each state directory), then remove run_tmp unless
# something is still mounted below it.
sweep() {
    local f dir left=0
    if [ -n "$bats_pid" ]; then
        kill -TERM -- "-$bats_pid" 2>/dev/null && sleep 1
        kill -KILL -- "-$bats_pid" 2>/dev/null
    fi
    # -xdev: never look into a FUSE mount, whose daemon may be dead.
    while IFS= read -r f; do
        dir=$(dirname "$f")
        echo "# run.sh: undoing what a test left set up in $dir" >&2
        scripts/teardown-swap.sh --name "$(basename "$dir")" --state-dir "$(dirname "$dir")" >&2 || left=1
    done < <(find "$run_tmp" -xdev \( -name pagesrv.pid -o -name blockdev \) -printf '%h/x\n' 2>/dev/null | sort -u)
    if grep -qF " $run_tmp/" /proc/mounts; then
        echo "# run.sh: still mounted under $run_tmp, not removing it: see grep $run_tmp /proc/mounts" >&2
        left=1
    else
        rm -rf "$run_tmp"
    fi
    return "$left"
}

# Two runs of the suite on one machine would see each other's swap
# devices, loop devices and mounts (and take each other's swap priority):
# a second run waits for the first.
lock=/run/swapcopy-tests.lock
[ -w /run ] || lock=/tmp/swapcopy-tests.lock
exec {lock_fd}>"$lock" || { echo "run.sh: cannot open the lock file $lock" >&2; exit 1; }
if ! flock -n "$lock_fd"; then
    echo "# run.sh: another run of the suite holds $lock; waiting for it to finish" >&2
    flock "$lock_fd" || { echo "run.sh: flock on $lock failed" >&2; exit 1; }
fi

before=$(machine_state)
# A signal to this script stops bats's whole session; the sweep follows.
trap 'interrupted=1; [ -n "$bats_pid" ] && kill -TERM -- "-$bats_pid" 2>/dev/null' TERM INT HUP

# --tap gives one line per test that this script can count; bats' own
# summary is not what CI reads. --timing puts each test's duration on its line.
# The lock stays with this script: a daemon a test leaks must not hold it.
TMPDIR=$run_tmp setsid bats --tap --timing "${files[@]}" >"$log" 2>&1 </dev/null {lock_fd}>&- &
bats_pid=$!
tail -n +1 -f --pid="$bats_pid" "$log" &
tail_pid=$!
# wait returns early when a trapped signal arrives: wait again until bats is gone.
while :; do
    wait "$bats_pid"
    bats_rc=$?
    kill -0 "$bats_pid" 2>/dev/null || break
done
wait "$tail_pid" 2>/dev/null

skipped=$(grep -cE '^ok [0-9]+ .*# skip' "$log" || true)
passed=$(( $(grep -cE '^ok [0-9]+ ' "$log") - skipped ))
failed=$(grep -cE '^not ok [0-9]+ ' "$log" || true)
# A bats file that dies before its tests start reports no "not ok" line:
# count that as a failure rather than as nothing.
if [ -n "$interrupted" ]; then
    echo "# run.sh: interrupted by a signal; the tests not run count as one failure" >&2
    failed=$(( failed + 1 ))
elif [ "$bats_rc" -ne 0 ] && [ "$failed" -eq 0 ]; then
    echo "# bats exited with status $bats_rc without a failing test line" >&2
    failed=1
fi
sweep || failed=$(( failed + 1 ))
if [ "$(machine_state)" != "$before" ]; then
    echo "# run.sh: swap, loop devices or FUSE mounts differ from before the run:" >&2
    diff <(echo "$before") <(machine_state) >&2
    failed=$(( failed + 1 ))
fi
echo
echo "${SUMMARY_LABEL:+$SUMMARY_LABEL }$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
