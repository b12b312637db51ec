package disk

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/paddock-vm/paddock/host/dm"
	"github.com/paddock-vm/paddock/host/loop"
)

// recorder is the log shared by the fake loop driver and fake dm.
type recorder struct {
	calls []string
	fail  map[string]error // by call prefix, once
}

func (r *recorder) add(s string) error {
	r.calls = append(r.calls, s)
	for p, err := range r.fail {
		if strings.HasPrefix(s, p) {
			delete(r.fail, p)
			return err
		}
	}
	return nil
}

type fakeLoops struct {
	r     *recorder
	next  int
	bound map[string]string // /dev/loopN -> backing
}

func (f *fakeLoops) Attach(ctx context.Context, backing string, opts loop.Options) (*loop.Device, error) {
	if err := f.r.add(fmt.Sprintf("loop attach %s ro=%v autoclear=%v", filepath.Base(backing), opts.ReadOnly, !opts.NoAutoclear)); err != nil {
		return nil, err
	}
	p := "/dev/loop" + strconv.Itoa(f.next)
	f.next++
	f.bound[p] = backing
	return &loop.Device{Path: p, Backing: backing}, nil
}

func (f *fakeLoops) Find(backing string) ([]loop.Device, error) {
	var out []loop.Device
	for p, b := range f.bound {
		if b == backing {
			out = append(out, loop.Device{Path: p, Backing: b})
		}
	}
	return out, nil
}

func (f *fakeLoops) Detach(d *loop.Device) error {
	if _, ok := f.bound[d.Path]; !ok {
		return nil
	}
	delete(f.bound, d.Path)
	return f.r.add("loop detach " + d.Path)
}

type fakeMapper struct {
	r    *recorder
	next *int
	devs map[string]*dm.Device
	open map[string]bool // held by a VMM
}

func (m *fakeMapper) Create(name, uuid string, table []dm.Target) (*dm.Device, error) {
	var lines []string
	for _, t := range table {
		lines = append(lines, t.String())
	}
	if err := m.r.add(fmt.Sprintf("dm create %s uuid=%s: %s", name, uuid, strings.Join(lines, "; "))); err != nil {
		return nil, err
	}
	if _, ok := m.devs[name]; ok {
		return nil, dm.ErrExists
	}
	d := &dm.Device{Name: name, UUID: uuid, Major: 253, Minor: uint32(*m.next), Path: fmt.Sprintf("/dev/dm-%d", *m.next), Active: true}
	*m.next++
	m.devs[name] = d
	return d, nil
}

func (m *fakeMapper) Remove(ctx context.Context, name string) error {
	if _, ok := m.devs[name]; !ok {
		return nil
	}
	if err := m.r.add("dm remove " + name); err != nil {
		return err
	}
	if m.open[name] {
		return fmt.Errorf("dm: remove %s: %w", name, dm.ErrDeferred)
	}
	delete(m.devs, name)
	return nil
}

func (m *fakeMapper) Status(name string) (*dm.Device, error) {
	if d, ok := m.devs[name]; ok {
		return d, nil
	}
	return nil, os.ErrNotExist
}

func (m *fakeMapper) Close() error { return nil }

// fakeDM wires a dm backend to fakes; state() renders what is left.
type fakeDM struct {
	*dmBackend
	r     *recorder
	loops *fakeLoops
	m     *fakeMapper
	noDM  bool
}

func newFakeDM() *fakeDM {
	r := &recorder{fail: map[string]error{}}
	next := 0
	f := &fakeDM{r: r, loops: &fakeLoops{r: r, bound: map[string]string{}},
		m: &fakeMapper{r: r, next: &next, devs: map[string]*dm.Device{}, open: map[string]bool{}}}
	f.dmBackend = &dmBackend{
		loops: f.loops,
		open: func() (mapper, error) {
			if f.noDM {
				return nil, fmt.Errorf("%w: kernel has no device-mapper", dm.ErrUnsupported)
			}
			return f.m, nil
		},
		devNum: func(p string) (string, error) {
			if n, ok := strings.CutPrefix(p, "/dev/loop"); ok {
				return "7:" + n, nil
			}
			return "", fmt.Errorf("not a device: %s", p)
		},
		resize: func(ctx context.Context, p string, size int64) error {
			return r.add(fmt.Sprintf("resize2fs %s %d", p, size))
		},
	}
	return f
}

func (f *fakeDM) state() string {
	var s []string
	for n := range f.m.devs {
		s = append(s, "dm "+n)
	}
	for p, b := range f.loops.bound {
		s = append(s, "loop "+p+" "+filepath.Base(b))
	}
	slices.Sort(s)
	return strings.Join(s, "\n")
}

