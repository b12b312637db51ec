#!/usr/bin/env bash
# fetch-kernel.sh DIR — fetch Debian's amd64 kernel package into a cache directory.
#
# Resolves the real kernel package behind the linux-image-amd64 metapackage
# (e.g. linux-image-6.1.0-56-amd64), downloads it with `apt-get download` and
# unpacks it with `dpkg -x` into DIR/<package>/. Idempotent: when DIR already
# holds an unpacked kernel it does nothing and prints nothing but the result.
#
# Prints two lines on stdout:
#   <path of vmlinuz>
#   <path of the modules directory (lib/modules/<release>)>
#
# Example:
#   mapfile -t k < <(.ci/fetch-kernel.sh "$HOME/.cache/paddock-test/kernel")
#   PADDOCK_KERNEL_DIR=$HOME/.cache/paddock-test/kernel go test ./bootkit/...
set -euo pipefail

die() { echo "fetch-kernel: $*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: $0 DIR"
dir=$1
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

# print_result ROOT: print vmlinuz and modules dir of an unpacked package, or fail.
print_result() {
	local root=$1 vmlinuz moddir
	vmlinuz=$(find "$root/boot" -maxdepth 1 -name 'vmlinuz-*' -type f 2>/dev/null | sort | head -n1)
	moddir=$(find "$root/lib/modules" -mindepth 1 -maxdepth 1 -type d 2>/dev/null | sort | head -n1)
	[ -n "$vmlinuz" ] && [ -n "$moddir" ] || return 1
	printf '%s\n%s\n' "$vmlinuz" "$moddir"
}

# Cached: any completed unpack (marked by .complete) is reused without touching apt.
for done_marker in "$dir"/*/.complete; do
	[ -e "$done_marker" ] || continue
	if print_result "$(dirname "$done_marker")"; then
		exit 0
	fi
done

resolve_pkg() {
	apt-cache depends linux-image-amd64 2>/dev/null |
		awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}

pkg=$(resolve_pkg || true)
if [ -z "$pkg" ]; then
	apt-get update -qq >&2 || die "apt-get update failed"
	pkg=$(resolve_pkg || true)
fi
[ -n "$pkg" ] || die "cannot resolve the kernel package behind linux-image-amd64"

tmp=$(mktemp -d "$dir/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

(cd "$tmp" && apt-get download -qq "$pkg" >/dev/null 2>&1) ||
	(cd "$tmp" && apt-get download "$pkg" >&2) ||
	die "apt-get download $pkg failed"
deb=$(find "$tmp" -maxdepth 1 -name '*.deb' | head -n1)
[ -n "$deb" ] || die "no .deb downloaded for $pkg"

mkdir "$tmp/root"
dpkg -x "$deb" "$tmp/root" || die "dpkg -x $deb failed"
touch "$tmp/root/.complete"

rm -rf "${dir:?}/$pkg"
mv "$tmp/root" "$dir/$pkg"
print_result "$dir/$pkg" || die "package $pkg has no boot/vmlinuz-* or lib/modules/*"
