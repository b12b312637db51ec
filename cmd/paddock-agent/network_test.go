package main

import (
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/internal/netnstest"
	"github.com/paddock-vm/paddock/internal/testenv"
)

// TestLoUp: in a fresh namespace (lo down) loUp brings the loopback up,
// and a second call, on a loopback already up, is no error.
func TestLoUp(t *testing.T) {
	testenv.RequireRoot(t, "creates a network namespace")
	// The namespace is made on a thread that never leaves it; the thread
	// ends with its goroutine (never unlocked), the namespace with it.
	made := make(chan netns.NsHandle, 1)
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Errorf("unshare: %v", err)
			made <- netns.None()
			return
		}
		ns, err := netns.Get()
		if err != nil {
			t.Errorf("netns: %v", err)
		}
		made <- ns
		<-done
	}()
	ns := <-made
	defer close(done)
	if !ns.IsOpen() {
		t.FailNow()
	}
	defer ns.Close()
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
