# Helpers for tests of the patched QEMU (qemu-patches/). Load after
# lib/common, lib/migration and lib/guest.
#
# qp_binary: builds (or finds in the cache) the patched QEMU, or takes
#   $SWAPCOPY_QEMU if set; sets QP_QEMU.
# qp_pair_start MIB [GUEST ARGS...]: memwalk on a patched source (ordinary
#   anonymous RAM, exporter on a free loopback port) and a patched
#   destination waiting on -incoming with -postcopy swap,src=...; sets
#   SRC_PID SRC_LOG SRC_QMP DST_PID DST_LOG DST_QMP QP_URI QP_SWAP_NAME.
#   QP_NS_SRC / QP_NS_DST run the source / destination in those network
#   namespaces (lib/netns.bash), with QP_SRC_IP / QP_DST_IP for addresses
#   instead of 127.0.0.1, as on two hosts.
#   QP_POSTCOPY_EXTRA (",tls-psk=FILE" and the like) extends both sides'
#   -postcopy swap options.
#   QP_DST_POSTCOPY="" starts the destination without -postcopy swap;
#   QP_DST_MODE=control sets the swap device up first (setup-swap.sh
#   --src-later, before the source's exporter exists) and starts the
#   destination with -postcopy swap,control=...; sets QP_CONTROL.
# qp_migrate [--cancel-after SECS]: postcopy-swap migration between them;
#   prints the final query-migrate of both sides as one JSON object
#   {"src":...,"dst":...} and fails unless the source completed and the
#   destination finished (or, with --cancel-after, unless the source
#   cancelled).

qp_binary() {
    if [ -n "${SWAPCOPY_QEMU:-}" ]; then   # a patched binary built elsewhere
        QP_QEMU=$SWAPCOPY_QEMU
        [ -x "$QP_QEMU" ] || { echo "SWAPCOPY_QEMU=$QP_QEMU is not an executable" >&2; return 1; }
        return 0
    fi
    QP_QEMU=$("$SWAPCOPY_SRC/qemu-patches/build.sh" | tail -n 1) ||
        { echo "qemu-patches/build.sh failed: the patched QEMU is a prerequisite" >&2; return 1; }
    [ -x "$QP_QEMU" ] || { echo "qemu-patches/build.sh printed '$QP_QEMU', not a binary" >&2; return 1; }
}

qp_pair_start() {
    local mib=$1 sport mport sip=${QP_SRC_IP:-127.0.0.1} dip=${QP_DST_IP:-127.0.0.1}; shift
    if [ -n "${QP_NS_DST:-}" ]; then
        sport=4444 mport=4445       # namespaces of the test's own: free
    else
        free_port_pair sport mport || return 1
    fi
    QP_URI=tcp:$dip:$mport
    QP_SWAP_NAME=qp$$-$BATS_TEST_NUMBER
    local state=$BATS_TEST_TMPDIR/run
    # QEMU tears the device down itself; this covers a QEMU that died.
    defer "$SWAPCOPY_SRC/scripts/teardown-swap.sh" --name "$QP_SWAP_NAME" --state-dir "$state"
    GUEST_NETNS=${QP_NS_SRC:-} GUEST_QEMU=$QP_QEMU GUEST_NAME=src guest_boot -m "${mib}M" \
        -postcopy "swap,server=$PAGESRV,listen=$sip:$sport${QP_POSTCOPY_EXTRA:-}" "$@" || return 1
    # shellcheck disable=SC2034 # used by the tests
    SRC_PID=$GUEST_PID SRC_LOG=$GUEST_LOG SRC_QMP=$GUEST_QMP SRC_QEMU_LOG=$GUEST_QEMU_LOG
    local post=(-postcopy "swap,src=$sip:$sport,setup=$SWAPCOPY_SRC/scripts/setup-swap.sh,name=$QP_SWAP_NAME,state-dir=$state,server=$PAGESRV${QP_POSTCOPY_EXTRA:-}")
    [ "${QP_DST_POSTCOPY-x}" = "" ] && post=()
    if [ "${QP_DST_MODE:-}" = control ]; then
        local out
        # The device must hold the guest's RAM and firmware with room to
        # stay under half full.
        out=$("$SWAPCOPY_SRC/scripts/setup-swap.sh" --src "$sip:$sport" --src-later \
              --size "$(( mib * 4 + 256 ))M" --name "$QP_SWAP_NAME" --state-dir "$state") || return 1
        QP_CONTROL=$(sed -n 's/^CONTROL=//p' <<<"$out")
        post=(-postcopy "swap,control=$QP_CONTROL")
    fi
    GUEST_NETNS=${QP_NS_DST:-} GUEST_QEMU=$QP_QEMU GUEST_NAME=dst guest_boot -m "${mib}M" \
        -incoming "$QP_URI" "${post[@]}" "$@" || return 1
    # shellcheck disable=SC2034 # used by the tests
    DST_PID=$GUEST_PID DST_LOG=$GUEST_LOG DST_QMP=$GUEST_QMP DST_QEMU_LOG=$GUEST_QEMU_LOG
    # A failed test shows what both QEMUs and the destination's nbd-pagesrv
    # said (runs before the teardown above removes the state directory).
    defer show_logs_if_failed "$SRC_QEMU_LOG" "$DST_QEMU_LOG" "$state/$QP_SWAP_NAME/pagesrv.log"
    # QEMU creates its QMP socket before it binds the -incoming port: a
    # 'migrate' in between is refused. (Connecting to check would start an
    # incoming migration; the kernel's socket table says it without one.)
    if ! wait_for _qp_listening "$mport" "${QP_NS_DST:-}"; then
        echo "the destination QEMU is not listening on $dip:$mport; its output:" >&2
        cat "$DST_QEMU_LOG" >&2
        return 1
    fi
}

