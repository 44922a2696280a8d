#!/usr/bin/env bats
# A migration between two hosts (issue 17): source and destination each in
# a network namespace of their own, joined by a veth pair; each side is
# started by its own command in its own namespace, and the pages cross the
# veth link. Both paths: stock QEMU with swapcopy-migrate --role
# source/destination, and the patched QEMU's -postcopy swap,listen=/src=.

load lib/common
load lib/migration
load lib/guest
load lib/qemu
load lib/qemu-patched
load lib/netns
load lib/tls

setup() {
    [ "$(id -u)" = 0 ] || { echo "these tests need root (netns, swap, QEMU)" >&2; return 1; }
    guest_check_prereqs
    BEFORE=$(machine_state)
}

teardown() {
    run_deferred
    [ "$(machine_state)" = "$BEFORE" ] || { echo "left behind:"; machine_state; false; }
}

# two_host_stock [SWAPCOPY-MIGRATE OPTIONS...]: the stock QEMU pair, source
# in NS_SRC and destination in NS_DST, migrated by one swapcopy-migrate per
# side (both given the options), each in its side's namespace; the
# destination's side starts first (it prepares, then waits for the source's
# exporter). Sets SRC_OUT DST_OUT, the two summaries' JSON files SRC_JSON
# DST_JSON, and fails unless both succeed.
two_host_stock() {
    local name=t$$-$BATS_TEST_NUMBER state=$BATS_TEST_TMPDIR/run dpid st=0
    SRC_OUT=$BATS_TEST_TMPDIR/src-side.out DST_OUT=$BATS_TEST_TMPDIR/dst-side.out
    SRC_JSON=$BATS_TEST_TMPDIR/src-side.json DST_JSON=$BATS_TEST_TMPDIR/dst-side.json
    defer "$SWAPCOPY_SRC/scripts/teardown-swap.sh" --name "$name" --state-dir "$state/dst"
    in_ns "$NS_DST" "$SWAPCOPY_SRC/scripts/swapcopy-migrate" --role destination \
        --dst-qmp "$DST_QMP" --source "$SRC_IP:4444" --migrate-uri "tcp:$DST_IP:4445" \
        --name "$name" --state-dir "$state/dst" --json "$DST_JSON" --wait-peer 120 "$@" \
        >"$DST_OUT" 2>&1 &
    dpid=$!
    defer kill_wait "$dpid"
    in_ns "$NS_SRC" "$SWAPCOPY_SRC/scripts/swapcopy-migrate" --role source \
        --src-qmp "$SRC_QMP" --source-listen "$SRC_IP:4444" --migrate-uri "tcp:$DST_IP:4445" \
        --name "$name" --state-dir "$state/src" --json "$SRC_JSON" --wait-peer 120 "$@" \
        >"$SRC_OUT" 2>&1 || st=$?
    wait "$dpid" || st=$(( st + 100 ))
    echo "---- source side"; cat "$SRC_OUT"
    echo "---- destination side"; cat "$DST_OUT"
    [ "$st" -eq 0 ]
}

# crossed_veth: what the destination fetched came over the veth link into
# NS_DST, not over any loopback.
crossed_veth() {
    local fetched rx
    fetched=$(json_get "$(cat "$1")" bytes_fetched)
    rx=$(ns_rx_bytes "$NS_DST" "$VETH_DST")
    echo "fetched $fetched bytes; $VETH_DST received $rx bytes"
    [ "$fetched" -gt 0 ]
    [ "$rx" -ge "$fetched" ]
}

@test "two hosts, stock QEMU: one swapcopy-migrate per side, pages over the veth link, memwalk goes on passing" {
    netns_pair
    QEMU_NETNS_SRC=$NS_SRC QEMU_NETNS_DST=$NS_DST \
        qemu_pair_start 128 -kernel "$SWAPCOPY_BUILD/guest/memwalk.elf"
    wait_for_pass "$SRC_SERIAL" 2 60
    two_host_stock
    grep -q "ready: told the source at $SRC_IP:4444" "$DST_OUT"
    grep -q "swapcopy migration summary (source side)" "$SRC_OUT"
    wait_for_pass "$DST_SERIAL" $(( $(grep -c '^PASS' "$DST_SERIAL") + 5 )) 120
    run grep '^ERROR' "$SRC_SERIAL" "$DST_SERIAL"
    [ "$status" -eq 1 ]
    crossed_veth "$DST_JSON"
    # The source served what the destination fetched.
    [ "$(json_get "$(cat "$SRC_JSON")" bytes_served)" -ge "$(json_get "$(cat "$DST_JSON")" bytes_fetched)" ]
}

