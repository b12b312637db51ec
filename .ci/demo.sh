#!/usr/bin/env bash
# The demo: paddockd socket-activated as systemd would, in a network
# namespace of its own (the host's interfaces are never touched), boots a VM
# from an image built here and drives it through the CLI.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${PADDOCK_KERNEL_DIR:?make demo sets it (the unpacked Debian kernel)}"
# shellcheck source=.ci/lib.sh
. .ci/lib.sh
trap paddock_cleanup EXIT
paddock_env paddock-demo web
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

echo "== a network namespace for the demo's bridge and taps"
make_netns

echo "== an image built here: static busybox, a motd, and an entrypoint"
root=$work/rootfs
busybox_rootfs "$root" sh cat echo ls uname uptime sleep httpd df free ps
mkdir -p "$root/www"
echo "Hello from a paddock VM." >"$root/etc/motd"
echo "<h1>paddock demo</h1>" >"$root/www/index.html"
image_tar "$root" "$work/demo.tar"
cat >"$work/config.json" <<'JSON'
{"Entrypoint": ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"], "Env": ["PATH=/bin"]}
JSON

echo "== paddockd, socket-activated (systemd-socket-activate stands in for paddock.socket)"
start_paddockd

bin/paddock events >"$work/events.log" &
events_pid=$!
step bin/paddock version
step bin/paddock kernel import "$(kernel_image)" --modules "$(kernel_modules)"
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
