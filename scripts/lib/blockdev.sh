# blockdev.sh: attach an NBD export (on a Unix socket) as a block device,
# and detach it again. A bash library: sourced by setup-swap.sh,
# teardown-swap.sh, demo.sh and the tests; it sets no globals and does not
# depend on set -e (every step is checked).
#
#   blockdev_attach SOCKET STATEDIR [nbd|nbdfuse]
#                                     prints the device (/dev/nbdN or /dev/loopN);
#                                     by default nbd where the kernel has the driver
#   blockdev_attach_served MOUNTDIR STATEDIR
#                                     a loop device on a FUSE file the server
#                                     serves itself (nbd-pagesrv --fuse)
#   blockdev_detach STATEDIR          undoes exactly what attach recorded
#
# With the kernel nbd driver: nbd-client. Debian 12's nbd-client (3.24)
# hands the connected socket to the kernel over netlink and exits: the
# driver then talks to the server itself, with no client process in the
# I/O path (tested in a VM: tests/vm.bats). -swap matters only where
# nbd-client stays to run the ioctl path (-nonetlink, or a kernel without
# nbd netlink): there it shields itself from the OOM killer, but in that
# VM it did not stay mlocked (VmLck 0 kB).
#
# Without the driver, nbd-pagesrv itself can serve the export as a FUSE
# file (--fuse MOUNTDIR), and a loop device turns that into a block device:
# blockdev_attach_served. setup-swap.sh does that by default.
#
# Without the driver, for any NBD server: nbdfuse exposes the export as a
# file and a loop device turns that into a block device. That path has a
# user-space process (nbdfuse) in the I/O path, which takes no precautions
# of its own against being swapped out or OOM-killed: it runs with
# swap-safe-preload.so (nbd-pagesrv/preload/), which locks its memory as it
# is touched, marks it an I/O flusher and shields it from the OOM killer,
# as nbd-pagesrv does for itself. SWAPCOPY_SWAP_SAFE_PRELOAD names
# the library; by default the build tree's or the installed one.
#
# The loop device must use direct I/O. A buffered loop device keeps what
# it wrote in the FUSE file's page cache and serves later reads from
# there: swap-ins would never reach the server (which may since have put
# other data in those slots, as nbd-pagesrv's destination role does), and
# every swapped-out page would sit in memory twice.
#
# STATEDIR/blockdev records each step as soon as it is done, one line each
# ("nbd DEV", "fuse MOUNTDIR", "loop DEV BACKFILE"), so that detach can undo
# exactly that, in reverse, also after a crash halfway or after nbdfuse or
# the server died. Detach is idempotent.

_blockdev_err() { echo "blockdev: $*" >&2; }

# blockdev_pid_running PID: the process exists and has not exited. kill -0
# alone also succeeds on a zombie, and a daemon started by setup-swap.sh
# stays one until whoever inherited it reaps it: waiting on kill -0 cost
# teardown seconds per daemon.
blockdev_pid_running() {
    local st
    st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$st" ] && [ "${st%% *}" != Z ]
}

