package actors

import (
	"cmp"
	"context"
	"fmt"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/paddock-vm/paddock/guestboot"
	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/state"
)

// workspacesStep: the VM's workspace attachments. Acquired, each workspace
// the spec names is claimed from the Workspaces actor (through the function
// values the daemon wires, never a pointer into it), which refuses a
// second read-write holder; the volumes then become block devices of the
// VMM after the root disk and the seed (/dev/vdc, /dev/vdd, ...), and the
// seed tells the agent where to mount them. Released, every claim of the
// VM is dropped. Handle: *state.AttachRuntime. The step runs for every VM,
// with or without workspaces, so its crash points are crossed by every
// start and stop.
type workspacesStep wsLink

// wsLink is how VMs reach the Workspaces actor, wired by Start: claim a
// VM's workspaces, and drop its claims.
type wsLink struct {
	attach func(ctx context.Context, m *AttachWorkspaces) ([]state.WorkspaceAttached, error)
	detach func(ctx context.Context, vmID string) error
}

// firstWorkspaceDisk is the index of the first workspace among the VMM's
// disks: after the root disk (vda) and the seed (vdb).
const firstWorkspaceDisk = 2

// MaxWorkspaces bounds the workspaces of one VM.
const MaxWorkspaces = 8

func (s workspacesStep) Plan(b *bootPlan) *state.AttachRuntime {
	return &state.AttachRuntime{VM: b.vmID, VMName: b.vmName, Owner: b.owner}
}

func (s workspacesStep) Acquire(ctx context.Context, b *bootPlan, plan *state.AttachRuntime) (*state.AttachRuntime, error) {
	h := *plan
	if len(b.workspaces) == 0 {
		return &h, nil
	}
	if s.attach == nil {
		return nil, errorf(ErrNotYet, "workspaces are not configured")
	}
	items, err := s.attach(ctx, &AttachWorkspaces{VMID: b.vmID, VMName: b.vmName, Owner: b.owner, Mounts: b.workspaces})
	if err != nil {
		return nil, err
	}
	for i := range items {
		items[i].Device = guestDisk(firstWorkspaceDisk + i)
	}
	h.Items = items
	return &h, nil
}

func (s workspacesStep) Release(ctx context.Context, h *state.AttachRuntime, _ releaseHow) error {
	if h == nil || s.detach == nil {
		return nil
	}
	return s.detach(ctx, h.VM)
}

// Probe: attachments are claims in the Workspaces actor's memory; a
// recorded handle is there to be claimed again (Adopt).
func (s workspacesStep) Probe(_ context.Context, h *state.AttachRuntime) (bool, error) {
	return h != nil, nil
}

// Adopt claims a re-adopted VM's workspaces again after a restart of
// paddockd: the VM still holds them.
func (s workspacesStep) Adopt(ctx context.Context, h *state.AttachRuntime) error {
	if len(h.Items) == 0 || s.attach == nil {
		return nil
	}
	ms := make([]state.WorkspaceMount, len(h.Items))
	for i, it := range h.Items {
		ms[i] = it.WorkspaceMount
	}
	_, err := s.attach(ctx, &AttachWorkspaces{VMID: h.VM, VMName: h.VMName, Owner: h.Owner, Mounts: ms})
	return err
}

// guestDisk is the guest's name of the VMM's i-th virtio-blk disk.
func guestDisk(i int) string { return "/dev/vd" + string(rune('a'+i)) }

// workspacesUp records the attachments, gives the VMM their volumes and
// tells the agent, through the seed, where to mount them.
func (a *vmActor) workspacesUp(ctx actor.Context, handle any) error {
	h := handle.(*state.AttachRuntime)
	if err := a.mirror(func(r *state.Runtime) { hc := *h; r.Workspaces = &hc }); err != nil {
		return err
	}
	if len(h.Items) == 0 {
		return nil
	}
	b := a.op.plan
	mounts := make([]guestboot.Mount, len(h.Items))
	for i, it := range h.Items {
		b.vmm.Disks = append(b.vmm.Disks, vmm.Disk{Path: it.Volume, Format: cmp.Or(it.Format, vmm.FormatRaw), ReadOnly: it.ReadOnly})
		mounts[i] = guestboot.Mount{Device: it.Device, Path: it.Path, ReadOnly: it.ReadOnly, UID: it.UID, GID: it.GID}
	}
	cfg, err := guestConfig(b.imgConfig, a.vm.Spec, mounts)
	if err != nil {
		return fmt.Errorf("image config: %w", err)
	}
	return guestboot.WriteSeed(b.seed, cfg)
}
