#!/bin/sh
# Install the Debian packages swapcopy builds and tests with, if any is missing.
# Idempotent: does nothing (and needs no root) when everything is present.
set -eu

packages="build-essential pkg-config libglib2.0-dev libnbd-dev libnbd-bin nbdkit
nbd-client zlib1g-dev libgnutls28-dev libfuse3-dev gnutls-bin bats e2fsprogs fuse3 util-linux kmod procps psmisc
qemu-system-x86 qemu-utils clang-14 libclang-rt-14-dev python3 python3-libnbd
busybox-static cpio
dpkg-dev ninja-build meson python3-venv libpixman-1-dev libslirp-dev libfdt-dev
flex bison xz-utils
linux-source-6.1 bc libelf-dev libssl-dev rsync
iptables iproute2 git"

missing=""
for p in $packages; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    case "$status" in
        *"install ok installed"*) ;;
        *) missing="$missing $p" ;;
    esac
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing Debian packages:$missing" >&2
    echo "install-deps: run 'make deps' as root, or: apt-get install$missing" >&2
    exit 1
fi
echo "install-deps: installing:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing
