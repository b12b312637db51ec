// Package disk makes each VM's copy-on-write disk over a read-only ext4 image
// base. Four backends, chosen by the config key disk_backend:
//
//	reflink  FICLONE of the base into the VM dir (xfs, btrfs): milliseconds,
//	         no extra space until the guest writes. Raw.
//	qcow2    a qcow2 overlay whose backing file is the base
//	         (qemu-img create -f qcow2 -F raw -b …): milliseconds, QEMU only.
//	dm       a device-mapper snapshot over two loop devices (base read-only,
//	         a sparse COW file): milliseconds, raw for any VMM; needs
//	         CAP_SYS_ADMIN and a kernel with dm-snapshot.
//	copy     a sparse copy (SEEK_DATA/SEEK_HOLE + copy_file_range): the
//	         last resort, about 0.6 s per 200 MB of base content.
//
// "auto" takes the first usable one in that order (Probe says why the others
// are not usable).
//
// # Size
//
// A VM's disk is never smaller than its base. When the requested size is
// larger, the layer grows: reflink and copy truncate the file and run
// resize2fs on it; dm puts a linear+zero origin of the requested size under
// the snapshot and runs resize2fs on the snapshot device (the COW file is
// sized so the whole disk can be rewritten); qcow2 gets the requested virtual
// size from qemu-img but its file system cannot be grown on the host without
// qemu-nbd, so Disk.GuestResize asks the guest to grow it (resize2fs on the
// mounted root, or EXT4_IOC_RESIZE_FS) at boot.
//
// # Durable handles and crash safety
//
// Disk is the handle the daemon persists. Every name it holds is
// deterministic: Plan returns it before anything exists, so the caller writes
// its intent first, then calls Create, then records the result. Release,
// Deactivate and Activate work from a Disk decoded from JSON (or from the
// plan alone) and are idempotent. Files live only in the VM directory and are
// called disk.*. Loop devices are attached with autoclear, so the kernel
// drops them with the dm device that holds them, or when paddockd dies before
// handing them to one. A failed Create removes what it made.
package disk

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/paddock-vm/paddock/errdefs"
	"github.com/paddock-vm/paddock/internal/sbin"
	"github.com/paddock-vm/paddock/state"
)

// Backend names, as written in the config (disk_backend).
const (
	Auto    = "auto"
	Reflink = "reflink"
	QCOW2   = "qcow2"
	DM      = "dm"
	Copy    = "copy"
)

// Order is the preference of "auto": cheapest first.
var Order = []string{Reflink, QCOW2, DM, Copy}

// Formats of Disk.Path.
const (
	FormatRaw   = "raw"
	FormatQCOW2 = "qcow2"
)

var (
	// ErrUnsupported: the backend cannot work on this host; the error
	// carries the reason (Probe's).
	ErrUnsupported = errdefs.New(errdefs.ErrUnavailable, "disk backend unsupported here")
	// ErrBadHandle: a Disk that names files outside its directory, or is
	// otherwise unusable, so nothing was touched.
	ErrBadHandle = errdefs.New(errdefs.ErrInvalidArgument, "bad disk handle")
)

// Disk is a VM's copy-on-write disk: what the VMM opens and every host object
// behind it. It is the persisted handle (JSON).
type Disk struct {
	Backend string `json:"backend"`
	// Dir is the VM directory holding Files.
	Dir string `json:"dir"`
	// Path is what the VMM opens: a file in Dir or a /dev/dm-N node.
	Path string `json:"path,omitempty"`
	// Format of Path: "raw" or "qcow2".
	Format string `json:"format"`
	// Size is the virtual disk size in bytes (0 in a plan).
	Size int64 `json:"size,omitempty"`
	// Base is the image base the layer was made from (outside Dir).
	Base string `json:"base,omitempty"`
	// Files are the layer's files, all inside Dir and named disk.*.
	Files []string `json:"files,omitempty"`
	// Loops are the loop devices (dm backend), for the record: teardown
	// finds them by their backing files, which are in Files.
	Loops []string `json:"loops,omitempty"`
	// DM are the device-mapper devices (name = uuid), top first, which is
	// the removal order. A plan lists every name Create may use.
	DM []string `json:"dm,omitempty"`
	// GuestResize: the disk is larger than its file system, which the guest
	// grows at boot (qcow2).
	GuestResize bool `json:"guest_resize,omitempty"`
}

