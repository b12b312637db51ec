package loop

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/internal/testenv"
)

// requireLoop skips without root or loop devices (testenv: a failure
// under CI).
func requireLoop(t *testing.T) {
	t.Helper()
	testenv.RequireRoot(t, "loop devices")
	if _, err := os.Stat(controlPath); err != nil {
		testenv.SkipBecause(t, "no "+controlPath+": "+err.Error())
	}
}

// backingFile makes a file of size bytes filled with a pattern and registers
// a leak check: when the test ends no loop device may still use it.
func backingFile(t *testing.T, dir string, size int) string {
	t.Helper()
	p := filepath.Join(dir, "backing-"+filepath.Base(t.Name())+"-"+time.Now().Format("150405.000000000"))
	if err := os.WriteFile(p, bytes.Repeat([]byte{0x5a}, size), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { AssertNoLoops(t, p) })
	return p
}

// AssertNoLoops fails the test when a loop device is still backed by one of
// paths, and detaches it so one failure does not leak into the next test.
func AssertNoLoops(t testing.TB, paths ...string) {
	t.Helper()
	for _, p := range paths {
		// Autoclear runs on the last close; give the kernel a moment.
		var devs []Device
		for i := 0; i < 50; i++ {
			var err error
			if devs, err = Find(p); err != nil {
				t.Errorf("Find(%s): %v", p, err)
				return
			}
			if len(devs) == 0 {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		for _, d := range devs {
			t.Errorf("leaked loop device %s backed by %s", d.Path, p)
			_ = Detach(&d)
		}
	}
}

func TestAttachReadWriteDetach(t *testing.T) {
	requireLoop(t)
	const size = 1 << 20
	for _, tc := range []struct {
		name   string
		opts   Options
		legacy bool
	}{
		{"rw", Options{}, false},
		{"ro", Options{ReadOnly: true}, false},
		{"rw-directio", Options{DirectIO: true}, false},
		{"rw-legacy", Options{}, true},
		{"ro-legacy", Options{ReadOnly: true}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := backingFile(t, t.TempDir(), size)
			a := &attacher{getFree: ctlGetFree, legacy: tc.legacy}
			d, err := a.attach(context.Background(), p, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			defer Detach(d)

			var st unix.Stat_t
			if err := unix.Stat(p, &st); err != nil {
				t.Fatal(err)
			}
			if d.Inode != st.Ino || d.Dev != st.Dev || d.Backing != p || d.Path == "" || !d.Autoclear || d.ReadOnly != tc.opts.ReadOnly {
				t.Fatalf("device %+v does not describe %s (ino %d dev %d)", d, p, st.Ino, st.Dev)
			}
			found, err := Find(p)
			if err != nil || len(found) != 1 || found[0].Path != d.Path || found[0].Inode != st.Ino || found[0].Dev != st.Dev ||
				found[0].ReadOnly != tc.opts.ReadOnly || !found[0].Autoclear {
				t.Fatalf("Find = %+v, %v; want one device %s", found, err, d.Path)
			}

			// Read through the device.
			f, err := os.OpenFile(d.Path, os.O_RDONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 4096)
			if _, err := f.ReadAt(buf, 8192); err != nil || !bytes.Equal(buf, bytes.Repeat([]byte{0x5a}, 4096)) {
				t.Fatalf("read through %s: %v (first byte %#x)", d.Path, err, buf[0])
			}
			f.Close()

			// Write through the device, or be refused.
			w, err := os.OpenFile(d.Path, os.O_RDWR, 0)
			if tc.opts.ReadOnly {
				// The open may succeed; the write must not.
				if err == nil {
					_, werr := w.WriteAt([]byte("x"), 0)
					w.Close()
					if werr == nil {
						t.Fatalf("wrote to read-only %s", d.Path)
					}
				}
				if b, _ := os.ReadFile(p); !bytes.Equal(b, bytes.Repeat([]byte{0x5a}, size)) {
					t.Fatalf("backing file of read-only %s changed", d.Path)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				msg := bytes.Repeat([]byte("paddock!"), 512)
				if _, err := w.WriteAt(msg, 4096); err != nil {
					t.Fatal(err)
				}
				if err := w.Sync(); err != nil {
					t.Fatal(err)
				}
				w.Close()
				got := make([]byte, len(msg))
				bf, _ := os.Open(p)
				_, err = bf.ReadAt(got, 4096)
				bf.Close()
				if err != nil || !bytes.Equal(got, msg) {
					t.Fatalf("write through %s did not reach the backing file: %v", d.Path, err)
				}
			}

			for i := 0; i < 2; i++ {
				if err := Detach(d); err != nil {
					t.Fatalf("Detach #%d: %v", i+1, err)
				}
			}
			if found, _ := Find(p); len(found) != 0 {
				t.Fatalf("after Detach, Find = %+v", found)
			}
			// A decoded copy detaches as a no-op too.
			var dec Device
			b, _ := json.Marshal(d)
			if err := json.Unmarshal(b, &dec); err != nil || dec.Inode != d.Inode || dec.Path != d.Path {
				t.Fatalf("json round trip %s -> %+v (%v)", b, dec, err)
			}
			if err := Detach(&dec); err != nil {
				t.Fatalf("Detach of a decoded, already detached device: %v", err)
			}
		})
	}
}

// Autoclear (the default) detaches by itself at the last close; NoAutoclear
// stays until Detach.
func TestAutoclear(t *testing.T) {
	requireLoop(t)
	dir := t.TempDir()
	for _, tc := range []struct {
		name     string
		opts     Options
		survives bool
	}{
		{"default-autoclear", Options{}, false},
		{"no-autoclear", Options{NoAutoclear: true}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := backingFile(t, dir, 64<<10)
			d, err := Attach(context.Background(), p, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			defer Detach(d)
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			var found []Device
			for i := 0; i < 50; i++ {
				found, _ = Find(p)
				if len(found) == 0 || tc.survives && i == 5 {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			if got := len(found) == 1; got != tc.survives {
				t.Fatalf("after Close, bound=%v (%+v), want %v", got, found, tc.survives)
			}
		})
	}
}

// The EBUSY race made deterministic: the first free number handed out is a
// device another attach already holds, so LOOP_CONFIGURE answers EBUSY and
// Attach must ask again.
func TestAttachRetriesBusyDevice(t *testing.T) {
	requireLoop(t)
	dir := t.TempDir()
	for _, legacy := range []bool{false, true} {
		name := "configure"
		if legacy {
			name = "legacy"
		}
		t.Run(name, func(t *testing.T) {
			held, err := Attach(context.Background(), backingFile(t, dir, 64<<10), Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer Detach(held)
			stale := 2
			a := &attacher{legacy: legacy, getFree: func(ctl *os.File) (int, error) {
				if stale > 0 {
					stale--
					return held.Number, nil
				}
				return ctlGetFree(ctl)
			}}
			d, err := a.attach(context.Background(), backingFile(t, dir, 64<<10), Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer Detach(d)
			if d.Number == held.Number || a.busy.Load() != 2 {
				t.Fatalf("got %s (held %s) after %d EBUSY retries; want a different device after 2", d.Path, held.Path, a.busy.Load())
			}
			// A busy device is never taken over: its backing file is unchanged.
			if f, _ := Find(held.Backing); len(f) != 1 || f[0].Number != held.Number {
				t.Fatalf("held device disturbed: %+v", f)
			}
		})
	}
}

func TestAttachGivesUpWhenContextEnds(t *testing.T) {
	requireLoop(t)
	dir := t.TempDir()
	held, err := Attach(context.Background(), backingFile(t, dir, 64<<10), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer Detach(held)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	a := &attacher{getFree: func(*os.File) (int, error) { return held.Number, nil }}
	if d, err := a.attach(ctx, backingFile(t, dir, 64<<10), Options{}); !errors.Is(err, context.DeadlineExceeded) {
		Detach(d)
		t.Fatalf("attach on an always-busy device: %v, want deadline exceeded", err)
	}
}

func TestConcurrentAttachGetsDistinctDevices(t *testing.T) {
	requireLoop(t)
	dir := t.TempDir()
	const n = 8
	paths := make([]string, n)
	for i := range paths {
		paths[i] = backingFile(t, dir, 64<<10)
	}
	devs := make([]*Device, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			devs[i], errs[i] = Attach(context.Background(), paths[i], Options{ReadOnly: i%2 == 0})
		}()
	}
	close(start)
	wg.Wait()
	seen := map[int]string{}
	for i, d := range devs {
		if errs[i] != nil {
			t.Errorf("attach %d: %v", i, errs[i])
			continue
		}
		defer Detach(d)
		if other, dup := seen[d.Number]; dup {
			t.Errorf("%s given to both %s and %s", d.Path, other, paths[i])
		}
		seen[d.Number] = paths[i]
		if f, _ := Find(paths[i]); len(f) != 1 || f[0].Number != d.Number {
			t.Errorf("Find(%s) = %+v, want %s", paths[i], f, d.Path)
		}
	}
}

// After a crash the recorded device number may have been reused for another
// file: Detach must not clear someone else's device.
func TestDetachLeavesReusedDeviceAlone(t *testing.T) {
	requireLoop(t)
	dir := t.TempDir()
	p := backingFile(t, dir, 64<<10)
	other := backingFile(t, dir, 64<<10)
	d, err := Attach(context.Background(), p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer Detach(d)
	var ost unix.Stat_t
	if err := unix.Stat(other, &ost); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		stale Device
	}{
		{"inode", Device{Path: d.Path, Number: d.Number, Backing: other, Inode: ost.Ino, Dev: ost.Dev}},
		{"backing-path", Device{Path: d.Path, Number: d.Number, Backing: other}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := Detach(&tc.stale); err != nil {
				t.Fatal(err)
			}
			if f, _ := Find(p); len(f) != 1 {
				t.Fatalf("Detach of a stale record cleared %s", d.Path)
			}
		})
	}
	if err := Detach(d); err != nil {
		t.Fatal(err)
	}
}

func TestFindDeletedBacking(t *testing.T) {
	requireLoop(t)
	p := backingFile(t, t.TempDir(), 64<<10)
	d, err := Attach(context.Background(), p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer Detach(d)
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	f, err := Find(p)
	if err != nil || len(f) != 1 || !f[0].BackingDeleted || f[0].Backing != p || f[0].Inode != d.Inode {
		t.Fatalf("Find of an unlinked backing file = %+v, %v", f, err)
	}
	all, err := List()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, x := range all {
		found = found || x.Number == d.Number
	}
	if !found {
		t.Fatalf("List misses %s: %+v", d.Path, all)
	}
}

func TestAttachErrors(t *testing.T) {
	requireLoop(t)
	dir := t.TempDir()
	for _, tc := range []struct {
		name, path string
		want       error
	}{
		{"missing", filepath.Join(dir, "nope"), os.ErrNotExist},
		{"directory", dir, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := Attach(context.Background(), tc.path, Options{ReadOnly: true})
			if err == nil {
				Detach(d)
				t.Fatal("attach succeeded")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

// scan against a synthetic /sys/block: no root needed.
func TestScanSysfs(t *testing.T) {
	root := t.TempDir()
	mk := func(name, backing, ro, autoclear string) {
		dir := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Join(dir, "loop"), 0o755); err != nil {
			t.Fatal(err)
		}
		if backing == "" {
			os.Remove(filepath.Join(dir, "loop"))
		} else {
			os.WriteFile(filepath.Join(dir, "loop", "backing_file"), []byte(backing+"\n"), 0o644)
			os.WriteFile(filepath.Join(dir, "loop", "autoclear"), []byte(autoclear+"\n"), 0o644)
		}
		os.WriteFile(filepath.Join(dir, "ro"), []byte(ro+"\n"), 0o644)
	}
	mk("loop10", "/var/lib/paddock/vms/a/disk.cow", "0", "1")
	mk("loop2", "/var/lib/paddock/vms/b/disk.base (deleted)", "1", "0")
	mk("loop3", "", "0", "0") // unbound
	mk("loopx", "/x", "0", "0")
	mk("vda", "/y", "0", "0")

	all, err := scan(root, "")
	if err != nil {
		t.Fatal(err)
	}
	want := []Device{
		{Path: "/dev/loop2", Number: 2, Backing: "/var/lib/paddock/vms/b/disk.base", BackingDeleted: true, ReadOnly: true},
		{Path: "/dev/loop10", Number: 10, Backing: "/var/lib/paddock/vms/a/disk.cow", Autoclear: true},
	}
	if len(all) != len(want) {
		t.Fatalf("scan = %+v, want %+v", all, want)
	}
	for i := range want {
		if all[i] != want[i] {
			t.Errorf("scan[%d] = %+v, want %+v", i, all[i], want[i])
		}
	}
	one, _ := scan(root, "/var/lib/paddock/vms/b/disk.base")
	if len(one) != 1 || one[0].Number != 2 {
		t.Fatalf("scan for a deleted backing file = %+v", one)
	}
}