# _qp_listening PORT [NETNS]: something listens on TCP PORT (IPv4, any
# address), in network namespace NETNS if given.
_qp_listening() {
    ${2:+nsenter "--net=/run/netns/$2"} cat /proc/net/tcp |
        awk -v port="$(printf '%04X' "$1")" \
            'NR > 1 { split($2, a, ":"); if (a[2] == port && $4 == "0A") found = 1 } END { exit !found }'
}

# qp_qmp QMP_SOCKET COMMAND [JSON-ARGS]: one QMP command, prints its return value.
qp_qmp() {
    python3 - "$SWAPCOPY_SRC/scripts" "$@" <<'PY'
import json, sys
sys.path.insert(0, sys.argv.pop(1))
from qmp import QMP
q = QMP(sys.argv[1])
args = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
print(json.dumps(q.cmd(sys.argv[2], **args)))
PY
}

qp_migrate() {
    python3 - "$SWAPCOPY_SRC/scripts" "$SRC_QMP" "$DST_QMP" "$QP_URI" "$@" <<'PY'
import json, sys, time
sys.path.insert(0, sys.argv.pop(1))
from qmp import QMP, QMPError
src_path, dst_path, uri = sys.argv[1:4]
cancel_after = float(sys.argv[5]) if len(sys.argv) > 5 and sys.argv[4] == "--cancel-after" else None
src = QMP(src_path, timeout=60)
src.cmd("migrate-set-capabilities",
        capabilities=[{"capability": "postcopy-swap", "state": True}])
start = time.monotonic()
src.cmd("migrate", uri=uri)
if cancel_after is not None:
    time.sleep(cancel_after)
    src.cmd("migrate_cancel")
deadline = start + 180
s = d = {}
dst = None
while time.monotonic() < deadline:
    s = src.cmd("query-migrate")
    if s.get("status") in ("cancelled", "failed"):
        break
    if cancel_after is None:
        # The destination answers QMP again once it has armed its RAM; it
        # exits if its load fails, and then the source fails too.
        try:
            if dst is None:
                dst = QMP(dst_path, timeout=60)
            d = dst.cmd("query-migrate")
        except (QMPError, OSError) as e:
            d, dst = {"qmp-error": str(e)}, None
        ps = d.get("postcopy-swap", {})
        if s.get("status") == "completed" and ps.get("state") in ("finished", "failed"):
            break
    time.sleep(0.1)
print(json.dumps({"src": s, "dst": d, "seconds": round(time.monotonic() - start, 3)}))
if cancel_after is not None:
    sys.exit(0 if s.get("status") == "cancelled" else 1)
ok = s.get("status") == "completed" and d.get("postcopy-swap", {}).get("state") == "finished"
sys.exit(0 if ok else 1)
PY
}

# qp_wait_lpass_twice: the Linux guest (tests/vm/linux-guest.sh) checksums
# its memory twice more on the destination, with no LERROR on either side.
qp_wait_lpass_twice() {
    local n
    n=$(grep -c ' LPASS ' "$DST_LOG" || true)
    for _ in $(seq 1800); do
        grep -q ' LERROR' "$SRC_LOG" "$DST_LOG" && break
        [ "$(grep -c ' LPASS ' "$DST_LOG" || true)" -ge $(( n + 2 )) ] && break
        sleep 0.1
    done
    if grep ' LERROR' "$SRC_LOG" "$DST_LOG"; then
        return 1
    fi
    [ "$(grep -c ' LPASS ' "$DST_LOG" || true)" -ge $(( n + 2 )) ]
}

# qp_status QMP_SOCKET: the run state (running, paused, postmigrate...).
qp_status() {
    qp_qmp "$1" query-status | json_get "$(cat)" status
}
