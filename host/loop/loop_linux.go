package loop

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

const (
	controlPath    = "/dev/loop-control"
	sysBlock       = "/sys/block"
	maxAttempts    = 100
	deletedSuffix  = " (deleted)"
	maxBackoffStep = time.Millisecond
)

// attacher is Attach with its kernel entry points swappable, so tests can
// force the EBUSY race and the pre-5.8 path on a kernel that has neither.
type attacher struct {
	// getFree returns a free device number (LOOP_CTL_GET_FREE).
	getFree func(ctl *os.File) (int, error)
	// legacy skips LOOP_CONFIGURE, as on kernels before 5.8.
	legacy bool
	// busy counts EBUSY retries.
	busy atomic.Int64
}

var std = &attacher{getFree: ctlGetFree}

func ctlGetFree(ctl *os.File) (int, error) {
	return unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
}

// Attach binds backing to a free loop device and returns it with this
// process's handle open (see Device.Close). When another process takes the
// same free device first (EBUSY), Attach asks for a new one, with a small
// random back-off, until ctx ends.
func Attach(ctx context.Context, backing string, opts Options) (*Device, error) {
	return std.attach(ctx, backing, opts)
}

func (a *attacher) attach(ctx context.Context, backing string, opts Options) (*Device, error) {
	abs, err := resolve(backing)
	if err != nil {
		return nil, fmt.Errorf("loop: attach %s: %w", backing, err)
	}
	mode := os.O_RDWR
	if opts.ReadOnly {
		mode = os.O_RDONLY
	}
	bf, err := os.OpenFile(abs, mode|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("loop: attach: open backing file: %w", err)
	}
	defer bf.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(bf.Fd()), &st); err != nil {
		return nil, fmt.Errorf("loop: attach: stat %s: %w", abs, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG && st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return nil, fmt.Errorf("loop: attach %s: not a regular file or block device", abs)
	}
	ctl, err := os.OpenFile(controlPath, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	defer ctl.Close()

	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("loop: attach %s: %w", abs, err)
		}
		n, err := a.getFree(ctl)
		if err != nil {
			return nil, fmt.Errorf("loop: attach %s: LOOP_CTL_GET_FREE: %w", abs, err)
		}
		d, err := a.configure(n, bf, abs, mode, opts)
		if err == nil {
			d.Inode, d.Dev = st.Ino, st.Dev
			return d, nil
		}
		if !errors.Is(err, unix.EBUSY) || attempt == maxAttempts {
			return nil, fmt.Errorf("loop: attach %s: %w", abs, err)
		}
		// Another process configured the device between GET_FREE and ours.
		a.busy.Add(1)
		wait := time.Duration(rand.Int64N(int64(min(attempt, 10)) * int64(maxBackoffStep)))
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
}

// configure binds bf to loop device n. A device that is already bound gives
// an error wrapping EBUSY.
func (a *attacher) configure(n int, bf *os.File, abs string, mode int, opts Options) (*Device, error) {
	f, err := openNode(n, mode)
	if err != nil {
		return nil, err
	}
	fd := int(f.Fd())
	var cfg unix.LoopConfig
	cfg.Fd = uint32(bf.Fd())
	copy(cfg.Info.File_name[:len(cfg.Info.File_name)-1], abs)
	if opts.ReadOnly {
		cfg.Info.Flags |= unix.LO_FLAGS_READ_ONLY
	}
	if !opts.NoAutoclear {
		cfg.Info.Flags |= unix.LO_FLAGS_AUTOCLEAR
	}
	if opts.DirectIO {
		cfg.Info.Flags |= unix.LO_FLAGS_DIRECT_IO
	}
	d := &Device{Path: f.Name(), Number: n, Backing: abs, ReadOnly: opts.ReadOnly, Autoclear: !opts.NoAutoclear, file: f}

	if !a.legacy {
		err := unix.IoctlLoopConfigure(fd, &cfg)
		if err == nil {
			return d, nil
		}
		// Kernels before 5.8 answer EINVAL (or ENOTTY) to the unknown ioctl.
		if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOTTY) {
			f.Close()
			return nil, fmt.Errorf("LOOP_CONFIGURE %s: %w", f.Name(), err)
		}
	}
	// LOOP_SET_FD takes read-only from the backing file's open mode.
	if err := unix.IoctlSetInt(fd, unix.LOOP_SET_FD, int(bf.Fd())); err != nil {
		f.Close()
		return nil, fmt.Errorf("LOOP_SET_FD %s: %w", f.Name(), err)
	}
	info := cfg.Info
	info.Flags &= unix.LOOP_SET_STATUS_SETTABLE_FLAGS
	if err := unix.IoctlLoopSetStatus64(fd, &info); err != nil {
		_ = unix.IoctlSetInt(fd, unix.LOOP_CLR_FD, 0)
		f.Close()
		return nil, fmt.Errorf("LOOP_SET_STATUS64 %s: %w", f.Name(), err)
	}
	if opts.DirectIO {
		// Best effort, as LOOP_CONFIGURE does: file systems without O_DIRECT
		// keep buffered I/O.
		_ = unix.IoctlSetInt(fd, unix.LOOP_SET_DIRECT_IO, 1)
	}
	return d, nil
}