# /proc/mounts escapes space, tab, newline and backslash in octal.
_blockdev_mounted() {
    local esc=$1
    esc=${esc//\\/\\134}; esc=${esc// /\\040}; esc=${esc//$'\t'/\\011}; esc=${esc//$'\n'/\\012}
    local _dev mp _rest
    while read -r _dev mp _rest; do
        [ "$mp" = "$esc" ] && return 0
    done </proc/self/mounts
    return 1
}

_blockdev_have_nbd_driver() {
    [ -d /sys/module/nbd ] && return 0   # loaded, or built in (it has parameters)
    # modprobe can only load a module the running kernel ships; where it
    # ships none (a kernel without /lib/modules, as in containers), asking
    # costs a program start (~10 ms of every set-up) to learn nothing.
    local kver
    read -r kver </proc/sys/kernel/osrelease 2>/dev/null || kver=
    [ -n "$kver" ] && [ ! -d "/lib/modules/$kver" ] && return 1
    command -v modprobe >/dev/null 2>&1 || return 1
    modprobe nbd >/dev/null 2>&1 && [ -e /dev/nbd0 ]
}

# Whether the kernel can attach an NBD export itself (nbd-client).
blockdev_have_nbd_driver() { _blockdev_have_nbd_driver; }

# Devices nobody uses: no client connected (no pid file) and size 0.
_blockdev_free_nbds() {
    local d
    for d in /sys/block/nbd*; do
        [ -e "$d/size" ] || continue
        [ ! -e "$d/pid" ] && [ "$(cat "$d/size")" = 0 ] && echo "/dev/${d##*/}"
    done
}

_blockdev_record() { echo "$2" >>"$1/blockdev"; }

_blockdev_attach_nbd() {
    local sock=$1 state=$2 dev
    for dev in $(_blockdev_free_nbds); do
        # Recorded only once it is ours: detach must never disconnect a
        # device another attach won the race for. (nbd-client cleans up
        # after itself when it fails.)
        if nbd-client -unix "$sock" "$dev" -swap -b 4096 >"$state/nbd-client.log" 2>&1; then
            _blockdev_record "$state" "nbd $dev"
            echo "$dev"
            return 0
        fi
        # Another attach may have taken it between our look and nbd-client:
        # try the next one; any other failure is final.
        if [ -e "/sys/block/${dev#/dev/}/pid" ]; then
            continue
        fi
        _blockdev_err "nbd-client -unix $sock $dev -swap -b 4096 failed: $(cat "$state/nbd-client.log")"
        return 1
    done
    _blockdev_err "no free /dev/nbdN: every nbd device is connected (load nbd with a larger nbds_max)"
    return 1
}

_blockdev_lib_dir=${BASH_SOURCE[0]%/*}
[ "$_blockdev_lib_dir" != "${BASH_SOURCE[0]}" ] || _blockdev_lib_dir=.
_blockdev_lib_dir=$(cd "$_blockdev_lib_dir" && pwd)

# The swap-safe preload for nbdfuse: named, built, or installed.
_blockdev_swap_safe_preload() {
    local f
    for f in "${SWAPCOPY_SWAP_SAFE_PRELOAD:-}" \
             "${SWAPCOPY_BUILD:+$SWAPCOPY_BUILD/swap-safe-preload.so}" \
             "$_blockdev_lib_dir/../../build/swap-safe-preload.so" \
             "$_blockdev_lib_dir/../swap-safe-preload.so"; do
        [ -n "$f" ] && [ -f "$f" ] && { echo "$f"; return 0; }
    done
    return 1
}

_blockdev_attach_fuse() {
    local sock=$1 state=$2 mnt=$2/fuse dev i pid preload
    if ! command -v nbdfuse >/dev/null 2>&1; then
        _blockdev_err "no kernel nbd driver and no nbdfuse: install nbdfuse (Debian: apt-get install libnbd-bin)"
        return 1
    fi
    if ! preload=$(_blockdev_swap_safe_preload); then
        _blockdev_err "swap-safe-preload.so not found (run make, or set SWAPCOPY_SWAP_SAFE_PRELOAD): without it nbdfuse could be paged out to the device it serves"
        return 1
    fi
    mkdir -p "$mnt" || { _blockdev_err "cannot create the mount directory $mnt"; return 1; }
    rm -f "$state/nbdfuse.pid"
    _blockdev_record "$state" "fuse $mnt"
    # setsid: a Ctrl-C in the caller's terminal must not kill nbdfuse while
    # swap still needs it (swapoff reads every page back through it).
    # Output goes to a log and fd 3 is closed, so that $(...) and bats do
    # not wait for nbdfuse. -P writes its pid once the file is ready.
    # setsid -w keeps $! alive exactly as long as nbdfuse, whether or not
    # setsid had to fork.
    LD_PRELOAD=$preload setsid -w nbdfuse -P "$state/nbdfuse.pid" "$mnt" --unix "$sock" \
        </dev/null >"$state/nbdfuse.log" 2>&1 3>&- &
    pid=$!
    # Polled often: a destination is prepared while an operator waits.
    for (( i = 0; i < 1000; i++ )); do
        [ -s "$state/nbdfuse.pid" ] && [ -e "$mnt/nbd" ] && break
        if ! kill -0 "$pid" 2>/dev/null && [ ! -s "$state/nbdfuse.pid" ]; then
            _blockdev_err "nbdfuse $mnt --unix $sock exited: $(cat "$state/nbdfuse.log") (is the NBD server listening on $sock?)"
            return 1
        fi
        sleep 0.01
    done
    if [ ! -e "$mnt/nbd" ]; then
        _blockdev_err "nbdfuse did not expose $mnt/nbd within 10 s: $(cat "$state/nbdfuse.log") (does the server on $sock answer? try nbdinfo 'nbd+unix:///?socket=$sock')"
        # Not mounted, so detach's unmount would not stop it.
        kill "$pid" 2>/dev/null
        return 1
    fi
    _blockdev_loop_on "$mnt/nbd" "$state"
}

# A direct-I/O loop device on FILE, recorded; prints it.
_blockdev_loop_on() {
    local file=$1 state=$2 dev
    if ! dev=$(losetup -f --show --direct-io=on "$file" 2>"$state/losetup.log"); then
        _blockdev_err "losetup -f --show --direct-io=on $file failed: $(cat "$state/losetup.log") (no free loop device? see losetup -a)"
        return 1
    fi
    _blockdev_record "$state" "loop $dev $file"
    # sysfs says it without starting losetup again (5-10 ms).
    local dio=
    read -r dio <"/sys/block/${dev##*/}/loop/dio" 2>/dev/null || dio=$(losetup -n -O DIO "$dev")
    if [ "${dio// /}" != 1 ]; then
        _blockdev_err "$dev on $file did not get direct I/O, refusing: a buffered loop device would answer swap-ins from its page cache instead of the server"
        return 1
    fi
    echo "$dev"
}

