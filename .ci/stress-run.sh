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
# shellcheck source=.ci/lib.sh
. .ci/lib.sh
hogs=()
stop_hogs() { for h in "${hogs[@]}"; do kill "$h" 2>/dev/null || true; done; }
trap 'stop_hogs; paddock_cleanup' EXIT
paddock_env paddock-stress s '[vm]
start_timeout = "120s"
stop_timeout = "10s"'
make_netns

root=$work/rootfs
busybox_rootfs "$root" sh cat sleep
image_tar "$root" "$work/img.tar"
echo '{"Cmd": ["/bin/sleep", "100000"], "Env": ["PATH=/bin"]}' >"$work/config.json"

start_paddockd
bin/paddock kernel import "$(kernel_image)" --modules "$(kernel_modules)" >/dev/null
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
