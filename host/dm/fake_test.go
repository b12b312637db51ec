package dm

import (
	"bytes"
	"fmt"
	"sort"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// fakeDev is a device in the fake kernel.
type fakeDev struct {
	name, uuid string
	minor      uint32
	live       []Target // active table
	inactive   []Target // loaded, not resumed
	open       int32
	deferred   bool
}

func (d fakeDev) dev() uint64 { return uint64(unix.Mkdev(253, d.minor)) }

// fakeKernel answers device-mapper ioctls the way drivers/md/dm-ioctl.c does,
// reading and writing the buffer through x/sys's struct dm_ioctl (not through
// the package's own decoder), and records the calls as text.
type fakeKernel struct {
	t         *testing.T
	devs      map[string]*fakeDev
	nextMinor uint32
	calls     []string
	// fail makes the named operation return an errno once.
	fail map[string]error
	// targets is the kernel's set of target types.
	targets map[string][3]uint32
	// oldKernel: no DM_GET_TARGET_VERSION (before 4.41), no uuid in lists.
	oldKernel bool
}

func newFakeKernel(t *testing.T) *fakeKernel {
	return &fakeKernel{t: t, devs: map[string]*fakeDev{}, fail: map[string]error{},
		targets: map[string][3]uint32{"snapshot": {1, 16, 0}, "linear": {1, 4, 0}, "zero": {1, 2, 0}}}
}

func (k *fakeKernel) client() *Client {
	c := newClient(k, nil)
	c.removeWait = 0
	return c
}

func (k *fakeKernel) record(format string, args ...any) {
	k.calls = append(k.calls, fmt.Sprintf(format, args...))
}

func (k *fakeKernel) failing(op string) error {
	if err, ok := k.fail[op]; ok {
		delete(k.fail, op)
		return err
	}
	return nil
}

func (k *fakeKernel) ioctl(cmd uint, buf []byte) error {
	p := (*unix.DmIoctl)(unsafe.Pointer(&buf[0]))
	if p.Version[0] != unix.DM_VERSION_MAJOR || p.Version[1] > unix.DM_VERSION_MINOR {
		return unix.EINVAL
	}
	if int(p.Data_size) != len(buf) || p.Data_size < uint32(unsafe.Offsetof(p.Data)) {
		k.t.Errorf("data_size %d for a %d-byte buffer", p.Data_size, len(buf))
		return unix.EINVAL
	}
	p.Version = [3]uint32{unix.DM_VERSION_MAJOR, unix.DM_VERSION_MINOR, 0}
	name, uuid := cstring(p.Name[:]), cstring(p.Uuid[:])
	find := func() *fakeDev {
		if uuid != "" && name != "" {
			k.t.Errorf("lookup with both name %q and uuid %q (the kernel refuses)", name, uuid)
			return nil
		}
		if uuid != "" {
			for _, d := range k.devs {
				if d.uuid == uuid {
					return d
				}
			}
			return nil
		}
		return k.devs[name]
	}
	status := func(d *fakeDev) {
		p.Flags &^= unix.DM_SUSPEND_FLAG | unix.DM_READONLY_FLAG | unix.DM_ACTIVE_PRESENT_FLAG
		p.Dev = d.dev()
		p.Open_count = d.open
		p.Target_count = uint32(len(d.live))
		if d.live != nil {
			p.Flags |= unix.DM_ACTIVE_PRESENT_FLAG
		}
		if d.deferred {
			p.Flags |= unix.DM_DEFERRED_REMOVE
		}
		copy(p.Name[:], d.name+"\x00")
		copy(p.Uuid[:], d.uuid+"\x00")
	}
	switch cmd {
	case unix.DM_VERSION:
		k.record("version")
	case unix.DM_DEV_CREATE:
		k.record("create %s uuid=%s", name, uuid)
		if err := k.failing("create"); err != nil {
			return err
		}
		for _, d := range k.devs {
			if d.name == name || (uuid != "" && d.uuid == uuid) {
				return unix.EBUSY
			}
		}
		d := &fakeDev{name: name, uuid: uuid, minor: k.nextMinor}
		k.nextMinor++
		k.devs[name] = d
		status(d)
	case unix.DM_TABLE_LOAD:
		table := kernelPopulate(k.t, buf)
		var lines []string
		for _, t := range table {
			lines = append(lines, t.String())
		}
		k.record("load %s: %s", name, strings.Join(lines, "; "))
		d := find()
		if d == nil {
			return unix.ENXIO
		}
		if err := k.failing("load"); err != nil {
			return err
		}
		for _, t := range table {
			if _, ok := k.targets[t.Type]; !ok {
				return unix.EINVAL
			}
		}
		d.inactive = table
		p.Flags |= unix.DM_INACTIVE_PRESENT_FLAG
		status(d)
	case unix.DM_DEV_SUSPEND:
		op := "resume"
		if p.Flags&unix.DM_SUSPEND_FLAG != 0 {
			op = "suspend"
		}
		k.record("%s %s", op, name)
		d := find()
		if d == nil {
			return unix.ENXIO
		}
		if err := k.failing(op); err != nil {
			return err
		}
		if op == "resume" && d.inactive != nil {
			d.live, d.inactive = d.inactive, nil
		}
		status(d)
	case unix.DM_DEV_REMOVE:
		deferred := p.Flags&unix.DM_DEFERRED_REMOVE != 0
		if deferred {
			k.record("remove --deferred %s", name)
		} else {
			k.record("remove %s", name)
		}
		d := find()
		if d == nil {
			return unix.ENXIO
		}
		if d.open > 0 {
			if deferred {
				d.deferred = true
				return nil // flag stays set: removal deferred
			}
			return unix.EBUSY
		}
		delete(k.devs, d.name)
		p.Flags &^= unix.DM_DEFERRED_REMOVE
	case unix.DM_DEV_STATUS:
		k.record("status %s", name)
		d := find()
		if d == nil {
			return unix.ENXIO
		}
		status(d)
	case unix.DM_LIST_DEVICES:
		k.record("list uuid=%s", uuid)
		withUUID := p.Flags&unix.DM_UUID_FLAG != 0 && !k.oldKernel
		var devs []fakeDev
		for _, d := range k.devs {
			if !k.oldKernel && (!strings.HasPrefix(d.name, name) || !strings.HasPrefix(d.uuid, uuid)) {
				continue
			}
			devs = append(devs, *d)
		}
		sort.Slice(devs, func(i, j int) bool { return devs[i].name < devs[j].name })
		out := kernelNameList(devs, withUUID)
		return k.answer(p, buf, out)
	case unix.DM_GET_TARGET_VERSION:
		k.record("target-version %s", name)
		if k.oldKernel {
			return unix.ENOTTY
		}
		v, ok := k.targets[name]
		if !ok {
			return unix.EINVAL
		}
		return k.answer(p, buf, versionRecords(map[string][3]uint32{name: v}))
	case unix.DM_LIST_VERSIONS:
		k.record("list-versions")
		return k.answer(p, buf, versionRecords(k.targets))
	default:
		k.t.Errorf("unexpected ioctl %#x", cmd)
		return unix.ENOTTY
	}
	return nil
}

// answer puts out at data_start, or sets DM_BUFFER_FULL_FLAG.
func (k *fakeKernel) answer(p *unix.DmIoctl, buf, out []byte) error {
	start := int(p.Data_start)
	if len(buf)-start < len(out) {
		p.Flags |= unix.DM_BUFFER_FULL_FLAG
		return nil
	}
	copy(buf[start:], out)
	p.Data_size = uint32(start + len(out))
	return nil
}

func versionRecords(m map[string][3]uint32) []byte {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	var out []byte
	for i, n := range names {
		rec := make([]byte, 16)
		for j, v := range m[n] {
			native.PutUint32(rec[4+4*j:], v)
		}
		rec = pad(append(append(rec, n...), 0))
		if i < len(names)-1 {
			native.PutUint32(rec, uint32(len(rec)))
		}
		out = append(out, rec...)
	}
	return out
}

func (k *fakeKernel) callLog() string { return strings.Join(k.calls, "\n") }

func (k *fakeKernel) state() string {
	var names []string
	for n := range k.devs {
		names = append(names, n)
	}
	sort.Strings(names)
	var b bytes.Buffer
	for _, n := range names {
		d := k.devs[n]
		fmt.Fprintf(&b, "%s uuid=%s live=%d open=%d deferred=%v\n", d.name, d.uuid, len(d.live), d.open, d.deferred)
	}
	return b.String()
}
