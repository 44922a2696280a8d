#!/usr/bin/env bash
# build-initramfs.sh: the kernel and the initramfs of the test VM that
# tests/vm/run boots, taken from the cache when nothing that goes into
# them has changed. Prints:
#   KERNEL=PATH  INITRD=PATH  KERNEL_PACKAGE=PACKAGE_VERSION
#
# Kernel: Debian's current linux-image-amd64 target (apt-get download; only
# vmlinuz, its config, nbd.ko and loop.ko are kept). KERNEL is the
# uncompressed vmlinux when it has a PVH entry point (QEMU then starts it
# directly: ~3 s less per boot under TCG than unpacking vmlinuz's xz), else
# vmlinuz. Initramfs: busybox-static, bash,
# util-linux's mkswap/swapon/swapoff/losetup, nbd-client, the project's
# programs ($SWAPCOPY_BUILD) and scripts, each with the shared libraries
# ldd lists, and tests/vm/init as /init.
#
# Cache: $SWAPCOPY_VM_CACHE (default /var/cache/swapcopy/vm): kernel/ per
# kernel package version, initrd/ per hash of the kernel version and of
# every file in the initramfs (path and content), so a rebuilt program or
# an upgraded library makes a new one. The few most recently used are kept.
# Missing Debian packages are installed with apt-get (needs root).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$(cd "$here/../.." && pwd)
build=${SWAPCOPY_BUILD:-$src/build}
cache=${SWAPCOPY_VM_CACHE:-/var/cache/swapcopy/vm}
keep_initrds=4

die() { echo "build-initramfs: $*" >&2; exit 1; }
say() { echo "build-initramfs: $*" >&2; }

# Host tools copied into the VM; busybox supplies everything else, but
# not these: busybox's swapon has no -p, its losetup no -O, it has no
# flock (setup-swap.sh's preparation lock), and the project's scripts are
# bash.
host_tools=(bash nbd-client mkswap swapon swapoff losetup flock)
packages=(busybox-static cpio nbd-client util-linux bash)

install_missing_packages() {
    local p missing=()
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} = 0 ] && return 0
    [ "$(id -u)" = 0 ] || die "missing Debian packages: ${missing[*]}; install them as root: apt-get install ${missing[*]}"
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$tmp/apt.log" 2>&1; then
        apt-get update -qq >>"$tmp/apt.log" 2>&1 || true
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$tmp/apt.log" 2>&1 ||
            die "apt-get install ${missing[*]} failed: $(tail -5 "$tmp/apt.log")"
    fi
}

# The package linux-image-amd64 currently points to, e.g. linux-image-6.1.0-56-amd64.
kernel_package() {
    apt-cache depends linux-image-amd64 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}

# vmlinux out of VMLINUZ (xz-compressed, as Debian builds it) into DIR, if
# the kernel can be booted that way (PVH); otherwise DIR gets none.
extract_vmlinux() {
    local vmlinuz=$1 dir=$2 off
    grep -q '^CONFIG_PVH=y' "$dir/config" || return 0
    off=$(LC_ALL=C grep -abo -m1 $'\xfd7zXZ' "$vmlinuz" | awk -F: 'NR == 1 { print $1 }') || true
    [ -n "$off" ] || return 0
    # xz fails on what follows the stream (the rest of the bzImage): the
    # ELF check below is what tells whether the result is usable.
    tail -c +$((off + 1)) "$vmlinuz" | xz -dc >"$dir/vmlinux" 2>/dev/null || true
    if [ "$(head -c 4 "$dir/vmlinux" | od -An -c | tr -d ' ')" != 177ELF ]; then
        rm -f "$dir/vmlinux"
    fi
    return 0
}

