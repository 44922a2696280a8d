#!/usr/bin/env bats
# The kernel swaps to nbd-pagesrv: its export attached as a block device
# (scripts/lib/blockdev.sh: nbd-client, or nbdfuse + loop), made the
# highest-priority swap device, and a region paged out to it and read back
# (tests/progs/swap-roundtrip). Needs root: swapon, losetup, FUSE.

load lib/common
load lib/migration   # machine_state, json_get

# shellcheck source=../scripts/lib/blockdev.sh
. "$SWAPCOPY_SRC/scripts/lib/blockdev.sh"

PRIO=32767

# roundtrip ARGS...: swap-roundtrip, tried again (up to 3 times) only when a
# few pages would not leave the swap cache in time: these hosts run a DAMON
# page-out scheme that contends for exactly such freshly written, untouched
# pages. Any other failure, and every wrong byte, fails at once.
roundtrip() {
    local i out rc
    for i in 1 2 3; do
        out=$("$TESTBIN/swap-roundtrip" "$@" 2>&1); rc=$?
        if [ $rc -eq 0 ] || [[ "$out" != *"still resident after"* ]]; then
            printf '%s\n' "$out"
            return $rc
        fi
        echo "# attempt $i: $(grep -o '[0-9]* of [0-9]* pages still resident' <<<"$out"); trying again" >&2
    done
    printf '%s\n' "$out"
    return $rc
}

setup() {
    [ "$(id -u)" = 0 ] || { echo "kernel-swap.bats must run as root (swapon, losetup, FUSE); it does not skip" >&2; return 1; }
    BEFORE=$(machine_state)
}

teardown() {
    run_deferred
    local now
    now=$(machine_state)
    [ "$now" = "$BEFORE" ] || { printf 'left behind on the machine:\n%s\nbefore:\n%s\n' "$now" "$BEFORE"; false; }
}

# Our device must get every page: no other swap device may be active at
# the same or a higher priority.
require_top_priority_free() {
    local name prio
    while read -r name _ _ _ prio; do
        [ "$name" = Filename ] && continue
        if [ "$prio" -ge "$PRIO" ]; then
            echo "swap device $name is active at priority $prio: this test needs priority $PRIO to itself; swapoff $name first" >&2
            return 1
        fi
    done </proc/swaps
}

# swap_device_up: nbd-pagesrv with a 512 MiB device, attached, mkswap'd,
# swapon'd at top priority; sets DEV. Everything is deferred, so that a
# failure halfway leaves nothing behind.
swap_device_up() {
    require_top_priority_free
    pagesrv_start --size 512M
    defer blockdev_detach "$BATS_TEST_TMPDIR/blockdev"
    DEV=$(blockdev_attach "$NBD_SOCK" "$BATS_TEST_TMPDIR/blockdev")
    [ -b "$DEV" ] || { echo "blockdev_attach gave '$DEV', not a block device"; return 1; }
    mkswap "$DEV" >/dev/null
    defer swapoff "$DEV"
    swapon -p "$PRIO" "$DEV"
    swap_used_kib "$DEV" >/dev/null || { echo "$DEV is not in /proc/swaps after swapon"; return 1; }
}

@test "the kernel swaps 64 MiB out to nbd-pagesrv and reads every byte back from it" {
    swap_device_up
    local mib=64 region=$((64 << 20)) pages=16384
    local w0 bw0 br0
    w0=$(stat_field requests.write)
    bw0=$(stat_field bytes.written)
    br0=$(stat_field bytes.read)

    run roundtrip --device "$DEV" --mib "$mib" --json
    echo "$output"
    [ "$status" -eq 0 ]
    local js=${lines[${#lines[@]}-1]}
    [ "$(json_get "$js" result)" = PASS ]
    [ "$(json_get "$js" pages)" -eq "$pages" ]
    [ "$(json_get "$js" on_device)" -eq "$pages" ]
    [ "$(json_get "$js" verified)" -eq "$pages" ]
    [ "$(json_get "$js" wrong)" -eq 0 ]
    # /proc/swaps: the device's Used grew by the region while it was out,
    # and the region's slots were freed when the process exited. (Not "back
    # to 0": ours is the top-priority device, so a page any other process
    # pages out meanwhile lands there too.)
    local used_before used_out used_after
    used_before=$(json_get "$js" device_used_kib_before)
    used_out=$(json_get "$js" device_used_kib_out)
    used_after=$(swap_used_kib "$DEV")
    # What other processes paged out to the device meanwhile (this host's
    # DAMON page-out scheme does, by the tens of MiB): everything written
    # beyond the region's one copy.
    local foreign_kib=$(( ($(stat_field bytes.written) - bw0) / 1024 - region / 1024 ))
    (( foreign_kib > 0 )) || foreign_kib=0
    echo "device Used: $used_before KiB before, $used_out KiB while out, $used_after KiB after; other processes wrote $foreign_kib KiB"
    [ $(( used_out - used_before )) -ge $(( region / 1024 )) ]
    [ $(( used_out - used_after + foreign_kib )) -ge $(( region / 1024 )) ]

    # Every page went out through nbd-pagesrv and came back from it.
    local w1 bw1 br1
    w1=$(stat_field requests.write)
    bw1=$(stat_field bytes.written)
    br1=$(stat_field bytes.read)
    echo "server: writes $w0 -> $w1, bytes.written $bw0 -> $bw1, bytes.read $br0 -> $br1"
    [ "$w1" -gt "$w0" ]
    [ $(( bw1 - bw0 )) -ge "$region" ]
    # At least 99%: swap-roundtrip tolerates up to 1% of pages that stay in
    # the swap cache on hosts with a DAMON page-out scheme.
    [ $(( (br1 - br0) * 100 )) -ge $(( region * 99 )) ]
}

@test "pages swapped out twice with different contents come back as the second version" {
    # The same slots are reused by the second run: the server must hand out
    # what was written last, not what it first stored.
    swap_device_up
    run roundtrip --device "$DEV" --mib 32 --seed 1
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"RESULT: PASS"* ]]
    run roundtrip --device "$DEV" --mib 32 --seed 2
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"verified: 8192 pages correct, 0 wrong"* ]]
}

