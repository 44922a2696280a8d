#!/usr/bin/env bats
# scripts/setup-swap.sh and scripts/teardown-swap.sh: what they set up,
# what they refuse, and that teardown undoes everything, also after a crash.

load lib/common
load lib/migration

setup() {
    [ "$(id -u)" = 0 ] || { echo "needs root" >&2; return 1; }
    BEFORE=$(machine_state)
    SETUP=$SWAPCOPY_SRC/scripts/setup-swap.sh
    TEARDOWN=$SWAPCOPY_SRC/scripts/teardown-swap.sh
}

teardown() {
    run_deferred
    [ "$(machine_state)" = "$BEFORE" ] || { echo "left behind:"; machine_state; false; }
}

@test "setup-swap.sh prints the device, control socket and pid; the device is top-priority swap" {
    source_start 16
    swap_setup
    # Above every other swap device, and above what hosts give their own.
    prio=$(awk -v d="$(readlink -f "$DEVICE")" '$1 == d {print $5}' /proc/swaps)
    [ "$prio" -ge 32000 ]
    awk -v d="$(readlink -f "$DEVICE")" -v p="$prio" 'NR > 1 && $1 != d && $5 >= p { exit 1 }' /proc/swaps
    pid=$(cat "$STATE/pagesrv.pid")
    kill -0 "$pid"
    # Sized for the half-full rule: at least twice the source's 16 MiB.
    size_kb=$(awk -v d="$(readlink -f "$DEVICE")" '$1 == d {print $3}' /proc/swaps)
    [ "$size_kb" -ge $(( 2 * 16 * 1024 )) ]
    # The daemon knows its device (for in-process users such as a patched QEMU).
    [ "$(json_get "$("$PAGESRV_CTL" "$CONTROL" device)" device)" = "$DEVICE" ]
    # Without the kernel's nbd driver the loop device sits on a FUSE file
    # that nbd-pagesrv serves itself: nothing but it in the swap path, its
    # memory locked as touched.
    if [[ $DEVICE == /dev/loop* ]]; then
        [ ! -e "$STATE/nbdfuse.pid" ]
        run pgrep -f "nbdfuse -P $STATE/"
        [ "$status" -eq 1 ]
        [ "$(losetup -n -O BACK-FILE "$DEVICE" | tr -d ' ')" = "$STATE/fuse/nbd" ]
        M=$STATE/fuse awk '$2 == ENVIRON["M"] && $3 == "fuse.swapcopy" { found = 1 } END { exit !found }' /proc/self/mounts
        locked_kb=$(awk '/^VmLck:/ {print $2}' "/proc/$pid/status")
        echo "nbd-pagesrv VmLck: $locked_kb kB"
        [ "$locked_kb" -gt 0 ]
        # mkswap wrote its header through that file: counted like NBD writes.
        [ "$(stat_field_of "$CONTROL" requests.write)" -gt 0 ]
    fi
    "$TEARDOWN" --name "$SWAP_NAME" --state-dir "$SWAP_STATE_ROOT"
    [ ! -e "$STATE" ]
    # nbd-pagesrv has exited: gone, or a zombie that whoever inherited it
    # (setup-swap.sh has exited) has not reaped yet.
    st=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)
    [ -z "$st" ] || [ "$st" = Z ]
    [ "$(machine_state)" = "$BEFORE" ]
}

@test "setup-swap.sh --attach nbdfuse: nbdfuse in the swap path runs swap-safe, and teardown stops it" {
    source_start 16
    swap_setup --attach nbdfuse
    [[ $DEVICE == /dev/loop* ]]
    # nbdfuse runs with swap-safe-preload.so, its memory locked as touched,
    # like nbd-pagesrv's. (The OOM shield needs CAP_SYS_RESOURCE, which some
    # containers withhold: then the preload says so in nbdfuse's log.)
    [ -s "$STATE/nbdfuse.pid" ]
    fpid=$(cat "$STATE/nbdfuse.pid")
    [ "$(losetup -n -O BACK-FILE "$DEVICE" | tr -d ' ')" = "$STATE/fuse/nbd" ]
    grep -q swap-safe-preload.so "/proc/$fpid/maps"
    locked_kb=$(awk '/^VmLck:/ {print $2}' "/proc/$fpid/status")
    echo "nbdfuse VmLck: $locked_kb kB"
    [ "$locked_kb" -gt 0 ]
    run grep "swap-safe-preload.*mlockall" "$STATE/nbdfuse.log"
    [ "$status" -eq 1 ]
    [ "$(cat "/proc/$fpid/oom_score_adj")" = -1000 ] ||
        grep -q "swap-safe-preload.*oom_score_adj" "$STATE/nbdfuse.log"
    "$TEARDOWN" --name "$SWAP_NAME" --state-dir "$SWAP_STATE_ROOT"
    [ ! -e "$STATE" ]
    run pgrep -f "nbdfuse -P $STATE/"
    [ "$status" -eq 1 ]
}

@test "setup-swap.sh refuses an unknown --attach" {
    source_start 16
    run "$SETUP" --src "127.0.0.1:$SRC_PORT" --name "t$$" --state-dir "$BATS_TEST_TMPDIR/run" --attach floppy
    echo "$output"
    [ "$status" -ne 0 ]
    [[ "$output" == *"--attach floppy: give auto, nbd, fuse or nbdfuse"* ]]
    [ ! -e "$BATS_TEST_TMPDIR/run/t$$" ]
}

