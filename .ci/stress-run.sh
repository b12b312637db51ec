#!/usr/bin/env bash
# stress-run.sh [N] — N back-to-back `paddock run` / `rm --force` cycles
# (default 50) while a CPU hog keeps both cores busy, against a
# socket-activated paddockd in a network namespace of its own. Every CLI
# call has a deadline (vm.start_timeout + 60 s); a call that outlives it is
# a hang. Prints "cycles: N ok, H hangs, F failures" and exits non-zero on
# any hang or failure.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${PADDOCK_KERNEL_DIR:?make stress sets it (the unpacked Debian kernel)}"
n=${1:-50}
work=$(mktemp -d /tmp/paddock-stress.XXXXXX)
ns=paddock-stress-$$
daemon_pid="" hogs=()
cleanup() {
  for h in "${hogs[@]}"; do kill "$h" 2>/dev/null || true; done
  if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
    PADDOCK_SOCKET=$sock bin/paddock rm --force s >/dev/null 2>&1 || true
    kill -TERM "$daemon_pid"
    wait "$daemon_pid" 2>/dev/null || true
  fi
  for p in $(pgrep -f "paddock-.*$work" || true); do kill -9 "$p" 2>/dev/null || true; done
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/paddock.toml" <<TOML
state_dir = "$work/state"
runtime_dir = "$work/run"
cache_dir = "$work/cache"
[vm]
start_timeout = "120s"
stop_timeout = "10s"
TOML
sock=$work/run/io.paddock.v1
mkdir -p "$work/run"
export PADDOCK_SOCKET=$sock
ip netns add "$ns"
ip -n "$ns" link set lo up

root=$work/rootfs
mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/proc" "$root/sys" "$root/dev" "$root/run"
cp /bin/busybox "$root/bin/busybox"
for a in sh cat sleep; do ln -sf busybox "$root/bin/$a"; done
tar -C "$root" --numeric-owner --owner=0 --group=0 -cf "$work/img.tar" .
echo '{"Cmd": ["/bin/sleep", "100000"], "Env": ["PATH=/bin"]}' >"$work/config.json"

nsenter --net="/run/netns/$ns" -- systemd-socket-activate -l "$sock" bin/paddockd --config "$work/paddock.toml" 2>"$work/paddockd.log" &
daemon_pid=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
bin/paddock kernel import "$(ls "$PADDOCK_KERNEL_DIR"/*/boot/vmlinuz-*)" --modules "$(ls -d "$PADDOCK_KERNEL_DIR"/*/lib/modules/*)" >/dev/null
bin/paddock image import "$work/img.tar" --name stress:1 --config "$work/config.json" >/dev/null

# The CPU hog: one busy loop per core, for the whole run.
for _ in $(seq "$(nproc)"); do (while :; do :; done) & hogs+=($!); done

ok=0 hangs=0 fails=0
deadline=180
for i in $(seq "$n"); do
  rc=0
  timeout "$deadline" bin/paddock run s --image stress:1 --memory 256MiB >/dev/null 2>"$work/err" || rc=$?
  if [ "$rc" = 124 ]; then hangs=$((hangs + 1)); echo "cycle $i: run hung past ${deadline}s"
  elif [ "$rc" != 0 ]; then fails=$((fails + 1)); echo "cycle $i: run failed: $(tail -1 "$work/err")"
  fi
  rc=0
  timeout "$deadline" bin/paddock rm --force s >/dev/null 2>"$work/err" || rc=$?
  if [ "$rc" = 124 ]; then hangs=$((hangs + 1)); echo "cycle $i: rm hung past ${deadline}s"
  elif [ "$rc" != 0 ]; then fails=$((fails + 1)); echo "cycle $i: rm failed: $(tail -1 "$work/err")"
  else ok=$((ok + 1))
  fi
done
echo "cycles: $n, $ok ok, $hangs hangs, $fails failures"
[ "$hangs" = 0 ] && [ "$fails" = 0 ]
