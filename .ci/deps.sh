#!/usr/bin/env bash
# Installs what paddock's build, tests and demo need on Debian 12.
# Idempotent and quiet when everything is already there.
set -euo pipefail

packages=(
  socat shellcheck          # independent varlink client in tests; lint-shell
  systemd systemd-container # systemd-socket-activate, systemd-analyze, journald, nspawn
  dbus                      # private dbus-daemon for D-Bus tests
  e2fsprogs                 # mkfs.ext4, debugfs, e2fsck for image bases
  qemu-system-x86 qemu-utils # the VMM; qemu-img for qcow2 disks
  xfsprogs                  # a reflink-capable file system for the disk tests
  busybox-static cpio xz-utils zstd  # guest test trees, initramfs inspection
  util-linux iproute2       # setpriv, unshare, nsenter; ip netns
  nftables                  # nft list in the packet filter tests (paddockd itself uses netlink)
  passt                     # user-mode networking for VMs (vm.network = "user")
  lintian                   # make deb-check
  debootstrap               # the installed-service test's container rootfs
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
if ((${#missing[@]} > 0)); then
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# staticcheck, pinned, into GOBIN.
STATICCHECK_VERSION=${STATICCHECK_VERSION:-v0.7.0}
gobin=$(go env GOPATH)/bin
if ! "$gobin/staticcheck" -version 2>/dev/null | grep -q "${STATICCHECK_VERSION#v}"; then
  echo "deps: installing staticcheck ${STATICCHECK_VERSION}"
  go install "honnef.co/go/tools/cmd/staticcheck@${STATICCHECK_VERSION}"
fi
