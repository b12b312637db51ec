package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"
	"unsafe"

	"github.com/paddock-vm/paddock/agent"
	"github.com/paddock-vm/paddock/guestboot"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const newRoot = "/newroot"

func mkdirMount(src, target, fstype string, flags uintptr, data string) error {
	if err := os.MkdirAll(target, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(src, target, fstype, flags, data); err != nil && err != unix.EBUSY {
		return fmt.Errorf("mount %s on %s: %w", fstype, target, err)
	}
	return nil
}

// mountEarly mounts the API filesystems in the initramfs.
func mountEarly() error {
	const nosuid = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	var errs []error
	for _, m := range []struct {
		src, target, fstype string
		flags               uintptr
		data                string
	}{
		{"proc", "/proc", "proc", nosuid, ""},
		{"sysfs", "/sys", "sysfs", nosuid, ""},
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
	} {
		if err := mkdirMount(m.src, m.target, m.fstype, m.flags, m.data); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// kmod is one entry of the boot kit's module list.
type kmod struct {
	name  string
	path  string
	deps  []string
	after []string // loaded first when listed, but not needed: ordering only
	file  *os.File // opened ahead, for loading after switch_root
	done  chan struct{}
	err   error
}

// openModules opens the module files now so they can be loaded after the
// initramfs was emptied and the root switched (an open fd survives both).
func openModules(mods []*kmod) error {
	var errs []error
	for _, m := range mods {
		f, err := os.Open(m.path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		m.file = f
	}
	return errors.Join(errs...)
}

// readModuleList reads the boot kit's module list: one module a line, its
// path followed by the names of listed modules it depends on.
func readModuleList() ([]*kmod, error) {
	b, err := os.ReadFile("/etc/paddock/modules")
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var mods []*kmod
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		name := strings.ReplaceAll(strings.TrimSuffix(filepath.Base(f[0]), ".ko"), "-", "_")
		mods = append(mods, &kmod{name: name, path: f[0], deps: f[1:], done: make(chan struct{})})
	}
	afterTransports(mods)
	return mods, nil
}

// virtioTransports are the modules that put virtio devices on the bus.
var virtioTransports = []string{"virtio_mmio", "virtio_pci"}

// afterTransports makes every virtio device driver in mods wait for the
// listed transports. A guest names its disks in the order virtio_blk probes
// them: loaded while virtio_mmio is still adding devices, it can bind a
// later disk first (seen under load: the workspace as /dev/vdb, the seed as
// /dev/vda). Loaded after the transport, it binds them in the VMM's order.
func afterTransports(mods []*kmod) {
	var present []string
	for _, m := range mods {
		if slices.Contains(virtioTransports, m.name) {
			present = append(present, m.name)
		}
	}
	for _, m := range mods {
		if !slices.Contains(virtioTransports, m.name) && slices.Contains(m.deps, "virtio") {
			m.after = present
		}
	}
}

// splitModules separates the modules this boot needs before the agent is
// ready from those that can load afterwards: the network driver when no
// address is configured on the command line, the vsock transport when the
// agent does not serve vsock, and the power button's. Everything the needed
// top-level modules depend on is needed too.
func splitModules(mods []*kmod, cfg *guestboot.BootArgs) (now, later []*kmod) {
	byName := map[string]*kmod{}
	isDep := map[string]bool{}
	for _, m := range mods {
		byName[m.name] = m
		for _, d := range m.deps {
			isDep[d] = true
		}
	}
	deferrable := map[string]bool{"button": true, "evdev": true}
	if len(cfg.IPs) == 0 {
		deferrable["virtio_net"] = true
	}
	if cfg.Vsock == 0 {
		deferrable["vmw_vsock_virtio_transport"] = true
	}
	need := map[string]bool{}
	var mark func(n string)
	mark = func(n string) {
		if need[n] {
			return
		}
		need[n] = true
		if m, ok := byName[n]; ok {
			for _, d := range m.deps {
				mark(d)
			}
		}
	}
	for _, m := range mods {
		if !isDep[m.name] && !deferrable[m.name] {
			mark(m.name)
		}
	}
	for _, m := range mods {
		if need[m.name] {
			now = append(now, m)
		} else {
			later = append(later, m)
		}
	}
	return now, later
}

// loadModules loads mods, each as soon as the listed modules it depends on
// are loaded, so independent chains (block, console, net, ext4) load
// concurrently and overlap their device probes. Dependencies outside mods
// must have been loaded before.
func loadModules(mods []*kmod, debug bool) error {
	startModules(mods, debug)
	return waitModules(mods)
}

// startModules starts loading mods as loadModules does, without waiting:
// waitModules waits for some or all of them.
func startModules(mods []*kmod, debug bool) {
	byName := map[string]*kmod{}
	for _, m := range mods {
		byName[m.name] = m
	}
	for _, m := range mods {
		go func() {
			defer close(m.done)
			for _, d := range m.deps {
				if dm, ok := byName[d]; ok {
					<-dm.done
					if dm.err != nil {
						m.err = fmt.Errorf("dependency %s failed", d)
						return
					}
				}
			}
			for _, d := range m.after {
				if dm, ok := byName[d]; ok {
					<-dm.done
				}
			}
			start := time.Now()
			m.err = loadKmod(m)
			if debug {
				logf("module %s: %.1f ms", m.name, float64(time.Since(start).Microseconds())/1000)
			}
		}()
	}
}

// loadModulesHere loads mods one after the other, in their order (each
// after its dependencies), on the calling goroutine's thread.
func loadModulesHere(mods []*kmod, debug bool) error {
	var errs []error
	failed := map[string]bool{}
	for _, m := range mods {
		for _, d := range m.deps {
			if failed[d] {
				m.err = fmt.Errorf("dependency %s failed", d)
			}
		}
		if m.err == nil {
			start := time.Now()
			m.err = loadKmod(m)
			if debug {
				logf("module %s: %.1f ms", m.name, float64(time.Since(start).Microseconds())/1000)
			}
		}
		if m.err != nil {
			failed[m.name] = true
			errs = append(errs, fmt.Errorf("%s: %w", m.name, m.err))
		}
		close(m.done)
	}
	return errors.Join(errs...)
}

// waitModules waits until every module of mods (started) is loaded or has
// failed, and returns their errors.
func waitModules(mods []*kmod) error {
	var errs []error
	for _, m := range mods {
		<-m.done
		if m.err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", m.name, m.err))
		}
	}
	return errors.Join(errs...)
}

// virtioDriverOf maps a virtio device ID (as /sys/bus/virtio/devices/*/device
// shows it) to the module that drives it.
var virtioDriverOf = map[string]string{"0x0001": "virtio_net", "0x0002": "virtio_blk", "0x0003": "virtio_console", "0x0013": "vmw_vsock_virtio_transport"}

// virtioDrivers lists the drivers the VM's virtio devices need, from dir
// (/sys/bus/virtio/devices, complete once the transport is loaded); ok is
// false when dir cannot be read (no virtio bus: nothing is to be inferred).
func virtioDrivers(dir string) (need map[string]bool, ok bool) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, false
	}
	need = map[string]bool{}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "device"))
		if err != nil {
			return nil, false
		}
		if drv, ok := virtioDriverOf[strings.TrimSpace(string(b))]; ok {
			need[drv] = true
		}
	}
	return need, true
}

