#!/usr/bin/env bash
# qemu-patches/build.sh: Debian's QEMU 7.2 with swapcopy's postcopy-swap
# patches, linked with libswapstub. Prints the path of the binary
# (qemu-system-x86_64) on its last line.
#
# The result is cached under /var/cache/swapcopy/qemu/<hash>/, where the
# hash covers the patches, libswapstub's sources and this script: a rerun
# with nothing changed is instant. Needs root the first time (apt-get
# source, build dependencies).
#
#   qemu-patches/build.sh [--cache DIR] [--jobs N] [--keep-build]
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
cache_root=${SWAPCOPY_QEMU_CACHE:-/var/cache/swapcopy/qemu}
jobs=$(nproc)
keep_build=no
# What the configure line below needs, beyond a C compiler and make.
build_deps=(dpkg-dev ninja-build meson python3-venv pkg-config libglib2.0-dev
            libpixman-1-dev libslirp-dev libfdt-dev flex bison xz-utils)

die() { echo "qemu-patches/build.sh: $*" >&2; exit 1; }
log() { echo "qemu-patches/build.sh: $*" >&2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --cache) cache_root=$2; shift 2 ;;
        --jobs) jobs=$2; shift 2 ;;
        --keep-build) keep_build=yes; shift ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

# Everything the binary is made from, except QEMU's source itself, which
# comes from the Debian archive (its version is checked below).
swapstub_srcs=("$root"/swapstub/*.c "$root"/swapstub/*.h "$root"/include/*.h)
hash=$(cat "$here"/*.patch "$here/build.sh" "${swapstub_srcs[@]}" | sha256sum | cut -c1-16)
out=$cache_root/$hash
bin=$out/qemu-system-x86_64
if [ -x "$bin" ]; then
    echo "$bin"
    exit 0
fi

[ "$(id -u)" = 0 ] || die "not built yet ($out) and not root: run once as root (apt-get source and build dependencies need it)"
mkdir -p "$cache_root"
# One build at a time; a second caller waits and then finds the result.
exec 9>"$cache_root/.lock"
flock 9
if [ -x "$bin" ]; then
    echo "$bin"
    exit 0
fi

missing=()
for p in "${build_deps[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing build dependencies: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null ||
        die "apt-get install ${missing[*]} failed"
fi

# Debian's QEMU source, downloaded once and kept beside the builds.
srcdir=$cache_root/source
if ! ls "$srcdir"/qemu_7.2*.dsc >/dev/null 2>&1; then
    if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ &&
       ! grep -qs '^deb-src' /etc/apt/sources.list; then
        # deb-src twin of every deb822 entry that serves Debian itself.
        log "adding deb-src entries to /etc/apt/sources.list.d/swapcopy-deb-src.sources"
        # The list is taken before the redirection creates our own file,
        # which must not be read back into itself.
        others=(/etc/apt/sources.list.d/*.sources)
        for f in "${others[@]}"; do
            [ -e "$f" ] && grep -q 'debian' "$f" || continue
            sed -n '/^Types:/,/^$/p' "$f" | sed 's/^Types:.*/Types: deb-src/'
            echo
        done >/etc/apt/sources.list.d/swapcopy-deb-src.sources
        [ -s /etc/apt/sources.list.d/swapcopy-deb-src.sources ] ||
            die "no Debian deb822 source found in /etc/apt/sources.list.d to derive deb-src from; add a deb-src entry for bookworm by hand"
    fi
    apt-get update -qq
    rm -rf "$srcdir.tmp" && mkdir -p "$srcdir.tmp"
    (cd "$srcdir.tmp" && apt-get source --download-only -qq qemu) ||
        die "apt-get source qemu failed (is a deb-src entry for bookworm configured?)"
    mv "$srcdir.tmp" "$srcdir"
fi
dsc=$(find "$srcdir" -maxdepth 1 -name 'qemu_7.2*.dsc' | sort | tail -n 1)
[ -n "$dsc" ] || die "no QEMU 7.2 source package in $srcdir; the patches are for 7.2 (Debian 12)"

work=$out.build
rm -rf "$work"
mkdir -p "$work" "$out"
log "building in $work (about 5 minutes on 2 cores; log in $work/build.log)"
start=$SECONDS
dpkg-source --no-check -x "$dsc" "$work/qemu" >/dev/null
cd "$work/qemu"
for p in "$here"/*.patch; do
    patch -p1 --quiet --forward <"$p" || die "patch $(basename "$p") does not apply to $(basename "$dsc")"
done

# libswapstub, built here with plain flags (no sanitizers: they would need
# their runtime in QEMU) from the same sources the hash covers.
mkdir -p swapcopy/obj
for c in "$root"/swapstub/*.c; do
    [ "$(basename "$c")" = swapstub-cli.c ] && continue
    # shellcheck disable=SC2046 # pkg-config prints several flags
    cc -std=c11 -D_GNU_SOURCE -O2 -g -fPIE -Wall -Wextra -Werror -I"$root/include" \
       -I"$root/swapstub" $(pkg-config --cflags glib-2.0) -c -o "swapcopy/obj/$(basename "${c%.c}").o" "$c"
done
ar rcs swapcopy/libswapstub.a swapcopy/obj/*.o
cp "$root/swapstub/swapstub.h" swapcopy/

mkdir build
cd build
{
    ../configure --target-list=x86_64-softmmu --without-default-features --disable-docs \
        --enable-tcg --enable-slirp \
        --firmwarepath=/usr/share/qemu:/usr/share/seabios &&
    make -j"$jobs" qemu-system-x86_64
} >"$work/build.log" 2>&1 || { tail -n 40 "$work/build.log" >&2; die "build failed; full log: $work/build.log"; }

# Outside the build tree the binary finds its firmware through the
# absolute --firmwarepath (a qemu-bundle/ beside it would take over).
cp qemu-system-x86_64 "$bin.tmp"
{
    echo "source: $(basename "$dsc")"
    echo "patches:"; for p in "$here"/*.patch; do echo "  $(basename "$p")"; done
    echo "built: $(date -u +%FT%TZ) in $(( SECONDS - start )) s"
} >"$out/BUILD-INFO"
mv "$bin.tmp" "$bin"
cd /
[ "$keep_build" = yes ] || rm -rf "$work"
log "built in $(( SECONDS - start )) s"
echo "$bin"
