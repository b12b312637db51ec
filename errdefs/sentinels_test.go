package errdefs_test

import (
	"testing"

	"github.com/paddock-vm/paddock/errdefs"
	"github.com/paddock-vm/paddock/host/cgroup"
	"github.com/paddock-vm/paddock/host/disk"
	"github.com/paddock-vm/paddock/host/dm"
	"github.com/paddock-vm/paddock/host/loop"
	"github.com/paddock-vm/paddock/host/netdev"
	"github.com/paddock-vm/paddock/host/netfilter"
	"github.com/paddock-vm/paddock/host/probe"
	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/imaging"
	"github.com/paddock-vm/paddock/imaging/ext4"
	"github.com/paddock-vm/paddock/imaging/flatten"
	"github.com/paddock-vm/paddock/imaging/source"
)

// The class of every sentinel imaging and host export: the API error a
// client sees follows from it.
func TestSentinelClasses(t *testing.T) {
	for _, tc := range []struct {
		name  string
		err   error
		class error
	}{
		{"imaging.ErrImageNotFound", imaging.ErrImageNotFound, errdefs.ErrNotFound},
		{"imaging.ErrAmbiguous", imaging.ErrAmbiguous, errdefs.ErrInvalidArgument},
		{"source.ErrNotFound", source.ErrNotFound, errdefs.ErrNotFound},
		{"source.ErrAmbiguous", source.ErrAmbiguous, errdefs.ErrInvalidArgument},
		{"source.ErrUnsupported", source.ErrUnsupported, errdefs.ErrInvalidArgument},
		{"source.ErrPlatform", source.ErrPlatform, errdefs.ErrNotFound},
		{"flatten.ErrPathEscape", flatten.ErrPathEscape, errdefs.ErrInvalidArgument},
		{"flatten.ErrBadName", flatten.ErrBadName, errdefs.ErrInvalidArgument},
		{"flatten.ErrBadLink", flatten.ErrBadLink, errdefs.ErrInvalidArgument},
		{"flatten.ErrBadEntry", flatten.ErrBadEntry, errdefs.ErrInvalidArgument},
		{"flatten.ErrTooLarge", flatten.ErrTooLarge, errdefs.ErrInvalidArgument},
		{"flatten.ErrTooManyEntries", flatten.ErrTooManyEntries, errdefs.ErrInvalidArgument},
		{"flatten.EntryError", flatten.NewEntryError("img", "layer", "../x", flatten.ErrPathEscape), errdefs.ErrInvalidArgument},
		{"ext4.ErrToolMissing", ext4.ErrToolMissing, errdefs.ErrUnavailable},
		{"netdev.ErrNotOurs", netdev.ErrNotOurs, errdefs.ErrFailedPrecondition},
		{"netdev.ErrNameTaken", netdev.ErrNameTaken, errdefs.ErrAlreadyExists},
		{"netdev.ErrExhausted", netdev.ErrExhausted, errdefs.ErrUnavailable},
		{"netdev.ErrSubnetConflict", netdev.ErrSubnetConflict, errdefs.ErrInvalidArgument},
		{"netdev.ErrInvalidVMID", netdev.ErrInvalidVMID, errdefs.ErrInvalidArgument},
		{"netdev.ErrInvalidConfig", netdev.ErrInvalidConfig, errdefs.ErrInvalidArgument},
		{"netdev.ErrBridgeBusy", netdev.ErrBridgeBusy, errdefs.ErrFailedPrecondition},
		{"netdev.ErrClosed", netdev.ErrClosed, errdefs.ErrUnavailable},
		{"netfilter.ErrNoNFTables", netfilter.ErrNoNFTables, errdefs.ErrUnavailable},
		{"netfilter.ErrInvalidConfig", netfilter.ErrInvalidConfig, errdefs.ErrInvalidArgument},
		{"netfilter.ErrInvalidVM", netfilter.ErrInvalidVM, errdefs.ErrInvalidArgument},
		{"disk.ErrUnsupported", disk.ErrUnsupported, errdefs.ErrUnavailable},
		{"disk.ErrBadHandle", disk.ErrBadHandle, errdefs.ErrInvalidArgument},
		{"vmm.ErrInvalidSpec", vmm.ErrInvalidSpec, errdefs.ErrInvalidArgument},
		{"vmm.ErrAlreadyRunning", vmm.ErrAlreadyRunning, errdefs.ErrAlreadyExists},
		{"vmm.ErrNotRunning", vmm.ErrNotRunning, errdefs.ErrFailedPrecondition},
		{"vmm.ErrInvalidHandle", vmm.ErrInvalidHandle, errdefs.ErrInvalidArgument},
		{"vmm.ErrUnsupported", vmm.ErrUnsupported, errdefs.ErrNotImplemented},
		{"cgroup.ErrNoDelegation", cgroup.ErrNoDelegation, errdefs.ErrUnavailable},
		{"cgroup.ErrNotOurs", cgroup.ErrNotOurs, errdefs.ErrFailedPrecondition},
		{"cgroup.ErrNotEmpty", cgroup.ErrNotEmpty, errdefs.ErrFailedPrecondition},
		{"cgroup.ErrNoCgroup2", cgroup.ErrNoCgroup2, errdefs.ErrUnavailable},
		{"loop.ErrUnsupported", loop.ErrUnsupported, errdefs.ErrUnavailable},
		{"dm.ErrUnsupported", dm.ErrUnsupported, errdefs.ErrUnavailable},
		{"dm.ErrDeferred", dm.ErrDeferred, errdefs.ErrFailedPrecondition},
		{"dm.ErrExists", dm.ErrExists, errdefs.ErrAlreadyExists},
		{"probe.ErrUnreachable", probe.ErrUnreachable, errdefs.ErrUnavailable},
	} {
		if got := errdefs.Class(tc.err); got != tc.class {
			t.Errorf("%s: class %v, want %v", tc.name, got, tc.class)
		}
	}
}
