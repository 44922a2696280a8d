#!/usr/bin/env bash
# linux-guest.sh: a Linux guest for migration tests: Debian's kernel (the
# one tests/vm uses) and a busybox initramfs whose /init runs a memory
# checksum workload: it fills MIB MiB of tmpfs with random data, then
# checksums it again and again, printing "LPASS n" each time the sum is
# right and "LERROR ..." (then powering off) when it is not. Prints
#   KERNEL=PATH  INITRD=PATH
# The initramfs is cached under /var/cache/swapcopy/vm/linux-guest/.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${SWAPCOPY_VM_CACHE:-/var/cache/swapcopy/vm}

kernel=$("$here/build-initramfs.sh" | sed -n 's/^KERNEL=//p')
[ -n "$kernel" ] || { echo "linux-guest: no kernel from build-initramfs.sh" >&2; exit 1; }
busybox=$(command -v busybox || true)
[ -n "$busybox" ] && file -L "$busybox" 2>/dev/null | grep -q 'statically linked' ||
    busybox=/bin/busybox
[ -x "$busybox" ] || { echo "linux-guest: busybox-static missing (make deps)" >&2; exit 1; }

init=$(cat <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t devtmpfs dev /dev
mount -t tmpfs -o size=90% tmp /tmp
mib=48
for a in $(cat /proc/cmdline); do case "$a" in memcheck_mib=*) mib=${a#*=} ;; esac; done
echo "LINUX-GUEST up, filling $mib MiB"
dd if=/dev/urandom of=/tmp/blob bs=1M count="$mib" 2>/dev/null
want=$(md5sum /tmp/blob | cut -d' ' -f1)
echo "LINUX-GUEST sum=$want"
n=0
while true; do
    got=$(md5sum /tmp/blob | cut -d' ' -f1)
    if [ "$got" = "$want" ]; then
        echo "LPASS $n"
    else
        echo "LERROR pass=$n got=$got want=$want"
        poweroff -f
    fi
    n=$((n + 1))
done
INIT
)
key=$( { sha256sum "$busybox" | cut -d' ' -f1; echo "$init"; } | sha256sum | cut -c1-16)
out=$cache/linux-guest/$key.cpio
if [ ! -s "$out" ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    mkdir -p "$tmp/root/bin" "$tmp/root/proc" "$tmp/root/dev" "$tmp/root/tmp" "$tmp/root/sys"
    cp "$busybox" "$tmp/root/bin/busybox"
    printf '%s\n' "$init" >"$tmp/root/init"
    chmod 755 "$tmp/root/init"
    mkdir -p "$cache/linux-guest"
    (cd "$tmp/root" && find . | cpio -o -H newc --quiet) >"$tmp/initrd.cpio"
    mv "$tmp/initrd.cpio" "$out"
fi
echo "KERNEL=$kernel"
echo "INITRD=$out"
