#!/usr/bin/env bats
# mm-patch-madvise for real: Debian's linux-source-6.1 with the series,
# built by mm-patch-madvise/build.sh (`make kernel`; cached under
# /var/cache/swapcopy/kernel, ~10 min on 2 cores the first time) and booted
# in a QEMU VM (TCG) by tests/vm/run --kernel. There the series' selftest
# runs, and swapcopy migrates processes with the device stub-only and
# swapstub arming with MADV_SWAPSTUB. A missing prerequisite fails the test.

load lib/common

teardown() {
    run_deferred
}

# The cached kernel (built on first use); sets KERNEL and SELFTEST. A
# failed build is not tried again by the next test (it takes ~10 min).
kernel() {
    local out failed=$BATS_FILE_TMPDIR/kernel-build-failed
    if [ -e "$failed" ]; then
        echo "mm-patch-madvise/build.sh failed in an earlier test of this file (see there)"
        return 1
    fi
    out=$("$SWAPCOPY_SRC/mm-patch-madvise/build.sh") || {
        touch "$failed"
        echo "mm-patch-madvise/build.sh failed"
        return 1
    }
    KERNEL=$(tail -n 1 <<<"$out")
    SELFTEST=$(dirname "$KERNEL")/swapstub-selftest
    [ -f "$KERNEL" ] && [ -x "$SELFTEST" ] || {
        echo "build.sh printed '$KERNEL', but it or $SELFTEST is missing"
        return 1
    }
}

@test "mm-patch-madvise/build.sh builds the patched kernel, then finds it in its cache" {
    # The first run may build (~10 min); the second must come from the cache.
    kernel
    first=$KERNEL
    start=$SECONDS
    kernel
    [ "$KERNEL" = "$first" ]
    [ $(( SECONDS - start )) -lt 10 ]
    [[ "$KERNEL" == */bzImage ]]
    grep -qx 'CONFIG_BLK_DEV_NBD=y' "$(dirname "$KERNEL")/config"
    grep -qx 'CONFIG_SWAP=y' "$(dirname "$KERNEL")/config"
}

@test "in a VM on the patched kernel, the MADV_SWAPSTUB selftest passes" {
    kernel
    run "$SWAPCOPY_SRC/tests/vm/run" --kernel "$KERNEL" --file "$SELFTEST" --mem 1G --timeout 300 \
        -- tests/vm/guest/kernel-patch.sh selftest
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"MADV_SWAPSTUB is advice "* ]]
    # kselftest's summary: every planned test passed, none skipped.
    [[ "$output" =~ Totals:\ pass:14\ fail:0\ xfail:0\ xpass:0\ skip:0\ error:0 ]]
    [[ "$output" =~ ok\ [0-9]+\ arming\ did\ no\ I/O\ on\ the\ device ]]
    [[ "$output" == *"== done: selftest"* ]]
}

@test "in a VM on the patched kernel, processes migrate through a stub-only nbd device armed with MADV_SWAPSTUB" {
    kernel
    run "$SWAPCOPY_SRC/tests/vm/run" --kernel "$KERNEL" --mem 1G --timeout 400 \
        -- tests/vm/guest/kernel-patch.sh e2e 64
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"STUB=yes"* ]]
    [[ "$output" =~ DEVICE=/dev/nbd[0-9]+ ]]
    # In-process (e2e-workload): MADV_SWAPSTUB, nothing written, every page right.
    [[ "$output" =~ armed\ 16384\ pages\ in\ [0-9.]+\ s\ \(method=madv_swapstub ]]
    [[ "$output" == *"marker_pages=0"* ]]
    [[ "$output" == *"RESULT: PASS every page verified"* ]]
    # Another process (swapstub arm --pid chose it by itself), every page checked.
    [[ "$output" =~ armed\ pages=16384\ .*method=madv_swapstub ]]
    [[ "$output" == *"CHECK verified=16384 wrong=0"* ]]
    [[ "$output" == *"== done: MADV_SWAPSTUB end to end"* ]]
}
