# Helpers for tests that need a migration source and a swapcopy swap
# device. Load after lib/common.

# source_start MIB [nbd-pagesrv options]: a source image (mkimage: random,
# zero, hole and repeated pages) served by nbd-pagesrv --export mem=IMG on
# a free loopback port. Sets IMG SUMS SRC_PORT SRC_PID.
source_start() {
    local mib=$1 i
    shift
    IMG=$BATS_TEST_TMPDIR/src.img
    SUMS=$BATS_TEST_TMPDIR/src.crc
    "$TESTBIN/mkimage" "$IMG" "$mib" "$SUMS" >/dev/null
    for i in 1 2 3 4 5; do
        SRC_PORT=$(free_port)
        "$PAGESRV" --export "mem=$IMG" --listen "127.0.0.1:$SRC_PORT" --no-mlock "$@" \
            >"$BATS_TEST_TMPDIR/source.log" 2>&1 &
        SRC_PID=$!
        if wait_for nbdinfo --size "nbd://127.0.0.1:$SRC_PORT/mem"; then
            defer kill_wait "$SRC_PID"
            return 0
        fi
        kill_wait "$SRC_PID"
    done
    cat "$BATS_TEST_TMPDIR/source.log" >&2
    return 1
}

# swap_setup [ARGS...]: scripts/setup-swap.sh against the source; sets
# DEVICE CONTROL STATE SWAP_NAME, and tears it all down at teardown.
swap_setup() {
    SWAP_NAME=t$$-${BATS_TEST_NUMBER}
    SWAP_STATE_ROOT=$BATS_TEST_TMPDIR/run
    local out
    defer "$SWAPCOPY_SRC/scripts/teardown-swap.sh" --name "$SWAP_NAME" --state-dir "$SWAP_STATE_ROOT"
    # Runs before the teardown above removes the state directory.
    defer show_logs_if_failed "$SWAP_STATE_ROOT/$SWAP_NAME/pagesrv.log" "$BATS_TEST_TMPDIR/source.log"
    out=$("$SWAPCOPY_SRC/scripts/setup-swap.sh" --src "127.0.0.1:$SRC_PORT" --name "$SWAP_NAME" \
          --state-dir "$SWAP_STATE_ROOT" "$@") || return 1
    DEVICE=$(sed -n 's/^DEVICE=//p' <<<"$out")
    CONTROL=$(sed -n 's/^CONTROL=//p' <<<"$out")
    STATE=$(sed -n 's/^STATE=//p' <<<"$out")
    [ -b "$DEVICE" ] && [ -S "$CONTROL" ]
}

# show_logs_if_failed LOG...: a failed test shows what the daemons said
# (bats prints teardown output only for failed tests, but the logs are
# gone once teardown-swap.sh has removed the state directory).
show_logs_if_failed() {
    local f
    [ "${BATS_TEST_COMPLETED:-}" = 1 ] && return 0
    for f in "$@"; do
        [ -f "$f" ] || continue
        echo "---- last lines of $f"
        tail -n 60 "$f"
    done
}

# json_get JSON KEY.PATH: one value from a JSON document.
json_get() {
    python3 -c 'import json,sys
v=json.loads(sys.argv[1])
for k in sys.argv[2].split("."): v=v[k]
print(v)' "$1" "$2"
}

# The machine as tests must leave it: no swap, loop or FUSE of ours.
# Swap devices without their Used column: a host's own swap device (and
# any device a test finds already there) fills and empties with the host's
# paging while a test runs.
machine_state() {
    awk 'NR > 1 { print $1, $2, $3, $5 }' /proc/swaps
    losetup -a
    grep -E ' fuse(\.|blk| )' /proc/mounts || true
}
