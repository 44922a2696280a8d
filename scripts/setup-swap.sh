#!/usr/bin/env bash
# setup-swap.sh: on the migration destination, start nbd-pagesrv pulling
# from the source, attach its export as a block device and make it the
# highest-priority swap device. Prints shell-readable KEY=VALUE lines:
#   NAME= STATE= DEVICE= SOCKET= CONTROL= PID= SIZE= STUB= PRIORITY=
# Several migrations into one host each get their own device, one priority
# above every device already active (from 32000 up): the kernel sends every
# page-out to the highest, so each region is armed onto its own device
# while that device is the newest. Setting up and arming therefore take
# turns (the lock below; see docs/swapstub.md, "Several migrations").
# On a kernel with mm-patch-madvise the device is stub-only by default
# (swapstub swapon --stub): ordinary swap-out never uses it, and swapstub
# arms with MADV_SWAPSTUB, without I/O.
# Undo everything with: scripts/teardown-swap.sh --name NAME
set -euo pipefail

# Each program started costs 5-10 ms on these hosts, and this script runs
# on the way to a prepared destination: shell built-ins where they do.
here=${BASH_SOURCE[0]%/*}
[ "$here" != "${BASH_SOURCE[0]}" ] || here=.
here=$(cd "$here" && pwd)
# shellcheck source=lib/blockdev.sh
. "$here/lib/blockdev.sh"

usage() {
    cat <<USAGE
Usage: setup-swap.sh --src HOST:PORT [--name NAME] [--size SIZE] [--state-dir DIR]
                     [--pagesrv PATH] [--fault-timeout SECS] [--stub|--no-stub]
                     [--src-later] [--mem-limit SIZE] [--mem-prealloc]
                     [--tls-psk FILE | --tls-certificates DIR] [--tls MODE]
                     [--attach auto|nbd|fuse|nbdfuse]

  --src HOST:PORT     the migration source's nbd-pagesrv (--export ... --listen)
  --name NAME         name of this swap device (default: swapcopy)
  --size SIZE         device size (default: twice the source's exports plus what
                      is already swapped, so swap stays under half full)
  --state-dir DIR     where sockets, logs and state live (default: /run/swapcopy)
  --src-later         the source is not up yet (a patched QEMU source starts its
                      exporter at 'migrate'): nbd-pagesrv lists its exports at
                      the first 'map'; needs --size
  --mem-limit SIZE    RAM nbd-pagesrv may hold pages in before spilling to a
                      file (its default: 256M)
  --mem-prealloc      nbd-pagesrv maps and touches that RAM at start, in the
                      background, instead of as pages arrive (docs/nbd-pagesrv.md)
  --tls-psk FILE      the source link's pre-shared key (psktool's format), the
                      same file the source was given (docs/security.md)
  --tls-certificates DIR  X.509 instead: ca-cert.pem, client-cert.pem and
                      client-key.pem, the CA the source's certificate is from
  --tls MODE          require (default with a key or certificates), on, off
  --attach HOW        how the export becomes a block device: nbd (the kernel's
                      nbd driver, nbd-client), fuse (nbd-pagesrv serves it as a
                      FUSE file itself, under a loop device), nbdfuse (the same
                      through nbdfuse, a client of its NBD socket: one more
                      process and two more copies per page); default auto:
                      nbd where the kernel has the driver, else fuse
                      (\$SWAPCOPY_ATTACH sets the default, e.g. for a
                      patched QEMU that runs this script itself)
  --stub, --no-stub   swapon as a stub-only device (SWAP_FLAG_STUB: swap-out never
                      allocates there; arming uses MADV_SWAPSTUB) or as ordinary
                      swap; default: stub-only if the kernel offers it
                      (/sys/kernel/mm/swap/swapstub, mm-patch-madvise)
USAGE
}

die() { echo "setup-swap: $*" >&2; exit 1; }

src="" name=swapcopy size="" state_root=/run/swapcopy fault_timeout="" stub=auto src_later=no mem_limit="" mem_prealloc=no attach=${SWAPCOPY_ATTACH:-auto}
tls_psk="" tls_certs="" tls_mode=""
pagesrv=${SWAPCOPY_BUILD:-$here/../build}/nbd-pagesrv
[ -x "$pagesrv" ] || pagesrv=$(command -v nbd-pagesrv || true)
while [ $# -gt 0 ]; do
    case "$1" in
        --src) src=$2; shift 2 ;;
        --name) name=$2; shift 2 ;;
        --size) size=$2; shift 2 ;;
        --state-dir) state_root=$2; shift 2 ;;
        --pagesrv) pagesrv=$2; shift 2 ;;
        --fault-timeout) fault_timeout=$2; shift 2 ;;
        --stub) stub=yes; shift ;;
        --no-stub) stub=no; shift ;;
        --src-later) src_later=yes; shift ;;
        --mem-limit) mem_limit=$2; shift 2 ;;
        --mem-prealloc) mem_prealloc=yes; shift ;;
        --tls-psk) tls_psk=$2; shift 2 ;;
        --tls-certificates) tls_certs=$2; shift 2 ;;
        --tls) tls_mode=$2; shift 2 ;;
        --attach) attach=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument '$1'" ;;
    esac
done

[ -n "$src" ] || { usage >&2; die "--src HOST:PORT is required"; }
[ "$src_later" = no ] || [ -n "$size" ] ||
    die "--src-later needs --size: the source's exports cannot be asked for their size yet (give at least twice the guest's RAM)"
case "$attach" in
    auto) if blockdev_have_nbd_driver; then attach=nbd; else attach=fuse; fi ;;
    nbd) blockdev_have_nbd_driver || die "--attach nbd: this kernel has no nbd driver (modprobe nbd failed); use --attach fuse" ;;
    fuse|nbdfuse) ;;
    *) die "--attach $attach: give auto, nbd, fuse or nbdfuse" ;;
esac
[[ "$name" =~ ^[A-Za-z0-9_.-]+$ ]] || die "--name '$name' may only use letters, digits, _ . -"
[ "$EUID" = 0 ] || die "must run as root (swapon, losetup and FUSE need it)"
[ -n "$pagesrv" ] && [ -x "$pagesrv" ] || die "nbd-pagesrv not found: run 'make' or pass --pagesrv PATH"
# (SWAPCOPY_ZSWAP_ENABLED points elsewhere only in tests.)
zswap_param=${SWAPCOPY_ZSWAP_ENABLED:-/sys/module/zswap/parameters/enabled}
zswap=
[ -r "$zswap_param" ] && read -r zswap <"$zswap_param"
if [[ "$zswap" == [yY1]* ]]; then
    die "zswap is enabled: swapped-out pages would stay compressed in RAM and never reach the device; disable it: echo N > /sys/module/zswap/parameters/enabled"
fi
if [ "$stub" = auto ]; then
    if [ -e /sys/kernel/mm/swap/swapstub ]; then stub=yes; else stub=no; fi
elif [ "$stub" = yes ] && [ ! -e /sys/kernel/mm/swap/swapstub ]; then
    die "--stub: this kernel has no /sys/kernel/mm/swap/swapstub (no SWAP_FLAG_STUB): boot a kernel with mm-patch-madvise (make kernel), or leave --stub out"
fi
swapstub_bin=${pagesrv%/*}/swapstub
if [ "$stub" = yes ] && [ ! -x "$swapstub_bin" ]; then
    swapstub_bin=$(command -v swapstub) || die "a stub-only device is set up with 'swapstub swapon --stub', and swapstub is neither beside $pagesrv nor in PATH: run 'make'"
fi
# Setting a device up and arming its region must not interleave with
# another migration's: a device set up later takes the top priority, and
# the rest of an arm in progress would go to it. A caller that arms holds
# this lock across both (swapcopy-migrate, the patched QEMU) and says so
# with SWAPCOPY_PREPARE_LOCK_HELD=1; alone, this script holds it while it
# sets the device up.
prepare_lock=${SWAPCOPY_PREPARE_LOCK:-/run/lock/swapcopy-prepare.lock}
if [ "${SWAPCOPY_PREPARE_LOCK_HELD:-}" != 1 ]; then
    case $prepare_lock in */*) lock_dir=${prepare_lock%/*} ;; *) lock_dir=. ;; esac
    [ -d "${lock_dir:-/}" ] || mkdir -p "$lock_dir"
    exec 9>>"$prepare_lock" || die "cannot open the lock $prepare_lock"
    flock 9 || die "cannot lock $prepare_lock"
fi
state=$state_root/$name
if [ -e "$state" ]; then
    if [ -f "$state/pagesrv.pid" ] && kill -0 "$(cat "$state/pagesrv.pid")" 2>/dev/null; then
        die "a swap device named '$name' is already set up ($state); use another --name or run teardown-swap.sh --name $name"
    fi
    die "$state is left over from an earlier run; clean it with: teardown-swap.sh --name $name"
fi
# Our device must get every page while its region is armed: one priority
# above every active device, and at least 32000 (above what hosts give
# their own swap).
priority=32000
while read -r dev _ _ _ prio; do
    [ "$dev" = Filename ] && continue
    [ "$prio" -ge "$priority" ] && priority=$((prio + 1))
    if [ "$prio" -ge 32767 ]; then
        die "swap device $dev already has priority $prio, the highest there is; swapcopy's device must be above every other: swapoff $dev or lower its priority"
    fi
done </proc/swaps

if [ -z "$size" ]; then
    # Four times (exports + what is already swapped) plus 256 MiB: arming
    # must keep every device's total under half full (kernel-facts.md,
    # point 6), and as the top-priority device ours also receives whatever
    # else the host pages out meanwhile (e.g. a DAMON page-out scheme).
    # Slots nobody uses cost nothing.
    # The same TLS as nbd-pagesrv will use (the PSK identity: the file's first).
    list_uri="nbd://${src%:*}:${src##*:}"
    if [ -n "$tls_psk" ]; then
        list_uri="nbds://$(awk -F: 'NF > 1 { print $1; exit }' "$tls_psk")@${src%:*}:${src##*:}/?tls-psk-file=$(realpath "$tls_psk")"
    elif [ -n "$tls_certs" ]; then
        list_uri="nbds://${src%:*}:${src##*:}/?tls-certificates=$(realpath "$tls_certs")"
    fi
    exports=$(timeout 30 nbdinfo --json --list "$list_uri" 2>/dev/null |
              python3 -c 'import json,sys; print(sum(e["export-size"] for e in json.load(sys.stdin)["exports"]))') ||
        die "cannot list the exports of the source $src within 30 s: is 'nbd-pagesrv --export NAME=FILE --listen $src' running there, and nothing else on that port?"
    used_kb=$(awk 'NR>1 {u+=$4} END {print u+0}' /proc/swaps)
    size=$(( (4 * (exports + used_kb * 1024) + (256 << 20)) / 1048576 * 1048576 ))
fi

# 0700: it holds the NBD and control sockets: root only.
dirs=("$state")
[ "$attach" = fuse ] && dirs+=("$state/fuse")
# shellcheck disable=SC2174  # the mode is for these, not their parents
mkdir -p -m 0700 "${dirs[@]}"
cleanup_on_error() {
    echo "setup-swap: failed; undoing what was set up" >&2
    "$here/teardown-swap.sh" --name "$name" --state-dir "$state_root" >&2 || true
}
trap cleanup_on_error ERR

sock=$state/nbd.sock ctl=$state/ctl.sock
args=(--size "$size" --socket "$sock" --control "$ctl" --src "$src")
[ -n "$fault_timeout" ] && args+=(--fault-timeout "$fault_timeout")
[ "$src_later" = yes ] && args+=(--src-later)
[ -n "$mem_limit" ] && args+=(--mem-limit "$mem_limit")
[ "$mem_prealloc" = yes ] && args+=(--mem-prealloc)
[ -n "$tls_psk" ] && args+=(--tls-psk "$(realpath "$tls_psk")")
[ -n "$tls_certs" ] && args+=(--tls-certificates "$(realpath "$tls_certs")")
[ -n "$tls_mode" ] && args+=(--tls "$tls_mode")
[ "$attach" = fuse ] && args+=(--fuse "$state/fuse")
# 9>&-: the daemons must not hold the preparation lock for their lifetime.
setsid "$pagesrv" "${args[@]}" >"$state/pagesrv.log" 2>&1 </dev/null 9>&- &
pagesrv_pid=$!
echo "$pagesrv_pid" >"$state/pagesrv.pid"
# The control socket comes last, once the daemon serves. Polled every 2 ms
# with read's timeout on a pipe nobody writes: sleep(1) would cost a
# program start each time, and the daemon is up in 15-20 ms.
exec {pipe}< <(:)
exec {never}<>"/proc/self/fd/$pipe" {pipe}<&-
for (( i = 0; i < 5000; i++ )); do
    [ -S "$ctl" ] && break
    kill -0 "$pagesrv_pid" 2>/dev/null || break
    read -r -t 0.002 -u "$never" _ || :
done
exec {never}<&-
if [ ! -S "$ctl" ]; then
    cat "$state/pagesrv.log" >&2
    false   # triggers the ERR trap
fi

if [ "$attach" = fuse ]; then
    device=$(blockdev_attach_served "$state/fuse" "$state" 9>&-)
else
    device=$(blockdev_attach "$sock" "$state" "$attach" 9>&-)
fi
echo "$device" >"$state/device"
label=sc-$name
# Recording the device in the daemon needs no swap on it yet: it runs
# beside mkswap and swapon (a program start, ~10 ms, off the path).
"${pagesrv%/*}/pagesrv-ctl" "$ctl" device "$device" >/dev/null 9>&- &
record_pid=$!
mkswap -L "${label:0:16}" "$device" >/dev/null
if [ "$stub" = yes ]; then
    # util-linux's swapon cannot pass SWAP_FLAG_STUB.
    "$swapstub_bin" swapon --stub --priority "$priority" --discard-pages "$device" >/dev/null
else
    swapon -p "$priority" --discard=pages "$device"
fi
wait "$record_pid"
: >"$state/swapon"
trap - ERR

printf '%s\n' "NAME=$name" "STATE=$state" "DEVICE=$device" "SOCKET=$sock" "CONTROL=$ctl" \
    "PID=$pagesrv_pid" "SIZE=$size" "STUB=$stub" "PRIORITY=$priority"
