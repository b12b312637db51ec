package actors

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"

	"github.com/paddock-vm/paddock/host/cgroup"
	"github.com/paddock-vm/paddock/host/passt"
	"github.com/paddock-vm/paddock/host/vmm"
)

// Passt runs a VM's user-mode network (host/passt): egress and published
// ports through the host's sockets, with no capability at all.
type Passt interface {
	Start(ctx context.Context, s passt.Spec) (*passt.Process, error)
	Probe(p *passt.Process) (bool, error)
	Stop(ctx context.Context, p *passt.Process) error
}

// passtStep: the VM's passt process (user mode). Handle: *passt.Process;
// the plan names its socket, by which an intent-only handle is stopped.
type passtStep struct {
	run Passt
	why error // why user mode is unavailable when run is nil
}

func passtSocket(runDir string) string { return filepath.Join(runDir, "passt.sock") }

func (s passtStep) Plan(b *bootPlan) *passt.Process {
	return &passt.Process{VMID: b.vmID, Socket: passtSocket(b.runDir), RunDir: b.runDir}
}

func (s passtStep) Acquire(ctx context.Context, b *bootPlan, _ *passt.Process) (*passt.Process, error) {
	if s.run == nil {
		return nil, fmt.Errorf("user-mode networking (vm.network = \"user\") is unavailable: %w", s.why)
	}
	spec := b.passt
	if b.vmm.Cgroup != "" {
		// passt is born in the VM's cgroup (the VMM joins it later): it
		// counts against the VM's limits and dies with the VM's group kill.
		leaf, err := vmm.CreateCgroup(ctx, b.vmm.Cgroup, b.vmID, b.vmm.Limits)
		if err != nil {
			return nil, fmt.Errorf("cgroup for passt: %w", err)
		}
		spec.Cgroup = leaf
	}
	return s.run.Start(ctx, spec)
}

func (s passtStep) Release(ctx context.Context, p *passt.Process, _ releaseHow) error {
	if s.run == nil || p == nil || p.Socket == "" {
		return nil
	}
	if err := s.run.Stop(ctx, p); err != nil {
		return err
	}
	if p.Cgroup != "" {
		return cgroup.Remove(ctx, p.Cgroup, true) // gone already when the VMM's went
	}
	return nil
}

func (s passtStep) Probe(_ context.Context, p *passt.Process) (bool, error) {
	if s.run == nil || p == nil || p.PID == 0 {
		return false, nil
	}
	return s.run.Probe(p)
}

// passtFromMirror reads the passt handle back from vm.json (nil if none).
func passtFromMirror(raw json.RawMessage, vmID string) *passt.Process {
	if len(raw) == 0 {
		return nil
	}
	var p passt.Process
	if json.Unmarshal(raw, &p) != nil || p.VMID != vmID || p.Socket == "" {
		return nil
	}
	return &p
}
