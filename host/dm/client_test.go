package dm

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/internal/testenv"
)

func TestCreateSequenceAndRollback(t *testing.T) {
	for _, tc := range []struct {
		name      string
		existing  []string // devices present before
		fail      map[string]error
		wantErr   error // errors.Is target; nil = success
		wantCalls string
		wantState string
	}{
		{
			name: "ok",
			wantCalls: `create paddock-vm1 uuid=paddock-vm1
load paddock-vm1: 0 4096 snapshot 7:1 7:2 P 8
resume paddock-vm1`,
			wantState: "paddock-vm1 uuid=paddock-vm1 live=1 open=0 deferred=false\n",
		},
		{
			name: "load fails: device removed again",
			fail: map[string]error{"load": unix.EINVAL},
			// the errno is wrapped
			wantErr: unix.EINVAL,
			wantCalls: `create paddock-vm1 uuid=paddock-vm1
load paddock-vm1: 0 4096 snapshot 7:1 7:2 P 8
remove paddock-vm1`,
		},
		{
			name:    "resume fails: device removed again",
			fail:    map[string]error{"resume": unix.ENOMEM},
			wantErr: unix.ENOMEM,
			wantCalls: `create paddock-vm1 uuid=paddock-vm1
load paddock-vm1: 0 4096 snapshot 7:1 7:2 P 8
resume paddock-vm1
remove paddock-vm1`,
		},
		{
			name:      "name taken: someone else's device is left alone",
			existing:  []string{"paddock-vm1"},
			wantErr:   ErrExists,
			wantCalls: `create paddock-vm1 uuid=paddock-vm1`,
			wantState: "paddock-vm1 uuid=paddock-vm1 live=0 open=0 deferred=false\n",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := newFakeKernel(t)
			for _, n := range tc.existing {
				k.devs[n] = &fakeDev{name: n, uuid: n, minor: 99}
			}
			for op, err := range tc.fail {
				k.fail[op] = err
			}
			d, err := k.client().CreateSnapshot("paddock-vm1", "paddock-vm1", "7:1", "7:2", 4096)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatal(err)
				}
				if d.Name != "paddock-vm1" || d.UUID != "paddock-vm1" || d.Major != 253 || d.Path != "/dev/dm-0" || !d.Active || d.TargetCount != 1 {
					t.Errorf("device %+v", d)
				}
			} else if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if got := k.callLog(); got != tc.wantCalls {
				t.Errorf("calls:\n%s\nwant:\n%s", got, tc.wantCalls)
			}
			if got := k.state(); got != tc.wantState {
				t.Errorf("kernel state:\n%s\nwant:\n%s", got, tc.wantState)
			}
		})
	}
}

func TestCreateRefusesUntaggedDevices(t *testing.T) {
	k := newFakeKernel(t)
	c := k.client()
	for _, tc := range []struct{ name, uuid, origin, cow string }{
		{"paddock-vm1", "", "7:1", "7:2"},
		{"paddock-vm1", "LVM-vm1", "7:1", "7:2"},
		{"paddock-vm1", "paddock-vm1", "7:1 7:9", "7:2"},
		{"paddock-vm1", "paddock-vm1", "", "7:2"},
	} {
		if _, err := c.CreateSnapshot(tc.name, tc.uuid, tc.origin, tc.cow, 8); err == nil {
			t.Errorf("created %+v", tc)
		}
	}
	if len(k.calls) != 0 {
		t.Errorf("kernel was called: %s", k.callLog())
	}
}