# Sets kdir to a directory holding vmlinuz (and maybe vmlinux), config,
# nbd.ko and loop.ko.
fetch_kernel() {
    local pkg ver x
    pkg=$(kernel_package)
    if [ -z "$pkg" ]; then
        # apt's package lists may be missing on a fresh machine.
        [ "$(id -u)" = 0 ] && apt-get update -qq >"$tmp/apt-update.log" 2>&1
        pkg=$(kernel_package)
    fi
    [ -n "$pkg" ] || die "apt-cache does not know linux-image-amd64 (run apt-get update, as root)"
    ver=$(apt-cache show --no-all-versions "$pkg" | awk '$1 == "Version:" { print $2; exit }')
    [ -n "$ver" ] || die "apt-cache show $pkg gives no version"
    kernel_id=${pkg}_$ver
    kdir=$cache/kernel/$kernel_id
    [ -s "$kdir/vmlinuz" ] && [ -s "$kdir/nbd.ko" ] && [ -s "$kdir/loop.ko" ] && return 0

    say "downloading $pkg $ver (~70 MB)"
    mkdir -p "$tmp/deb" "$tmp/x" "$tmp/kernel"
    (cd "$tmp/deb" && apt-get download -q -o APT::Sandbox::User=root "$pkg=$ver") >"$tmp/download.log" 2>&1 ||
        die "apt-get download $pkg=$ver failed: $(tail -5 "$tmp/download.log")"
    dpkg-deb --fsys-tarfile "$tmp"/deb/*.deb |
        tar -x -C "$tmp/x" --wildcards './boot/vmlinuz-*' './boot/config-*' \
            '*/kernel/drivers/block/nbd.ko' '*/kernel/drivers/block/loop.ko' ||
        die "cannot extract vmlinuz, config, nbd.ko and loop.ko from $(echo "$tmp"/deb/*.deb) (does this kernel still build nbd as a module?)"
    for x in "$tmp"/x/boot/vmlinuz-* "$tmp"/x/boot/config-* "$(find "$tmp/x" -name nbd.ko)" "$(find "$tmp/x" -name loop.ko)"; do
        [ -f "$x" ] || die "$pkg $ver lacks vmlinuz, its config, nbd.ko or loop.ko"
    done
    mv "$tmp"/x/boot/vmlinuz-* "$tmp/kernel/vmlinuz"
    mv "$tmp"/x/boot/config-* "$tmp/kernel/config"
    find "$tmp/x" \( -name nbd.ko -o -name loop.ko \) -exec mv {} "$tmp/kernel/" \;
    rm -rf "$tmp/deb" "$tmp/x"
    extract_vmlinux "$tmp/kernel/vmlinuz" "$tmp/kernel"
    mkdir -p "$cache/kernel"
    rm -rf "$kdir"
    mv -T "$tmp/kernel" "$kdir"
    # Older kernels are of no more use: initramfs hashes include the kernel.
    find "$cache/kernel" -mindepth 1 -maxdepth 1 ! -name "$kernel_id" -exec rm -rf {} +
}

# Where a host path goes in the VM, whose /bin /sbin /lib /lib64 are links
# into /usr as on Debian 12.
vm_path() {
    case "$1" in
        /bin/*|/sbin/*|/lib/*|/lib64/*) echo "/usr$1" ;;
        *) echo "$1" ;;
    esac
}

# manifest: lines "VM_PATH HOST_PATH" of every file the initramfs holds.
add() { echo "$1 $2" >>"$tmp/manifest"; }

# add_binary HOST_PATH VM_PATH: the program and the shared libraries it loads.
add_binary() {
    local bin=$1 lib out
    add "$2" "$bin"
    out=$(ldd "$bin" 2>&1) || {
        # A static program (busybox-static) has nothing to add.
        grep -q 'not a dynamic executable' <<<"$out" && return 0
        die "ldd $bin failed: $out"
    }
    if grep -q 'not found' <<<"$out"; then
        die "$bin needs libraries that are not installed: $(grep 'not found' <<<"$out" | tr -s ' \t' ' ')"
    fi
    while read -r lib; do
        add "$(vm_path "$lib")" "$lib"
    done < <(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$out")
}

make_manifest() {
    local t path f
    : >"$tmp/manifest"
    for t in "${host_tools[@]}"; do
        path=$(PATH=/usr/sbin:/usr/bin:/sbin:/bin command -v "$t") || die "$t is not installed"
        add_binary "$path" "/usr/bin/$t"
    done
    path=$(PATH=/usr/bin:/bin command -v busybox) || die "busybox is not installed (apt-get install busybox-static)"
    ldd "$path" >/dev/null 2>&1 && die "$path is not static: install busybox-static instead of busybox"
    add "/usr/bin/busybox" "$path"

    for t in nbd-pagesrv pagesrv-ctl swapstub tests/e2e-workload tests/mkimage tests/hold-region; do
        [ -x "$build/$t" ] || die "$build/$t is missing: run 'make' first (SWAPCOPY_BUILD=$build)"
    done
    # Every program of the build: tests in the VM may use any of them.
    while read -r f; do
        add_binary "$build/$f" "/swapcopy/build/$f"
    done < <(cd "$build" && find . -maxdepth 2 -type f -perm -u+x \( -path './tests/*' -o -path './bench/*' -o ! -path './*/*' \) | sed 's|^\./||' | LC_ALL=C sort)
    while read -r f; do
        add "/swapcopy/$f" "$src/$f"
    done < <(cd "$src" && find scripts tests/vm -type f | LC_ALL=C sort)
    add /init "$here/init"
    add /modules/nbd.ko "$kdir/nbd.ko"
    add /modules/loop.ko "$kdir/loop.ko"

    LC_ALL=C sort -u -o "$tmp/manifest" "$tmp/manifest"
    local dup
    dup=$(awk '{ print $1 }' "$tmp/manifest" | uniq -d | head -3)
    [ -z "$dup" ] || die "two different files for the same place in the VM: $dup"
}