// forDevices splits pending (modules not loaded yet: those the boot needs
// now, wasNow, and the later ones) by the VM's devices: a virtio driver
// whose device is present loads now, with what it depends on; one whose
// device is absent does not load at all, nor what only it needs (its done
// is closed, without an error: a missing device is the VM's, not a module's
// failure). The other modules keep their side; all lists keep mods' order.
func forDevices(mods, pending, wasNow []*kmod, present map[string]bool) (now, later []*kmod) {
	isDriver := map[string]bool{}
	for _, d := range virtioDriverOf {
		isDriver[d] = true
	}
	byName, isDep, isPending, inNow := map[string]*kmod{}, map[string]bool{}, map[string]bool{}, map[string]bool{}
	for _, m := range mods {
		byName[m.name] = m
		for _, d := range m.deps {
			isDep[d] = true
		}
	}
	for _, m := range pending {
		isPending[m.name] = true
	}
	for _, m := range wasNow {
		inNow[m.name] = true
	}
	closure := func(roots []string) map[string]bool {
		out := map[string]bool{}
		var mark func(string)
		mark = func(n string) {
			if out[n] {
				return
			}
			out[n] = true
			if m, ok := byName[n]; ok {
				for _, d := range m.deps {
					mark(d)
				}
			}
		}
		for _, r := range roots {
			mark(r)
		}
		return out
	}
	var nowRoots, laterRoots []string
	for _, m := range pending {
		switch {
		case isDriver[m.name]:
			if present[m.name] {
				nowRoots = append(nowRoots, m.name)
			}
		case isDep[m.name]:
		case inNow[m.name]:
			nowRoots = append(nowRoots, m.name)
		default:
			laterRoots = append(laterRoots, m.name)
		}
	}
	needNow, needLater := closure(nowRoots), closure(laterRoots)
	for _, m := range mods {
		switch {
		case !isPending[m.name]:
		case needNow[m.name]:
			now = append(now, m)
		case needLater[m.name]:
			later = append(later, m)
		default: // not needed: never loaded
			if m.file != nil {
				m.file.Close()
				m.file = nil
			}
			close(m.done)
		}
	}
	return now, later
}

