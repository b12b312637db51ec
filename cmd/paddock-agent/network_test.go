package main

import (
	"net/netip"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/guestboot"
	"github.com/paddock-vm/paddock/internal/netnstest"
	"github.com/paddock-vm/paddock/internal/testenv"
)

// freshNetns makes a network namespace (its lo down) on a thread that never
// leaves it; the thread ends with the test (never unlocked), the namespace
// with it and the handle.
func freshNetns(t *testing.T) netns.NsHandle {
	made := make(chan netns.NsHandle, 1)
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		ns := netns.None()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Errorf("unshare: %v", err)
		} else if ns, err = netns.Get(); err != nil {
			t.Errorf("netns: %v", err)
		}
		made <- ns
		<-done
	}()
	ns := <-made
	t.Cleanup(func() { close(done); ns.Close() })
	if !ns.IsOpen() {
		t.FailNow()
	}
	return ns
}

// TestLoUp: in a fresh namespace (lo down) loUp brings the loopback up,
// and a second call, on a loopback already up, is no error.
func TestLoUp(t *testing.T) {
	testenv.RequireRoot(t, "creates a network namespace")
	ns := freshNetns(t)
	flags := func() (f uint32) {
		err := netnstest.Run(ns, func() error {
			lo, err := netlink.LinkByName("lo")
			if err == nil {
				f = lo.Attrs().RawFlags
			}
			return err
		})
		if err != nil {
			t.Fatalf("lo: %v", err)
		}
		return f
	}
	if flags()&unix.IFF_UP != 0 {
		t.Fatal("a fresh namespace's lo is already up: the test proves nothing")
	}
	for i := range 2 {
		if err := netnstest.Run(ns, loUp); err != nil {
			t.Fatalf("loUp (call %d): %v", i+1, err)
		}
		if flags()&unix.IFF_UP == 0 {
			t.Fatalf("lo not up after loUp (call %d)", i+1)
		}
	}
}

// TestReaddressWithoutDevice: a resumed guest with no network device and
// none asked for has nothing to re-address; one asked for an address on a
// device it lacks is refused, naming the device.
func TestReaddressWithoutDevice(t *testing.T) {
	testenv.RequireRoot(t, "reads and changes links in a network namespace")
	ns := freshNetns(t)
	if err := netnstest.Run(ns, func() error {
		return kernelIdentity{}.Readdress(&guestboot.BootArgs{IfName: "pdk-none0"}, nil)
	}); err != nil {
		t.Fatalf("no device, none asked for: %v", err)
	}
	err := netnstest.Run(ns, func() error {
		return kernelIdentity{}.Readdress(&guestboot.BootArgs{IfName: "pdk-none0", IPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.2/24")}}, nil)
	})
	if err == nil || !strings.Contains(err.Error(), "pdk-none0") {
		t.Fatalf("an address asked for on a missing device: %v, want an error naming it", err)
	}
}
