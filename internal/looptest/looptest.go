// Package looptest holds test helpers around loop devices: a fresh
// loop-backed xfs with reflinks, and a check that no loop device is left
// on given files. For tests only.
package looptest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/host/loop"
	"github.com/paddock-vm/paddock/internal/testenv"
)

// NoLoopsOn fails when a loop device is backed by one of paths (or by a file
// in one of the directories among them) and detaches it.
func NoLoopsOn(t testing.TB, paths ...string) {
	t.Helper()
	for i := 0; i < 50; i++ {
		var left []loop.Device
		all, err := loop.List()
		if err != nil {
			t.Errorf("loop.List: %v", err)
			return
		}
		for _, d := range all {
			for _, p := range paths {
				if d.Backing == p || strings.HasPrefix(d.Backing, p+"/") {
					left = append(left, d)
				}
			}
		}
		if len(left) == 0 {
			return
		}
		if i == 49 {
			for _, d := range left {
				t.Errorf("leaked loop device %s backed by %s", d.Path, d.Backing)
				_ = loop.Detach(&d)
			}
		}
		time.Sleep(10 * time.Millisecond) // autoclear runs at the last close
	}
}

// XFSDir mounts a fresh xfs (reflink=1) on a loop device under a temp dir
// and returns the mount point; cleanup unmounts it, and autoclear frees the
// loop device. Needs root and mkfs.xfs.
func XFSDir(t testing.TB) string {
	t.Helper()
	testenv.RequireRoot(t, "mount a loop-backed xfs for reflinks")
	mkfs := testenv.RequireTool(t, "mkfs.xfs", "xfsprogs")
	tmp := t.TempDir()
	img := filepath.Join(tmp, "xfs.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 2<<30); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(mkfs, "-q", "-f", "-m", "reflink=1", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.xfs: %v: %s", err, out)
	}
	dev, err := loop.Attach(t.Context(), img, loop.Options{})
	if err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(tmp, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(dev.Path, mnt, "xfs", 0, ""); err != nil {
		loop.Detach(dev)
		t.Fatalf("mount xfs: %v", err)
	}
	dev.Close() // the mount holds the device now
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, 0); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
			_ = unix.Unmount(mnt, unix.MNT_DETACH)
		}
		NoLoopsOn(t, img)
	})
	return mnt
}