func TestRemove(t *testing.T) {
	for _, tc := range []struct {
		name      string
		open      int32 // openers of the device; -1: no device
		wantErr   error
		wantCalls string
		wantState string
	}{
		{"absent is success", -1, nil, "remove paddock-vm1", ""},
		{"closed", 0, nil, "remove paddock-vm1", ""},
		{"open: retried, then deferred", 1, ErrDeferred,
			"remove paddock-vm1\nremove paddock-vm1\nremove paddock-vm1\nremove paddock-vm1\nremove paddock-vm1\nremove --deferred paddock-vm1",
			"paddock-vm1 uuid=paddock-vm1 live=1 open=1 deferred=true\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := newFakeKernel(t)
			if tc.open >= 0 {
				k.devs["paddock-vm1"] = &fakeDev{name: "paddock-vm1", uuid: "paddock-vm1", live: []Target{ZeroTarget(0, 8)}, open: tc.open}
			}
			c := k.client()
			err := c.Remove(context.Background(), "paddock-vm1")
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Fatalf("Remove: %v, want %v", err, tc.wantErr)
			}
			if got := k.callLog(); got != tc.wantCalls {
				t.Errorf("calls:\n%s\nwant:\n%s", got, tc.wantCalls)
			}
			if got := k.state(); got != tc.wantState {
				t.Errorf("state:\n%s\nwant:\n%s", got, tc.wantState)
			}
			// Idempotent: once the last opener closes, a second Remove finishes.
			if d := k.devs["paddock-vm1"]; d != nil {
				d.open = 0
			}
			if err := c.Remove(context.Background(), "paddock-vm1"); err != nil {
				t.Fatalf("second Remove: %v", err)
			}
			if k.state() != "" {
				t.Errorf("device left after second Remove:\n%s", k.state())
			}
		})
	}
}

// A device that closes while Remove is waiting is removed without deferral.
func TestRemoveBusyThenFree(t *testing.T) {
	k := newFakeKernel(t)
	k.devs["paddock-vm1"] = &fakeDev{name: "paddock-vm1", uuid: "paddock-vm1", open: 1}
	c := k.client()
	tries := 0
	c.ctl = ioctlFunc(func(cmd uint, buf []byte) error {
		if cmd == cmdDevRemove {
			if tries++; tries == 3 {
				k.devs["paddock-vm1"].open = 0
			}
		}
		return k.ioctl(cmd, buf)
	})
	if err := c.Remove(context.Background(), "paddock-vm1"); err != nil {
		t.Fatal(err)
	}
	if tries != 3 || k.state() != "" || strings.Contains(k.callLog(), "deferred") {
		t.Fatalf("tries=%d state=%q calls:\n%s", tries, k.state(), k.callLog())
	}
}

type ioctlFunc func(cmd uint, buf []byte) error

func (f ioctlFunc) ioctl(cmd uint, buf []byte) error { return f(cmd, buf) }

func TestListFiltersByUUIDPrefix(t *testing.T) {
	for _, old := range []bool{false, true} {
		k := newFakeKernel(t)
		k.oldKernel = old
		for i, d := range []struct{ name, uuid string }{
			{"paddock-b", "paddock-b"},
			{"paddock-a", "paddock-a"},
			{"paddock-a-origin", "paddock-a-origin"},
			{"vg0-root", "LVM-xyz"},
			{"plain", ""},
			{"impostor", "other-paddock-a"},
		} {
			k.devs[d.name] = &fakeDev{name: d.name, uuid: d.uuid, minor: uint32(i), live: []Target{ZeroTarget(0, 8)}}
		}
		c := k.client()
		for _, tc := range []struct {
			prefix string
			want   []string
		}{
			{Prefix, []string{"paddock-a", "paddock-a-origin", "paddock-b"}},
			{Prefix + "a", []string{"paddock-a", "paddock-a-origin"}},
			{Prefix + "zz", nil},
			{"", []string{"impostor", "paddock-a", "paddock-a-origin", "paddock-b", "plain", "vg0-root"}},
		} {
			devs, err := c.List(tc.prefix)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, d := range devs {
				got = append(got, d.Name)
				if d.Major != 253 || !d.Active || d.Path == "" {
					t.Errorf("device %+v", d)
				}
			}
			if strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Errorf("old=%v List(%q) = %v, want %v", old, tc.prefix, got, tc.want)
			}
		}
	}
}

