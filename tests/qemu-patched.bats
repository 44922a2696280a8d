#!/usr/bin/env bats
# Issue 5, part 2: the patched QEMU (qemu-patches/) migrating the memwalk
# guest with the postcopy-swap capability: the source serves its ordinary
# anonymous RAM over NBD, the destination (-postcopy swap,src=...) sets up
# the swap device, arms its RAM in-process with libswapstub before any
# device state loads, streams, converts and finishes by itself.

load lib/common
load lib/migration
load lib/guest
load lib/qemu-patched

bats_require_minimum_version 1.5.0

setup_file() {
    [ "$(id -u)" = 0 ] || { echo "needs root (swap, loop devices, FUSE)" >&2; return 1; }
    guest_check_prereqs
    # Builds the patched QEMU once (about 5 minutes), then it is cached.
    qp_binary
}

setup() {
    BEFORE=$(machine_state)
    qp_binary
}

teardown() {
    run_deferred
    [ "$(machine_state)" = "$BEFORE" ] || { echo "left behind:"; machine_state; false; }
}

@test "patched QEMU, paused source: the destination's RAM is the source's, byte for byte" {
    qp_pair_start 128
    GUEST_LOG=$SRC_LOG GUEST_PID=$SRC_PID GUEST_QEMU_LOG=$SRC_QEMU_LOG guest_wait_pass 1 60
    qp_qmp "$SRC_QMP" stop
    qp_qmp "$SRC_QMP" pmemsave '{"val":0,"size":134217728,"filename":"'"$BATS_TEST_TMPDIR/src.ram"'"}'
    run qp_migrate
    echo "$output"
    [ "$status" -eq 0 ]
    m=$output
    [ "$(json_get "$m" src.status)" = completed ]
    [ "$(json_get "$m" dst.status)" = completed ]
    [ "$(json_get "$m" dst.postcopy-swap.state)" = finished ]
    total=$(json_get "$m" dst.postcopy-swap.pages-total)
    [ "$total" -ge 32768 ]   # 128 MiB of RAM plus the firmware's blocks
    # Landed straight into guest RAM (nothing by the stream), then every
    # landed slot released: nothing left that needs the source.
    [ "$(json_get "$m" dst.postcopy-swap.pages-local)" -eq "$total" ]
    [ "$(json_get "$m" dst.postcopy-swap.pages-streamed)" -eq 0 ]
    # The source was paused, so the destination must hold exactly its RAM.
    [ "$(qp_status "$DST_QMP")" = paused ]
    qp_qmp "$DST_QMP" pmemsave '{"val":0,"size":134217728,"filename":"'"$BATS_TEST_TMPDIR/dst.ram"'"}'
    cmp "$BATS_TEST_TMPDIR/src.ram" "$BATS_TEST_TMPDIR/dst.ram"
    # ... and it keeps walking from there once continued.
    last=$(GUEST_LOG=$SRC_LOG guest_last_pass)
    qp_qmp "$DST_QMP" cont
    GUEST_LOG=$DST_LOG GUEST_PID=$DST_PID GUEST_QEMU_LOG=$DST_QEMU_LOG guest_wait_pass $(( last + 2 )) 60
    # The swap device is gone: QEMU tore it down once every page was local.
    [ ! -e "$BATS_TEST_TMPDIR/run/$QP_SWAP_NAME" ]
}

