package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/guestboot"
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

// The VM's devices decide: a driver whose device is there loads before the
// agent is ready (a NIC without paddock.ip too), one whose device is not
// never loads, nor what only it needs; the power button stays late.
func TestForDevices(t *testing.T) {
	sys := t.TempDir()
	for i, id := range []string{"0x0002", "0x0002", "0x0003", "0x0001"} {
		dir := filepath.Join(sys, "virtio"+string(rune('0'+i)))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "device"), []byte(id+"\n"), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	present, ok := virtioDrivers(sys)
	if !ok || !present["virtio_net"] || !present["virtio_blk"] || !present["virtio_console"] || present["vmw_vsock_virtio_transport"] {
		t.Fatalf("present %v %v", present, ok)
	}
	if _, ok := virtioDrivers(filepath.Join(sys, "none")); ok {
		t.Error("no bus read as no devices")
	}
	var mods []*kmod
	for _, p := range []string{"virtio_ring", "virtio virtio_ring", "virtio_mmio virtio virtio_ring", "virtio_blk virtio virtio_ring",
		"failover", "net_failover failover", "virtio_net virtio_ring virtio net_failover", "virtio_console virtio virtio_ring",
		"vsock", "vmw_vsock_virtio_transport_common vsock", "vmw_vsock_virtio_transport virtio vmw_vsock_virtio_transport_common virtio_ring vsock",
		"button", "evdev"} {
		f := strings.Fields(p)
		mods = append(mods, &kmod{name: f[0], deps: f[1:], done: make(chan struct{})})
	}
	cfg, _ := guestboot.Parse("") // no paddock.ip, no vsock
	modsNow, modsLater := splitModules(mods, &cfg)
	others, _ := splitByName(modsNow, notForRoot)
	now, later := forDevices(mods, append(others, modsLater...), others, present)
	names := func(ms []*kmod) string {
		var n []string
		for _, m := range ms {
			n = append(n, m.name)
		}
		return strings.Join(n, " ")
	}
	if got := names(now); got != "failover net_failover virtio_net virtio_console" {
		t.Errorf("now: %s", got)
	}
	if got := names(later); got != "button evdev" {
		t.Errorf("later: %s", got)
	}
	for _, m := range mods {
		if strings.Contains(m.name, "vsock") {
			select {
			case <-m.done: // never loaded, and no one waits for it
			default:
				t.Errorf("%s: not done", m.name)
			}
		}
	}
}

// The drivers of the VM's devices load once the transport has listed them,
// beside the root disk's chain, not after it: here ext4's load waits for
// the console's, which would never come if the console waited for the
// root's chain. An absent device's driver never loads; the root's chain is
// reported in only once all of it is.
func TestBootModulesBesideRoot(t *testing.T) {
	sys := t.TempDir()
	for i, id := range []string{"0x0002", "0x0003"} { // a disk, the console
		dir := filepath.Join(sys, "virtio"+string(rune('0'+i)))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "device"), []byte(id+"\n"), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name string
		mods []string
		// besides: the root's chain waits for the console's load
		besides bool
	}{
		{"mmio", []string{"virtio_ring", "virtio virtio_ring", "virtio_mmio virtio virtio_ring", "virtio_blk virtio virtio_ring",
			"crc16", "ext4 crc16", "virtio_console virtio virtio_ring", "failover", "net_failover failover",
			"virtio_net virtio virtio_ring net_failover"}, true},
		// no transport module (built in): the devices are listed after
		// the root's chain, as before
		{"no transport", []string{"crc16", "ext4 crc16", "virtio_console"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mods []*kmod
			for _, p := range tc.mods {
				f := strings.Fields(p)
				mods = append(mods, &kmod{name: f[0], deps: f[1:], done: make(chan struct{})})
			}
			afterTransports(mods)
			var mu sync.Mutex
			var order []string
			consoleIn := make(chan struct{})
			saved := loadKmod
			t.Cleanup(func() { loadKmod = saved })
			loadKmod = func(m *kmod) error {
				if m.name == "ext4" && tc.besides {
					<-consoleIn
				}
				mu.Lock()
				order = append(order, m.name)
				mu.Unlock()
				if m.name == "virtio_console" {
					close(consoleIn)
				}
				return nil
			}
			others, root := splitByName(mods, notForRoot)
			l := startBootModules(mods, root, others, nil, sys, false)
			select {
			case <-l.done:
			case <-time.After(30 * time.Second):
				t.Fatalf("module loads stuck (loaded %v): the drivers wait for the root's chain", order)
			}
			if l.err != nil {
				t.Fatal(l.err)
			}
			select {
			case <-l.listed:
			default:
				t.Error("devices not listed")
			}
			select {
			case <-l.rootDone:
			default:
				t.Error("root's chain not reported in")
			}
			pos := map[string]int{}
			for i, n := range order {
				pos[n] = i
			}
			if _, ok := pos["virtio_net"]; ok {
				t.Errorf("the absent NIC's driver loaded: %v", order)
			}
			if _, ok := pos["virtio_mmio"]; ok && pos["virtio_console"] < pos["virtio_mmio"] {
				t.Errorf("console loaded before the transport: %v", order)
			}
			if tc.besides && pos["ext4"] < pos["virtio_console"] {
				t.Errorf("order %v", order)
			}
			if len(l.devices) == 0 {
				t.Error("no device drivers")
			}
		})
	}
}
