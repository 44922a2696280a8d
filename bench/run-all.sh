#!/usr/bin/env bash
# run-all.sh: run every benchmark script in bench/ (used by 'make bench').
# Each script prints its own header and table; a failing script makes the
# whole run fail, after the others have still been run.
set -uo pipefail

dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
: "${SWAPCOPY_BUILD:=$(cd "$dir/.." && pwd)/build}"
export SWAPCOPY_BUILD

failed=()
for script in "$dir"/*.sh; do
    [[ $(basename "$script") == run-all.sh ]] && continue
    echo "### $(basename "$script")"
    if ! "$script"; then
        echo "run-all.sh: $(basename "$script") failed (exit status $?); see its messages above" >&2
        failed+=("$(basename "$script")")
    fi
    echo
done
if (( ${#failed[@]} )); then
    echo "run-all.sh: failed benchmarks: ${failed[*]}" >&2
    exit 1
fi
