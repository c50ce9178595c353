#!/usr/bin/env bash
# One idempotent setup for a fresh Debian bookworm machine, used by README,
# .ci/run and `cargo xtask demo|test|bench`: apt packages, the nightly rust-src
# component and bpf-linker built against the LLVM that matches the nightly.
set -euo pipefail

need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "bootstrap: must run as root (installs packages, loads eBPF)" >&2
    exit 1
  fi
}
need_root

export PATH="$HOME/.cargo/bin:$PATH"

llvm_major() {
  rustc +nightly -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p'
}
LLVM=$(llvm_major)
if [ -z "$LLVM" ]; then
  echo "bootstrap: cannot read the LLVM version of the nightly toolchain" >&2
  exit 1
fi

# protobuf-compiler builds the etcd client; etcd-server runs in the agent tests,
# openssl makes their TLS certificates;
# docker.io (dockerd, containerd, runc) and busybox-static (the image's only
# binary) run in the real-dockerd tests; util-linux brings nsenter;
# qemu-system-x86, busybox-static and python3-venv (for virtme-ng, below) run
# scripts/vm.sh, the tests on Debian 12's kernel; lintian checks the Debian
# package, file (the package test checks the binary is static), debootstrap
# (a Debian root without build tools, where the package test installs it).
PKGS="llvm-${LLVM}-dev libpolly-${LLVM}-dev iproute2 iputils-ping iperf3 bpftool \
iptables nftables conntrack tcpdump socat ethtool procps kmod protobuf-compiler etcd-server openssl \
docker.io busybox-static util-linux qemu-system-x86 python3-venv lintian file debootstrap"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "bootstrap: installing$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Packages must not start services (etcd-server would): tests start their own.
  policy=/usr/sbin/policy-rc.d
  own_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && own_policy=1
  fi
  # shellcheck disable=SC2086
  apt-get install -y -qq $missing >/dev/null
  [ -z "$own_policy" ] || rm -f "$policy"
fi

# The tests start their own dockerd and containerd, each in an emulated host:
# docker.io's postinst enables the system's units (the policy above only keeps
# them from starting now), which would start at boot on the host's own
# namespace and iptables. Disabling works without a running systemd; stopping
# needs one.
units="docker.socket docker.service containerd.service"
for unit in $units; do
  if systemctl is-enabled -q "$unit" 2>/dev/null; then
    systemctl disable -q "$unit" 2>/dev/null
  fi
done
if [ -d /run/systemd/system ]; then
  # shellcheck disable=SC2086
  systemctl stop $units
fi

# virtme-ng boots a kernel with this machine's root filesystem (scripts/vm.sh).
VIRTME_NG_VERSION=1.42
VENV=/opt/virtme-ng
if ! "$VENV/bin/vng" --version 2>/dev/null | grep -q "$VIRTME_NG_VERSION"; then
  echo "bootstrap: installing virtme-ng $VIRTME_NG_VERSION into $VENV"
  /usr/bin/python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "virtme-ng==$VIRTME_NG_VERSION"
fi

if ! rustup component list --toolchain nightly --installed | grep -q '^rust-src'; then
  rustup component add rust-src --toolchain nightly
fi
for c in clippy rustfmt; do
  if ! rustup component list --toolchain stable --installed | grep -q "^$c"; then
    rustup component add "$c" --toolchain stable
  fi
done

if ! command -v bpf-linker >/dev/null 2>&1; then
  echo "bootstrap: building bpf-linker against llvm-${LLVM}"
  PATH="/usr/lib/llvm-${LLVM}/bin:$PATH" cargo +stable install --locked bpf-linker \
    --no-default-features --features "llvm-${LLVM}"
fi

# cargo-deb builds the Debian package (`cargo xtask package`).
CARGO_DEB_VERSION=3.8.0
if ! cargo deb --version 2>/dev/null | grep -q "$CARGO_DEB_VERSION"; then
  echo "bootstrap: installing cargo-deb $CARGO_DEB_VERSION"
  cargo +stable install --locked cargo-deb --version "$CARGO_DEB_VERSION"
fi

if ! mountpoint -q /sys/fs/bpf; then
  mount -t bpf bpf /sys/fs/bpf
fi
echo "bootstrap: ok (nightly LLVM ${LLVM}, $(bpf-linker --version))"
