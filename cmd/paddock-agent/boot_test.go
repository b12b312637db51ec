package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// The root's mount waits for the block and file system chains only: it
// goes on while the console's module (the agent's channel) still loads.
func TestRootModulesDoNotWaitForConsole(t *testing.T) {
	var mods []*kmod
	for _, p := range []string{"virtio_ring", "virtio virtio_ring", "virtio_mmio virtio virtio_ring",
		"virtio_blk virtio virtio_ring", "virtio_console virtio virtio_ring", "crc16", "ext4 crc16",
		"failover", "net_failover failover", "virtio_net virtio virtio_ring net_failover"} {
		f := strings.Fields(p)
		mods = append(mods, &kmod{name: f[0], deps: f[1:], done: make(chan struct{})})
	}
	afterTransports(mods)
	release := make(chan struct{})
	saved := loadKmod
	t.Cleanup(func() { loadKmod = saved })
	loadKmod = func(m *kmod) error {
		if m.name == "virtio_console" || m.name == "virtio_net" {
			<-release
		}
		return nil
	}
	startModules(mods, false)
	net, _ := splitByName(mods, netModules)
	_, root := splitByName(mods, notForRoot)
	for _, m := range root {
		if m.name == "virtio_console" || m.name == "virtio_net" {
			t.Fatalf("root waits for %s", m.name)
		}
	}
	if err := waitModules(root); err != nil { // returns with the console held
		t.Fatal(err)
	}
	if len(net) != 3 {
		t.Errorf("network chain: %d modules", len(net))
	}
	close(release)
	if err := waitModules(mods); err != nil {
		t.Fatal(err)
	}
}

// freeInitramfs empties the old root through its handle: files, nested
// directories and symlinks go (a symlink's target stays), the directory
// itself is left.
func TestFreeInitramfs(t *testing.T) {
	dir := t.TempDir()
	keep := filepath.Join(t.TempDir(), "target")
	if err := os.WriteFile(keep, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"init", "lib/modules/6.1/kernel/fs/ext4.ko", "etc/paddock/modules"} {
		if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, p), []byte("data"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(filepath.Dir(keep), filepath.Join(dir, "lib", "out")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "newroot"), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	freeInitramfs(f)
	ents, err := os.ReadDir(dir)
	if err != nil || len(ents) != 0 {
		t.Errorf("left: %v %v", ents, err)
	}
	if _, err := os.Stat(keep); err != nil {
		t.Errorf("a symlink's target was removed: %v", err)
	}
	if err := unix.Fstat(int(f.Fd()), &unix.Stat_t{}); err == nil {
		t.Error("the handle is still open")
	}
}

// The late modules load one after the other, in the list's order, on the
// caller's thread; one whose dependency failed is not loaded.
func TestLoadModulesHere(t *testing.T) {
	var mods []*kmod
	for _, p := range []string{"failover", "net_failover failover", "virtio_net net_failover", "button", "evdev"} {
		f := strings.Fields(p)
		mods = append(mods, &kmod{name: f[0], deps: f[1:], done: make(chan struct{})})
	}
	var order []string
	saved := loadKmod
	t.Cleanup(func() { loadKmod = saved })
	loadKmod = func(m *kmod) error {
		order = append(order, m.name) // no lock: one goroutine loads them all
		if m.name == "failover" {
			return errors.New("no such module")
		}
		return nil
	}
	err := loadModulesHere(mods, false)
	if got := strings.Join(order, " "); got != "failover button evdev" {
		t.Errorf("loaded %q", got)
	}
	if err == nil || !strings.Contains(err.Error(), "virtio_net: dependency net_failover failed") {
		t.Errorf("errors: %v", err)
	}
	for _, m := range mods {
		select {
		case <-m.done:
		default:
			t.Errorf("%s not done", m.name)
		}
	}
}
