#!/usr/bin/env bats
# memwalk, swapcopy's test guest (guest/README.md), booted under QEMU/TCG:
# it walks its RAM pass after pass, and its check really catches pages that
# change behind its back. The corruption tests put guest RAM in a file in
# /dev/shm (removed at teardown) and overwrite a page of it from the host.

load lib/common
load lib/guest

setup_file() {
    guest_check_prereqs
}

setup() {
    T=$BATS_TEST_TMPDIR
}

teardown() {
    if [ -z "${BATS_TEST_COMPLETED:-}" ] && [ -n "${GUEST_LOG:-}" ]; then
        echo "--- last serial lines ($GUEST_LOG):"
        tail -n 15 "$GUEST_LOG"
        echo "--- QEMU output ($GUEST_QEMU_LOG):"
        cat "$GUEST_QEMU_LOG"
    fi
    run_deferred
}

# boot_shm MIB QEMU_ARGS...: boot with MIB of guest RAM in a shared file in
# /dev/shm; sets SHM. Memory at guest address A is at offset A of the file
# (the pc machine maps RAM below 4 GiB from the start of the backend).
boot_shm() {
    local mib=$1
    shift
    SHM=/dev/shm/swapcopy-memwalk-$$-$BATS_TEST_NUMBER
    defer rm -f "$SHM"
    guest_boot -m "${mib}M" \
        -object "memory-backend-file,id=mem,size=${mib}M,mem-path=$SHM,share=on" \
        -machine memory-backend=mem "$@"
}

# The start line's FIELD=value.
start_field() {
    sed -nE "s/^[0-9.]+ MEMWALK start .*\\b$1=([^ ]+).*/\\1/p" "$GUEST_LOG"
}

# Asserts that the guest stopped at its ERROR line: it is the last line,
# also after the time several more passes would take.
assert_halted_at_error() {
    local settle=$1
    sleep "$settle"
    run tail -n 1 "$GUEST_LOG"
    [[ $output =~ ^[0-9.]+\ ERROR\  ]] || {
        echo "the guest went on after its ERROR line:" >&2
        grep -A3 ' ERROR ' "$GUEST_LOG" >&2
        return 1
    }
    [ "$(grep -c ' ERROR ' "$GUEST_LOG")" -eq 1 ]
}

@test "memwalk boots under TCG with 128 MiB and completes passes without errors" {
    guest_boot -m 128M
    guest_wait_pass 3 60
    run guest_errors
    [ "$status" -eq 1 ]
    # Walks all RAM above 2 MiB up to the firmware's reserved top (QEMU
    # reserves a little at the end of 128 MiB).
    [ "$(start_field base)" = 0x00200000 ]
    pages=$(start_field pages)
    (( pages > 31000 && pages <= 32256 ))
    [ "$(start_field hot)" = "$pages" ]
    [ "$(start_field check)" = full ]
    # Passes are numbered 0, 1, 2, ... with nothing skipped.
    run guest_pass_times
    [ "$(awk 'NR <= 4 { printf "%s ", $1 }' <<<"$output")" = "0 1 2 3 " ]
    run guest_qmp '{"execute": "query-status"}'
    [ "$status" -eq 0 ]
    [[ $output == *'"status": "running"'* ]]
}

@test "walk_mib=16 limits the walk to 16 MiB from 2 MiB" {
    guest_boot -m 128M -append "walk_mib=16"
    guest_wait_pass 3 60
    [ "$(start_field pages)" = 4096 ]
    [ "$(start_field hot)" = 4096 ]
    [ "$(start_field end)" = 0x01200000 ]
}

@test "a page zeroed from the host is reported and the guest halts" {
    boot_shm 128
    guest_wait_pass 1 60
    # Page 1024 = guest address 4 MiB, inside the walk.
    dd if=/dev/zero of="$SHM" bs=4096 seek=1024 count=1 conv=notrunc status=none
    guest_wait_line 'ERROR ' 30
    run guest_errors
    echo "$output"
    # The counter (word 0) is checked first.
    [[ $output =~ \ ERROR\ pass=[0-9]+\ page=1024\ addr=0x00400000\ expected=0x[0-9a-f]{8}\ got=0x00000000$ ]]
    assert_halted_at_error 2
}

@test "full check: one changed word in the middle of a page is reported" {
    boot_shm 64
    guest_wait_pass 1 60
    # Word 64 of page 1024: not one of the sparse check's words.
    printf 'XXXX' | dd of="$SHM" bs=1 seek=$(( 0x400100 )) conv=notrunc status=none
    guest_wait_line 'ERROR ' 30
    run guest_errors
    echo "$output"
    [[ $output =~ \ ERROR\ pass=[0-9]+\ page=1024\ addr=0x00400100\ expected=0x[0-9a-f]{8}\ got=0x58585858$ ]]
    assert_halted_at_error 1
}

@test "sparse check: a page holding another page's contents is reported" {
    boot_shm 64 -append "check=sparse"
    guest_wait_pass 2 60
    [ "$(start_field check)" = sparse ]
    # Copy page 1025 (counter and all) over page 1024: only the signature
    # words can tell them apart (addr 0x00400004), unless the copy raced
    # the walk between the two pages and the counter differs (0x00400000).
    dd if="$SHM" of="$SHM" bs=4096 skip=1025 seek=1024 count=1 conv=notrunc status=none
    guest_wait_line 'ERROR ' 30
    run guest_errors
    echo "$output"
    [[ $output =~ \ ERROR\ pass=[0-9]+\ page=1024\ addr=0x0040000[04]\  ]]
    assert_halted_at_error 1
}

@test "hot_mib: cold pages are initialised once and checked every cold_every passes" {
    boot_shm 64 -append "hot_mib=8 cold_every=3"
    guest_wait_pass 3 60
    pages=$(start_field pages)
    [ "$(start_field hot)" = 2048 ]
    (( pages > 15000 ))
    grep -qE "^[0-9.]+ COLD pass=3 pages=$(( pages - 2048 ))\$" "$GUEST_LOG"
    [ "$(grep -cE '^[0-9.]+ COLD pass=[12] ' "$GUEST_LOG")" -eq 0 ]
    # Overwrite a cold page (guest address 32 MiB) with garbage: only a cold
    # check sees it, so the ERROR comes at a multiple of 3.
    head -c 4096 /dev/urandom |
        dd of="$SHM" bs=4096 seek=8192 count=1 conv=notrunc status=none
    guest_wait_line 'ERROR ' 30
    run guest_errors
    echo "$output"
    [[ $output =~ \ ERROR\ pass=([0-9]+)\ page=8192\ addr=0x02000000\  ]]
    (( BASH_REMATCH[1] % 3 == 0 ))
    assert_halted_at_error 1
}

@test "a bad command-line option stops the guest with a FATAL line" {
    guest_boot -m 128M -append "walk_mib=16 wlak_mib=4"
    guest_wait_line 'FATAL ' 30
    grep -qE "^[0-9.]+ FATAL bad option 'wlak_mib=4'" "$GUEST_LOG"
    sleep 1
    [ "$(grep -cE ' (MEMWALK|PASS) ' "$GUEST_LOG")" -eq 0 ]
}