@test "two hosts, stock QEMU: the destination prepared ahead; the agent it left runs the destination's side" {
    local name=t$$-$BATS_TEST_NUMBER state=$BATS_TEST_TMPDIR/run agent
    netns_pair
    QEMU_NETNS_SRC=$NS_SRC QEMU_NETNS_DST=$NS_DST \
        qemu_pair_start 64 -kernel "$SWAPCOPY_BUILD/guest/memwalk.elf"
    wait_for_pass "$SRC_SERIAL" 2 60
    defer in_ns "$NS_DST" "$SWAPCOPY_SRC/scripts/swapcopy-migrate" --unprepare \
        --name "$name" --state-dir "$state/dst"
    run in_ns "$NS_DST" "$SWAPCOPY_SRC/scripts/swapcopy-migrate" --role destination --prepare-only \
        --dst-qmp "$DST_QMP" --source "$SRC_IP:4444" --name "$name" --state-dir "$state/dst"
    echo "$output"
    [ "$status" -eq 0 ]
    agent=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["agent_pid"])' \
        "$state/dst/$name/prepared.json")
    two_host_stock
    # The destination's command was handed to the agent, in its namespace.
    grep -q "the armed region was read while the sides were checked" "$DST_OUT"
    [ "$(json_get "$(cat "$DST_JSON")" prepared_ahead)" = True ]
    grep -q "took the migration" "$state/dst/$name.agent.log"
    wait_exited "$agent"
    wait_for_pass "$DST_SERIAL" $(( $(grep -c '^PASS' "$DST_SERIAL") + 3 )) 120
    run grep '^ERROR' "$SRC_SERIAL" "$DST_SERIAL"
    [ "$status" -eq 1 ]
    crossed_veth "$DST_JSON"
}

@test "two hosts, stock QEMU, TLS-PSK on the link: the pages cross encrypted, a plain client gets nothing" {
    local name=t$$-$BATS_TEST_NUMBER state=$BATS_TEST_TMPDIR/run spid st=0
    netns_pair
    make_psk "$BATS_TEST_TMPDIR/keys.psk"
    QEMU_NETNS_SRC=$NS_SRC QEMU_NETNS_DST=$NS_DST \
        qemu_pair_start 64 -kernel "$SWAPCOPY_BUILD/guest/memwalk.elf"
    wait_for_pass "$SRC_SERIAL" 2 60
    # The source's side first: it exports and waits for the destination.
    in_ns "$NS_SRC" "$SWAPCOPY_SRC/scripts/swapcopy-migrate" --role source \
        --src-qmp "$SRC_QMP" --source-listen "$SRC_IP:4444" --migrate-uri "tcp:$DST_IP:4445" \
        --name "$name" --state-dir "$state/src" --wait-peer 120 \
        --tls-psk "$BATS_TEST_TMPDIR/keys.psk" >"$BATS_TEST_TMPDIR/src-side.out" 2>&1 &
    spid=$!
    defer kill_wait "$spid"
    wait_for grep -q "serving NBD on TCP $SRC_IP:4444 (TLS require" "$state/src/$name.exporter.log"
    # A client without the key gets nothing, not even the export's size.
    run in_ns "$NS_DST" nbdinfo --size "nbd://$SRC_IP:4444/mem"
    echo "plain client: $output"
    [ "$status" -ne 0 ]
    [ -z "$(grep -E '^[0-9]+$' <<<"$output")" ]
    defer "$SWAPCOPY_SRC/scripts/teardown-swap.sh" --name "$name" --state-dir "$state/dst"
    run in_ns "$NS_DST" "$SWAPCOPY_SRC/scripts/swapcopy-migrate" --role destination \
        --dst-qmp "$DST_QMP" --source "$SRC_IP:4444" --migrate-uri "tcp:$DST_IP:4445" \
        --name "$name" --state-dir "$state/dst" --json "$BATS_TEST_TMPDIR/dst.json" \
        --tls-psk "$BATS_TEST_TMPDIR/keys.psk"
    echo "$output"
    [ "$status" -eq 0 ]
    wait "$spid" || st=$?
    cat "$BATS_TEST_TMPDIR/src-side.out"
    [ "$st" -eq 0 ]
    wait_for_pass "$DST_SERIAL" $(( $(grep -c '^PASS' "$DST_SERIAL") + 5 )) 120
    run grep '^ERROR' "$SRC_SERIAL" "$DST_SERIAL"
    [ "$status" -eq 1 ]
    crossed_veth "$BATS_TEST_TMPDIR/dst.json"
}

@test "two hosts, stock QEMU: a Linux guest checksumming its memory survives, pages over the veth link" {
    linux_guest
    netns_pair
    QEMU_NETNS_SRC=$NS_SRC QEMU_NETNS_DST=$NS_DST qemu_pair_start 256 -kernel "$LINUX_KERNEL" \
        -initrd "$LINUX_INITRD" -append "console=ttyS0 quiet memcheck_mib=48"
    wait_for_lines "$SRC_SERIAL" '^LPASS' 2 180
    two_host_stock
    wait_for_lines "$DST_SERIAL" '^LPASS' 2 180
    run grep '^LERROR' "$SRC_SERIAL" "$DST_SERIAL"
    [ "$status" -eq 1 ]
    crossed_veth "$DST_JSON"
}

