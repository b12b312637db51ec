package actors

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"path/filepath"

	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/state"
)

// vmmStep: the hypervisor process. Handle: the driver's *vmm.Process
// (pid, start time, boot id, argv with the VM's tag), which proves the
// process is this VM's before anything signals it. The plan has no pid:
// released, it kills whatever carries the VM's tag.
type vmmStep struct {
	drv vmm.Driver
	log *slog.Logger
	// find lists this daemon's VMMs (nil: none can be found), for VMMs a
	// crash left between their launch and the record of their pid.
	find func() ([]vmm.Found, error)
}

// vmmExited reports the end of a VMM: typed, as the driver saw it.
type vmmExited struct {
	pid  int
	exit vmm.Exit
	err  error // the wait itself failed
}

func (s vmmStep) Plan(b *bootPlan) *vmm.Process {
	p := &vmm.Process{Driver: s.drv.Name(), VMID: b.vmID, RunDir: b.runDir}
	if b.vmm.Cgroup != "" {
		// the driver makes it before the launch: a crash in between
		// leaves it to this intent's release
		p.Cgroup = filepath.Join(b.vmm.Cgroup, vmm.Tag(b.vmID))
	}
	return p
}

func (s vmmStep) Acquire(ctx context.Context, b *bootPlan, _ *vmm.Process) (*vmm.Process, error) {
	if b.restore != nil {
		if err := verifyState(b.restore); err != nil {
			return nil, err
		}
	}
	return s.drv.Start(ctx, b.vmm)
}

// Release ends the VMM: the driver's ladder (ACPI power button, then quit,
// then kill) when a grace period is given, else a kill; then any process
// that carries the VM's tag without being recorded.
func (s vmmStep) Release(ctx context.Context, p *vmm.Process, how releaseHow) error {
	if p == nil {
		return nil
	}
	if p.PID == 0 {
		return s.drv.Kill(ctx, p) // intent only: the driver kills by tag
	}
	var errs []error
	{
		if how.Grace > 0 {
			errs = append(errs, s.drv.Stop(ctx, p, how.Grace))
		} else {
			errs = append(errs, s.drv.Kill(ctx, p))
		}
	}
	if s.find != nil {
		procs, err := s.find()
		errs = append(errs, err)
		for _, q := range procs {
			if q.VMID != p.VMID || q.PID == p.PID {
				continue
			}
			if !q.Ours {
				s.log.Warn("leaving a VMM with this VM's tag that is not provably this daemon's", "pid", q.PID, "why", q.Why)
				continue
			}
			s.log.Warn("killing an unrecorded VMM of this VM", "pid", q.PID, "why", q.Why)
			errs = append(errs, s.drv.Kill(ctx, q.Process))
		}
	}
	return errors.Join(errs...)
}

func (s vmmStep) Probe(_ context.Context, p *vmm.Process) (bool, error) {
	if p == nil || p.PID == 0 {
		return false, nil
	}
	st, err := s.drv.Probe(p)
	return err == nil && st == vmm.StateRunning, err
}

func (s vmmStep) Adopt(ctx context.Context, p *vmm.Process) error { return s.drv.Adopt(ctx, p) }

// Watch waits for the VMM's exit; it ends with ctx (the VMM's release).
func (s vmmStep) Watch(ctx context.Context, p *vmm.Process) any {
	ex, err := s.drv.Wait(ctx, p)
	return &vmmExited{pid: p.PID, exit: ex, err: err}
}

// vmmMirror is the VMM's identity as vm.json mirrors it.
func vmmMirror(p *vmm.Process) *state.VMMRuntime {
	raw, _ := json.Marshal(p)
	return &state.VMMRuntime{PID: p.PID, StartTime: p.StartTime, Sockets: p.Sockets, Handle: raw}
}

// vmmFromMirror reads the driver's handle back from vm.json; without it
// identity cannot be proven, so it yields an intent-only handle (kill by
// tag).
func vmmFromMirror(rt *state.VMMRuntime, vmID string) *vmm.Process {
	if rt != nil && len(rt.Handle) > 0 {
		var p vmm.Process
		if json.Unmarshal(rt.Handle, &p) == nil && p.PID > 0 && p.VMID == vmID {
			return &p
		}
	}
	return &vmm.Process{VMID: vmID}
}