// moduleLoads are the module loads of a boot, from startBootModules.
type moduleLoads struct {
	// listed is closed once the VM's devices were listed (before it, /sys
	// must stay in place); devices and later are set then.
	listed chan struct{}
	// devices are the drivers of the VM's devices present (and what they
	// need), loading; later, those to load after the agent is ready.
	devices, later []*kmod
	// rootDone is closed once the root disk's modules are in (or failed).
	rootDone chan struct{}
	// done is closed once every load but the later ones ended; err then
	// holds their errors.
	done chan struct{}
	err  error
}

// startBootModules starts loading root (the root disk's chains), and, as
// soon as the virtio transport among them has listed the VM's devices in
// devicesDir, the drivers of those present among others and later
// (forDevices; mods is the whole list): beside the root's chain rather than
// after it, so the drivers' probes (the console's sets up its queues and
// ports) overlap the root's loads and I/O. Without a transport module, the
// devices are listed once root is in.
func startBootModules(mods, root, others, later []*kmod, devicesDir string, debug bool) *moduleLoads {
	l := &moduleLoads{listed: make(chan struct{}), rootDone: make(chan struct{}), done: make(chan struct{})}
	startModules(root, debug)
	transports, _ := splitByName(root, virtioTransports)
	if len(transports) == 0 {
		transports = root
	}
	go func() {
		defer close(l.done)
		_ = waitModules(transports) // their errors are root's
		if present, ok := virtioDrivers(devicesDir); ok {
			others, later = forDevices(mods, append(others, later...), others, present)
		}
		l.devices, l.later = others, later
		close(l.listed)
		startModules(others, debug)
		err := waitModules(root)
		close(l.rootDone)
		l.err = errors.Join(err, waitModules(others))
	}()
	return l
}

// netModules are the network driver's chain: the network's setup waits
// for them.
var netModules = []string{"virtio_net", "net_failover", "failover"}

// notForRoot are the modules the root disk's mount does not wait for: the
// agent's channels and the network's, which load meanwhile.
var notForRoot = append([]string{"virtio_console", "vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport"}, netModules...)

// splitByName returns the modules of mods named in names, and the others.
func splitByName(mods []*kmod, names []string) (named, others []*kmod) {
	for _, m := range mods {
		if slices.Contains(names, m.name) {
			named = append(named, m)
		} else {
			others = append(others, m)
		}
	}
	return named, others
}

// loadKmod loads m into the kernel (a variable so that tests can watch the
// order of loads).
var loadKmod = func(m *kmod) error {
	if m.file != nil {
		defer m.file.Close()
		return loadModuleFile(m.file)
	}
	return loadModule(m.path)
}

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return loadModuleFile(f)
}

func loadModuleFile(f *os.File) error {
	err := unix.FinitModule(int(f.Fd()), "", 0)
	if err == unix.EEXIST {
		return nil
	}
	if err == unix.ENOSYS || err == unix.EOPNOTSUPP {
		data, rerr := io.ReadAll(io.NewSectionReader(f, 0, 1<<30))
		if rerr != nil {
			return rerr
		}
		err = unix.InitModule(data, "")
		if err == unix.EEXIST {
			return nil
		}
	}
	return err
}