// The first buffer is too small for the answer: List must grow it.
func TestListGrowsBuffer(t *testing.T) {
	k := newFakeKernel(t)
	for i := 0; i < 200; i++ {
		n := Prefix + strings.Repeat("x", 80) + string(rune('a'+i%26)) + strings.Repeat("y", i)
		if len(n) > 127 {
			n = n[:127]
		}
		if _, dup := k.devs[n]; dup {
			continue
		}
		k.devs[n] = &fakeDev{name: n, uuid: n, minor: uint32(i)}
	}
	devs, err := k.client().List(Prefix)
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != len(k.devs) {
		t.Fatalf("listed %d of %d devices", len(devs), len(k.devs))
	}
	lists := strings.Count(k.callLog(), "list uuid=")
	if lists < 2 {
		t.Fatalf("expected a retry with a bigger buffer, got %d list calls", lists)
	}
}

func TestStatus(t *testing.T) {
	k := newFakeKernel(t)
	k.devs["paddock-a"] = &fakeDev{name: "paddock-a", uuid: "paddock-a", minor: 300, open: 2, live: []Target{ZeroTarget(0, 8)}}
	c := k.client()
	d, err := c.Status("paddock-a")
	if err != nil || d.Minor != 300 || d.Path != "/dev/dm-300" || d.OpenCount != 2 || d.UUID != "paddock-a" {
		t.Fatalf("Status = %+v, %v", d, err)
	}
	if _, err := c.Status("paddock-b"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Status of a missing device: %v", err)
	}
}

func TestTargetVersion(t *testing.T) {
	for _, old := range []bool{false, true} {
		k := newFakeKernel(t)
		k.oldKernel = old
		c := k.client()
		if v, err := c.TargetVersion("snapshot"); err != nil || v != [3]uint32{1, 16, 0} {
			t.Errorf("old=%v snapshot: %v %v", old, v, err)
		}
		if _, err := c.TargetVersion("thin"); !errors.Is(err, ErrUnsupported) {
			t.Errorf("old=%v missing target: %v, want ErrUnsupported", old, err)
		}
	}
}

func TestMiscMinor(t *testing.T) {
	p := t.TempDir() + "/misc"
	if err := os.WriteFile(p, []byte("229 fuse\n236 device-mapper\n237 loop-control\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		minor uint32
		ok    bool
	}{{"device-mapper", 236, true}, {"loop-control", 237, true}, {"vhost-vsock", 0, false}} {
		m, ok, err := miscMinor(p, tc.name)
		if err != nil || ok != tc.ok || m != tc.minor {
			t.Errorf("miscMinor(%s) = %d %v %v", tc.name, m, ok, err)
		}
	}
}

func TestEnsureNode(t *testing.T) {
	testenv.RequireRoot(t, "mknod")
	dir := t.TempDir()
	d := &Device{Major: 240, Minor: 7, Path: filepath.Join(dir, "dm-7")}
	check := func(what string) {
		t.Helper()
		var st unix.Stat_t
		if err := unix.Stat(d.Path, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK || st.Rdev != unix.Mkdev(240, 7) {
			t.Fatalf("%s: node %+v %v", what, st, err)
		}
	}
	if err := ensureNode(d); err != nil {
		t.Fatal(err)
	}
	check("missing node made")
	// A stale node with other numbers (what a fake once left in /dev).
	os.Remove(d.Path)
	if err := unix.Mknod(d.Path, unix.S_IFBLK|0o600, int(unix.Mkdev(240, 8))); err != nil {
		t.Fatal(err)
	}
	if err := ensureNode(d); err != nil {
		t.Fatal(err)
	}
	check("stale node replaced")
	var before unix.Stat_t
	unix.Stat(d.Path, &before)
	if err := ensureNode(d); err != nil {
		t.Fatal(err)
	}
	var after unix.Stat_t
	unix.Stat(d.Path, &after)
	if before.Ino != after.Ino {
		t.Error("a right node was replaced")
	}
}

// Client tests run against the fake kernel and must never touch /dev.
func TestFakeClientLeavesDevAlone(t *testing.T) {
	k := newFakeKernel(t)
	k.nextMinor = 4000
	if _, err := k.client().CreateSnapshot("paddock-x", "paddock-x", "7:1", "7:2", 8); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat("/dev/dm-4000"); err == nil {
		t.Fatal("a fake-kernel Create made /dev/dm-4000")
	}
}
