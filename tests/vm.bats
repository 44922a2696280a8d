#!/usr/bin/env bats
# The nbd-client branch of scripts/lib/blockdev.sh, for real. The host
# kernel has no nbd driver, so the end-to-end process migration of
# tests/e2e.bats runs in a QEMU VM (TCG) booted from Debian's kernel, whose
# nbd.ko is loaded: tests/vm/run, tests/vm/guest/e2e-nbd.sh. The first run
# downloads the kernel package and builds the initramfs (cached under
# /var/cache/swapcopy/vm); a missing prerequisite fails the test.

load lib/common

teardown() {
    run_deferred
}

@test "in a VM with the kernel's nbd driver, setup-swap.sh attaches /dev/nbdN with nbd-client and a process migrates through it" {
    # Each VM is a child of tests/vm/run, which kills it on timeout or exit.
    run "$SWAPCOPY_SRC/tests/vm/run" --mem 1G --timeout 300 -- tests/vm/guest/e2e-nbd.sh 64
    echo "$output"
    [ "$status" -eq 0 ]
    # The nbd-client branch, not the nbdfuse + loop fallback.
    [[ "$output" =~ DEVICE=/dev/nbd[0-9]+ ]]
    [[ "$output" =~ BRANCH:\ nbd-client\ /dev/nbd[0-9]+ ]]
    [[ "$output" != *"/dev/loop"* ]]
    [[ "$output" == *"RESULT: PASS"* ]]
    [[ "$output" == *"wrong=0"* ]]
    [[ "$output" == *"== teardown-swap.sh"* ]]
    [[ "$output" == *"== done: nbd-client branch end to end"* ]]
}