func fakeBase(t *testing.T, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "rootfs.ext4")
	if err := os.WriteFile(p, nil, 0o444); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, size); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDMBackendCreate(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		name      string
		size      int64
		fail      map[string]error
		wantCalls string
		wantErr   bool
		wantDM    []string
	}{
		{
			name: "grown: linear+zero origin, snapshot, resize2fs",
			size: 256 * mib,
			wantCalls: `loop attach disk.base ro=true autoclear=true
loop attach disk.cow ro=false autoclear=true
dm create paddock-vm1-origin uuid=paddock-vm1-origin: 0 131072 linear 7:0 0; 131072 393216 zero 
dm create paddock-vm1 uuid=paddock-vm1: 0 524288 snapshot 253:0 7:1 P 8
resize2fs /dev/dm-1 268435456`,
			wantDM: []string{"paddock-vm1", "paddock-vm1-origin"},
		},
		{
			name: "base size: snapshot straight over the base loop",
			size: 0,
			wantCalls: `loop attach disk.base ro=true autoclear=true
loop attach disk.cow ro=false autoclear=true
dm create paddock-vm1 uuid=paddock-vm1: 0 131072 snapshot 7:0 7:1 P 8`,
			wantDM: []string{"paddock-vm1"},
		},
		{
			name: "snapshot fails: origin removed, loops detached",
			size: 256 * mib,
			fail: map[string]error{"dm create paddock-vm1 ": syscall.EINVAL},
			wantCalls: `loop attach disk.base ro=true autoclear=true
loop attach disk.cow ro=false autoclear=true
dm create paddock-vm1-origin uuid=paddock-vm1-origin: 0 131072 linear 7:0 0; 131072 393216 zero 
dm create paddock-vm1 uuid=paddock-vm1: 0 524288 snapshot 253:0 7:1 P 8
dm remove paddock-vm1-origin
loop detach /dev/loop1
loop detach /dev/loop0`,
			wantErr: true,
		},
		{
			name: "resize2fs fails: snapshot, then origin removed",
			size: 256 * mib,
			fail: map[string]error{"resize2fs": errors.New("resize2fs: bad superblock")},
			wantCalls: `loop attach disk.base ro=true autoclear=true
loop attach disk.cow ro=false autoclear=true
dm create paddock-vm1-origin uuid=paddock-vm1-origin: 0 131072 linear 7:0 0; 131072 393216 zero 
dm create paddock-vm1 uuid=paddock-vm1: 0 524288 snapshot 253:0 7:1 P 8
resize2fs /dev/dm-1 268435456
dm remove paddock-vm1
dm remove paddock-vm1-origin
loop detach /dev/loop1
loop detach /dev/loop0`,
			wantErr: true,
		},
		{
			name: "cow loop fails: base loop detached",
			size: 0,
			fail: map[string]error{"loop attach disk.cow": syscall.ENOSPC},
			wantCalls: `loop attach disk.base ro=true autoclear=true
loop attach disk.cow ro=false autoclear=true
loop detach /dev/loop0`,
			wantErr: true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeDM()
			for k, v := range tc.fail {
				f.r.fail[k] = v
			}
			base := fakeBase(t, 64*mib)
			vmDir := filepath.Join(t.TempDir(), "vm1")
			os.Mkdir(vmDir, 0o755)
			d, err := f.Create(context.Background(), vmDir, base, tc.size)
			if got := strings.Join(f.r.calls, "\n"); got != tc.wantCalls {
				t.Errorf("calls:\n%s\nwant:\n%s", got, tc.wantCalls)
			}
			if tc.wantErr {
				if err == nil {
					t.Fatal("Create succeeded")
				}
				if s := f.state(); s != "" {
					t.Errorf("left behind:\n%s", s)
				}
				if got := dirList(t, vmDir); len(got) != 0 {
					t.Errorf("vm dir holds %v", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(d.DM, tc.wantDM) || d.Path != fmt.Sprintf("/dev/dm-%d", len(tc.wantDM)-1) ||
				!slices.Equal(d.Loops, []string{"/dev/loop0", "/dev/loop1"}) || d.Format != FormatRaw {
				t.Errorf("disk %+v", d)
			}
			want := max(tc.size, 64*mib)
			if st, err := os.Stat(filepath.Join(vmDir, cowFile)); err != nil || st.Size() != cowSize(want) {
				t.Errorf("cow file: %v %v, want %d bytes", st, err, cowSize(want))
			}
			bst, _ := os.Stat(base)
			if lst, err := os.Stat(filepath.Join(vmDir, baseLink)); err != nil || !os.SameFile(bst, lst) {
				t.Errorf("disk.base is not a hard link to the base: %v", err)
			}

			// Release: devices top first, then the loops on our files, then files.
			f.r.calls = nil
			if err := f.Release(context.Background(), d); err != nil {
				t.Fatal(err)
			}
			wantRel := []string{"dm remove paddock-vm1"}
			if len(tc.wantDM) == 2 {
				wantRel = append(wantRel, "dm remove paddock-vm1-origin")
			}
			wantRel = append(wantRel, "loop detach /dev/loop1", "loop detach /dev/loop0")
			if !slices.Equal(f.r.calls, wantRel) {
				t.Errorf("release calls %q, want %q", f.r.calls, wantRel)
			}
			if s := f.state(); s != "" {
				t.Errorf("left behind:\n%s", s)
			}
			if got := dirList(t, vmDir); len(got) != 0 {
				t.Errorf("vm dir holds %v", got)
			}
			f.r.calls = nil
			if err := f.Release(context.Background(), d); err != nil || len(f.r.calls) != 0 {
				t.Errorf("second Release: %v, calls %q", err, f.r.calls)
			}
		})
	}
}

func TestDMBackendActivateDeactivate(t *testing.T) {
	f := newFakeDM()
	base := fakeBase(t, 64<<20)
	vmDir := filepath.Join(t.TempDir(), "vm1")
	os.Mkdir(vmDir, 0o755)
	d, err := f.Create(context.Background(), vmDir, base, 128<<20)
	if err != nil {
		t.Fatal(err)
	}
	// Live: Activate changes nothing.
	f.r.calls = nil
	a, err := f.Activate(context.Background(), d)
	if err != nil || a.Path != d.Path || len(f.r.calls) != 0 {
		t.Fatalf("Activate of a live disk: %+v %v %q", a, err, f.r.calls)
	}
	if err := f.Deactivate(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	if s := f.state(); s != "" {
		t.Fatalf("after Deactivate:\n%s", s)
	}
	if got := dirList(t, vmDir); !slices.Equal(got, []string{baseLink, cowFile}) {
		t.Fatalf("Deactivate touched files: %v", got)
	}
	// Back again over the same COW, without resize2fs (the grown file
	// system is in the COW already).
	f.r.calls = nil
	a, err = f.Activate(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(strings.Join(f.r.calls, "\n"), "resize2fs") || !strings.Contains(strings.Join(f.r.calls, "\n"), "snapshot") {
		t.Fatalf("reactivation calls %q", f.r.calls)
	}
	if a.Path == d.Path {
		t.Errorf("reactivated disk keeps the old path %s", a.Path)
	}
	// A half-made disk (crash after the origin): Activate clears it first.
	delete(f.m.devs, "paddock-vm1")
	f.r.calls = nil
	if _, err := f.Activate(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	if f.r.calls[0] != "dm remove paddock-vm1-origin" {
		t.Errorf("half-made disk not cleared first: %q", f.r.calls)
	}
	if err := f.Release(context.Background(), a); err != nil {
		t.Fatal(err)
	}
}

// Intent records: the plan alone releases everything Create may have made,
// and on a host without dm the files still go.
func TestDMBackendReleaseFromPlan(t *testing.T) {
	for _, noDM := range []bool{false, true} {
		f := newFakeDM()
		base := fakeBase(t, 64<<20)
		vmDir := filepath.Join(t.TempDir(), "vm1")
		os.Mkdir(vmDir, 0o755)
		plan := f.Plan(vmDir)
		if !slices.Equal(plan.DM, []string{"paddock-vm1", "paddock-vm1-origin"}) || len(plan.Files) != 2 {
			t.Fatalf("plan %+v", plan)
		}
		if !noDM {
			// Crash after the devices were made, before the result was recorded.
			if _, err := f.Create(context.Background(), vmDir, base, 128<<20); err != nil {
				t.Fatal(err)
			}
		} else {
			os.WriteFile(filepath.Join(vmDir, cowFile), nil, 0o600)
		}
		f.noDM = noDM
		if err := f.Release(context.Background(), plan); err != nil {
			t.Fatalf("noDM=%v: %v", noDM, err)
		}
		if s := f.state(); s != "" {
			t.Errorf("noDM=%v left:\n%s", noDM, s)
		}
		if got := dirList(t, vmDir); len(got) != 0 {
			t.Errorf("noDM=%v vm dir holds %v", noDM, got)
		}
	}
}

// A device still open (a VMM alive): removal is deferred, the files go, and
// Release says so; once closed, Release completes.
func TestDMBackendReleaseDeferred(t *testing.T) {
	f := newFakeDM()
	base := fakeBase(t, 64<<20)
	vmDir := filepath.Join(t.TempDir(), "vm1")
	os.Mkdir(vmDir, 0o755)
	d, err := f.Create(context.Background(), vmDir, base, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.m.open["paddock-vm1"] = true
	if err := f.Release(context.Background(), d); !errors.Is(err, dm.ErrDeferred) {
		t.Fatalf("Release of an open disk: %v, want ErrDeferred", err)
	}
	if got := dirList(t, vmDir); len(got) != 0 {
		t.Errorf("vm dir holds %v", got)
	}
	delete(f.m.open, "paddock-vm1")
	if err := f.Release(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.m.devs["paddock-vm1"]; ok {
		t.Error("device left")
	}
}

func TestDMBackendRejectsBadVMDir(t *testing.T) {
	f := newFakeDM()
	base := fakeBase(t, 64<<20)
	vmDir := filepath.Join(t.TempDir(), "vm with space")
	os.Mkdir(vmDir, 0o755)
	if _, err := f.Create(context.Background(), vmDir, base, 0); err == nil {
		t.Fatal("created a dm name with a space")
	}
	if len(f.r.calls) != 0 {
		t.Errorf("calls %q", f.r.calls)
	}
}
