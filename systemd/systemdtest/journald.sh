#!/bin/sh
# Starts a standalone systemd-journald for tests. The Go caller runs this
# script as the first process of a new private mount namespace, so every
# mount below vanishes with it. Arguments: JOURNAL_DIR LOG_FILE JOURNALD.
# Prints "ready <journald pid>" once journald's sockets exist, then stops
# journald when its stdin reaches EOF (the caller closed it or died).
set -eu

dir=$1
log=$2
journald=$3

# Hide the host's /run/systemd: journald creates its sockets in
# /run/systemd/journal, where go-systemd and systemd-cat look for them.
mkdir -p /run/systemd /run/log
mount -t tmpfs -o mode=0755 tmpfs /run/systemd
mkdir -p /run/systemd/journal /run/systemd/journald.conf.d
cat >/run/systemd/journald.conf.d/50-paddock-test.conf <<'CONF'
[Journal]
Storage=volatile
ReadKMsg=no
ForwardToSyslog=no
ForwardToKMsg=no
ForwardToConsole=no
ForwardToWall=no
RateLimitBurst=0
CONF
# Volatile journal files land in /run/log/journal; make them host-visible.
mount --bind "$dir" /run/log

"$journald" </dev/null >>"$log" 2>&1 &
jpid=$!

i=0
while [ ! -S /run/systemd/journal/socket ] || [ ! -S /run/systemd/journal/stdout ]; do
	if ! kill -0 "$jpid" 2>/dev/null; then
		echo "systemd-journald exited early" >&2
		exit 1
	fi
	i=$((i + 1))
	if [ "$i" -gt 500 ]; then
		echo "systemd-journald created no sockets within 5s" >&2
		kill -KILL "$jpid" 2>/dev/null || true
		exit 1
	fi
	sleep 0.01
done
echo "ready $jpid"

read -r _ || true
kill -TERM "$jpid" 2>/dev/null || true
wait "$jpid" || true