// openNode opens /dev/loopN, creating the node from sysfs when no devtmpfs
// made it (a minimal /dev in a container).
func openNode(n int, mode int) (*os.File, error) {
	path := "/dev/loop" + strconv.Itoa(n)
	f, err := os.OpenFile(path, mode|unix.O_CLOEXEC, 0)
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		return f, err
	}
	b, rerr := os.ReadFile(filepath.Join(sysBlock, "loop"+strconv.Itoa(n), "dev"))
	if rerr != nil {
		return nil, err
	}
	var major, minor uint32
	if _, serr := fmt.Sscanf(strings.TrimSpace(string(b)), "%d:%d", &major, &minor); serr != nil {
		return nil, err
	}
	if merr := unix.Mknod(path, unix.S_IFBLK|0o660, int(unix.Mkdev(major, minor))); merr != nil && !errors.Is(merr, unix.EEXIST) {
		return nil, fmt.Errorf("mknod %s: %w", path, merr)
	}
	return os.OpenFile(path, mode|unix.O_CLOEXEC, 0)
}

// Detach clears the loop device and closes this process's handle on it. It is
// idempotent: a device that is gone or unbound is success. When dev carries
// the backing file's identity (Inode, or else Backing) and the kernel reports
// a different file, the device was reused by someone else after we lost it:
// Detach leaves it alone and succeeds. If something else still holds the
// device open the kernel defers the clear to its last close (autoclear).
func Detach(dev *Device) error {
	if dev == nil {
		return nil
	}
	_ = dev.Close()
	f, err := os.OpenFile(dev.Path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		if gone(err) {
			return nil
		}
		return fmt.Errorf("loop: detach %s: %w", dev.Path, err)
	}
	defer f.Close()
	fd := int(f.Fd())
	info, err := unix.IoctlLoopGetStatus64(fd)
	if err != nil {
		if gone(err) {
			return nil
		}
		return fmt.Errorf("loop: detach %s: LOOP_GET_STATUS64: %w", dev.Path, err)
	}
	switch {
	case dev.Inode != 0:
		if info.Inode != dev.Inode || info.Device != dev.Dev {
			return nil
		}
	case dev.Backing != "":
		cur, _, err := readBacking(filepath.Join(sysBlock, filepath.Base(dev.Path)))
		if err != nil || cur != dev.Backing {
			return nil
		}
	}
	if err := unix.IoctlSetInt(fd, unix.LOOP_CLR_FD, 0); err != nil && !gone(err) {
		return fmt.Errorf("loop: detach %s: LOOP_CLR_FD: %w", dev.Path, err)
	}
	return nil
}

// gone: the device node or its binding no longer exists.
func gone(err error) bool {
	return errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENXIO) || errors.Is(err, unix.ENODEV)
}

// List returns every bound loop device on the host, by number.
func List() ([]Device, error) { return scan(sysBlock, "") }

// Find returns the loop devices whose backing file is backing (symlinks
// resolved, as the kernel reports it), including devices whose file has
// since been unlinked. The daemon's orphan sweep lists devices with List and
// keeps those whose Backing lies under its state directory.
func Find(backing string) ([]Device, error) {
	abs, err := resolve(backing)
	if err != nil {
		return nil, fmt.Errorf("loop: find %s: %w", backing, err)
	}
	return scan(sysBlock, abs)
}

// resolve makes path absolute and resolves symlinks where it still exists.
func resolve(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		return r, nil
	}
	return abs, nil
}

// scan reads root (a /sys/block) for bound loop devices, keeping those
// backed by want when it is set.
func scan(root, want string) ([]Device, error) {
	ents, err := os.ReadDir(root)
	if err != nil {
		return nil, fmt.Errorf("loop: list: %w", err)
	}
	var out []Device
	for _, e := range ents {
		n, ok := loopNumber(e.Name())
		if !ok {
			continue
		}
		dir := filepath.Join(root, e.Name())
		backing, deleted, err := readBacking(dir)
		if err != nil {
			continue // unbound, or detached while we looked
		}
		if want != "" && backing != want {
			continue
		}
		d := Device{Path: "/dev/" + e.Name(), Number: n, Backing: backing, BackingDeleted: deleted,
			ReadOnly: readFlag(filepath.Join(dir, "ro")), Autoclear: readFlag(filepath.Join(dir, "loop", "autoclear"))}
		if root == sysBlock {
			if f, err := os.OpenFile(d.Path, os.O_RDONLY|unix.O_CLOEXEC, 0); err == nil {
				if info, err := unix.IoctlLoopGetStatus64(int(f.Fd())); err == nil {
					d.Inode, d.Dev = info.Inode, info.Device
				}
				f.Close()
			}
		}
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Number < out[j].Number })
	return out, nil
}

func loopNumber(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, "loop")
	if !ok || rest == "" {
		return 0, false
	}
	n, err := strconv.Atoi(rest)
	return n, err == nil && n >= 0
}

// readBacking returns a bound device's backing file from sysfs.
func readBacking(dir string) (path string, deleted bool, err error) {
	b, err := os.ReadFile(filepath.Join(dir, "loop", "backing_file"))
	if err != nil {
		return "", false, err
	}
	s := strings.TrimSuffix(string(b), "\n")
	if s == "" {
		return "", false, os.ErrNotExist
	}
	if p, ok := strings.CutSuffix(s, deletedSuffix); ok {
		return p, true, nil
	}
	return s, false, nil
}

func readFlag(path string) bool {
	b, err := os.ReadFile(path)
	return err == nil && strings.TrimSpace(string(b)) == "1"
}
