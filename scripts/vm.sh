#!/usr/bin/env bash
# The VM harness: runs a command as root in a QEMU guest booting Debian 12's
# stock kernel (linux-image-6.1.0-*-amd64-unsigned: the cloud flavour lacks
# 9p), with this machine's root filesystem shared read-only (virtme-ng).
#
#   scripts/vm.sh COMMAND [ARG...]      exit status: the command's in the guest
#
# The newest such package in the apt lists is downloaded and extracted once
# into target/vm/ (never installed into /boot); its modules load from there.
# QEMU runs in software emulation (TCG): this machine's /dev/kvm cannot run
# guests. scripts/bootstrap.sh installs qemu, busybox and virtme-ng.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
cache=$root/target/vm
vng=/opt/virtme-ng/bin/vng

if [ "$#" = 0 ]; then
  echo "usage: scripts/vm.sh COMMAND [ARG...]" >&2
  exit 2
fi
[ -x "$vng" ] || { echo "vm: $vng missing: run scripts/bootstrap.sh" >&2; exit 1; }

newest_kernel_package() {
  apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$' |
    cut -d' ' -f1 | sort -V | tail -n1
}
pkg=$(newest_kernel_package)
if [ -z "$pkg" ]; then
  apt-get update -qq
  pkg=$(newest_kernel_package)
fi
[ -n "$pkg" ] || { echo "vm: no linux-image-6.1.0-*-amd64-unsigned in the apt lists" >&2; exit 1; }
kver=${pkg#linux-image-}
kver=${kver%-unsigned}
kdir=$cache/$kver
if [ ! -e "$kdir/boot/vmlinuz-$kver" ]; then
  echo "vm: fetching $pkg into $kdir"
  mkdir -p "$cache"
  rm -rf "$kdir" "$kdir.part" "$cache"/"${pkg}"_*.deb
  (cd "$cache" && apt-get download -q "$pkg" 2>&1 | grep -v "unsandboxed" || true)
  dpkg -x "$cache"/"${pkg}"_*.deb "$kdir.part"
  depmod -b "$kdir.part" "$kver"
  rm -f "$cache"/"${pkg}"_*.deb
  mv "$kdir.part" "$kdir"
fi

# The guest writes the command's exit status here: virtme-ng cannot hand it
# back without udev's virtio-ports links, which the guest lacks.
run=$(mktemp -d "$cache/run.XXXXXX")
trap 'rm -rf "$run"' EXIT
command=$(printf '%q ' "$@")
# Kernel messages off the console (the tests' veths and bridges are chatty);
# bpffs where and as systemd mounts it; modules load on demand from $kdir.
guest="dmesg -n 1; mount -t bpf -o nosuid,nodev,noexec,mode=700 bpf /sys/fs/bpf && cd $(printf '%q' "$root") && $command; echo \$? > $run/status"
echo "vm: booting $kver (TCG) to run: $*"
start=$SECONDS
PATH="$(dirname "$vng"):$PATH" "$vng" --run "$kdir/boot/vmlinuz-$kver" --disable-kvm --cpus 2 --memory 4G \
  --rwdir "$run" --verbose --exec "$guest" </dev/null 2>&1 | grep -a --line-buffered -v '^\[ *[0-9.]*\] ' || true
status=$(cat "$run/status" 2>/dev/null || echo none)
echo "vm: guest on $kver finished after $((SECONDS - start)) s with status $status"
[ "$status" = 0 ]