// Backend makes and releases VM disks.
type Backend interface {
	// Name is the config name ("dm", "reflink", "qcow2", "copy").
	Name() string
	// Plan returns the handle Create(vmDir, …) will fill in: files and
	// device names, without touching anything. Persist it before Create.
	Plan(vmDir string) *Disk
	// Create makes the VM's layer over base, at least size bytes (never
	// smaller than base), ready for the VMM. It refuses to overwrite an
	// existing layer (fs.ErrExist) and leaves nothing behind on failure.
	Create(ctx context.Context, vmDir, base string, size int64) (*Disk, error)
	// Activate brings an existing layer back after Deactivate or a host
	// reboot (dm: loop and dm devices; others: a check). It may change
	// Path, so persist the result. Idempotent.
	Activate(ctx context.Context, d *Disk) (*Disk, error)
	// Deactivate removes the host objects (loop, dm) and keeps the files.
	// Idempotent; a no-op for file backends.
	Deactivate(ctx context.Context, d *Disk) error
	// Release removes host objects and files. Idempotent: what is gone is
	// done.
	Release(ctx context.Context, d *Disk) error
}

// Options configure the backends.
type Options struct {
	// Dir is where VM directories live (state dir/vms); Probe tests reflink
	// and writability there.
	Dir string
	// BaseDir is where image bases live (state dir/images); reflink and
	// the hard links that pin a base need it on Dir's file system. Empty
	// means Dir.
	BaseDir string
	// QCOW2 says the VMM reads qcow2 (QEMU). Without it the qcow2 backend is
	// unusable.
	QCOW2 bool
	// Resize2fs and QemuImg are tool paths; empty means looked up in PATH,
	// /usr/sbin and /sbin.
	Resize2fs string
	QemuImg   string
}

// cleanupTimeout bounds the undo work of a failed Create, which runs even
// when the caller's context is cancelled.
const cleanupTimeout = 30 * time.Second

// Get returns the named backend without probing: for a disk that already
// exists, whatever the configured backend is now.
func Get(name string, opts Options) (Backend, error) {
	switch name {
	case Copy:
		return &fileBackend{name: Copy, opts: opts, clone: sparseCopyFile}, nil
	case Reflink:
		return &fileBackend{name: Reflink, opts: opts, clone: reflinkFile}, nil
	case QCOW2:
		return &qcow2Backend{opts: opts}, nil
	case DM:
		return newDMBackend(opts), nil
	}
	return nil, fmt.Errorf("disk: unknown backend %q (want auto, %s)", name, strings.Join(Order, ", "))
}

// ForDisk returns the backend that made d.
func ForDisk(d *Disk, opts Options) (Backend, error) {
	if d == nil {
		return nil, fmt.Errorf("%w: nil", ErrBadHandle)
	}
	return Get(d.Backend, opts)
}

// Status is one backend's usability on this host.
type Status struct {
	Name   string `json:"name"`
	Usable bool   `json:"usable"`
	// Reason says why the backend is unusable (empty when usable).
	Reason string `json:"reason,omitempty"`
}

func (s Status) String() string {
	if s.Usable {
		return s.Name + ": usable"
	}
	return s.Name + ": unusable: " + s.Reason
}

// Probe reports every backend's usability, in Order.
func Probe(ctx context.Context, opts Options) []Status {
	out := make([]Status, 0, len(Order))
	for _, name := range Order {
		var err error
		switch name {
		case Reflink:
			err = probeReflink(opts)
		case QCOW2:
			err = probeQCOW2(opts)
		case DM:
			err = probeDM(opts)
		case Copy:
			err = probeCopy(opts)
		}
		st := Status{Name: name, Usable: err == nil}
		if err != nil {
			st.Reason = strings.TrimPrefix(err.Error(), ErrUnsupported.Error()+": ")
		}
		out = append(out, st)
	}
	return out
}

// New returns the backend for the config value name. "auto" probes and takes
// the first usable backend in Order; a named backend must be usable. The
// probe results come back either way, for the log.
func New(ctx context.Context, name string, opts Options) (Backend, []Status, error) {
	if name == "" {
		name = Auto
	}
	if name != Auto {
		if _, err := Get(name, opts); err != nil {
			return nil, nil, err
		}
	}
	st := Probe(ctx, opts)
	for _, s := range st {
		if (name == Auto || s.Name == name) && s.Usable {
			b, err := Get(s.Name, opts)
			return b, st, err
		}
		if s.Name == name {
			return nil, st, fmt.Errorf("disk: backend %s: %w: %s", name, ErrUnsupported, s.Reason)
		}
	}
	return nil, st, fmt.Errorf("disk: %w: no backend is usable here (%v)", ErrUnsupported, st)
}

