#!/usr/bin/env bash
# teardown-swap.sh: undo setup-swap.sh (swapoff, detach the block device,
# stop nbd-pagesrv, remove the state directory). Idempotent; works after a
# crash of any part, doing what is left to do.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/blockdev.sh
. "$here/lib/blockdev.sh"

name=swapcopy state_root=/run/swapcopy
while [ $# -gt 0 ]; do
    case "$1" in
        --name) name=$2; shift 2 ;;
        --state-dir) state_root=$2; shift 2 ;;
        -h|--help) echo "Usage: teardown-swap.sh [--name NAME] [--state-dir DIR]"; exit 0 ;;
        *) echo "teardown-swap: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
state=$state_root/$name
[ -d "$state" ] || { echo "teardown-swap: nothing set up under $state"; exit 0; }
rc=0

# After swapoff nothing reads a slot of the device again, so the pages the
# kernel holds are its own for good: nbd-pagesrv may release them and tell
# its source that it is no longer needed (a source started with
# --exit-when-idle exits on that message, not on a lost connection).
release_source() {
    local ctl=$state/ctl.sock tool pid st i
    [ -S "$ctl" ] && pid=$(cat "$state/pagesrv.pid" 2>/dev/null) || return 0
    tool=$(dirname "$(readlink -f "/proc/$pid/exe" 2>/dev/null)")/pagesrv-ctl
    [ -x "$tool" ] || tool=$(command -v pagesrv-ctl) || return 0
    st=$("$tool" "$ctl" release-landed 2>/dev/null) || return 0
    # The answer is the state after the release: complete, unless pages
    # outside any armed region are still remote (then there is nothing to
    # tell). The message goes out in the background: give it 2 s.
    for (( i = 0; i < 100; i++ )); do
        case "$st" in
            *'"source_told_done":true'*) return 0 ;;
            *'"state":"complete"'*) ;;
            *) return 0 ;;
        esac
        sleep 0.02
        st=$("$tool" "$ctl" status 2>/dev/null) || return 0
    done
}

if [ -f "$state/device" ]; then
    device=$(cat "$state/device")
    if awk 'NR>1 {print $1}' /proc/swaps | grep -qx "$(readlink -f "$device")"; then
        # swapoff reads every page still on the device back into memory:
        # it needs nbd-pagesrv alive for pages not yet local.
        if ! swapoff "$device"; then
            echo "teardown-swap: swapoff $device failed: pages still on it could not be read back (is nbd-pagesrv running? see $state/pagesrv.log); leaving the device attached" >&2
            exit 1
        fi
        release_source
    fi
fi
rm -f "$state/swapon"
blockdev_detach "$state" || rc=1

if [ -f "$state/pagesrv.pid" ]; then
    pid=$(cat "$state/pagesrv.pid")
    if blockdev_pid_running "$pid"; then
        kill -TERM "$pid"
        for _ in $(seq 250); do blockdev_pid_running "$pid" || break; sleep 0.02; done
        if blockdev_pid_running "$pid"; then
            echo "teardown-swap: nbd-pagesrv ($pid) ignored SIGTERM; killing it" >&2
            kill -KILL "$pid" 2>/dev/null
        fi
    fi
fi
# nbd-pagesrv's own FUSE mount (setup-swap.sh --attach fuse) is normally
# gone with the loop device (blockdev_detach) or with nbd-pagesrv; one left
# dead by a crash before the attach recorded it is unmounted here.
if [ -d "$state/fuse" ] && _blockdev_mounted "$state/fuse"; then
    umount -l "$state/fuse" || { echo "teardown-swap: cannot unmount $state/fuse" >&2; rc=1; }
fi
if [ "$rc" = 0 ]; then
    rm -rf "$state"
    rmdir "$state_root" 2>/dev/null || true
fi
exit $rc
