package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestFindPort: the port is found once both its sysfs entry and its node
// exist, whatever its number; other ports are passed over; a port that
// never comes ends the wait with the caller's ctx, naming the port.
func TestFindPort(t *testing.T) {
	sys, dev := t.TempDir(), t.TempDir()
	port := func(n, name string) {
		if err := os.MkdirAll(filepath.Join(sys, n), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(sys, n, "name"), []byte(name+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	node := func(n string) {
		if err := os.WriteFile(filepath.Join(dev, n), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	port("vport0p1", "org.qemu.guest_agent.0")
	node("vport0p1")

	found := make(chan string, 1)
	errc := make(chan error, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	go func() {
		p, err := findPort(ctx, sys, dev, "paddock.control")
		found <- p
		errc <- err
	}()
	// Listed, but without its node yet: still waiting.
	port("vport1p3", "paddock.control")
	select {
	case p := <-found:
		t.Fatalf("found %q before its device node existed (err %v)", p, <-errc)
	case <-time.After(50 * time.Millisecond):
	}
	node("vport1p3")
	if p, err := <-found, <-errc; err != nil || p != filepath.Join(dev, "vport1p3") {
		t.Fatalf("findPort = %q, %v; want %s", p, err, filepath.Join(dev, "vport1p3"))
	}

	short, cancel2 := context.WithCancel(context.Background())
	go func() { time.Sleep(20 * time.Millisecond); cancel2() }()
	_, err := findPort(short, sys, dev, "paddock.other")
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), `"paddock.other"`) {
		t.Fatalf("a port that never comes: %v; want the ctx's error naming the port", err)
	}
}
