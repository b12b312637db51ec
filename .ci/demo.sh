#!/usr/bin/env bash
# The demo: paddockd socket-activated as systemd would, driven by the CLI.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d /tmp/paddock-demo.XXXXXX)
daemon_pid=""
cleanup() {
  if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
    kill -TERM "$daemon_pid"
    wait "$daemon_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/paddock.toml" <<TOML
state_dir = "$work/state"
runtime_dir = "$work/run"
cache_dir = "$work/cache"
TOML
sock=$work/run/io.paddock.v1
mkdir -p "$work/run"
export PADDOCK_SOCKET=$sock
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

echo "== image: a small ext4 base recorded in the image store"
go run ./imaging/imagetest/seed "$work/state" demo:1 >/dev/null

echo "== paddockd, socket-activated (systemd-socket-activate stands in for paddock.socket)"
systemd-socket-activate -l "$sock" bin/paddockd --config "$work/paddock.toml" 2>"$work/paddockd.log" &
daemon_pid=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done

bin/paddock events >"$work/events.log" &
events_pid=$!
step bin/paddock version
step bin/paddock create web1 --image demo:1 --cpus 2 --memory 1GiB
step bin/paddock create web2 --image demo:1
step bin/paddock start web1
step bin/paddock ls
step bin/paddock set web2 --auto-stop 30m --disk 4GiB
step bin/paddock inspect web2
step bin/paddock stop web1
step bin/paddock rm web1 web2
step bin/paddock info
sleep 0.2
kill -INT "$events_pid"; wait "$events_pid" 2>/dev/null || true
printf '\n== what paddock events saw\n'
cat "$work/events.log"
printf '\n== daemon log\n'
cat "$work/paddockd.log"