// findRootDevice resolves /dev/X, LABEL=, UUID= (ext2/3/4 superblocks).
func findRootDevice(spec string) (string, error) {
	kind, val, _ := strings.Cut(spec, "=")
	if kind != "LABEL" && kind != "UUID" {
		if _, err := os.Stat(spec); err != nil {
			return "", err
		}
		return spec, nil
	}
	ents, err := os.ReadDir("/sys/class/block")
	if err != nil {
		return "", err
	}
	for _, e := range ents {
		dev := "/dev/" + e.Name()
		label, uuid, err := readExtID(dev)
		if err != nil {
			continue
		}
		if (kind == "LABEL" && label == val) || (kind == "UUID" && strings.EqualFold(uuid, val)) {
			return dev, nil
		}
	}
	return "", fmt.Errorf("no block device with %s", spec)
}

// readExtID reads the label and UUID of an ext2/3/4 superblock.
func readExtID(dev string) (label, uuid string, err error) {
	f, err := os.Open(dev)
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	sb := make([]byte, 1024)
	if _, err := f.ReadAt(sb, 1024); err != nil {
		return "", "", err
	}
	if binary.LittleEndian.Uint16(sb[0x38:]) != 0xef53 {
		return "", "", errors.New("not ext")
	}
	u := hex.EncodeToString(sb[0x68:0x78])
	uuid = u[0:8] + "-" + u[8:12] + "-" + u[12:16] + "-" + u[16:20] + "-" + u[20:]
	label = string(bytes.TrimRight(sb[0x78:0x88], "\x00"))
	return label, uuid, nil
}

