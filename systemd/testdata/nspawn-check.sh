#!/bin/bash
# Boots a Debian rootfs with systemd as PID 1 in systemd-nspawn, installs
# paddock.socket, paddock.service, the sysusers.d file and unitprobe (as
# /usr/bin/paddockd), starts the socket, activates the service by
# connecting, prints the probe's report, restarts the service (fd store),
# then repeats with one drop-in per setting the unit leaves out, to show
# what each would break. Manual check; needs root and about 30 s.
#
#   debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus \
#       bookworm ROOT "$(grep -h ^URIs: /etc/apt/sources.list.d/*.sources | awk "{print \$2; exit}")"
#   CGO_ENABLED=0 go build -o /tmp/unitprobe ./systemd/testdata/unitprobe
#   systemd/testdata/nspawn-check.sh ROOT /tmp/unitprobe
set -euo pipefail

root=$(realpath "$1")
probe=$(realpath "$2")
here=$(dirname "$(realpath "$0")")
repo=$(realpath "$here/../..")
name=pdkcheck
cg=pdkcheck-$$

install -m 0755 "$probe" "$root/usr/bin/paddockd"
install -m 0644 "$repo/systemd/paddock.socket" "$repo/systemd/paddock.service" "$root/etc/systemd/system/"
install -D -m 0644 "$repo/packaging/sysusers.d/paddock.conf" "$root/usr/lib/sysusers.d/paddock.conf"
rm -rf "$root/etc/systemd/system/paddock.service.d" "$root/var/lib/paddock"
mkdir -p "$root/usr/lib/modules/pdk-test"

# nspawn --keep-unit creates payload/ and supervisor/ below our cgroup.
for h in systemd unified; do
	if [ -d "/sys/fs/cgroup/$h" ]; then
		mkdir -p "/sys/fs/cgroup/$h/$cg"
		echo $$ >"/sys/fs/cgroup/$h/$cg/cgroup.procs"
	fi
done

# shellcheck disable=SC2016 # $0 expands in the inner shell
unshare -m --propagation private bash -c 'mount -t tmpfs tmpfs /run/systemd &&
	exec systemd-nspawn -D "$0" -b --register=no --keep-unit --console=pipe \
		--private-network -M '"$name"' >/dev/null 2>&1' "$root" &
# unshare and bash exec in place: this PID becomes systemd-nspawn.
nspawn=$!

cleanup() {
	kill -TERM "$nspawn" 2>/dev/null || true
	for _ in $(seq 50); do kill -0 "$nspawn" 2>/dev/null || break; sleep 0.1; done
	kill -KILL "$nspawn" 2>/dev/null || true
	wait "$nspawn" 2>/dev/null || true
	# Leave the cgroup before removing it.
	for h in systemd unified; do
		if [ -d "/sys/fs/cgroup/$h/$cg" ]; then
			echo $$ >"/sys/fs/cgroup/$h/cgroup.procs"
			find "/sys/fs/cgroup/$h/$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true
		fi
	done
}
trap cleanup EXIT

# The container's init: the child of systemd-nspawn named "systemd".
c=""
for _ in $(seq 100); do
	for p in $(pgrep -P "$nspawn"); do
		if [ "$(cat "/proc/$p/comm" 2>/dev/null)" = systemd ]; then c=$p; fi
	done
	[ -n "$c" ] && break
	sleep 0.1
done
[ -n "$c" ] || { echo "container did not boot" >&2; exit 1; }
ns() { nsenter -t "$c" -m -u -i -n -p -- "$@"; }
ns systemctl is-system-running --wait || true

# /dev/kvm as on a Debian host with udev: root:kvm 0660, private to the
# container's /dev. A world-accessible fuse node tests the device cgroup.
ns sh -c 'rm -f /dev/kvm /dev/net/tun && mknod -m 0660 /dev/kvm c 10 232 && chgrp kvm /dev/kvm &&
	mknod -m 0666 /dev/net/tun c 10 200 && mknod -m 0666 /dev/pdk-fuse c 10 229 &&
	ls -l /dev/kvm /dev/net/tun /dev/pdk-fuse'

sock="/proc/$c/root/run/paddock/io.paddock.v1"
fetch() { socat -t5 - "UNIX-CONNECT:$sock" </dev/null; }

run() {
	echo "=== $1"
	ns systemctl daemon-reload
	ns systemctl stop paddock.service paddock.socket 2>/dev/null || true
	ns systemctl start paddock.socket
	ns ls -ld /run/paddock "/run/paddock/io.paddock.v1"
	if ! fetch; then
		echo "(no report)"
		ns systemctl status --no-pager paddock.service | tail -n 15 || true
		ns journalctl -b -u paddock.service --no-pager -n 15 -o cat || true
		return
	fi
	ns systemctl show paddock.service -p ActiveState,SubState,StatusText,NFileDescriptorStore,WatchdogUSec,NRestarts
	ns ls -ld /run/paddock "/run/paddock/io.paddock.v1"
}

run "paddock.service as shipped"
echo "--- restart (fd store survives, VMM cgroup survives)"
ns systemctl restart paddock.service
fetch | grep -E 'restarts|FAIL|VMM' || true
ns systemctl show paddock.service -p ActiveState,StatusText,NFileDescriptorStore
echo "--- journal"
ns journalctl -b --no-pager -o json VM_NAME=probe | tail -n 1 | tr ',' '\n' |
	grep -E '"(MESSAGE|PRIORITY|SYSLOG_IDENTIFIER|VM_NAME|OP|CODE_FUNC|_SYSTEMD_UNIT|_TRANSPORT)"' || true

mkdir -p "$root/etc/systemd/system/paddock.service.d"
# VARIANTS="A=x B=y" overrides the list; FULL=1 prints whole reports.
read -ra variants <<<"${VARIANTS:-ProtectControlGroups=yes MemoryDenyWriteExecute=yes PrivateDevices=yes ProtectKernelModules=yes}"
for setting in "${variants[@]}"; do
	printf '[Service]\n%s\n' "$setting" >"$root/etc/systemd/system/paddock.service.d/check.conf"
	if [ -n "${FULL:-}" ]; then
		run "with $setting"
	else
		run "with $setting" | grep -E '^(===|FAIL|ok   qemu|info read /usr)|Active|Main process' || true
	fi
done
rm -rf "$root/etc/systemd/system/paddock.service.d" "$root/usr/lib/modules/pdk-test"