@test "patched QEMU, running memwalk: migration completes and the guest keeps passing on the destination" {
    qp_pair_start 128
    GUEST_LOG=$SRC_LOG GUEST_PID=$SRC_PID GUEST_QEMU_LOG=$SRC_QEMU_LOG guest_wait_pass 2 60
    run qp_migrate
    echo "$output"
    [ "$status" -eq 0 ]
    [ "$(qp_status "$SRC_QMP")" = postmigrate ]
    [ "$(qp_status "$DST_QMP")" = running ]
    last=$(GUEST_LOG=$SRC_LOG guest_last_pass)
    GUEST_LOG=$DST_LOG GUEST_PID=$DST_PID GUEST_QEMU_LOG=$DST_QEMU_LOG guest_wait_pass $(( last + 3 )) 60
    GUEST_LOG=$DST_LOG run guest_errors
    [ "$status" -ne 0 ]
    GUEST_LOG=$SRC_LOG run guest_errors
    [ "$status" -ne 0 ]
    # info migrate shows the progress too.
    info=$(qp_qmp "$DST_QMP" human-monitor-command '{"command-line":"info migrate"}')
    [[ "$info" == *"postcopy-swap: finished"* ]]
    # The source's exporter has exited (the destination has every page),
    # and QEMU tore the swap device down once every page was local.
    run ! pgrep -f "nbd-pagesrv --export pc.ram=/proc/$SRC_PID/mem"
    [ ! -e "$BATS_TEST_TMPDIR/run/$QP_SWAP_NAME" ]
    # Guest RAM (the 128 MiB rw-p anonymous mapping; the larger rwxp one
    # is TCG's code buffer) is still MADV_HUGEPAGE, as in a QEMU that was
    # never migrated: arming left QEMU's THP setting alone.
    ram=$(awk '/^[0-9a-f]+-[0-9a-f]+ / { size = 0; rw = ($2 == "rw-p") }
               /^Size:/ { size = $2 }
               /^VmFlags:/ && rw && size == 128 * 1024 { print }' "/proc/$DST_PID/smaps")
    echo "destination's guest RAM mapping: $ram"
    [ "$(wc -l <<<"$ram")" -eq 1 ]
    [[ "$ram " == *" hg "* ]]
    [[ "$ram " != *" nh "* ]]
}

@test "patched QEMU, control= mode: the swap device is set up before migrate, and the guest keeps passing" {
    # setup-swap.sh runs before the source's exporter exists (--src-later);
    # QEMU only arms through the control socket and leaves the device to
    # the operator.
    QP_DST_MODE=control qp_pair_start 128
    grep -q "its exports will be listed at the first map" "$BATS_TEST_TMPDIR/run/$QP_SWAP_NAME/pagesrv.log"
    GUEST_LOG=$SRC_LOG GUEST_PID=$SRC_PID GUEST_QEMU_LOG=$SRC_QEMU_LOG guest_wait_pass 2 60
    run qp_migrate
    echo "$output"
    [ "$status" -eq 0 ]
    m=$output
    total=$(json_get "$m" dst.postcopy-swap.pages-total)
    [ "$total" -ge 32768 ]
    [ "$(json_get "$m" dst.postcopy-swap.pages-local)" -eq "$total" ]
    [ "$(qp_status "$DST_QMP")" = running ]
    last=$(GUEST_LOG=$SRC_LOG guest_last_pass)
    GUEST_LOG=$DST_LOG GUEST_PID=$DST_PID GUEST_QEMU_LOG=$DST_QEMU_LOG guest_wait_pass $(( last + 3 )) 60
    GUEST_LOG=$DST_LOG run guest_errors
    [ "$status" -ne 0 ]
    # The operator's device is still there for the operator to detach, and
    # no page of the guest refers to it any more.
    st=$("$PAGESRV_CTL" "$QP_CONTROL" status)
    [ "$(json_get "$st" state)" = complete ]
    "$SWAPCOPY_SRC/scripts/teardown-swap.sh" --name "$QP_SWAP_NAME" --state-dir "$BATS_TEST_TMPDIR/run"
    [ ! -e "$BATS_TEST_TMPDIR/run/$QP_SWAP_NAME" ]
    last=$(GUEST_LOG=$DST_LOG guest_last_pass)
    GUEST_LOG=$DST_LOG GUEST_PID=$DST_PID GUEST_QEMU_LOG=$DST_QEMU_LOG guest_wait_pass $(( last + 2 )) 60
}

@test "patched QEMU: a destination without -postcopy swap fails the migration and the source keeps running" {
    QP_DST_POSTCOPY="" qp_pair_start 128
    GUEST_LOG=$SRC_LOG GUEST_PID=$SRC_PID GUEST_QEMU_LOG=$SRC_QEMU_LOG guest_wait_pass 1 60
    run qp_migrate
    echo "$output"
    [ "$status" -ne 0 ]
    [ "$(json_get "$output" src.status)" = failed ]
    grep -q "Capability postcopy-swap is off, but received capability is on" "$DST_QEMU_LOG"
    [ "$(qp_status "$SRC_QMP")" = running ]
    last=$(GUEST_LOG=$SRC_LOG guest_last_pass)
    GUEST_LOG=$SRC_LOG GUEST_PID=$SRC_PID GUEST_QEMU_LOG=$SRC_QEMU_LOG guest_wait_pass $(( last + 2 )) 60
    run ! pgrep -f "nbd-pagesrv --export pc.ram=/proc/$SRC_PID/mem"
}

@test "patched QEMU: cancel before the switchover leaves the source running unchanged" {
    qp_pair_start 128
    GUEST_LOG=$SRC_LOG GUEST_PID=$SRC_PID GUEST_QEMU_LOG=$SRC_QEMU_LOG guest_wait_pass 1 60
    # The destination is prepared and maps its RAM in milliseconds: cancel
    # at once, while the source is still starting its exporter.
    run qp_migrate --cancel-after 0
    echo "$output"
    [ "$status" -eq 0 ]
    [ "$(qp_status "$SRC_QMP")" = running ]
    last=$(GUEST_LOG=$SRC_LOG guest_last_pass)
    GUEST_LOG=$SRC_LOG GUEST_PID=$SRC_PID GUEST_QEMU_LOG=$SRC_QEMU_LOG guest_wait_pass $(( last + 2 )) 60
    run ! pgrep -f "nbd-pagesrv --export pc.ram=/proc/$SRC_PID/mem"
    # The destination gave up (its stream broke) and tore its swap device down.
    wait_for bash -c "! kill -0 $DST_PID"
    [ ! -e "$BATS_TEST_TMPDIR/run/$QP_SWAP_NAME" ]
}

@test "patched QEMU: a Linux guest (Debian's kernel, busybox) checksumming its memory survives migration" {
    linux_guest
    GUEST_ELF=$LINUX_KERNEL
    qp_pair_start 256 -initrd "$LINUX_INITRD" -append "console=ttyS0 quiet memcheck_mib=48"
    GUEST_LOG=$SRC_LOG GUEST_PID=$SRC_PID GUEST_QEMU_LOG=$SRC_QEMU_LOG \
        guest_wait_line 'LPASS 1' 180
    run qp_migrate
    echo "$output"
    [ "$status" -eq 0 ]
    [ "$(qp_status "$DST_QMP")" = running ]
    # Two more full checksums of the 48 MiB on the destination, no LERROR.
    qp_wait_lpass_twice
}

# qp_wait_prepared: the destination's query-migrate says 'prepared'; prints it.
qp_wait_prepared() {
    local m i
    for (( i = 0; i < 600; i++ )); do
        m=$(qp_qmp "$DST_QMP" query-migrate) || return 1
        case "$(json_get "$m" postcopy-swap.state 2>/dev/null)" in
            prepared) echo "$m"; return 0 ;;
            failed) echo "$m" >&2; return 1 ;;
        esac
        sleep 0.1
    done
    echo "not prepared after 60 s: $m" >&2
    return 1
}