func mountRoot(cfg *guestboot.BootArgs) error {
	deadline := time.Now().Add(cfg.RootWait)
	var dev string
	for {
		d, err := findRootDevice(cfg.Root)
		if err == nil {
			dev = d
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("root device %s did not appear within %v: %w", cfg.Root, cfg.RootWait, err)
		}
		time.Sleep(2 * time.Millisecond)
	}
	flags := uintptr(unix.MS_NOATIME)
	if cfg.RootRO {
		flags |= unix.MS_RDONLY
	}
	if err := os.MkdirAll(newRoot, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(dev, newRoot, cfg.RootFSType, flags, rootMountData(cfg.RootFSType, cfg.RootFlags)); err != nil {
		return fmt.Errorf("mount %s (%s) on %s: %w", dev, cfg.RootFSType, newRoot, err)
	}
	if cfg.GrowFS && !cfg.RootRO && cfg.RootFSType == guestboot.DefaultRootFSType {
		if err := growExt4(dev, newRoot); err != nil {
			// A root that stays small still boots: say so and go on.
			fmt.Fprintf(os.Stderr, "paddock-agent: growing the root file system: %v\n", err)
		}
	}
	return nil
}

// rootMountData is the root's mount data: for ext4, paddock's options
// before the VM's own (a later option wins). noinit_itable: the inode tables
// of the groups a grow adds (here, or with resize2fs on the host) are in
// what a paddock disk reads as zeros (beyond the image base: a qcow2's
// unallocated clusters, a sparse file's hole, dm's zero target), so the
// kernel's ext4lazyinit thread would only write zeros over zeros — tens of
// MiB into the VM's layer, a few seconds after each boot that follows a
// grow; no_prefetch_block_bitmaps: that thread also read every group's
// bitmap at mount. Under TCG, start after stop → first exec: 2.34 s
// against 2.39 s (medians of 6), and none of the 2.5–2.6 s ones.
func rootMountData(fstype, vm string) string {
	if fstype != guestboot.DefaultRootFSType {
		return vm
	}
	return strings.TrimSuffix("noinit_itable,no_prefetch_block_bitmaps,"+vm, ",")
}

// ext4IocResizeFS is EXT4_IOC_RESIZE_FS, _IOW('f', 16, __u64).
const ext4IocResizeFS = 0x40086610

// growExt4 grows a mounted ext4 file system online to fill its device.
func growExt4(dev, mountpoint string) error {
	d, err := os.Open(dev)
	if err != nil {
		return err
	}
	size, err := unix.IoctlGetUint64(int(d.Fd()), unix.BLKGETSIZE64)
	d.Close()
	if err != nil {
		return fmt.Errorf("size of %s: %w", dev, err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(mountpoint, &st); err != nil {
		return err
	}
	blocks := size / uint64(st.Bsize)
	if blocks <= st.Blocks {
		return nil
	}
	m, err := os.Open(mountpoint)
	if err != nil {
		return err
	}
	defer m.Close()
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, m.Fd(), ext4IocResizeFS, uintptr(unsafe.Pointer(&blocks))); e != 0 {
		return fmt.Errorf("EXT4_IOC_RESIZE_FS to %d blocks: %w", blocks, e)
	}
	return nil
}

// switchRoot moves the API mounts into the new root and makes the new root
// "/" (it returns the initramfs' root, to empty with freeInitramfs) — in-process, so the agent stays PID 1 (Go's
// threads share one fs_struct, so the chroot applies to the whole process).
func switchRoot() (oldRoot *os.File, err error) {
	oldRoot, err = os.Open("/")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			oldRoot.Close()
			oldRoot = nil
		}
	}()
	for _, m := range []string{"/dev", "/proc", "/sys"} {
		target := newRoot + m
		if err := os.MkdirAll(target, 0o755); err != nil {
			return nil, fmt.Errorf("creating %s in the root disk: %w", m, err)
		}
		if err := unix.Mount(m, target, "", unix.MS_MOVE, ""); err != nil {
			return nil, fmt.Errorf("moving %s: %w", m, err)
		}
	}
	if err := unix.Chdir(newRoot); err != nil {
		return nil, err
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return nil, fmt.Errorf("moving the root: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return nil, fmt.Errorf("chroot: %w", err)
	}
	return oldRoot, unix.Chdir("/")
}

// freeInitramfs deletes the initramfs contents (like busybox switch_root)
// through old, its root directory, not descending into other filesystems,
// and closes old.
func freeInitramfs(old *os.File) {
	defer old.Close()
	var st unix.Stat_t
	if unix.Fstat(int(old.Fd()), &st) == nil {
		removeSameDevAt(int(old.Fd()), st.Dev)
	}
}

// removeSameDevAt deletes what directory dirfd holds on device dev.
func removeSameDevAt(dirfd int, dev uint64) {
	fd, err := unix.Openat(dirfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	d := os.NewFile(uintptr(fd), "dir")
	names, _ := d.Readdirnames(-1)
	d.Close()
	for _, name := range names {
		var st unix.Stat_t
		if unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) != nil || st.Dev != dev {
			continue
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			sub, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				continue
			}
			removeSameDevAt(sub, dev)
			unix.Close(sub)
			_ = unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
		} else {
			_ = unix.Unlinkat(dirfd, name, 0)
		}
	}
}

func isEmptyDir(p string) bool {
	f, err := os.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	names, _ := f.Readdirnames(1)
	st, err := f.Stat()
	return err == nil && st.IsDir() && len(names) == 0
}

