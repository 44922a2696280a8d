#!/usr/bin/env bash
# mm-patch-madvise/build.sh: a small kernel (tinyconfig + kernel.config)
# from Debian's linux-source-6.1 with this directory's patch series
# applied, for the test VM (tests/vm/run --kernel). Prints the path of the
# bzImage on its last line. Beside it in the same directory:
#   vmlinux            the same kernel as an ELF with a PVH entry point
#                      (QEMU boots it without decompressing: faster)
#   swapstub-selftest  the series' selftest, linked statically
#   config, BUILD-INFO
#
# Cached under /var/cache/swapcopy/kernel/<hash>/, where the hash covers
# the patches, kernel.config, this script and the linux-source-6.1
# version: a rerun with nothing changed is instant. The first build takes
# ~10 minutes on 2 cores and needs root (apt-get install of the source and
# the build dependencies).
#
#   mm-patch-madvise/build.sh [--cache DIR] [--jobs N] [--keep-build]
#
# --keep-build keeps the build tree (<hash>.build/linux) for iterating on
# the patches: `make mm/madvise.o` there recompiles one file.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_root=${SWAPCOPY_KERNEL_CACHE:-/var/cache/swapcopy/kernel}
jobs=$(nproc)
keep_build=no
keep_kernels=3
source_pkg=linux-source-6.1
# What building the kernel and the static selftest needs beyond make.
# rsync: Linux 6.1's headers_install copies the uapi headers with it.
build_deps=("$source_pkg" bc flex bison libelf-dev libssl-dev gcc make xz-utils libc6-dev rsync)

die() { echo "mm-patch-madvise/build.sh: $*" >&2; exit 1; }
log() { echo "mm-patch-madvise/build.sh: $*" >&2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --cache) cache_root=$2; shift 2 ;;
        --jobs) jobs=$2; shift 2 ;;
        --keep-build) keep_build=yes; shift ;;
        -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || die "--jobs must be a positive number, not '$jobs'"

# The series without the cover letter (which holds no diff).
patches=()
for p in "$here"/[0-9][0-9][0-9][0-9]-*.patch; do
    [ -e "$p" ] || continue
    case "$(basename "$p")" in 0000-*) continue ;; esac
    patches+=("$p")
done
[ ${#patches[@]} -gt 0 ] || die "no patches in $here (expected 0001-*.patch ...)"

missing_deps() {
    local p
    for p in "${build_deps[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
    done
}

key() {
    local ver
    ver=$(dpkg-query -W -f='${Version}' "$source_pkg" 2>/dev/null) || ver=none
    { echo "$source_pkg $ver"; cat "${patches[@]}" "$here/kernel.config" "$here/build.sh"; } |
        sha256sum | cut -c1-16
}

done_already() {
    [ -s "$1/bzImage" ] && [ -s "$1/vmlinux" ] && [ -x "$1/swapstub-selftest" ]
}

# Fast path: source installed and this exact kernel built.
if dpkg-query -W -f='${Status}' "$source_pkg" 2>/dev/null | grep -q 'install ok installed'; then
    out=$cache_root/$(key)
    if done_already "$out"; then
        touch "$out"
        echo "$out/bzImage"
        exit 0
    fi
fi

[ "$(id -u)" = 0 ] || die "the kernel is not built yet and this is not root: run once as root (apt-get install of $source_pkg and build dependencies, ~10 min build)"
mkdir -p "$cache_root" || die "cannot create $cache_root (set SWAPCOPY_KERNEL_CACHE)"
# One build at a time; a second caller waits and then finds the result.
exec 9>"$cache_root/.lock"
if ! flock -n 9; then
    log "another build holds $cache_root/.lock; waiting for it"
    flock 9
fi

mapfile -t missing < <(missing_deps)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt_log=$(mktemp)
    if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$apt_log" 2>&1; then
        apt-get update -qq >>"$apt_log" 2>&1 || true
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$apt_log" 2>&1 ||
            { tail -5 "$apt_log" >&2; rm -f "$apt_log"; die "apt-get install ${missing[*]} failed"; }
    fi
    rm -f "$apt_log"
fi
tarball=$(find /usr/src -maxdepth 1 -name "$source_pkg.tar.*" | head -n 1)
[ -n "$tarball" ] || die "$source_pkg is installed but /usr/src/$source_pkg.tar.* is missing (reinstall it: apt-get install --reinstall $source_pkg)"

hash=$(key)
out=$cache_root/$hash
if done_already "$out"; then
    echo "$out/bzImage"
    exit 0
fi

work=$out.build
rm -rf "$work" "$out"
mkdir -p "$work"
log "building $hash in $work (~10 min on 2 cores; log: $work/build.log)"
start=$SECONDS
tar -xf "$tarball" -C "$work" || die "cannot unpack $tarball into $work"
mv "$work/$source_pkg" "$work/linux" || die "$tarball does not hold $source_pkg/"
cd "$work/linux"
for p in "${patches[@]}"; do
    patch -p1 --forward --quiet <"$p" >"$work/patch.log" 2>&1 ||
        { cat "$work/patch.log" >&2; die "$(basename "$p") does not apply to $(basename "$tarball") ($(dpkg-query -W -f='${Version}' "$source_pkg"))"; }
done

# tinyconfig plus kernel.config; every option asked for must end up =y
# (olddefconfig silently drops what has unmet dependencies).
make -s tinyconfig >"$work/build.log" 2>&1 || { tail -20 "$work/build.log" >&2; die "make tinyconfig failed"; }
enable=() disable=()
while read -r a b; do
    case "$a" in
        ''|'#'*) ;;
        -d) disable+=("$b") ;;
        *) enable+=("$a") ;;
    esac