@test "patched QEMU: the destination prepares at start-up, before any migrate, and then only maps" {
    qp_pair_start 128
    m=$(qp_wait_prepared)
    echo "$m"
    # Device set up and RAM armed with no source exporter anywhere yet.
    [ "$(json_get "$m" postcopy-swap.prepare-time)" -gt 0 ]
    [ -S "$BATS_TEST_TMPDIR/run/$QP_SWAP_NAME/ctl.sock" ]
    run ! pgrep -f "nbd-pagesrv --export pc.ram=/proc/$SRC_PID/mem"
    st=$("$PAGESRV_CTL" "$BATS_TEST_TMPDIR/run/$QP_SWAP_NAME/ctl.sock" stats)
    [ "$(json_get "$st" store.marker_pages)" -ge 32768 ]
    [ "$(json_get "$st" store.remote_pages)" -eq 0 ]
    info=$(qp_qmp "$DST_QMP" human-monitor-command '{"command-line":"info migrate"}')
    [[ "$info" == *"postcopy-swap: prepared"* ]]
    [[ "$info" == *"postcopy-swap prepare time:"* ]]
    GUEST_LOG=$SRC_LOG GUEST_PID=$SRC_PID GUEST_QEMU_LOG=$SRC_QEMU_LOG guest_wait_pass 2 60
    run qp_migrate
    echo "$output"
    [ "$status" -eq 0 ]
    [ "$(json_get "$output" dst.postcopy-swap.state)" = finished ]
    grep -q "RAM blocks mapped to the source's exports in" "$DST_QEMU_LOG"
    run ! grep -q "arming it again" "$DST_QEMU_LOG"
    last=$(GUEST_LOG=$SRC_LOG guest_last_pass)
    GUEST_LOG=$DST_LOG GUEST_PID=$DST_PID GUEST_QEMU_LOG=$DST_QEMU_LOG guest_wait_pass $(( last + 3 )) 60
    GUEST_LOG=$DST_LOG run guest_errors
    [ "$status" -ne 0 ]
}

@test "patched QEMU: a prepared destination that is never migrated to undoes everything when it quits" {
    qp_pair_start 128
    qp_wait_prepared >/dev/null
    [ -S "$BATS_TEST_TMPDIR/run/$QP_SWAP_NAME/ctl.sock" ]
    qp_qmp "$DST_QMP" quit >/dev/null || true
    wait_for bash -c "! kill -0 $DST_PID"
    # Device, daemon and state gone (teardown checks /proc/swaps, loops and
    # mounts against the start); the source never heard of it.
    [ ! -e "$BATS_TEST_TMPDIR/run/$QP_SWAP_NAME" ]
    [ "$(qp_status "$SRC_QMP")" = running ]
    run ! pgrep -f "nbd-pagesrv --export pc.ram=/proc/$SRC_PID/mem"
}
