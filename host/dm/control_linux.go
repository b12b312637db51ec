package dm

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const flagUUID = 1 << 14 // DM_UUID_FLAG: DM_LIST_DEVICES reports uuids (4.46+)

// ioctler sends one request buffer to the control device; the kernel answers
// in the same buffer. Tests replace the kernel with a fake.
type ioctler interface {
	ioctl(cmd uint, buf []byte) error
}

type controlFile struct{ f *os.File }

func (c controlFile) ioctl(cmd uint, buf []byte) error {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, c.f.Fd(), uintptr(cmd), uintptr(unsafe.Pointer(&buf[0])))
	if e != 0 {
		return e
	}
	return nil
}

// Client talks to the device-mapper control device. It is safe for use by
// one goroutine at a time; the kernel serialises concurrent clients.
type Client struct {
	ctl   ioctler
	close func() error
	// node makes sure a new device's node exists (ensureNode for the
	// kernel; nil for fakes, which must not touch /dev).
	node func(*Device) error
	// Remove retries EBUSY this many times, removeWait apart, before it
	// falls back to a deferred removal.
	removeTries int
	removeWait  time.Duration
}

func newClient(ctl ioctler, close func() error) *Client {
	return &Client{ctl: ctl, close: close, removeTries: 5, removeWait: 100 * time.Millisecond}
}

// Open opens the control device and checks the interface version. Without
// kernel support, node or privilege it returns an error wrapping
// ErrUnsupported that says which.
func Open() (*Client, error) {
	f, err := os.OpenFile(ControlPath, os.O_RDWR|unix.O_CLOEXEC, 0)
	if errors.Is(err, fs.ErrNotExist) {
		minor, ok, merr := miscMinor("/proc/misc", "device-mapper")
		if merr != nil || !ok {
			return nil, fmt.Errorf("%w: kernel has no device-mapper (no device-mapper in /proc/misc)", ErrUnsupported)
		}
		// A /dev without the node (a container): make it, as dmsetup mknodes would.
		if err := os.MkdirAll(filepath.Dir(ControlPath), 0o755); err != nil {
			return nil, fmt.Errorf("%w: no %s and cannot create it: %w", ErrUnsupported, ControlPath, err)
		}
		if err := unix.Mknod(ControlPath, unix.S_IFCHR|0o600, int(unix.Mkdev(10, minor))); err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("%w: no %s and cannot create it: %w", ErrUnsupported, ControlPath, err)
		}
		f, err = os.OpenFile(ControlPath, os.O_RDWR|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: open %s: %w (device-mapper needs CAP_SYS_ADMIN)", ErrUnsupported, ControlPath, err)
	}
	c := newClient(controlFile{f}, f.Close)
	c.node = ensureNode
	if _, err := c.Version(); err != nil {
		f.Close()
		return nil, fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	return c, nil
}

// Probe reports whether device-mapper with the given target types can be
// used here; the error wraps ErrUnsupported and gives the reason.
func Probe(targets ...string) error {
	c, err := Open()
	if err != nil {
		return err
	}
	defer c.Close()
	for _, t := range targets {
		if _, err := c.TargetVersion(t); err != nil {
			return err
		}
	}
	return nil
}

// miscMinor finds name in a /proc/misc listing ("236 device-mapper").
func miscMinor(path, name string) (uint32, bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 2 && fields[1] == name {
			n, err := strconv.ParseUint(fields[0], 10, 32)
			return uint32(n), err == nil, err
		}
	}
	return 0, false, sc.Err()
}

// Close closes the control device.
func (c *Client) Close() error {
	if c.close == nil {
		return nil
	}
	err := c.close()
	c.close = nil
	return err
}

func (c *Client) do(cmd uint, h header, data []byte, size int) (header, []byte, error) {
	buf, err := encode(h, data, size)
	if err != nil {
		return header{}, nil, err
	}
	if err := c.ctl.ioctl(cmd, buf); err != nil {
		return header{}, nil, err
	}
	out, err := decodeHeader(buf)
	return out, buf, err
}

// Version returns the kernel's device-mapper ioctl interface version.
func (c *Client) Version() ([3]uint32, error) {
	h, _, err := c.do(cmdVersion, header{}, nil, 0)
	if err != nil {
		return [3]uint32{}, fmt.Errorf("dm: DM_VERSION: %w", err)
	}
	return h.Version, nil
}