// mountLate mounts what the image needs beyond the API filesystems.
func mountLate() error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	add(mkdirMount("devpts", "/dev/pts", "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5"))
	if _, err := os.Lstat("/dev/ptmx"); err != nil {
		add(os.Symlink("pts/ptmx", "/dev/ptmx"))
	}
	add(mkdirMount("shm", "/dev/shm", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777"))
	for name, target := range map[string]string{"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"} {
		if _, err := os.Lstat("/dev/" + name); err != nil {
			_ = os.Symlink(target, "/dev/"+name)
		}
	}
	// /run and /tmp get a tmpfs when the image leaves them empty.
	if isEmptyDir("/run") {
		add(mkdirMount("tmpfs", "/run", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"))
	}
	if isEmptyDir("/tmp") {
		add(mkdirMount("tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777"))
	}
	if st, err := os.Stat("/sys/fs/cgroup"); err == nil && st.IsDir() {
		_ = unix.Mount("cgroup2", "/sys/fs/cgroup", "cgroup2", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
	}
	return errors.Join(errs...)
}

// loUp brings the loopback up with one ioctl: through netlink (a lookup, a
// change) it took 100+ ms of a TCG guest's boot, most of it translating the
// library's code, in a VM that needs nothing else of it.
func loUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	if ifr.Uint16()&unix.IFF_UP != 0 {
		return nil
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

func setupNetwork(cfg *guestboot.BootArgs) error {
	if err := loUp(); err != nil {
		return fmt.Errorf("lo up: %w", err)
	}
	if len(cfg.IPs) == 0 {
		return nil
	}
	var link netlink.Link
	var err error
	deadline := time.Now().Add(5 * time.Second)
	for {
		link, err = netlink.LinkByName(cfg.IfName)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("interface %s did not appear: %w", cfg.IfName, err)
		}
		time.Sleep(2 * time.Millisecond)
	}
	if cfg.MTU > 0 {
		if err := netlink.LinkSetMTU(link, cfg.MTU); err != nil {
			return fmt.Errorf("%s mtu: %w", cfg.IfName, err)
		}
	}
	for _, p := range cfg.IPs {
		a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
		if p.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := netlink.AddrAdd(link, a); err != nil && err != unix.EEXIST {
			return fmt.Errorf("%s address %s: %w", cfg.IfName, p, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("%s up: %w", cfg.IfName, err)
	}
	for _, gw := range cfg.Gateways {
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw.AsSlice()}
		if gw.Is6() {
			r.Family = netlink.FAMILY_V6
		}
		if err := netlink.RouteAdd(r); err != nil && err != unix.EEXIST {
			return fmt.Errorf("default route via %s: %w", gw, err)
		}
	}
	return nil
}

// writeEtc writes /etc/hosts and /etc/hostname when the root is writable,
// and /etc/resolv.conf from paddock.dns: replaced (a symlinked one too,
// never written through), or on a read-only root covered by a bind mount
// (agent.WriteEtcFile).
func writeEtc(cfg *guestboot.BootArgs) error {
	var errs []error
	var st unix.Statfs_t
	readOnly := unix.Statfs("/", &st) == nil && st.Flags&unix.ST_RDONLY != 0
	if !readOnly {
		if err := os.MkdirAll("/etc", 0o755); err != nil {
			return err
		}
		var hosts strings.Builder
		hosts.WriteString("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
		if cfg.Hostname != "" {
			if len(cfg.IPs) > 0 {
				for _, p := range cfg.IPs {
					fmt.Fprintf(&hosts, "%s\t%s\n", p.Addr(), cfg.Hostname)
				}
			} else {
				fmt.Fprintf(&hosts, "127.0.1.1\t%s\n", cfg.Hostname)
			}
		}
		if err := agent.WriteEtcFile("/", "hosts", []byte(hosts.String())); err != nil {
			errs = append(errs, err)
		}
		if cfg.Hostname != "" {
			if err := agent.WriteEtcFile("/", "hostname", []byte(cfg.Hostname+"\n")); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if rc := cfg.ResolvConf(); rc != nil {
		if err := agent.WriteEtcFile("/", "resolv.conf", rc); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// mountPoints lists the mount points from /proc/self/mounts, deepest first.
func mountPoints() []string {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 {
			out = append(out, strings.ReplaceAll(fields[1], `\040`, " "))
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// unmountAll unmounts everything but the API filesystems and remounts the
// root read-only.
func unmountAll() {
	keep := map[string]bool{"/": true, "/proc": true, "/sys": true, "/dev": true}
	for _, mp := range mountPoints() {
		if keep[mp] {
			continue
		}
		if err := unix.Unmount(mp, 0); err != nil {
			_ = unix.Unmount(mp, unix.MNT_DETACH)
		}
	}
	if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		logf("remounting / read-only: %v", err)
	}
}

func powerOff(reboot bool) {
	unix.Sync()
	cmd := unix.LINUX_REBOOT_CMD_POWER_OFF
	if reboot {
		cmd = unix.LINUX_REBOOT_CMD_RESTART
	}
	err := unix.Reboot(cmd)
	logf("reboot(%#x): %v", cmd, err)
	for {
		time.Sleep(time.Hour)
	}
}