@test "setup-swap.sh refuses a name already in use" {
    source_start 16
    swap_setup
    run "$SETUP" --src "127.0.0.1:$SRC_PORT" --name "$SWAP_NAME" --state-dir "$SWAP_STATE_ROOT"
    echo "$output"
    [ "$status" -ne 0 ]
    [[ "$output" == *"already set up"* ]]
    # The refused call touched nothing: the first device still works.
    [ -S "$CONTROL" ] && "$PAGESRV_CTL" "$CONTROL" status >/dev/null
}

# other_swap PRIORITY: a small swap device of someone else's, at PRIORITY.
other_swap() {
    img=$BATS_TEST_TMPDIR/other.swap
    truncate -s 16M "$img"
    loop=$(losetup -f --show "$img")
    defer losetup -d "$loop"
    mkswap "$loop" >/dev/null
    swapon -p "$1" "$loop"
    defer swapoff "$loop"
}

@test "setup-swap.sh goes one priority above another device with a high one" {
    source_start 16
    other_swap 32100
    swap_setup
    prio=$(awk -v d="$(readlink -f "$DEVICE")" '$1 == d {print $5}' /proc/swaps)
    [ "$prio" = 32101 ]
}

@test "setup-swap.sh refuses when another swap device has the highest priority there is" {
    source_start 16
    other_swap 32767
    run "$SETUP" --src "127.0.0.1:$SRC_PORT" --name "other$$" --state-dir "$BATS_TEST_TMPDIR/run"
    echo "$output"
    [ "$status" -ne 0 ]
    [[ "$output" == *"already has priority 32767, the highest there is"* ]]
    [ ! -e "$BATS_TEST_TMPDIR/run/other$$" ]
}

@test "setup-swap.sh refuses to run as an ordinary user" {
    run setpriv --reuid=65534 --regid=65534 --clear-groups "$SETUP" --src 127.0.0.1:1
    echo "$output"
    [ "$status" -ne 0 ]
    [[ "$output" == *"must run as root"* ]]
}

@test "setup-swap.sh refuses when zswap is enabled" {
    fake=$BATS_TEST_TMPDIR/zswap-enabled
    echo Y >"$fake"
    run env SWAPCOPY_ZSWAP_ENABLED="$fake" "$SETUP" --src 127.0.0.1:1 --name z$$ --state-dir "$BATS_TEST_TMPDIR/run"
    echo "$output"
    [ "$status" -ne 0 ]
    [[ "$output" == *"zswap is enabled"* ]]
}

@test "setup-swap.sh with an unreachable source fails and leaves nothing behind" {
    run "$SETUP" --src 127.0.0.1:1 --name u$$ --state-dir "$BATS_TEST_TMPDIR/run"
    echo "$output"
    [ "$status" -ne 0 ]
    [[ "$output" == *"127.0.0.1:1"* ]]
    [ ! -e "$BATS_TEST_TMPDIR/run/u$$" ]
}

@test "setup-swap.sh --src-later sets up before the source exists, and needs --size; pool options pass through" {
    run "$SETUP" --src 127.0.0.1:1 --src-later --name l$$ --state-dir "$BATS_TEST_TMPDIR/run"
    echo "$output"
    [ "$status" -ne 0 ]
    [[ "$output" == *"--src-later needs --size"* ]]
    [ ! -e "$BATS_TEST_TMPDIR/run/l$$" ]
    defer "$TEARDOWN" --name "l$$" --state-dir "$BATS_TEST_TMPDIR/run"
    run "$SETUP" --src 127.0.0.1:1 --src-later --size 64M --name "l$$" --state-dir "$BATS_TEST_TMPDIR/run" \
        --mem-limit 8M --mem-prealloc
    echo "$output"
    [ "$status" -eq 0 ]
    device=$(sed -n 's/^DEVICE=//p' <<<"$output")
    awk 'NR>1 {print $1}' /proc/swaps | grep -qx "$(readlink -f "$device")"
    ctl=$(sed -n 's/^CONTROL=//p' <<<"$output")
    run "$PAGESRV_CTL" "$ctl" map 0 mem 0 1
    [[ "$output" == *"map refused"*"127.0.0.1:1"* ]]
    # --mem-limit and --mem-prealloc reach nbd-pagesrv: 8 MiB of pool, mapped.
    pool_ready() { [ "$(stat_field_of "$ctl" store.pool_pages)" -eq 2048 ]; }
    wait_for pool_ready
}

# crash_then_teardown [SETUP ARGS]: kill -9 the daemons, then teardown.
crash_then_teardown() {
    source_start 16
    swap_setup "$@"
    kill -9 "$(cat "$STATE/pagesrv.pid")"
    [ -f "$STATE/nbdfuse.pid" ] && kill -9 "$(cat "$STATE/nbdfuse.pid")" || true
    sleep 0.5
    run "$TEARDOWN" --name "$SWAP_NAME" --state-dir "$SWAP_STATE_ROOT"
    echo "$output"
    [ "$status" -eq 0 ]
    [ ! -e "$STATE" ]
    # A second teardown is a no-op.
    "$TEARDOWN" --name "$SWAP_NAME" --state-dir "$SWAP_STATE_ROOT"
}

@test "teardown-swap.sh undoes everything after nbd-pagesrv crashed (its own FUSE mount left dead)" {
    crash_then_teardown
}

@test "teardown-swap.sh undoes everything after nbd-pagesrv and nbdfuse crashed" {
    crash_then_teardown --attach nbdfuse
}