done <"$here/kernel.config"
args=()
for o in "${enable[@]}"; do args+=(-e "$o"); done
for o in "${disable[@]}"; do args+=(-d "$o"); done
scripts/config "${args[@]}"
make -s olddefconfig >>"$work/build.log" 2>&1 || { tail -20 "$work/build.log" >&2; die "make olddefconfig failed"; }
for o in "${enable[@]}"; do
    grep -qx "CONFIG_$o=y" .config || die "CONFIG_$o is not =y after olddefconfig (unmet dependency?); see $work/linux/.config"
done

if ! nice make -j"$jobs" bzImage >>"$work/build.log" 2>&1; then
    grep -E 'error|Error' "$work/build.log" | head -20 >&2
    die "kernel build failed; full log: $work/build.log"
fi
build_s=$(( SECONDS - start ))

# The selftest against the patched uapi headers, static so the VM's
# initramfs needs nothing else for it.
make -s headers_install INSTALL_HDR_PATH="$work/hdr" >>"$work/build.log" 2>&1 ||
    die "make headers_install failed; see $work/build.log"
gcc -static -O2 -Wall -Wextra -Werror -isystem "$work/hdr/include" -I tools/testing/selftests \
    -o "$work/swapstub-selftest" tools/testing/selftests/vm/swapstub.c 2>>"$work/build.log" ||
    { tail -20 "$work/build.log" >&2; die "building the selftest tools/testing/selftests/vm/swapstub.c failed"; }

rm -rf "$out.tmp"
mkdir -p "$out.tmp"
cp arch/x86/boot/bzImage vmlinux .config "$work/swapstub-selftest" "$out.tmp/"
mv "$out.tmp/.config" "$out.tmp/config"
{
    echo "source: $(basename "$tarball") $(dpkg-query -W -f='${Version}' "$source_pkg")"
    echo "patches:"; for p in "${patches[@]}"; do echo "  $(basename "$p")"; done
    echo "built: $(date -u +%FT%TZ), kernel in $build_s s with -j$jobs, $(( SECONDS - start )) s in all"
} >"$out.tmp/BUILD-INFO"
mv -T "$out.tmp" "$out"
cd /
[ "$keep_build" = yes ] || rm -rf "$work"
# Keep the few most recently used kernels.
# shellcheck disable=SC2012  # names are hex keys
ls -1dt "$cache_root"/*/ 2>/dev/null | grep -v '\.build/$' | tail -n +$((keep_kernels + 1)) | xargs -r rm -rf
log "built in $(( SECONDS - start )) s: $out"
echo "$out/bzImage"
