package disk

import (
	"context"
	"fmt"
	"io/fs"
	"path/filepath"
	"sort"
	"strings"
	"sync"
)

// Fake is a Backend for unit tests of callers (the Disk actor, reconcile). It
// touches nothing on the host: it records each call as a line of text, keeps
// the disks it made, and follows the real contract (Create refuses an
// existing layer, Release and Deactivate are idempotent, a failed Create
// leaves nothing). FailNext injects errors.
type Fake struct {
	name string

	mu    sync.Mutex
	calls []string
	disks map[string]*fakeDisk // by Dir
	fail  map[string]error
}

type fakeDisk struct {
	d      Disk
	active bool
}

// NewFake returns a fake backend that reports name (e.g. "copy").
func NewFake(name string) *Fake {
	return &Fake{name: name, disks: map[string]*fakeDisk{}, fail: map[string]error{}}
}

// FailNext makes the next call of op ("create", "activate", "deactivate",
// "release") fail with err.
func (f *Fake) FailNext(op string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail[op] = err
}

// Calls returns the recorded calls, oldest first.
func (f *Fake) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// State renders the disks that exist as sorted lines "<dir> active|inactive".
func (f *Fake) State() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var lines []string
	for dir, fd := range f.disks {
		st := "inactive"
		if fd.active {
			st = "active"
		}
		lines = append(lines, dir+" "+st)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func (f *Fake) Name() string { return f.name }

func (f *Fake) Plan(vmDir string) *Disk {
	p := filepath.Join(vmDir, "disk."+f.name)
	return &Disk{Backend: f.name, Dir: vmDir, Path: p, Format: FormatRaw, Files: []string{p}}
}

func (f *Fake) call(op, format string, args ...any) error {
	f.calls = append(f.calls, op+" "+fmt.Sprintf(format, args...))
	if err, ok := f.fail[op]; ok {
		delete(f.fail, op)
		return err
	}
	return nil
}

func (f *Fake) Create(ctx context.Context, vmDir, base string, size int64) (*Disk, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("create", "%s base=%s size=%d", vmDir, base, size); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if _, ok := f.disks[vmDir]; ok {
		return nil, fmt.Errorf("disk: create %s: %w", vmDir, fs.ErrExist)
	}
	d := f.Plan(vmDir)
	d.Base, d.Size = base, size
	f.disks[vmDir] = &fakeDisk{d: *d, active: true}
	return d, nil
}

func (f *Fake) Activate(ctx context.Context, d *Disk) (*Disk, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("activate", "%s", d.Dir); err != nil {
		return nil, err
	}
	fd, ok := f.disks[d.Dir]
	if !ok {
		return nil, fmt.Errorf("disk: activate %s: %w", d.Dir, fs.ErrNotExist)
	}
	fd.active = true
	out := fd.d
	return &out, nil
}

func (f *Fake) Deactivate(ctx context.Context, d *Disk) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("deactivate", "%s", d.Dir); err != nil {
		return err
	}
	if fd, ok := f.disks[d.Dir]; ok {
		fd.active = false
	}
	return nil
}

func (f *Fake) Release(ctx context.Context, d *Disk) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("release", "%s", d.Dir); err != nil {
		return err
	}
	delete(f.disks, d.Dir)
	return nil
}

var (
	_ Backend = (*Fake)(nil)
	_ Backend = (*fileBackend)(nil)
	_ Backend = (*qcow2Backend)(nil)
	_ Backend = (*dmBackend)(nil)
)
