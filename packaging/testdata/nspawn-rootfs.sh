#!/usr/bin/env bash
# Builds (once) the Debian 12 rootfs TestInstalledService boots under
# systemd-nspawn, as a tar: debootstrap --variant=minbase with INCLUDE (comma
# separated: systemd and what the .deb Depends on, so dpkg -i works offline),
# then EXTRA (space separated, may be empty) through apt-get inside, with
# their services disabled. The mirror is the one this machine's apt uses.
# Usage: nspawn-rootfs.sh OUT.tar INCLUDE [EXTRA]
set -euo pipefail
out=$1 include=$2 extra=${3:-}
[ -s "$out" ] && exit 0
mirror=$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2; exit}')
if [ -z "$mirror" ]; then
	mirror=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
[ -n "$mirror" ] || { echo "nspawn-rootfs: no apt mirror configured in /etc/apt/sources.list*" >&2; exit 1; }
tmp=$(mktemp -d)
root=$tmp/root
cleanup() {
	umount "$root/proc" 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT
mkdir -p "$(dirname "$out")"
debootstrap --variant=minbase --include="$include" bookworm "$root" "$mirror" >"$tmp/log" 2>&1 ||
	{ tail -20 "$tmp/log" >&2; exit 1; }
if [ -n "$extra" ]; then
	# Nothing starts in the chroot (policy-rc.d), and nothing of EXTRA's
	# starts at the container's boot: they are there to be measured.
	printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
	chmod 0755 "$root/usr/sbin/policy-rc.d"
	mount -t proc proc "$root/proc"
	# shellcheck disable=SC2086 # EXTRA is a list of package names
	DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y -q --no-install-recommends $extra >>"$tmp/log" 2>&1 ||
		{ tail -20 "$tmp/log" >&2; exit 1; }
	umount "$root/proc"
	rm -f "$root/usr/sbin/policy-rc.d"
	# shellcheck disable=SC2086
	units=$(dpkg-query --admindir="$root/var/lib/dpkg" -L $extra 2>/dev/null |
		grep -E '^/lib/systemd/system/[^/]+\.(service|socket|timer)$' | xargs -r -n1 basename || true)
	if [ -n "$units" ]; then
		# shellcheck disable=SC2086
		systemctl --root="$root" disable $units >>"$tmp/log" 2>&1 || true
	fi
fi
rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*
tar -C "$root" --numeric-owner -cf "$out.partial" .
mv "$out.partial" "$out"
