#!/usr/bin/env bats
# TLS through the real kernel swap path (issue 16): a process's memory
# migrated with the source serving it over TLS (pre-shared key, X.509) and
# the swap device set up by setup-swap.sh with the same key or
# certificates. Needs root (swap, loop, FUSE). The TLS protocol itself is
# tested in tests/tls.bats.

load lib/common
load lib/migration
load lib/tls

bats_require_minimum_version 1.5.0   # run ! CMD

setup() {
    T=$BATS_TEST_TMPDIR
    [ "$(id -u)" = 0 ] || { echo "these tests need root (swapon, losetup, FUSE)" >&2; return 1; }
    local t
    for t in psktool certtool; do
        command -v "$t" >/dev/null || { echo "'$t' is missing: run make deps (gnutls-bin)"; return 1; }
    done
    BEFORE=$(machine_state)
}

teardown() {
    if [ -z "${BATS_TEST_COMPLETED:-}" ] && [ -f "$T/source.log" ]; then
        echo "--- last lines of the source's log:"
        tail -n 30 "$T/source.log"
    fi
    run_deferred
    [ "$(machine_state)" = "$BEFORE" ] || { echo "left behind:"; machine_state; false; }
}

# kernel_pull TLS_OPTS...: a 64 MiB image (mkimage) served with TLS, the
# swap device set up by setup-swap.sh with the same TLS, and a process
# whose memory is armed on it reading every page through the kernel's swap
# path (tests/progs/e2e-workload).
kernel_pull() {
    local src_opts=() dst_opts=()
    while [ $# -gt 0 ]; do
        case "$1" in
            --src-opt) src_opts+=("$2"); shift 2 ;;
            --dst-opt) dst_opts+=("$2"); shift 2 ;;
            *) echo "kernel_pull: unknown argument '$1' (--src-opt X or --dst-opt X)"; return 2 ;;
        esac
    done
    IMG=$T/src.img SUMS=$T/src.crc
    "$TESTBIN/mkimage" "$IMG" 64 "$SUMS" >/dev/null
    tls_source_start "$IMG" "${src_opts[@]}"
    # swap_setup (lib/migration) reads SRC_PORT.
    swap_setup "${dst_opts[@]}"
    run "$TESTBIN/e2e-workload" --control "$CONTROL" --device "$DEVICE" --export mem --mib 64 --sums "$SUMS"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"RESULT: PASS"* ]]
    [[ "$output" == *"wrong=0"* ]]
    local st
    st=$("$PAGESRV_CTL" "$CONTROL" status)
    [ "$(json_get "$st" state)" = complete ]
    [ "$(json_get "$st" pages.total)" -eq 16384 ]
    [ "$(json_get "$st" bytes_fetched)" -gt 0 ]
}

@test "kernel swap path over TLS-PSK: a process's memory is migrated, every page the source's" {
    make_psk "$T/keys.psk"
    kernel_pull --src-opt --tls-psk --src-opt "$T/keys.psk" --dst-opt --tls-psk --dst-opt "$T/keys.psk"
    grep -q "TLS is on (TLS1.3, PSK identity 'alice')" "$SRC_LOG"
    run ! grep -q "serving export 'mem'.*(plaintext)" "$SRC_LOG"
}

@test "kernel swap path over X.509: a process's memory is migrated, every page the source's" {
    make_ca "$T/ca" "swapcopy test CA"
    make_cert "$T/ca" "$T/server" server
    make_cert "$T/ca" "$T/client" client
    kernel_pull --src-opt --tls-certificates --src-opt "$T/server" \
                --dst-opt --tls-certificates --dst-opt "$T/client"
    grep -q "TLS is on (TLS1.3, client certificate verified)" "$SRC_LOG"
    run ! grep -q "serving export 'mem'.*(plaintext)" "$SRC_LOG"
}