# blockdev_attach_served MOUNTDIR STATEDIR: the server mounted MOUNTDIR
# itself and serves MOUNTDIR/nbd (nbd-pagesrv --fuse): only the loop device
# is ours to add. Detach unmounts MOUNTDIR, which ends the server's FUSE
# side. Prints the device.
blockdev_attach_served() {
    local mnt=${1:-} state=${2:-} i
    if [ -z "$mnt" ] || [ -z "$state" ]; then
        _blockdev_err "usage: blockdev_attach_served MOUNTDIR STATEDIR"
        return 2
    fi
    if { [ ! -d "$state" ] && ! mkdir -p "$state"; } || ! state=$(cd "$state" && pwd -P) ||
        ! mnt=$(cd "$mnt" && pwd -P); then
        _blockdev_err "cannot reach the state directory $2 or the mount $1"
        return 1
    fi
    if [ -s "$state/blockdev" ]; then
        _blockdev_err "$state already records an attached device: run blockdev_detach $state first"
        return 1
    fi
    _blockdev_record "$state" "fuse $mnt"
    for (( i = 0; i < 1000; i++ )); do
        _blockdev_mounted "$mnt" && [ -e "$mnt/nbd" ] && break
        sleep 0.01
    done
    if ! _blockdev_mounted "$mnt" || [ ! -e "$mnt/nbd" ]; then
        _blockdev_err "$mnt/nbd did not appear within 10 s: is the server (nbd-pagesrv --fuse $mnt) running? see its log"
        blockdev_detach "$state" || true
        return 1
    fi
    _blockdev_loop_on "$mnt/nbd" "$state" && return 0
    blockdev_detach "$state" || _blockdev_err "could not undo the failed attach: see $state/blockdev"
    return 1
}

blockdev_attach() {
    local sock=${1:-} state=${2:-} how=${3:-}
    if [ -z "$how" ]; then
        if _blockdev_have_nbd_driver; then how=nbd; else how=nbdfuse; fi
    fi
    if [ -z "$sock" ] || [ -z "$state" ]; then
        _blockdev_err "usage: blockdev_attach SOCKET STATEDIR"
        return 2
    fi
    if [ ! -S "$sock" ]; then
        _blockdev_err "$sock is not a socket: start the NBD server first"
        return 1
    fi
    if [ "$(id -u)" != 0 ]; then
        _blockdev_err "attaching a block device needs root (loop, FUSE mounts, nbd)"
        return 1
    fi
    if ! mkdir -p "$state" || ! state=$(cd "$state" && pwd -P); then
        _blockdev_err "cannot create the state directory $2"
        return 1
    fi
    if [ -s "$state/blockdev" ]; then
        _blockdev_err "$state already records an attached device: run blockdev_detach $state first"
        return 1
    fi
    case "$how" in
        nbd) _blockdev_attach_nbd "$sock" "$state" && return 0 ;;
        nbdfuse) _blockdev_attach_fuse "$sock" "$state" && return 0 ;;
        *) _blockdev_err "blockdev_attach: '$how' is neither nbd nor nbdfuse"; return 2 ;;
    esac
    # Leave nothing half attached behind.
    blockdev_detach "$state" || _blockdev_err "could not undo the failed attach: see $state/blockdev"
    return 1
}

# The device must not be active swap: the kernel would keep it open, loop
# would only mark it for later removal and the FUSE mount would stay busy.
_blockdev_is_swap() {
    local real
    real=$(readlink -f "$1") || return 1
    D=$real awk 'NR > 1 && $1 == ENVIRON["D"] { found = 1 } END { exit !found }' /proc/swaps
}