// TargetVersion returns the version of a target type, loading its module if
// needed. A kernel without that target gives an error wrapping
// ErrUnsupported.
func (c *Client) TargetVersion(target string) ([3]uint32, error) {
	_, buf, err := c.do(cmdGetTargetVersion, header{Name: target}, nil, 4096)
	if errors.Is(err, unix.ENOTTY) {
		// Before Linux 5.2 (interface 4.41): list the loaded targets.
		_, buf, err = c.do(cmdListVersions, header{}, nil, 16<<10)
	}
	if errors.Is(err, unix.EINVAL) {
		return [3]uint32{}, fmt.Errorf("%w: kernel has no dm-%s target", ErrUnsupported, target)
	}
	if err != nil {
		return [3]uint32{}, fmt.Errorf("dm: target version %s: %w", target, err)
	}
	p, err := payload(buf)
	if err != nil {
		return [3]uint32{}, err
	}
	vs, err := parseTargetVersions(p)
	if err != nil {
		return [3]uint32{}, err
	}
	v, ok := vs[target]
	if !ok {
		return [3]uint32{}, fmt.Errorf("%w: kernel has no dm-%s target", ErrUnsupported, target)
	}
	return v, nil
}

// Create makes device name with uuid and activates table. The uuid must
// start with Prefix so every device paddock makes can be found again. On
// failure the half-made device is removed. A name or uuid already in use
// gives an error wrapping ErrExists.
func (c *Client) Create(name, uuid string, table []Target) (*Device, error) {
	if !strings.HasPrefix(uuid, Prefix) {
		return nil, fmt.Errorf("dm: create %s: uuid %q must start with %q", name, uuid, Prefix)
	}
	if err := checkName(name); err != nil {
		return nil, err
	}
	if err := checkUUID(uuid); err != nil {
		return nil, err
	}
	data, err := encodeTargets(table)
	if err != nil {
		return nil, fmt.Errorf("dm: create %s: %w", name, err)
	}
	if len(table) == 0 {
		return nil, fmt.Errorf("dm: create %s: empty table", name)
	}
	if _, _, err := c.do(cmdDevCreate, header{Name: name, UUID: uuid}, nil, 0); err != nil {
		if errors.Is(err, unix.EBUSY) {
			return nil, fmt.Errorf("dm: create %s: %w", name, ErrExists)
		}
		return nil, fmt.Errorf("dm: create %s: DM_DEV_CREATE: %w", name, err)
	}
	undo := func(err error) (*Device, error) {
		if rerr := c.Remove(context.Background(), name); rerr != nil {
			return nil, fmt.Errorf("%w (and removing it again: %v)", err, rerr)
		}
		return nil, err
	}
	if _, _, err := c.do(cmdTableLoad, header{Name: name, TargetCount: uint32(len(table))}, data, 0); err != nil {
		return undo(fmt.Errorf("dm: create %s: DM_TABLE_LOAD %q: %w", name, tableString(table), err))
	}
	// DM_DEV_SUSPEND without DM_SUSPEND_FLAG resumes: the loaded table goes live.
	h, _, err := c.do(cmdDevSuspend, header{Name: name}, nil, 0)
	if err != nil {
		return undo(fmt.Errorf("dm: create %s: resume: %w", name, err))
	}
	d := deviceOf(h)
	if c.node != nil {
		if err := c.node(d); err != nil {
			return undo(fmt.Errorf("dm: create %s: %w", name, err))
		}
	}
	return d, nil
}

// CreateSnapshot makes a persistent snapshot device over origin with cow as
// its exception store (see SnapshotTarget), sizeSectors long (the origin's
// size).
func (c *Client) CreateSnapshot(name, uuid, origin, cow string, sizeSectors uint64) (*Device, error) {
	if strings.ContainsAny(origin+cow, " \t") || origin == "" || cow == "" {
		return nil, fmt.Errorf("dm: snapshot %s: bad origin %q or cow %q", name, origin, cow)
	}
	return c.Create(name, uuid, []Target{SnapshotTarget(origin, cow, sizeSectors)})
}

func tableString(ts []Target) string {
	s := make([]string, len(ts))
	for i, t := range ts {
		s[i] = t.String()
	}
	return strings.Join(s, "; ")
}

