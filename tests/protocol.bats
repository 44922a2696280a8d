#!/usr/bin/env bats
# NBD protocol conformance of nbd-pagesrv (proto.md of NetworkBlockDevice/nbd
# and the shared design): handshake options, I/O, error replies, and raw
# garbage/fuzz input. Each test runs one case of a tests/progs/proto-*
# program against its own freshly started server, then checks that the
# server is still alive, that every client connection is gone, and that it
# stops cleanly (exit 0) on SIGTERM.

load lib/common

setup() {
    pagesrv_start --size 64M
}

teardown() {
    run_deferred
}

no_connections_left() {
    [ "$(stat_field connections.current)" -eq 0 ]
}

# proto_case PROG CASE: run one case, then check the server's health.
proto_case() {
    local prog=$TESTBIN/$1
    [ -x "$prog" ] || { echo "missing test program $prog (run make)"; return 1; }
    run "$prog" "$NBD_SOCK" "$2"
    echo "$output"
    if [ "$status" -ne 0 ]; then
        echo "--- $1 $2 failed (status $status); server log:"
        tail -n 40 "$PAGESRV_LOG"
        return 1
    fi
    if ! kill -0 "$PAGESRV_PID" 2>/dev/null; then
        echo "nbd-pagesrv died during $1 $2; its log:"
        cat "$PAGESRV_LOG"
        return 1
    fi
    if ! wait_for no_connections_left; then
        echo "connections still open 10 s after every client left:"
        "$PAGESRV_CTL" "$CTL_SOCK" stats
        return 1
    fi
    server_stops_cleanly
}

# SIGTERM must end the server promptly with status 0.
server_stops_cleanly() {
    local i rc=0
    kill -TERM "$PAGESRV_PID"
    for (( i=0; i<100; i++ )); do
        kill -0 "$PAGESRV_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$PAGESRV_PID" 2>/dev/null; then
        echo "nbd-pagesrv did not exit within 10 s of SIGTERM; its log:"
        tail -n 40 "$PAGESRV_LOG"
        return 1
    fi
    wait "$PAGESRV_PID" || rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "nbd-pagesrv exited with status $rc on SIGTERM (expected 0); its log:"
        tail -n 40 "$PAGESRV_LOG"
        return 1
    fi
}

# ---- proto-options: handshake through libnbd ----

@test "options: NBD_OPT_GO, size, transmission flags, canonical name" {
    proto_case proto-options go
}

@test "options: the empty export name selects the export" {
    proto_case proto-options go-default-name
}

@test "options: block sizes are 1 / 4096 / 32 MiB" {
    proto_case proto-options block-size
}

@test "options: NBD_OPT_INFO then NBD_OPT_GO" {
    proto_case proto-options info-then-go
}

@test "options: NBD_OPT_LIST" {
    proto_case proto-options list
}

@test "options: NBD_OPT_ABORT" {
    proto_case proto-options abort
}

@test "options: unknown export name is refused, negotiation goes on" {
    proto_case proto-options unknown-export
}

@test "options: NBD_OPT_EXPORT_NAME with and without NO_ZEROES" {
    proto_case proto-options export-name
}

@test "options: simple replies when structured replies are not requested" {
    proto_case proto-options structured-off
}

@test "options: base:allocation meta context negotiation" {
    proto_case proto-options meta-context
}

@test "options: SET_META_CONTEXT 'base:' selects nothing" {
    proto_case proto-options meta-context-wildcard
}

@test "options: block status of data, trimmed, zeroed and never-written ranges" {
    proto_case proto-options block-status
}

# ---- proto-io: transmission through libnbd ----

@test "io: READ/WRITE at unaligned, tiny and end-of-export offsets" {
    proto_case proto-io read-write
}

@test "io: never-written data reads as zeros" {
    proto_case proto-io unwritten-zero
}

@test "io: FLUSH and FUA" {
    proto_case proto-io flush-fua
}

@test "io: TRIM then READ" {
    proto_case proto-io trim
}

@test "io: WRITE_ZEROES with NO_HOLE, FAST_ZERO, FUA" {
    proto_case proto-io write-zeroes
}

@test "io: CACHE" {
    proto_case proto-io cache
}

@test "io: 128 and 256 requests in flight on one connection" {
    proto_case proto-io in-flight
}

@test "io: NBD_CMD_DISC after unanswered writes" {
    proto_case proto-io disc-after-writes
}

@test "io: two connections see each other's flushed writes" {
    proto_case proto-io multi-conn
}

@test "io: 32 MiB requests and larger effect lengths" {
    proto_case proto-io large
}

# ---- proto-errors: requests the server must refuse ----

@test "errors: READ out of range -> EINVAL" {
    proto_case proto-errors read-out-of-range
}

@test "errors: WRITE and WRITE_ZEROES out of range -> ENOSPC" {
    proto_case proto-errors write-out-of-range
}

@test "errors: TRIM, CACHE, BLOCK_STATUS out of range -> EINVAL" {
    proto_case proto-errors other-out-of-range
}

@test "errors: zero-length requests -> EINVAL" {
    proto_case proto-errors zero-length
}

@test "errors: READ/WRITE above 32 MiB -> EINVAL, connection stays in step" {
    proto_case proto-errors too-large
}

@test "errors: unknown command flags -> EINVAL" {
    proto_case proto-errors unknown-flags
}

@test "errors: FUA is accepted on every command" {
    proto_case proto-errors fua-everywhere
}

@test "errors: flags on the wrong command -> EINVAL" {
    proto_case proto-errors inapplicable-flags
}

@test "errors: BLOCK_STATUS without a meta context -> EINVAL" {
    proto_case proto-errors block-status-no-context
}

# ---- proto-raw: hand-written bytes ----

@test "raw: greeting" {
    proto_case proto-raw greeting
}

@test "raw: unknown client flags close the connection" {
    proto_case proto-raw bad-client-flags
}

@test "raw: bad option magic closes the connection" {
    proto_case proto-raw bad-option-magic
}

@test "raw: 4 GiB and 100 KiB option lengths" {
    proto_case proto-raw bad-option-length
}

@test "raw: truncated client flags and options" {
    proto_case proto-raw truncated-option
}

@test "raw: malformed options get error replies" {
    proto_case proto-raw option-errors
}

@test "raw: meta context query semantics" {
    proto_case proto-raw meta-context-queries
}

@test "raw: NBD_OPT_INFO / NBD_OPT_GO reply contents" {
    proto_case proto-raw info-reply
}

@test "raw: NBD_OPT_EXPORT_NAME reply and padding" {
    proto_case proto-raw export-name-raw
}

@test "raw: NBD_OPT_ABORT" {
    proto_case proto-raw abort-raw
}

@test "raw: bad request magic closes the connection" {
    proto_case proto-raw bad-request-magic
}

@test "raw: 33 MiB WRITE with payload -> EINVAL, stream in step" {
    proto_case proto-raw oversized-write
}

@test "raw: unknown commands -> EINVAL" {
    proto_case proto-raw unknown-command
}

@test "raw: structured READ replies cover the request exactly" {
    proto_case proto-raw structured-read
}

@test "raw: clients disconnecting mid-request" {
    proto_case proto-raw disconnect-mid-request
}

@test "raw: stalled clients do not block others" {
    proto_case proto-raw stalled-clients
}

@test "raw: fuzzed handshakes" {
    proto_case proto-raw fuzz-handshake
}

@test "raw: fuzzed request streams" {
    proto_case proto-raw fuzz-transmission
}
