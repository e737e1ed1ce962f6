#!/usr/bin/env bash
# Builds the Linux SoftRoCE peer that duovm's interoperability tests run against: Debian's own
# kernel (with the rdma_rxe module) and an initramfs holding rdma-core's tools, perftest and
# iproute2's `rdma`, all from Debian's package archive. Nothing is installed into the host
# except the host tools QEMU needs; the packages are unpacked with `dpkg-deb -x`.
#
# Usage: build.sh [--cache DIR] [--force]
#   --cache DIR   output folder (default $DUOVM_PEER_CACHE or /var/cache/duovm/rxe-peer)
#   --force       rebuild even when the cache is up to date
# Output: DIR/vmlinuz, DIR/initramfs.gz, DIR/packages.txt (name, version of every package) and
# DIR/stamp. The cache is reused while this script, the guest's init and the package versions
# are unchanged, so a test run builds the peer once.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${DUOVM_PEER_CACHE:-/var/cache/duovm/rxe-peer}
FORCE=0
while [ $# -gt 0 ]; do
    case "$1" in
    --cache) CACHE=$2; shift ;;
    --force) FORCE=1 ;;
    -h | --help) sed -n '2,/^set -euo/{/^#/{s/^# \{0,1\}//;p}}' "$0"; exit 0 ;;
    *) echo "build.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

