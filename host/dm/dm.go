// Package dm drives the kernel's device-mapper with ioctls on
// /dev/mapper/control: create a device with a table (a snapshot target for
// per-VM disks), remove it, list and inspect paddock's devices.
//
// Why ioctls and not dmsetup: the interface is small and stable (version 4
// since Linux 2.6); errno values (ENXIO, EBUSY) give idempotent removal
// without parsing text; dmsetup synchronises with udev through SysV
// semaphores ("udev cookies") that hang or leak where no udevd runs
// (containers, CI, early boot) unless every call remembers --noudevsync; and
// it would be one more binary in the daemon's unit. Device nodes come from
// devtmpfs (/dev/dm-N), so nothing here waits for udev either.
//
// Every device paddock creates is named and tagged with Prefix
// ("paddock-<vm id>…" for both name and uuid) so an orphan sweep after a
// crash can find them with List and remove them with Remove.
package dm

import (
	"fmt"
	"strings"

	"github.com/paddock-vm/paddock/errdefs"
)

const (
	// ControlPath is the device-mapper control node.
	ControlPath = "/dev/mapper/control"
	// Prefix starts the name and the uuid of every device paddock creates.
	Prefix = "paddock-"
	// SnapshotChunk is the snapshot target's chunk size in 512-byte sectors
	// (4 KiB, the ext4 block size).
	SnapshotChunk = 8
	// SectorSize is the unit of target starts and lengths.
	SectorSize = 512
)

var (
	// ErrUnsupported: this host cannot run device-mapper (no kernel support,
	// no control node, no permission, or a missing target type). The error
	// names the reason.
	ErrUnsupported = errdefs.New(errdefs.ErrUnavailable, "device-mapper unsupported")
	// ErrDeferred: the device was still open after the retries, so the
	// kernel will remove it when its last opener closes it.
	ErrDeferred = errdefs.New(errdefs.ErrFailedPrecondition, "device-mapper removal deferred until the device is closed")
	// ErrExists: a device with that name or uuid already exists.
	ErrExists = errdefs.New(errdefs.ErrAlreadyExists, "device-mapper device exists")
)

// Target is one line of a device-mapper table, in 512-byte sectors.
type Target struct {
	Start, Length uint64
	Type          string // "snapshot", "linear", "zero", …
	Params        string
}

func (t Target) String() string {
	return fmt.Sprintf("%d %d %s %s", t.Start, t.Length, t.Type, t.Params)
}

// SnapshotTarget is a persistent snapshot of origin whose changes go to cow:
// "0 <sectors> snapshot <origin> <cow> P 8". Devices are paths or MAJ:MIN.
// Persistent ("P") means the COW device carries its own exception table, so
// the same COW file re-creates the same disk after a stop or a host reboot.
func SnapshotTarget(origin, cow string, sectors uint64) Target {
	return Target{Start: 0, Length: sectors, Type: "snapshot", Params: fmt.Sprintf("%s %s P %d", origin, cow, SnapshotChunk)}
}

// LinearTarget maps [start, start+length) onto dev from sector offset.
func LinearTarget(start, length uint64, dev string, offset uint64) Target {
	return Target{Start: start, Length: length, Type: "linear", Params: fmt.Sprintf("%s %d", dev, offset)}
}

// ZeroTarget reads zeros and discards writes over [start, start+length).
func ZeroTarget(start, length uint64) Target {
	return Target{Start: start, Length: length, Type: "zero"}
}

// Device is a device-mapper device as the kernel reports it.
type Device struct {
	Name  string `json:"name"`
	UUID  string `json:"uuid,omitempty"`
	Major uint32 `json:"major"`
	Minor uint32 `json:"minor"`
	// Path is the devtmpfs node, /dev/dm-<minor>.
	Path        string `json:"path"`
	OpenCount   int32  `json:"open_count"`
	TargetCount uint32 `json:"target_count"`
	Active      bool   `json:"active"`    // a live table is loaded
	Suspended   bool   `json:"suspended"` // I/O is held
	ReadOnly    bool   `json:"read_only,omitempty"`
	// DeferredRemove: the kernel removes the device at its last close.
	DeferredRemove bool `json:"deferred_remove,omitempty"`
}

// IsOurs reports whether a device's uuid carries paddock's prefix.
func (d Device) IsOurs() bool { return strings.HasPrefix(d.UUID, Prefix) }
