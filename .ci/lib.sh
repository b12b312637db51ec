# shellcheck shell=bash
# Sourced by demo.sh and stress-run.sh: a work directory, a socket-activated
# paddockd in a network namespace of its own (the host's interfaces are never
# touched), the Debian kernel's files and a busybox root file system.

# paddock_env NAME VM [TOML]: a fresh work directory /tmp/NAME.XXXXXX, the
# network namespace's name NAME-<pid>, paddockd's config ($work/paddock.toml:
# its state, runtime and cache under $work, then TOML) and socket
# (PADDOCK_SOCKET). paddock_cleanup, which the caller's EXIT trap (set
# before paddock_env) must run, deletes VM, stops paddockd and removes all
# of it.
paddock_env() {
  daemon_pid="" ns=$1-$$ cleanup_vm=$2
  work=$(mktemp -d "/tmp/$1.XXXXXX")
  sock=$work/run/io.paddock.v1
  mkdir -p "$work/run"
  export PADDOCK_SOCKET=$sock
  {
    printf 'state_dir = "%s"\nruntime_dir = "%s"\ncache_dir = "%s"\n' "$work/state" "$work/run" "$work/cache"
    [ -z "${3:-}" ] || printf '%s\n' "$3"
  } >"$work/paddock.toml"
}

paddock_cleanup() {
  [ -n "${work:-}" ] || return 0 # paddock_env has not made anything yet
  if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
    bin/paddock rm --force "$cleanup_vm" >/dev/null 2>&1 || true
    kill -TERM "$daemon_pid"
    wait "$daemon_pid" 2>/dev/null || true
  fi
  # Any VMM of this run still alive is ended by its tagged pid.
  for p in $(pgrep -f "paddock-.*$work" || true); do kill -9 "$p" 2>/dev/null || true; done
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$work"
}

# make_netns creates the network namespace paddockd will run in.
make_netns() {
  ip netns add "$ns"
  ip -n "$ns" link set lo up
}

# start_paddockd starts paddockd in $ns, socket-activated as systemd would
# (systemd-socket-activate stands in for paddock.socket), its log in
# $work/paddockd.log, and waits for the socket.
start_paddockd() {
  nsenter --net="/run/netns/$ns" -- systemd-socket-activate -l "$sock" bin/paddockd --config "$work/paddock.toml" 2>"$work/paddockd.log" &
  daemon_pid=$!
  for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
}

# kernel_image and kernel_modules: the unpacked Debian kernel's files.
kernel_image() { ls "$PADDOCK_KERNEL_DIR"/*/boot/vmlinuz-*; }
kernel_modules() { ls -d "$PADDOCK_KERNEL_DIR"/*/lib/modules/*; }

# busybox_rootfs DIR APPLET...: a root file system in DIR with static
# busybox and the named applets.
busybox_rootfs() {
  local root=$1 a
  shift
  mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/proc" "$root/sys" "$root/dev" "$root/run"
  cp /bin/busybox "$root/bin/busybox"
  for a in "$@"; do ln -sf busybox "$root/bin/$a"; done
}

# image_tar DIR TAR: DIR as an image tarball, every file owned by root.
image_tar() { tar -C "$1" --numeric-owner --owner=0 --group=0 -cf "$2" .; }
