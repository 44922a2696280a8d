#!/usr/bin/env bash
# Run the test suite (every tests/*.bats, or those named in $TESTS) and end
# with the one summary line CI reads: "N passed, N failed, N skipped".
set -u
cd "$(dirname "$0")/.."
export SWAPCOPY_BUILD=${SWAPCOPY_BUILD:-$PWD/build}
export SWAPCOPY_SRC=$PWD

if [ -n "${TESTS:-}" ]; then
    read -r -a files <<<"$TESTS"
else
    files=(tests/*.bats)
fi

log=$(mktemp /tmp/swapcopy-tests.XXXXXX)
trap 'rm -f "$log"' EXIT
# --tap gives one line per test that this script can count; bats' own
# summary is not what CI reads. --timing puts each test's duration on its line.
bats --tap --timing "${files[@]}" 2>&1 | tee "$log"
bats_rc=${PIPESTATUS[0]}

skipped=$(grep -cE '^ok [0-9]+ .*# skip' "$log" || true)
passed=$(( $(grep -cE '^ok [0-9]+ ' "$log") - skipped ))
failed=$(grep -cE '^not ok [0-9]+ ' "$log" || true)
# A bats file that dies before its tests start reports no "not ok" line:
# count that as a failure rather than as nothing.
if [ "$bats_rc" -ne 0 ] && [ "$failed" -eq 0 ]; then
    echo "# bats exited with status $bats_rc without a failing test line" >&2
    failed=1
fi
echo
echo "${SUMMARY_LABEL:+$SUMMARY_LABEL }$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
