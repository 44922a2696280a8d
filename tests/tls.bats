#!/usr/bin/env bats
# TLS on the link between source and destination (issue 16,
# docs/security.md): the source's server side (GnuTLS, NBD_OPT_STARTTLS)
# with standard clients (nbdcopy, nbdinfo over nbds://), the destination's
# client side (libnbd), with a pre-shared key and with X.509 certificates.
# Keys and certificates are made fresh per test (psktool, certtool).
# Traffic stays on 127.0.0.1. The kernel swap path over TLS is
# tests/tls-kernel.bats.

load lib/common
load lib/tls

bats_require_minimum_version 1.5.0   # run ! CMD

setup() {
    T=$BATS_TEST_TMPDIR
    local t
    for t in psktool certtool nbdcopy nbdinfo; do
        command -v "$t" >/dev/null || { echo "'$t' is missing: run make deps (gnutls-bin, libnbd-bin)"; return 1; }
    done
}

teardown() {
    if [ -z "${BATS_TEST_COMPLETED:-}" ]; then
        local f
        for f in "$T"/source.log "$T"/dest.log; do
            [ -f "$f" ] && { echo "--- last lines of $f:"; tail -n 30 "$f"; }
        done
    fi
    run_deferred
}

# A 16 MiB random image.
mk_img() {
    IMG=$T/src.img
    head -c $((16 << 20)) /dev/urandom >"$IMG"
}

# copy_ok URI: nbdcopy the export and compare it with the image.
copy_ok() {
    rm -f "$T/copy.img"
    timeout 60 nbdcopy "$1" "$T/copy.img" && cmp "$IMG" "$T/copy.img"
}

# copy_refused URI: nbdcopy must fail and leave no copy of the image.
copy_refused() {
    rm -f "$T/copy.img"
    run timeout 60 nbdcopy "$1" "$T/copy.img"
    echo "nbdcopy $1: status $status: $output"
    [ "$status" -ne 0 ]
    run ! cmp -s "$IMG" "$T/copy.img"
}

psk_uri() { echo "nbds://alice@127.0.0.1:$SRC_PORT/mem?tls-psk-file=$1"; }

@test "TLS-PSK: nbdcopy over nbds:// copies the export byte for byte; plain nbd:// clients are refused" {
    mk_img
    make_psk "$T/keys.psk"
    tls_source_start "$IMG" --tls-psk "$T/keys.psk"
    grep -q "TLS require, pre-shared key" "$SRC_LOG"
    copy_ok "$(psk_uri "$T/keys.psk")"
    grep -q "TLS is on (TLS1.3, PSK identity 'alice')" "$SRC_LOG"
    # Without TLS: no data, not even the list of exports.
    copy_refused "nbd://127.0.0.1:$SRC_PORT/mem"
    run timeout 30 nbdinfo --list "nbd://127.0.0.1:$SRC_PORT"
    echo "$output"
    [ "$status" -ne 0 ]
    [[ "$output" != *'"mem"'* ]]
    [[ "$output" != *"export=\"mem\""* ]]
    grep -q "this server requires TLS" "$SRC_LOG"
}

@test "TLS-PSK: a wrong key, and an identity the source does not know, are refused" {
    mk_img
    make_psk "$T/keys.psk"
    make_psk "$T/wrong.psk"            # alice again, another key
    make_psk "$T/bob.psk" bob
    tls_source_start "$IMG" --tls-psk "$T/keys.psk"
    copy_refused "$(psk_uri "$T/wrong.psk")"
    copy_refused "nbds://bob@127.0.0.1:$SRC_PORT/mem?tls-psk-file=$T/bob.psk"
    grep -q "TLS handshake failed" "$SRC_LOG"
    run ! grep -q "TLS is on" "$SRC_LOG"
    # The right key still works afterwards.
    copy_ok "$(psk_uri "$T/keys.psk")"
}

@test "X.509: nbdcopy byte for byte; a client certificate from another CA, or none, is refused" {
    mk_img
    make_ca "$T/ca" "swapcopy test CA"
    make_cert "$T/ca" "$T/server" server
    make_cert "$T/ca" "$T/client" client
    # Trusts the right CA (so it accepts the source) but holds a
    # certificate signed by another one: only the source's check stops it.
    make_ca "$T/rogue-ca" "someone else's CA"
    make_cert "$T/rogue-ca" "$T/rogue" client
    cp "$T/ca/ca-cert.pem" "$T/rogue/ca-cert.pem"
    mkdir -p "$T/anonymous" && cp "$T/ca/ca-cert.pem" "$T/anonymous/"

    tls_source_start "$IMG" --tls-certificates "$T/server"
    grep -q "TLS require, X.509" "$SRC_LOG"
    copy_ok "nbds://127.0.0.1:$SRC_PORT/mem?tls-certificates=$T/client"
    grep -q "TLS is on (TLS1.3, client certificate verified)" "$SRC_LOG"
    copy_refused "nbds://127.0.0.1:$SRC_PORT/mem?tls-certificates=$T/rogue"
    copy_refused "nbds://127.0.0.1:$SRC_PORT/mem?tls-certificates=$T/anonymous"
    copy_refused "nbd://127.0.0.1:$SRC_PORT/mem"
    [ "$(grep -c "TLS handshake failed" "$SRC_LOG")" -ge 2 ]
}