say() { printf 'peer-build: %s\n' "$*" >&2; }
die() { printf 'peer-build: error: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (apt-get, depmod -b, device nodes)"

# The packages of the peer's user space: the RDMA tools and every library they load, libc
# included, so the initramfs never depends on what the host has installed.
USER_PACKAGES=(
    busybox-static libc6 libgcc-s1
    rdma-core ibverbs-providers libibverbs1 ibverbs-utils perftest
    librdmacm1 libibumad3 libnl-3-200 libnl-route-3-200 libpci3 libudev1 zlib1g
    iproute2 libmnl0 libbsd0 libcap2 libmd0 libbpf1 libelf1 libxtables12
)

export DEBIAN_FRONTEND=noninteractive
apt_updated=0
apt_update() {
    if [ $apt_updated = 0 ]; then
        say "apt-get update"
        apt-get update -qq
        apt_updated=1
    fi
}

host_tools=()
command -v qemu-system-x86_64 >/dev/null || host_tools+=(qemu-system-x86)
command -v depmod >/dev/null || host_tools+=(kmod)
command -v cpio >/dev/null || host_tools+=(cpio)
if [ ${#host_tools[@]} -gt 0 ]; then
    apt_update
    say "installing host tools: ${host_tools[*]}"
    apt-get install -y -qq --no-install-recommends "${host_tools[@]}" >/dev/null
fi

# The kernel package Debian's linux-image-amd64 points at.
kernel_package() {
    apt-cache depends linux-image-amd64 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/ { print $2; exit }'
}
KERNEL=$(kernel_package)
if [ -z "$KERNEL" ]; then
    apt_update
    KERNEL=$(kernel_package)
fi
[ -n "$KERNEL" ] || die "Debian's package lists have no linux-image-amd64"

# The cache is current when the recipe and every package version are unchanged.
versions=$(apt-cache policy "$KERNEL" "${USER_PACKAGES[@]}" 2>/dev/null |
    awk '/^[^ ]/ { name = $1 } /Candidate:/ { print name, $2 }')
stamp=$( {
    cat "$0" "$HERE/init"
    echo "$versions"
} | sha256sum | cut -c1-32)
if [ $FORCE = 0 ] && [ -f "$CACHE/stamp" ] && [ "$(cat "$CACHE/stamp")" = "$stamp" ] &&
    [ -s "$CACHE/vmlinuz" ] && [ -s "$CACHE/initramfs.gz" ]; then
    say "up to date: $CACHE"
    exit 0
fi

started=$(date +%s)
mkdir -p "$CACHE"
WORK=$(mktemp -d "$CACHE/build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
DEBS=$WORK/debs X=$WORK/x ROOT=$WORK/root
mkdir -p "$DEBS" "$X" "$ROOT"

say "downloading $KERNEL and ${#USER_PACKAGES[@]} packages"
download() { (cd "$DEBS" && apt-get -q -o APT::Sandbox::User=root download "$KERNEL" "${USER_PACKAGES[@]}" >/dev/null); }
if ! download; then
    apt_update
    download || die "apt-get download failed"
fi
: >"$WORK/packages.txt"
for deb in "$DEBS"/*.deb; do
    dpkg-deb -x "$deb" "$X"
    printf '%s %s\n' "$(dpkg-deb -f "$deb" Package)" "$(dpkg-deb -f "$deb" Version)" >>"$WORK/packages.txt"
done
KVER=$(ls "$X/lib/modules")
[ -f "$X/boot/vmlinuz-$KVER" ] || die "no kernel image in $KERNEL"

# Merged-/usr skeleton.
mkdir -p "$ROOT"/usr/{bin,sbin,lib/x86_64-linux-gnu,lib64} "$ROOT"/{etc,proc,sys,dev,tmp,run,root}
for dir in bin sbin lib lib64; do ln -s "usr/$dir" "$ROOT/$dir"; done
chmod 1777 "$ROOT/tmp"

# BusyBox and its applets.
install -m 755 "$X/bin/busybox" "$ROOT/usr/bin/busybox"
for applet in $("$X/bin/busybox" --list); do
    [ -e "$ROOT/usr/bin/$applet" ] || ln -s busybox "$ROOT/usr/bin/$applet"
done

# Kernel modules: rdma_rxe, virtio-net, fw_cfg (the command comes that way), netem and what
# it takes to apply it to received frames too (ifb, ingress, mirred, matchall) and to some of
# the sent ones (prio, u32), and their dependencies, in load order.
say "kernel $KVER: resolving modules"
depmod -b "$X" "$KVER"
: >"$ROOT/modules.order"
for module in virtio_pci virtio_net qemu_fw_cfg crc32_generic rdma_rxe ib_uverbs \
    sch_netem ifb sch_ingress act_mirred cls_matchall sch_prio cls_u32; do
    modprobe -d "$X" -S "$KVER" --show-depends "$module" |
        awk '$1 == "insmod" { print $2 }' | while read -r path; do
        relative=${path#"$X/lib/modules/$KVER/"}
        grep -qxF "$relative" "$ROOT/modules.order" || echo "$relative" >>"$ROOT/modules.order"
    done
done
[ -s "$ROOT/modules.order" ] || die "no modules resolved"
while read -r relative; do
    mkdir -p "$ROOT/usr/lib/modules/$KVER/$(dirname "$relative")"
    cp "$X/lib/modules/$KVER/$relative" "$ROOT/usr/lib/modules/$KVER/$relative"
done <"$ROOT/modules.order"
sed -i "s|^|/lib/modules/$KVER/|" "$ROOT/modules.order"

# The tools and the shared libraries they load (resolved with the packages' own ld.so).
LOADER=$X/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
LIBRARY_PATH=$X/lib/x86_64-linux-gnu:$X/usr/lib/x86_64-linux-gnu
copy() {
    mkdir -p "$ROOT/$(dirname "$1")"
    [ -e "$ROOT/$1" ] || cp -L "$X/$1" "$ROOT/$1"
}
copy_with_libraries() {
    copy "$1"
    local listing library
    listing=$("$LOADER" --inhibit-cache --library-path "$LIBRARY_PATH" --list "$X/$1" 2>&1) ||
        die "cannot resolve the libraries of $1: $listing"
    if grep -q 'not found' <<<"$listing"; then
        die "$1 needs a library no listed package has: $(grep 'not found' <<<"$listing")"
    fi
    for library in $(awk '$2 == "=>" && $3 ~ /^\// { print $3 }' <<<"$listing"); do
        case "$library" in
        "$X"/*) copy "${library#"$X/"}" ;;
        *) die "$1 needs $library, outside the downloaded packages" ;;
        esac
    done
}
tools=(usr/bin/ibv_devinfo usr/bin/ibv_devices usr/bin/ibv_rc_pingpong usr/bin/rdma sbin/tc)
for tool in "$X"/usr/bin/ib_*_{bw,lat}; do tools+=("${tool#"$X/"}"); done
for tool in "${tools[@]}"; do copy_with_libraries "$tool"; done
provider=$(cd "$X" && ls usr/lib/x86_64-linux-gnu/libibverbs/librxe-rdmav*.so)
copy_with_libraries "$provider"
mkdir -p "$ROOT/etc/libibverbs.d"
cp "$X/etc/libibverbs.d/rxe.driver" "$ROOT/etc/libibverbs.d/"
copy lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
ln -s ../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$ROOT/usr/lib64/ld-linux-x86-64.so.2"

echo 'root:x:0:0:root:/root:/bin/sh' >"$ROOT/etc/passwd"
echo 'root:x:0:' >"$ROOT/etc/group"
printf '127.0.0.1 localhost\n' >"$ROOT/etc/hosts"
install -m 755 "$HERE/init" "$ROOT/init"
cp "$WORK/packages.txt" "$ROOT/etc/peer-packages.txt"

say "packing the initramfs"
find "$ROOT" -exec touch -h -d @1700000000 {} +
(cd "$ROOT" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
    cpio --null --create --format=newc --owner=0:0 --reproducible --quiet) |
    gzip -9n >"$WORK/initramfs.gz"
mv "$WORK/initramfs.gz" "$CACHE/initramfs.gz"
cp "$X/boot/vmlinuz-$KVER" "$CACHE/vmlinuz"
{
    echo "kernel $KERNEL ($KVER)"
    cat "$WORK/packages.txt"
} >"$CACHE/packages.txt"
echo "$stamp" >"$CACHE/stamp"
say "built in $(($(date +%s) - started)) s: $CACHE/vmlinuz, $CACHE/initramfs.gz ($(du -h "$CACHE/initramfs.gz" | cut -f1))"