@test "two back-to-back runs leave /proc/swaps, losetup -a and the mounts exactly as before" {
    local i base=$BATS_TEST_TMPDIR state
    for i in 1 2; do
        # pagesrv_start puts its sockets in BATS_TEST_TMPDIR: one per run.
        BATS_TEST_TMPDIR=$base/run$i
        mkdir -p "$BATS_TEST_TMPDIR"
        swap_device_up
        run roundtrip --device "$DEV" --mib 16
        echo "$output"
        [ "$status" -eq 0 ]
        [[ "$output" == *"RESULT: PASS"* ]]
        # Tear down as teardown would, then compare.
        run_deferred
        state=$(machine_state)
        [ "$state" = "$BEFORE" ] || { printf 'run %s left behind:\n%s\n' "$i" "$state"; false; }
        if pgrep -af "nbdfuse -P $BATS_TEST_TMPDIR/"; then echo "run $i left nbdfuse running"; false; fi
        if kill -0 "$PAGESRV_PID" 2>/dev/null; then echo "run $i left nbd-pagesrv running"; false; fi
        [ ! -e "$BATS_TEST_TMPDIR/blockdev/blockdev" ]
    done
    BATS_TEST_TMPDIR=$base
}

@test "blockdev_detach undoes an attach whose nbdfuse or server died, and is idempotent" {
    pagesrv_start --size 64M
    local state=$BATS_TEST_TMPDIR/blockdev
    defer blockdev_detach "$state"
    DEV=$(blockdev_attach "$NBD_SOCK" "$state")
    [ -b "$DEV" ]
    if grep -q '^fuse ' "$state/blockdev"; then
        # Kill nbdfuse behind our back: its mount goes dead, the loop stays.
        kill -KILL "$(cat "$state/nbdfuse.pid")"
    fi
    kill_wait "$PAGESRV_PID"
    blockdev_detach "$state"
    blockdev_detach "$state"
    [ "$(machine_state)" = "$BEFORE" ]
}

@test "blockdev_attach fails clearly with no server and leaves nothing behind" {
    local state=$BATS_TEST_TMPDIR/blockdev
    defer blockdev_detach "$state"
    run blockdev_attach "$BATS_TEST_TMPDIR/nothing.sock" "$state"
    echo "$output"
    [ "$status" -ne 0 ]
    [[ "$output" == *"is not a socket: start the NBD server first"* ]]
    # A socket nobody listens on any more.
    python3 -c 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' "$BATS_TEST_TMPDIR/dead.sock"
    run blockdev_attach "$BATS_TEST_TMPDIR/dead.sock" "$state"
    echo "$output"
    [ "$status" -ne 0 ]
    [[ "$output" == *"Connection refused"* ]]
    [ ! -s "$state/blockdev" ]
    [ "$(machine_state)" = "$BEFORE" ]
}

@test "blockdev_detach refuses while the device is still active swap" {
    swap_device_up
    run blockdev_detach "$BATS_TEST_TMPDIR/blockdev"
    echo "$output"
    [ "$status" -ne 0 ]
    [[ "$output" == *"is still an active swap device: swapoff $DEV first"* ]]
    swap_used_kib "$DEV" >/dev/null
}