@test "--tls on: TLS offered, plaintext clients still served" {
    mk_img
    make_psk "$T/keys.psk"
    tls_source_start "$IMG" --tls-psk "$T/keys.psk" --tls on
    copy_ok "nbd://127.0.0.1:$SRC_PORT/mem"
    copy_ok "$(psk_uri "$T/keys.psk")"
    grep -q "TLS is on" "$SRC_LOG"
}

@test "a TCP listener beyond loopback without TLS warns loudly; with TLS it does not" {
    mk_img
    make_psk "$T/keys.psk"
    local port
    port=$(free_port)
    "$PAGESRV" --export "mem=$IMG" --listen "0.0.0.0:$port" --no-mlock >"$T/open.log" 2>&1 &
    defer kill_wait "$!"
    wait_for grep -q "serving NBD on TCP" "$T/open.log"
    grep -q "!!! 0.0.0.0:$port is reachable from other hosts and TLS is off: anyone who can reach it can read the guest's memory" "$T/open.log"
    port=$(free_port)
    "$PAGESRV" --export "mem=$IMG" --listen "0.0.0.0:$port" --tls-psk "$T/keys.psk" --no-mlock \
        >"$T/closed.log" 2>&1 &
    defer kill_wait "$!"
    wait_for grep -q "serving NBD on TCP" "$T/closed.log"
    run ! grep -q "reachable from other hosts" "$T/closed.log"
    # A key file others may read is warned about; a bad mode refused.
    chmod 0644 "$T/keys.psk"
    run timeout 2 "$PAGESRV" --export "mem=$IMG" --listen "127.0.0.1:0" --tls-psk "$T/keys.psk" --no-mlock
    [ "$status" -eq 124 ]
    [[ "$output" == *"can be read by users other than its owner"* ]]
    run "$PAGESRV" --export "mem=$IMG" --listen "127.0.0.1:0" --tls-psk "$T/keys.psk" --tls bogus
    [ "$status" -eq 1 ]
    [[ "$output" == *"--tls 'bogus': give require, on or off"* ]]
}

@test "the destination's libnbd client pulls over TLS-PSK; without the key it is refused, naming TLS" {
    mk_img
    make_psk "$T/keys.psk"
    tls_source_start "$IMG" --tls-psk "$T/keys.psk"
    "$PAGESRV" --size 32M --socket "$T/d.sock" --control "$T/d.ctl" --src "127.0.0.1:$SRC_PORT" \
        --tls-psk "$T/keys.psk" --no-mlock >"$T/dest.log" 2>&1 &
    defer kill_wait "$!"
    wait_for test -S "$T/d.ctl"
    "$PAGESRV_CTL" "$T/d.ctl" map 0 mem 0 4096
    timeout 60 "$PAGESRV_CTL" "$T/d.ctl" wait-all-local >/dev/null
    nbdcopy "nbd+unix:///swap?socket=$T/d.sock" "$T/pulled.img"
    cmp -n $((16 << 20)) "$IMG" "$T/pulled.img"
    [ "$(grep -c "PSK identity 'alice'" "$SRC_LOG")" -ge 2 ]   # listing, demand, stream...
    # The completion message went over TLS too.
    wait_for grep -q "reports that it has every page" "$SRC_LOG"

    run "$PAGESRV" --size 32M --socket "$T/e.sock" --src "127.0.0.1:$SRC_PORT" --no-mlock
    echo "$output"
    [ "$status" -eq 1 ]
    [[ "$output" == *"cannot reach the migration source at 127.0.0.1:$SRC_PORT"* ]]
    [[ "$output" == *"does the source require TLS? give this end the same --tls-psk"* ]]
}

@test "a client that stalls inside the TLS handshake is closed at the handshake deadline" {
    mk_img
    make_psk "$T/keys.psk"
    tls_source_start "$IMG" --tls-psk "$T/keys.psk" --handshake-timeout 1
    # Greeting, flags, NBD_OPT_STARTTLS, its ACK; then silence where the
    # ClientHello should be.
    run timeout 20 python3 -c "
import socket, struct, time
s = socket.create_connection(('127.0.0.1', $SRC_PORT))
s.recv(18)
s.sendall(struct.pack('>I', 3) + b'IHAVEOPT' + struct.pack('>II', 5, 0))
hdr = s.recv(20)
assert struct.unpack('>I', hdr[12:16])[0] == 1, 'STARTTLS was not acknowledged'
t = time.monotonic()
s.settimeout(15)
print('closed after %.1f s' % (time.monotonic() - t) if s.recv(1) == b'' else 'got data')"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" =~ ^closed\ after\ [12]\.[0-9]\ s$ ]]
    grep -q "TLS handshake failed.*the handshake deadline passed" "$SRC_LOG"
}