// vmID is the VM directory's name, used in device names.
func vmID(vmDir string) string { return filepath.Base(filepath.Clean(vmDir)) }

// checkVMDir validates the directory Create works in.
func checkVMDir(vmDir string) error {
	if !filepath.IsAbs(vmDir) {
		return fmt.Errorf("disk: vm dir %q is not absolute", vmDir)
	}
	st, err := os.Stat(vmDir)
	if err != nil {
		return fmt.Errorf("disk: vm dir: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("disk: vm dir %s is not a directory", vmDir)
	}
	return nil
}

// checkFiles refuses a handle whose files are not disk.* directly inside its
// Dir: Release deletes them, and a handle may come from a damaged file.
func checkFiles(d *Disk) error {
	if d == nil {
		return fmt.Errorf("%w: nil", ErrBadHandle)
	}
	if len(d.Files) > 0 && !filepath.IsAbs(d.Dir) {
		return fmt.Errorf("%w: dir %q is not absolute", ErrBadHandle, d.Dir)
	}
	for _, f := range d.Files {
		if filepath.Dir(f) != filepath.Clean(d.Dir) || !strings.HasPrefix(filepath.Base(f), "disk.") {
			return fmt.Errorf("%w: file %q is not a disk.* file in %s", ErrBadHandle, f, d.Dir)
		}
	}
	return nil
}

// baseInfo checks the base and returns its size.
func baseInfo(base string) (int64, error) {
	st, err := os.Stat(base)
	if err != nil {
		return 0, fmt.Errorf("disk: base: %w", err)
	}
	if !st.Mode().IsRegular() {
		return 0, fmt.Errorf("disk: base %s is not a regular file", base)
	}
	if st.Size() == 0 || st.Size()%4096 != 0 {
		return 0, fmt.Errorf("disk: base %s: size %d is not a positive multiple of 4096", base, st.Size())
	}
	return st.Size(), nil
}

// layerSize is the disk size for a request: size rounded up to 4 KiB, never
// below the base.
func layerSize(baseSize, size int64) int64 {
	if size < 0 {
		size = 0
	}
	size = (size + 4095) &^ 4095
	return max(size, baseSize)
}

// findTool resolves a helper binary.
func findTool(name, given, pkg string) (string, error) {
	if given != "" {
		return given, nil
	}
	p, err := sbin.Look(name)
	if err != nil {
		return "", fmt.Errorf("%w: %s not found (install %s)", ErrUnsupported, name, pkg)
	}
	return p, nil
}

// run executes a tool; a failure carries its output.
func run(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", filepath.Base(name), ctx.Err())
		}
		msg := strings.TrimSpace(string(out))
		if len(msg) > 2048 {
			msg = msg[:2048] + "…"
		}
		return fmt.Errorf("%s %s: %v: %s", filepath.Base(name), strings.Join(args, " "), err, msg)
	}
	return nil
}

// resize2fs grows the ext4 file system in path (file or block device) to
// size bytes.
func resize2fs(ctx context.Context, tool, path string, size int64) error {
	if err := run(ctx, tool, path, fmt.Sprintf("%dK", size/1024)); err != nil {
		return fmt.Errorf("disk: grow file system: %w", err)
	}
	return nil
}

// undo collects cleanup steps of a Create and runs them, newest first, on
// failure, under a context that ignores the caller's cancellation.
type undo struct {
	ctx   context.Context
	steps []func(context.Context) error
}

func (u *undo) add(f func(context.Context) error) { u.steps = append(u.steps, f) }

// fail runs the steps and returns err, annotated with any cleanup failure.
func (u *undo) fail(err error) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(u.ctx), cleanupTimeout)
	defer cancel()
	var errs []error
	for i := len(u.steps) - 1; i >= 0; i-- {
		if e := u.steps[i](ctx); e != nil {
			errs = append(errs, e)
		}
	}
	u.steps = nil
	if len(errs) > 0 {
		return fmt.Errorf("%w (cleanup: %w)", err, errors.Join(errs...))
	}
	return err
}

// claim creates path exclusively, so Create never overwrites a layer.
func claim(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("disk: create %s: %w", path, err)
	}
	return f, nil
}

// removeFiles deletes a handle's files; missing ones are fine.
func removeFiles(d *Disk) error {
	var errs []error
	for _, f := range d.Files {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if len(d.Files) > 0 {
		if err := state.SyncDir(d.Dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("disk: release %s: %w", d.Dir, errors.Join(errs...))
	}
	return nil
}
