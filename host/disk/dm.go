package disk

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"

	"github.com/paddock-vm/paddock/host/dm"
	"github.com/paddock-vm/paddock/host/loop"
	"github.com/paddock-vm/paddock/state"
	"golang.org/x/sys/unix"
)

const (
	cowFile      = "disk.cow"
	originSuffix = "-origin"
)

// loopOps and mapper are the kernel facilities the dm backend drives;
// unit tests replace them with recording fakes.
type loopOps interface {
	Attach(ctx context.Context, backing string, opts loop.Options) (*loop.Device, error)
	Find(backing string) ([]loop.Device, error)
	Detach(d *loop.Device) error
}

type mapper interface {
	Create(name, uuid string, table []dm.Target) (*dm.Device, error)
	Remove(ctx context.Context, name string) error
	Status(name string) (*dm.Device, error)
	Close() error
}

type kernelLoops struct{}

func (kernelLoops) Attach(ctx context.Context, backing string, opts loop.Options) (*loop.Device, error) {
	return loop.Attach(ctx, backing, opts)
}
func (kernelLoops) Find(backing string) ([]loop.Device, error) { return loop.Find(backing) }
func (kernelLoops) Detach(d *loop.Device) error                { return loop.Detach(d) }

// dmBackend: a persistent dm-snapshot whose origin is the base (on a
// read-only loop device) and whose exception store is a sparse COW file in
// the VM dir (on a read-write loop device). A disk larger than its base gets
// an origin device "linear base + zero" of the full size underneath.
//
//	paddock-<id>          snapshot  <origin> <cow loop> P 8
//	paddock-<id>-origin   linear <base loop> 0; zero        (only when grown)
type dmBackend struct {
	opts   Options
	loops  loopOps
	open   func() (mapper, error)
	devNum func(path string) (string, error)
	resize func(ctx context.Context, path string, size int64) error
}

func newDMBackend(opts Options) *dmBackend {
	return &dmBackend{
		opts:   opts,
		loops:  kernelLoops{},
		open:   func() (mapper, error) { return dm.Open() },
		devNum: blockDevNum,
		resize: func(ctx context.Context, path string, size int64) error {
			tool, err := findTool("resize2fs", opts.Resize2fs, "e2fsprogs")
			if err != nil {
				return err
			}
			return resize2fs(ctx, tool, path, size)
		},
	}
}

func (b *dmBackend) Name() string { return DM }

// dmNames are the device names of a VM dir: the snapshot, then its origin.
func dmNames(vmDir string) []string {
	top := dm.Prefix + vmID(vmDir)
	return []string{top, top + originSuffix}
}

var idRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$`)

func (b *dmBackend) Plan(vmDir string) *Disk {
	return &Disk{Backend: DM, Dir: vmDir, Format: FormatRaw, DM: dmNames(vmDir),
		Files: []string{filepath.Join(vmDir, cowFile), filepath.Join(vmDir, baseLink)}}
}

// cowSize is a COW file that holds every chunk of a disk of size bytes
// rewritten: a header chunk, the data chunks, and one metadata chunk per 256
// data chunks (16-byte exceptions in 4 KiB chunks), plus slack. It is sparse:
// it costs what the guest writes.
func cowSize(size int64) int64 {
	const chunk = dm.SnapshotChunk * dm.SectorSize
	n := (size + chunk - 1) / chunk
	return (1+n+(n+255)/256)*chunk + 1<<20
}

func (b *dmBackend) Create(ctx context.Context, vmDir, base string, size int64) (*Disk, error) {
	if err := checkVMDir(vmDir); err != nil {
		return nil, err
	}
	if !idRE.MatchString(vmID(vmDir)) {
		return nil, fmt.Errorf("disk: vm dir name %q cannot name a dm device", vmID(vmDir))
	}
	baseSize, err := baseInfo(base)
	if err != nil {
		return nil, err
	}
	d := b.Plan(vmDir)
	d.Base, d.Size = base, layerSize(baseSize, size)
	u := &undo{ctx: ctx}
	cow := d.Files[0]
	f, err := claim(cow)
	if err != nil {
		return nil, err
	}
	u.add(removeFile(cow))
	err = f.Truncate(cowSize(d.Size))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, u.fail(fmt.Errorf("disk: cow file: %w", err))
	}
	link := d.Files[1]
	if _, pinned, err := pinBase(base, vmDir); err != nil {
		return nil, u.fail(err)
	} else if pinned {
		u.add(removeFile(link))
	} else {
		dropFile(d, link)
	}
	out, err := b.activate(ctx, d, true)
	if err != nil {
		return nil, u.fail(err)
	}
	if err := state.SyncDir(vmDir); err != nil {
		return nil, u.fail(errors.Join(err, b.Deactivate(ctx, out)))
	}
	return out, nil
}

// Activate re-creates the devices over the existing COW file. A disk whose
// snapshot device is live is returned as is.
func (b *dmBackend) Activate(ctx context.Context, d *Disk) (*Disk, error) {
	if err := checkFiles(d); err != nil {
		return nil, err
	}
	if len(d.DM) == 0 || d.Size == 0 {
		return nil, fmt.Errorf("%w: dm disk without devices or size", ErrBadHandle)
	}
	m, err := b.open()
	if err != nil {
		return nil, fmt.Errorf("disk: activate: %w", err)
	}
	dev, err := m.Status(d.DM[0])
	m.Close()
	if err == nil && dev.Active {
		out := *d
		out.Path = dev.Path
		return &out, nil
	}
	// Half-made (crash) or gone: start from nothing.
	if err := b.Deactivate(ctx, d); err != nil {
		return nil, err
	}
	return b.activate(ctx, d, false)
}

// activate attaches the loops and builds the devices; grow runs resize2fs on
// the new snapshot (Create only: the grown file system lives in the COW).
func (b *dmBackend) activate(ctx context.Context, d *Disk, grow bool) (*Disk, error) {
	basePath := d.Base
	if link := filepath.Join(d.Dir, baseLink); slices.Contains(d.Files, link) {
		basePath = link
	}
	baseSize, err := baseInfo(basePath)
	if err != nil {
		return nil, err
	}
	cow := filepath.Join(d.Dir, cowFile)
	m, err := b.open()
	if err != nil {
		return nil, fmt.Errorf("disk: dm: %w", err)
	}
	defer m.Close()
	u := &undo{ctx: ctx}

	bl, err := b.loops.Attach(ctx, basePath, loop.Options{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("disk: base loop: %w", err)
	}
	// Our handles go at return: from then on the dm table holds the loops,
	// and autoclear drops them with it.
	defer bl.Close()
	u.add(func(context.Context) error { return b.loops.Detach(bl) })
	cl, err := b.loops.Attach(ctx, cow, loop.Options{})
	if err != nil {
		return nil, u.fail(fmt.Errorf("disk: cow loop: %w", err))
	}
	defer cl.Close()
	u.add(func(context.Context) error { return b.loops.Detach(cl) })
	baseDev, err := b.devNum(bl.Path)
	if err != nil {
		return nil, u.fail(err)
	}
	cowDev, err := b.devNum(cl.Path)
	if err != nil {
		return nil, u.fail(err)
	}

	names := dmNames(d.Dir)
	out := *d
	out.DM = []string{names[0]}
	out.Loops = []string{bl.Path, cl.Path}
	sectors, baseSectors := uint64(d.Size/dm.SectorSize), uint64(baseSize/dm.SectorSize)
	origin := baseDev
	if sectors > baseSectors {
		od, err := m.Create(names[1], names[1], []dm.Target{
			dm.LinearTarget(0, baseSectors, baseDev, 0),
			dm.ZeroTarget(baseSectors, sectors-baseSectors),
		})
		if err != nil {
			return nil, u.fail(fmt.Errorf("disk: origin device: %w", err))
		}
		u.add(func(ctx context.Context) error { return m.Remove(ctx, names[1]) })
		origin = fmt.Sprintf("%d:%d", od.Major, od.Minor)
		out.DM = append(out.DM, names[1])
	} else if sectors < baseSectors {
		return nil, u.fail(fmt.Errorf("disk: size %d is smaller than the base (%d)", d.Size, baseSize))
	}
	td, err := m.Create(names[0], names[0], []dm.Target{dm.SnapshotTarget(origin, cowDev, sectors)})
	if err != nil {
		return nil, u.fail(fmt.Errorf("disk: snapshot device: %w", err))
	}
	u.add(func(ctx context.Context) error { return m.Remove(ctx, names[0]) })
	out.Path = td.Path
	if grow && sectors > baseSectors {
		if err := b.resize(ctx, td.Path, d.Size); err != nil {
			return nil, u.fail(err)
		}
	}
	return &out, nil
}

// Deactivate removes the dm devices (snapshot first), then any loop device
// still backed by the VM's files. A device still open is left to the kernel
// to remove at its last close, and the error wraps dm.ErrDeferred.
func (b *dmBackend) Deactivate(ctx context.Context, d *Disk) error {
	if err := checkFiles(d); err != nil {
		return err
	}
	names := slices.Clone(d.DM)
	if d.Dir != "" {
		for _, n := range dmNames(d.Dir) {
			if !slices.Contains(names, n) {
				names = append(names, n)
			}
		}
	}
	var errs []error
	m, err := b.open()
	switch {
	case errors.Is(err, dm.ErrUnsupported):
		// No device-mapper here (now): none of its devices can exist.
	case err != nil:
		return fmt.Errorf("disk: deactivate: %w", err)
	default:
		for _, n := range names {
			if err := m.Remove(ctx, n); err != nil {
				errs = append(errs, err)
			}
		}
		m.Close()
	}
	// Loops on our files: normally gone with the devices (autoclear); this
	// catches a device attached without autoclear or held elsewhere. The
	// base loop of an unpinned base (shared path) is left to autoclear.
	for _, f := range []string{filepath.Join(d.Dir, cowFile), filepath.Join(d.Dir, baseLink)} {
		if d.Dir == "" {
			break
		}
		devs, err := b.loops.Find(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for i := range devs {
			if err := b.loops.Detach(&devs[i]); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("disk: deactivate %s: %w", d.Dir, errors.Join(errs...))
	}
	return nil
}

// Release deactivates and removes the files. When a device could only be
// scheduled for removal (still open), the files go anyway and the error
// wraps dm.ErrDeferred; calling Release again later returns nil once the
// device is gone.
func (b *dmBackend) Release(ctx context.Context, d *Disk) error {
	if err := checkFiles(d); err != nil {
		return err
	}
	err := b.Deactivate(ctx, d)
	if err != nil && !errors.Is(err, dm.ErrDeferred) {
		return err
	}
	return errors.Join(err, removeFiles(d))
}

// blockDevNum is a block device's "MAJ:MIN", as dm tables name devices.
func blockDevNum(path string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return "", fmt.Errorf("disk: stat %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return "", fmt.Errorf("disk: %s is not a block device", path)
	}
	return fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev)), nil
}

// removeFile is an undo step that deletes path.
func removeFile(path string) func(context.Context) error {
	return func(context.Context) error {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
}
