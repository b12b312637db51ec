// Package loop attaches regular files to Linux loop block devices with the
// kernel's ioctls alone (no losetup): LOOP_CTL_GET_FREE on /dev/loop-control,
// then LOOP_CONFIGURE on /dev/loopN (LOOP_SET_FD + LOOP_SET_STATUS64 on
// kernels before 5.8), retrying on EBUSY when another process grabbed the same
// free device. No global lock is needed.
//
// Devices are attached with autoclear by default: the kernel detaches a loop
// device by itself once its last opener closes it. A loop held by nothing but
// this process's Device therefore disappears when the process dies (kill -9
// included), and a loop held by a device-mapper table disappears with the
// table. That is paddock's first defence against leaked loop devices; Find
// and Detach are the second (the orphan sweep after a crash).
package loop

import (
	"os"

	"github.com/paddock-vm/paddock/errdefs"
)

// ErrUnsupported: the host cannot attach loop devices (no /dev/loop-control,
// no permission, or a kernel without the loop driver).
var ErrUnsupported = errdefs.New(errdefs.ErrUnavailable, "loop devices unsupported")

// Options control Attach.
type Options struct {
	// ReadOnly attaches the device read-only; the backing file is opened
	// read-only too.
	ReadOnly bool
	// NoAutoclear keeps the device attached after its last opener closes it.
	// Autoclear is on by default; turn it off only when a caller must hand a
	// device path to something that opens it later and owns the Detach.
	NoAutoclear bool
	// DirectIO asks the kernel to bypass the page cache for the backing file
	// (the kernel silently keeps buffered I/O where the file system cannot).
	DirectIO bool
}

// Device is one attached loop device. Its exported fields are what the daemon
// persists; a Device decoded from JSON can be passed to Detach.
type Device struct {
	// Path is the block device node, /dev/loopN.
	Path string `json:"path"`
	// Number is N in loopN.
	Number int `json:"number"`
	// Backing is the absolute path of the backing file as the kernel reports
	// it. BackingDeleted is set by Find and List when the file has been
	// unlinked since (the kernel appends " (deleted)").
	Backing        string `json:"backing"`
	BackingDeleted bool   `json:"backing_deleted,omitempty"`
	// Inode and Dev identify the backing file (st_ino, st_dev). Detach
	// compares them with the kernel's view before it clears the device, so a
	// device number that was reused by someone else after a crash is left
	// alone.
	Inode     uint64 `json:"inode"`
	Dev       uint64 `json:"dev"`
	ReadOnly  bool   `json:"read_only,omitempty"`
	Autoclear bool   `json:"autoclear,omitempty"`

	// file is this process's open handle on the device, set by Attach. With
	// autoclear it keeps the device alive until Close.
	file *os.File
}

// File returns the open device handle Attach made, or nil for a Device that
// was found or decoded. It stays owned by the Device: do not close it.
func (d *Device) File() *os.File { return d.file }

// Close drops this process's handle on the device. With autoclear, the kernel
// detaches the device as soon as nobody else (a mount, a device-mapper table,
// a VMM) holds it open. Close is idempotent.
func (d *Device) Close() error {
	if d == nil || d.file == nil {
		return nil
	}
	err := d.file.Close()
	d.file = nil
	return err
}
