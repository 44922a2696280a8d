#!/usr/bin/env bats
# nbd-pagesrv --fuse DIR: the swap device served as the file DIR/nbd by
# nbd-pagesrv itself (nbd-pagesrv/fuse-front.c), what setup-swap.sh puts a
# loop device on where the kernel has no nbd driver. Needs root: FUSE
# mounts and loop devices.

load lib/common
load lib/migration   # machine_state

setup() {
    [ "$(id -u)" = 0 ] || { echo "fuse-front.bats must run as root (FUSE, losetup); it does not skip" >&2; return 1; }
    BEFORE=$(machine_state)
    MNT=$BATS_TEST_TMPDIR/mnt
    CTL=$BATS_TEST_TMPDIR/ctl.sock
    mkdir -p "$MNT"
}

teardown() {
    run_deferred
    [ "$(machine_state)" = "$BEFORE" ] || { echo "left behind:"; machine_state; false; }
}

unmount_if_mounted() {
    if M=$1 awk '$2 == ENVIRON["M"] { found = 1 } END { exit !found }' /proc/self/mounts; then
        umount -l "$1"
    fi
}

exited() { ! running "$1"; }

# running PID: exists and is not a zombie (our children stay one until waited).
running() {
    local st
    st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$st" ] && [ "${st%% *}" != Z ]
}

# start_server [ARGS]: nbd-pagesrv with a 64 MiB device on $MNT/nbd.
start_server() {
    "$SWAPCOPY_BUILD/nbd-pagesrv" --size 64M --fuse "$MNT" --control "$CTL" --no-mlock "$@" \
        >"$BATS_TEST_TMPDIR/pagesrv.log" 2>&1 &
    SRV=$!
    defer unmount_if_mounted "$MNT"
    defer kill_wait "$SRV"
    served() { [ -S "$CTL" ] && [ -e "$MNT/nbd" ]; }
    wait_for served || { cat "$BATS_TEST_TMPDIR/pagesrv.log"; false; }
}

@test "nbd-pagesrv --fuse serves DIR/nbd: its size, reads and writes, hole punches, counted in its statistics" {
    start_server
    [ "$(stat -c '%s %F' "$MNT/nbd")" = "67108864 regular file" ]
    [ "$(ls "$MNT")" = nbd ]
    run stat "$MNT/other"
    [ "$status" -ne 0 ]
    # An empty device reads zeros.
    cmp <(dd if="$MNT/nbd" bs=1M count=1 iflag=direct 2>/dev/null) <(head -c 1M /dev/zero)
    head -c 192K /dev/urandom >"$BATS_TEST_TMPDIR/data"
    dd if="$BATS_TEST_TMPDIR/data" of="$MNT/nbd" bs=64K seek=5 oflag=direct conv=notrunc,fsync status=none
    cmp <(dd if="$MNT/nbd" bs=64K skip=5 count=3 iflag=direct status=none) "$BATS_TEST_TMPDIR/data"
    # What a loop device's discard becomes: the slots read zeros again.
    fallocate --punch-hole --keep-size --offset $(( 5 * 65536 )) --length 65536 "$MNT/nbd"
    cmp <(dd if="$MNT/nbd" bs=64K skip=5 count=1 iflag=direct status=none) <(head -c 64K /dev/zero)
    cmp <(dd if="$MNT/nbd" bs=64K skip=6 count=2 iflag=direct status=none) <(tail -c 128K "$BATS_TEST_TMPDIR/data")
    # Requests in parallel (FUSE threads into the page store at once):
    # each writer's MiB reads back whole.
    head -c 4M /dev/urandom >"$BATS_TEST_TMPDIR/par"
    # (Waited for by pid: a bare wait would wait for the server too.)
    pids=()
    for i in 0 1 2 3; do
        dd if="$BATS_TEST_TMPDIR/par" of="$MNT/nbd" bs=64K skip=$(( 16 * i )) seek=$(( 256 + 16 * i )) \
           count=16 oflag=direct conv=notrunc status=none &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
    pids=()
    for i in 0 1 2 3; do
        dd if="$MNT/nbd" of="$BATS_TEST_TMPDIR/back$i" bs=64K skip=$(( 256 + 16 * i )) count=16 \
           iflag=direct status=none &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
    cat "$BATS_TEST_TMPDIR"/back{0,1,2,3} | cmp - "$BATS_TEST_TMPDIR/par"
    # Nothing is written past the end.
    run dd if="$BATS_TEST_TMPDIR/data" of="$MNT/nbd" bs=64K seek=1024 count=1 oflag=direct conv=notrunc status=none
    [ "$status" -ne 0 ]
    [ "$(stat -c %s "$MNT/nbd")" = 67108864 ]
    [ "$(stat_field_of "$CTL" requests.write)" -ge 1 ]
    [ "$(stat_field_of "$CTL" requests.read)" -ge 4 ]
    [ "$(stat_field_of "$CTL" requests.trim)" -eq 1 ]
    [ "$(stat_field_of "$CTL" bytes.written)" -ge 196608 ]
}

@test "nbd-pagesrv --fuse: SIGTERM with a loop device still on the file cuts the loop device off and exits" {
    start_server
    dev=$(losetup -f --show --direct-io=on "$MNT/nbd")
    defer losetup -d "$dev"
    dd if=/dev/urandom of="$dev" bs=4K count=4 oflag=direct status=none
    kill -TERM "$SRV"
    # Not held up by the loop device: the connection is aborted.
    wait_for exited "$SRV"
    run grep -c "cutting it off" "$BATS_TEST_TMPDIR/pagesrv.log"
    [ "$output" = 1 ]
    # The device's I/O fails from now on; it never reads stale data.
    run dd if="$dev" of=/dev/null bs=4K count=1 iflag=direct status=none
    echo "$output"
    [ "$status" -ne 0 ]
}

@test "nbd-pagesrv --fuse: an unmount ends the FUSE side, and the daemon exits cleanly on SIGTERM" {
    start_server
    umount "$MNT"
    wait_for grep -q "unmounted; no longer serving" "$BATS_TEST_TMPDIR/pagesrv.log"
    kill -0 "$SRV"
    kill -TERM "$SRV"
    st=0
    wait "$SRV" || st=$?
    [ "$st" -eq 0 ]
}

@test "nbd-pagesrv --fuse refuses what it cannot serve, clearly" {
    run "$SWAPCOPY_BUILD/nbd-pagesrv" --size 64M --fuse "$BATS_TEST_TMPDIR/missing" --no-mlock
    echo "$output"
    [ "$status" -ne 0 ]
    [[ "$output" == *"--fuse $BATS_TEST_TMPDIR/missing: not a directory"*"create it first"* ]]
    run "$SWAPCOPY_BUILD/nbd-pagesrv" --export "m=/dev/null" --fuse "$MNT" --listen 127.0.0.1:0
    echo "$output"
    [ "$status" -ne 0 ]
    [[ "$output" == *"--fuse DIR goes with --size"* ]]
}
