package dm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/host/loop"
	"github.com/paddock-vm/paddock/internal/testenv"
)

// requireDM skips when the kernel has no device-mapper or no snapshot target,
// with the probe's reason: one of the skips allowed under CI=true. Missing
// root is not such a reason under CI.
func requireDM(t *testing.T) {
	t.Helper()
	testenv.RequireRoot(t, "device-mapper")
	if err := Probe("snapshot"); err != nil {
		if errors.Is(err, ErrUnsupported) {
			testenv.SkipBecause(t, testenv.NoDeviceMapper+": "+err.Error())
		}
		t.Fatal(err)
	}
}

func TestSnapshotOverLoopDevices(t *testing.T) {
	requireDM(t)
	dir := t.TempDir()
	const size = 8 << 20
	origin := filepath.Join(dir, "origin")
	cow := filepath.Join(dir, "cow")
	if err := os.WriteFile(origin, bytes.Repeat([]byte{0xaa}, size), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cow, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(cow, size+size/256+1<<20); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Autoclear and LOOP_CLR_FD finish at the last close: poll.
		for _, p := range []string{origin, cow} {
			var devs []loop.Device
			for i := 0; i < 100; i++ {
				if devs, _ = loop.Find(p); len(devs) == 0 {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			for _, d := range devs {
				t.Errorf("loop device %s left on %s", d.Path, p)
				_ = loop.Detach(&d)
			}
		}
	})
	ctx := context.Background()
	ol, err := loop.Attach(ctx, origin, loop.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer loop.Detach(ol)
	cl, err := loop.Attach(ctx, cow, loop.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer loop.Detach(cl)

	c, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	name := fmt.Sprintf("%stest-%d", Prefix, os.Getpid())
	defer c.Remove(ctx, name)
	d, err := c.CreateSnapshot(name, name, ol.Path, cl.Path, size/SectorSize)
	if err != nil {
		t.Fatal(err)
	}
	// The table holds the loops now; drop ours so they autoclear with it.
	ol.Close()
	cl.Close()

	f, err := os.OpenFile(d.Path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	msg := bytes.Repeat([]byte{0x55}, 4096)
	if _, err := f.WriteAt(msg, 4096); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 8192)
	if _, err := f.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:4096], bytes.Repeat([]byte{0xaa}, 4096)) || !bytes.Equal(got[4096:], msg) {
		t.Fatal("snapshot does not read origin + written chunk")
	}
	if b, _ := os.ReadFile(origin); !bytes.Equal(b, bytes.Repeat([]byte{0xaa}, size)) {
		t.Fatal("origin changed by a write to the snapshot")
	}
	list, err := c.List(Prefix + "test-")
	if err != nil || len(list) != 1 || list[0].Name != name || list[0].OpenCount != 1 {
		t.Fatalf("List = %+v, %v", list, err)
	}
	// Open: removal is deferred to the close.
	c.removeTries, c.removeWait = 2, 10*time.Millisecond
	if err := c.Remove(ctx, name); !errors.Is(err, ErrDeferred) {
		t.Fatalf("Remove of an open device: %v, want ErrDeferred", err)
	}
	f.Close()
	for i := 0; i < 100; i++ {
		if _, err := c.Status(name); errors.Is(err, os.ErrNotExist) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	for i := 0; i < 2; i++ {
		if err := c.Remove(ctx, name); err != nil {
			t.Fatalf("Remove #%d: %v", i+1, err)
		}
	}
	if _, err := c.Status(name); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("device still there: %v", err)
	}
}