@test "two hosts, stock QEMU: the destination side refuses to go on without its source, and undoes its preparation" {
    netns_pair
    QEMU_NETNS_SRC=$NS_SRC QEMU_NETNS_DST=$NS_DST \
        qemu_pair_start 64 -kernel "$SWAPCOPY_BUILD/guest/memwalk.elf"
    run in_ns "$NS_DST" "$SWAPCOPY_SRC/scripts/swapcopy-migrate" --role destination \
        --dst-qmp "$DST_QMP" --source "$SRC_IP:4444" --migrate-uri "tcp:$DST_IP:4445" \
        --name "t$$-$BATS_TEST_NUMBER" --state-dir "$BATS_TEST_TMPDIR/run" --wait-peer 3
    echo "$output"
    [ "$status" -ne 0 ]
    [[ "$output" == *"did not answer within 3 s"* ]]
    # Nothing is left set up, and the source never moved.
    [ "$(machine_state)" = "$BEFORE" ]
    [ "$(qmp "$SRC_QMP" query-status | json_get "$(cat)" status)" = running ]
}

# two_host_patched GUEST_ARGS...: a patched QEMU pair across the namespaces
# (source exporter on SRC_IP, destination set up with src=SRC_IP; both
# -postcopy swap options extended by $QP_POSTCOPY_EXTRA).
two_host_patched() {
    qp_binary
    QP_NS_SRC=$NS_SRC QP_NS_DST=$NS_DST QP_SRC_IP=$SRC_IP QP_DST_IP=$DST_IP qp_pair_start "$@"
}

# fetched_over_veth QP_MIGRATE_OUTPUT [MIN_BYTES]: the destination fetched
# pages, at least MIN_BYTES (its query-migrate, the output's last line), and
# at least as many bytes came in through its end of the veth link.
fetched_over_veth() {
    local fetched rx
    fetched=$(json_get "$(tail -n 1 <<<"$1")" dst.postcopy-swap.bytes-fetched)
    rx=$(ns_rx_bytes "$NS_DST" "$VETH_DST")
    echo "fetched $fetched bytes; $VETH_DST received $rx bytes"
    [ "$fetched" -ge "${2:-1}" ]
    [ "$rx" -ge "$fetched" ]
}

@test "two hosts, patched QEMU: -postcopy swap,listen= on one side, src= on the other, pages over the veth link" {
    netns_pair
    two_host_patched 128
    GUEST_LOG=$SRC_LOG GUEST_PID=$SRC_PID GUEST_QEMU_LOG=$SRC_QEMU_LOG guest_wait_pass 2 60
    run qp_migrate
    echo "$output"
    [ "$status" -eq 0 ]
    fetched_over_veth "$output"
    last=$(GUEST_LOG=$SRC_LOG guest_last_pass)
    GUEST_LOG=$DST_LOG GUEST_PID=$DST_PID GUEST_QEMU_LOG=$DST_QEMU_LOG guest_wait_pass $(( last + 3 )) 120
    GUEST_LOG=$DST_LOG run guest_errors
    [ "$status" -ne 0 ]
}

@test "two hosts, patched QEMU: a Linux guest checksumming its memory survives, pages over the veth link" {
    linux_guest
    GUEST_ELF=$LINUX_KERNEL
    netns_pair
    two_host_patched 256 -initrd "$LINUX_INITRD" -append "console=ttyS0 quiet memcheck_mib=48"
    GUEST_LOG=$SRC_LOG GUEST_PID=$SRC_PID GUEST_QEMU_LOG=$SRC_QEMU_LOG \
        guest_wait_line 'LPASS 1' 180
    run qp_migrate
    echo "$output"
    [ "$status" -eq 0 ]
    fetched_over_veth "$output" $(( 48 << 20 ))
    qp_wait_lpass_twice
}

@test "two hosts, patched QEMU, TLS-PSK on the link (-postcopy swap,tls-psk=): memwalk goes on passing" {
    netns_pair
    make_psk "$BATS_TEST_TMPDIR/keys.psk"
    QP_POSTCOPY_EXTRA=",tls-psk=$BATS_TEST_TMPDIR/keys.psk" two_host_patched 128
    GUEST_LOG=$SRC_LOG GUEST_PID=$SRC_PID GUEST_QEMU_LOG=$SRC_QEMU_LOG guest_wait_pass 2 60
    run qp_migrate
    echo "$output"
    [ "$status" -eq 0 ]
    grep -q -- "--tls-psk $BATS_TEST_TMPDIR/keys.psk" "$SRC_QEMU_LOG"
    grep -q "serving NBD on TCP $SRC_IP:4444 (TLS require" "$SRC_QEMU_LOG"
    fetched_over_veth "$output"
    last=$(GUEST_LOG=$SRC_LOG guest_last_pass)
    GUEST_LOG=$DST_LOG GUEST_PID=$DST_PID GUEST_QEMU_LOG=$DST_QEMU_LOG guest_wait_pass $(( last + 3 )) 120
    GUEST_LOG=$DST_LOG run guest_errors
    [ "$status" -ne 0 ]
}