# Loop devices backed by FILE, whether recorded or not (attach may have
# been killed between losetup and recording it).
_blockdev_loops_of() {
    losetup -n -l -O NAME,BACK-FILE 2>/dev/null |
        F=$1 awk '{ n = $1; sub(/^[^ ]+ +/, ""); if ($0 == ENVIRON["F"]) print n }'
}

_blockdev_detach_loop() {
    local dev=$1 back=$2 i
    losetup -n -O BACK-FILE "$dev" 2>/dev/null | grep -qxF "$back" || return 0   # already gone
    if _blockdev_is_swap "$dev"; then
        _blockdev_err "$dev is still an active swap device: swapoff $dev first"
        return 1
    fi
    if ! losetup -d "$dev"; then
        _blockdev_err "losetup -d $dev failed (in use? see lsof $dev)"
        return 1
    fi
    # losetup -d on an open device only marks it for autoclear: wait until
    # it is really gone, so that the FUSE mount is free to go.
    for (( i = 0; i < 250; i++ )); do
        losetup -n -O BACK-FILE "$dev" 2>/dev/null | grep -qxF "$back" || return 0
        sleep 0.02
    done
    _blockdev_err "$dev still uses $back 5 s after losetup -d: something holds it open (see lsof $dev)"
    return 1
}

_blockdev_detach_fuse() {
    local state=$1 mnt=$2 dev pid i rc=0
    for dev in $(_blockdev_loops_of "$mnt/nbd"); do
        _blockdev_detach_loop "$dev" "$mnt/nbd" || rc=1
    done
    [ "$rc" = 0 ] || return 1
    if _blockdev_mounted "$mnt"; then
        # Unmounting makes nbdfuse exit cleanly; a mount whose nbdfuse died
        # unmounts the same way.
        if ! fusermount3 -u "$mnt" 2>"$state/fusermount.log" && ! umount "$mnt" 2>>"$state/fusermount.log"; then
            _blockdev_err "cannot unmount $mnt: $(cat "$state/fusermount.log")"
            return 1
        fi
    fi
    pid=$(cat "$state/nbdfuse.pid" 2>/dev/null) || pid=""
    if [ -n "$pid" ]; then
        for (( i = 0; i < 250; i++ )); do
            blockdev_pid_running "$pid" || break
            sleep 0.02
        done
        # Only if that pid is still our nbdfuse (pids are reused).
        if blockdev_pid_running "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "nbdfuse -P $state/nbdfuse.pid"; then
            _blockdev_err "nbdfuse ($pid) did not exit after the unmount; killing it"
            kill -KILL "$pid" 2>/dev/null
        fi
    fi
    rmdir "$mnt" 2>/dev/null
    return 0
}

_blockdev_detach_nbd() {
    local dev=$1 i
    [ -e "/sys/block/${dev#/dev/}/pid" ] || return 0   # not connected (any more)
    if _blockdev_is_swap "$dev"; then
        _blockdev_err "$dev is still an active swap device: swapoff $dev first"
        return 1
    fi
    if ! nbd-client -d "$dev" >/dev/null 2>&1; then
        _blockdev_err "nbd-client -d $dev failed"
        return 1
    fi
    # The next attach looks for devices without a pid: wait for ours to go.
    for (( i = 0; i < 50; i++ )); do
        [ -e "/sys/block/${dev#/dev/}/pid" ] || return 0
        sleep 0.1
    done
    _blockdev_err "$dev still connected 5 s after nbd-client -d"
    return 1
}

blockdev_detach() {
    local state=${1:-} rc=0 kind rest
    if [ -z "$state" ]; then
        _blockdev_err "usage: blockdev_detach STATEDIR"
        return 2
    fi
    [ -f "$state/blockdev" ] || return 0   # nothing attached, or already detached
    state=$(cd "$state" && pwd -P) || return 1
    # Reverse order of attach; stop at the first step that fails, since
    # the ones before it (the FUSE mount under a loop device) depend on it.
    while read -r kind rest; do
        case "$kind" in
            loop) _blockdev_detach_loop "${rest%% *}" "${rest#* }" || { rc=1; break; } ;;
            fuse) _blockdev_detach_fuse "$state" "$rest" || { rc=1; break; } ;;
            nbd) _blockdev_detach_nbd "$rest" || { rc=1; break; } ;;
            *) _blockdev_err "unknown line in $state/blockdev: $kind $rest"; rc=1; break ;;
        esac
    done < <(tac "$state/blockdev")
    if [ "$rc" = 0 ]; then
        rm -f "$state/blockdev" "$state/nbdfuse.pid"
    fi
    return $rc
}