func deviceOf(h header) *Device {
	maj, min := unix.Major(h.Dev), unix.Minor(h.Dev)
	return &Device{
		Name: h.Name, UUID: h.UUID, Major: maj, Minor: min,
		Path:      "/dev/dm-" + strconv.FormatUint(uint64(min), 10),
		OpenCount: h.OpenCount, TargetCount: h.TargetCount,
		Active:         h.Flags&flagActivePresent != 0,
		Suspended:      h.Flags&flagSuspend != 0,
		ReadOnly:       h.Flags&flagReadOnly != 0,
		DeferredRemove: h.Flags&flagDeferredRemove != 0,
	}
}

// ensureNode checks that /dev/dm-N is the device's node. devtmpfs makes it;
// where none did (a minimal /dev) it is made here. A node with other device
// numbers is stale (devtmpfs never reuses a dm-N name for another device, and
// does not replace a node it did not make), so it is replaced.
func ensureNode(d *Device) error {
	want := unix.Mkdev(d.Major, d.Minor)
	var st unix.Stat_t
	err := unix.Stat(d.Path, &st)
	if err == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK && st.Rdev == want {
		return nil
	}
	if err == nil {
		if err := os.Remove(d.Path); err != nil {
			return fmt.Errorf("replace stale %s: %w", d.Path, err)
		}
	} else if !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("stat %s: %w", d.Path, err)
	}
	if err := unix.Mknod(d.Path, unix.S_IFBLK|0o600, int(want)); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("mknod %s: %w", d.Path, err)
	}
	return nil
}

// Status returns the device called name; a missing device gives an error
// wrapping fs.ErrNotExist.
func (c *Client) Status(name string) (*Device, error) {
	h, _, err := c.do(cmdDevStatus, header{Name: name}, nil, 0)
	if err != nil {
		if errors.Is(err, unix.ENXIO) {
			return nil, fmt.Errorf("dm: status %s: %w", name, fs.ErrNotExist)
		}
		return nil, fmt.Errorf("dm: status %s: %w", name, err)
	}
	return deviceOf(h), nil
}

// Remove removes device name. It is idempotent: a device that does not
// exist is success. While the device is open (EBUSY) Remove retries a few
// times; then it asks the kernel for a deferred removal at the last close and
// returns an error wrapping ErrDeferred.
func (c *Client) Remove(ctx context.Context, name string) error {
	for try := 1; ; try++ {
		_, _, err := c.do(cmdDevRemove, header{Name: name}, nil, 0)
		switch {
		case err == nil || errors.Is(err, unix.ENXIO):
			return nil
		case !errors.Is(err, unix.EBUSY):
			return fmt.Errorf("dm: remove %s: %w", name, err)
		}
		if try < c.removeTries && ctx.Err() == nil {
			select {
			case <-ctx.Done():
			case <-time.After(c.removeWait):
			}
			continue
		}
		h, _, err := c.do(cmdDevRemove, header{Name: name, Flags: flagDeferredRemove}, nil, 0)
		switch {
		case errors.Is(err, unix.ENXIO):
			return nil
		case err != nil:
			return fmt.Errorf("dm: deferred remove %s: %w", name, err)
		case h.Flags&flagDeferredRemove != 0:
			return fmt.Errorf("dm: remove %s: %w", name, ErrDeferred)
		}
		return nil
	}
}

// List returns the devices whose uuid starts with uuidPrefix (all devices
// for ""), sorted by name. Use Prefix for every device paddock made, or
// Prefix+vmID for one VM's.
func (c *Client) List(uuidPrefix string) ([]Device, error) {
	var entries []nameEntry
	for size := 16 << 10; ; size *= 2 {
		if size > 16<<20 {
			return nil, fmt.Errorf("dm: device list larger than 16 MiB")
		}
		// The uuid field filters by prefix on kernels with interface 4.45+;
		// older ones ignore it and we filter below.
		h, buf, err := c.do(cmdListDevices, header{UUID: uuidPrefix, Flags: flagUUID}, nil, size)
		if err != nil {
			return nil, fmt.Errorf("dm: DM_LIST_DEVICES: %w", err)
		}
		if h.Flags&flagBufferFull != 0 {
			continue
		}
		p, err := payload(buf)
		if err != nil {
			return nil, err
		}
		if entries, err = parseNameList(p); err != nil {
			return nil, err
		}
		break
	}
	var out []Device
	for _, e := range entries {
		if e.HasUUID && !strings.HasPrefix(e.UUID, uuidPrefix) {
			continue
		}
		d, err := c.Status(e.Name)
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed since the list was taken
		}
		if err != nil {
			return nil, err
		}
		if strings.HasPrefix(d.UUID, uuidPrefix) {
			out = append(out, *d)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}
