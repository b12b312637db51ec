#!/usr/bin/env bash
# Builds (once) a Debian bookworm minbase rootfs tar for the image benchmark,
# from the mirror this machine's apt already uses. Usage: minbase.sh OUT.tar
set -euo pipefail
out=$1
[ -s "$out" ] && exit 0
command -v debootstrap >/dev/null || { apt-get install -y -qq debootstrap >/dev/null; }
mirror=$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2; exit}')
if [ -z "$mirror" ]; then
  mirror=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
[ -n "$mirror" ] || { echo "minbase: no apt mirror configured" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$(dirname "$out")"
debootstrap --variant=minbase bookworm "$tmp/root" "$mirror" >"$tmp/log" 2>&1 || { tail -20 "$tmp/log" >&2; exit 1; }
rm -rf "$tmp/root/var/cache/apt/archives/"*.deb "$tmp/root/var/lib/apt/lists/"*
tar -C "$tmp/root" --numeric-owner -cf "$out.partial" .
mv "$out.partial" "$out"