# The key: kernel, this script, and every file's place, mode and content.
initrd_key() {
    cut -d' ' -f2- "$tmp/manifest" | tr '\n' '\0' >"$tmp/hosts"
    xargs -0 stat -L -c %a <"$tmp/hosts" >"$tmp/modes" || die "cannot stat the files of the initramfs"
    xargs -0 sha256sum <"$tmp/hosts" | cut -d' ' -f1 >"$tmp/sums" || die "cannot read the files of the initramfs"
    {
        echo "$kernel_id"
        sha256sum <"${BASH_SOURCE[0]}"
        paste -d' ' <(cut -d' ' -f1 "$tmp/manifest") "$tmp/modes" "$tmp/sums"
    } | sha256sum | cut -c1-24
}

build_initrd() {
    local out=$1 root=$tmp/root d name dest host
    mkdir -p "$root"/usr/{bin,sbin,lib,lib64} "$root"/{dev,proc,sys,tmp,run,root,etc,modules,swapcopy}
    for d in bin sbin lib lib64; do ln -s "usr/$d" "$root/$d"; done
    chmod 1777 "$root/tmp"
    # The kernel opens /dev/console for /init before anything is mounted.
    mknod -m 600 "$root/dev/console" c 5 1 2>/dev/null || true
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
    printf 'root:x:0:\n' >"$root/etc/group"
    printf '127.0.0.1 localhost\n::1 localhost\n' >"$root/etc/hosts"
    while read -r dest host; do
        mkdir -p "$root$(dirname "$dest")"
        cp -L --preserve=mode "$host" "$root$dest"
    done <"$tmp/manifest"
    chmod 755 "$root/init"
    # Busybox for every other command, where no real tool took the name.
    while read -r name; do
        name=${name##*/}
        [ -e "$root/usr/bin/$name" ] || [ -e "$root/usr/sbin/$name" ] || ln -s busybox "$root/usr/bin/$name"
    done < <("$root/usr/bin/busybox" --list)
    (cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) >"$tmp/initrd.cpio" ||
        die "cpio of the initramfs failed"
    mkdir -p "$(dirname "$out")"
    mv "$tmp/initrd.cpio" "$out"
    say "built $out ($(du -m "$out" | cut -f1) MB)"
}

mkdir -p "$cache" || die "cannot create the cache directory $cache (set SWAPCOPY_VM_CACHE)"
# One builder at a time; the others then find its result in the cache.
exec 9>"$cache/.lock"
flock 9
rm -rf "$cache"/tmp.*   # left by a builder that was killed
tmp=$(mktemp -d "$cache/tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

install_missing_packages
fetch_kernel
make_manifest
key=$(initrd_key)
initrd=$cache/initrd/$key.cpio
if [ ! -s "$initrd" ]; then
    say "building the initramfs $key"
    build_initrd "$initrd"
fi
touch "$initrd"
# Keep the most recently used few (e.g. build/ and build-san/).
# shellcheck disable=SC2012  # names are hex keys
ls -1t "$cache"/initrd/*.cpio 2>/dev/null | tail -n +$((keep_initrds + 1)) | xargs -r rm -f

if [ -s "$kdir/vmlinux" ]; then echo "KERNEL=$kdir/vmlinux"; else echo "KERNEL=$kdir/vmlinuz"; fi
echo "INITRD=$initrd"
echo "KERNEL_PACKAGE=$kernel_id"
