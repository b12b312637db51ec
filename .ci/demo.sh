#!/usr/bin/env bash
# The demo: paddockd socket-activated as systemd would, in a network
# namespace of its own (the host's interfaces are never touched), boots a VM
# from an image built here and drives it through the CLI.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${PADDOCK_KERNEL_DIR:?make demo sets it (the unpacked Debian kernel)}"
work=$(mktemp -d /tmp/paddock-demo.XXXXXX)
ns=paddock-demo-$$
daemon_pid=""
cleanup() {
  if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
    PADDOCK_SOCKET=$sock bin/paddock rm --force web >/dev/null 2>&1 || true
    kill -TERM "$daemon_pid"
    wait "$daemon_pid" 2>/dev/null || true
  fi
  # Any VMM of this demo still alive is ended by its tagged pid.
  for p in $(pgrep -f "paddock-.*$work" || true); do kill -9 "$p" 2>/dev/null || true; done
  ip netns del "$ns" 2>/dev/null || true
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

echo "== a network namespace for the demo's bridge and taps"
ip netns add "$ns"
ip -n "$ns" link set lo up

echo "== an image built here: static busybox, a motd, and an entrypoint"
root=$work/rootfs
mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/proc" "$root/sys" "$root/dev" "$root/run" "$root/www"
cp /bin/busybox "$root/bin/busybox"
for a in sh cat echo ls uname uptime sleep httpd df free ps; do ln -sf busybox "$root/bin/$a"; done
echo "Hello from a paddock VM." >"$root/etc/motd"
echo "<h1>paddock demo</h1>" >"$root/www/index.html"
tar -C "$root" --numeric-owner --owner=0 --group=0 -cf "$work/demo.tar" .
cat >"$work/config.json" <<'JSON'
{"Entrypoint": ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"], "Env": ["PATH=/bin"]}
JSON

echo "== paddockd, socket-activated (systemd-socket-activate stands in for paddock.socket)"
nsenter --net="/run/netns/$ns" -- systemd-socket-activate -l "$sock" bin/paddockd --config "$work/paddock.toml" 2>"$work/paddockd.log" &
daemon_pid=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done

bin/paddock events >"$work/events.log" &
events_pid=$!
step bin/paddock version
step bin/paddock kernel import "$(ls "$PADDOCK_KERNEL_DIR"/*/boot/vmlinuz-*)" --modules "$(ls -d "$PADDOCK_KERNEL_DIR"/*/lib/modules/*)"
step bin/paddock image import "$work/demo.tar" --name demo:1 --config "$work/config.json"
step bin/paddock image ls
step bin/paddock run web --image demo:1 --memory 256MiB
step bin/paddock ls
step bin/paddock exec web -- cat /etc/motd
step bin/paddock exec web -- uname -r
step bin/paddock exec web -- sh -c 'ps; df -h /'
step bin/paddock logs web --tail 600
step bin/paddock stop web
step bin/paddock start web
step bin/paddock exec web -- uptime
step bin/paddock rm --force web
step bin/paddock info
sleep 0.2
kill -INT "$events_pid"; wait "$events_pid" 2>/dev/null || true
printf '\n== what paddock events saw\n'
cat "$work/events.log"
printf '\n== daemon log (last lines)\n'
tail -15 "$work/paddockd.log"
