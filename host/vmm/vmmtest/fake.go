// Package vmmtest provides a recording fake vmm.Driver for unit tests of
// its callers (the VM actor, reconcile): no processes are started; VMMs are
// records whose exit the test controls.
package vmmtest

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/paddock-vm/paddock/host/vmm"
)

// Call is one recorded driver call.
type Call struct {
	Op       string // Start, Adopt, Wait, Stop, Kill, Probe, Save
	VMID     string
	Timeout  time.Duration // Stop
	Incoming string        // Start: the state resumed; Save: the file written
	// MemoryFile is the RAM file a Start shares its guest's memory with.
	MemoryFile string
}

type proc struct {
	p    vmm.Process
	done chan struct{}
	exit vmm.Exit
}

// Fake is a recording vmm.Driver. Set Err[op] to make the next calls of op
// fail (until reset). Safe for concurrent use.
type Fake struct {
	mu      sync.Mutex
	calls   []Call
	procs   map[string]*proc // by VM id
	nextPID int
	// Err maps an op name to the error it returns.
	Err map[string]error
	// StopExit is the exit Stop produces (a clean exit by default).
	StopExit vmm.Exit
	// StartHook, when set, runs at the start of Start (a VMM that hangs
	// until ctx ends, or fails).
	StartHook func(ctx context.Context, spec vmm.Spec) error
}

var (
	_ vmm.Driver = (*Fake)(nil)
	_ vmm.Saver  = (*Fake)(nil)
)

// New returns an empty fake.
func New() *Fake {
	return &Fake{procs: map[string]*proc{}, nextPID: 1000, Err: map[string]error{}, StopExit: vmm.Exit{Known: true}}
}

// Name returns "fake".
func (f *Fake) Name() string { return "fake" }

func (f *Fake) record(c Call) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, c)
	return f.Err[c.Op]
}

// Calls returns the calls so far.
func (f *Fake) Calls() []Call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Call(nil), f.calls...)
}

// Running returns the VM ids whose fake VMM runs.
func (f *Fake) Running() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for id, pr := range f.procs {
		select {
		case <-pr.done:
		default:
			out = append(out, id)
		}
	}
	return out
}

// SetStartHook sets StartHook safely while the fake is in use.
func (f *Fake) SetStartHook(h func(ctx context.Context, spec vmm.Spec) error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.StartHook = h
}

// Start records the call and creates a running fake VMM.
func (f *Fake) Start(ctx context.Context, spec vmm.Spec) (*vmm.Process, error) {
	if err := f.record(Call{Op: "Start", VMID: spec.VMID, Incoming: spec.Incoming, MemoryFile: spec.MemoryFile}); err != nil {
		return nil, err
	}
	f.mu.Lock()
	hook := f.StartHook
	f.mu.Unlock()
	if hook != nil {
		if err := hook(ctx, spec); err != nil {
			return nil, err
		}
	}
	spec, err := spec.Normalize()
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if pr := f.procs[spec.VMID]; pr != nil {
		select {
		case <-pr.done:
		default:
			return nil, fmt.Errorf("%w: pid %d", vmm.ErrAlreadyRunning, pr.p.PID)
		}
	}
	f.nextPID++
	p := vmm.Process{Driver: "fake", VMID: spec.VMID, PID: f.nextPID, StartTime: uint64(f.nextPID) * 10,
		Cmdline: []string{"fake-vmm", "-name", vmm.Tag(spec.VMID)}, RunDir: spec.RunDir,
		ControlSocket: spec.ControlSocket, ControlKind: vmm.ControlVirtioSerial,
		ConsoleLog: spec.ConsoleLog, ConsoleLogMax: spec.ConsoleLogMax, Accel: vmm.AccelTCG}
	if spec.MemoryFile != "" && spec.Incoming == "" {
		// The guest's RAM, shared with the file as QEMU's would be.
		if err := os.WriteFile(spec.MemoryFile, []byte("memory of "+spec.VMID), 0o600); err != nil {
			return nil, err
		}
		p.MemoryFile = spec.MemoryFile
	}
	f.procs[spec.VMID] = &proc{p: p, done: make(chan struct{})}
	out := p
	return &out, nil
}

// Save records the call and writes "state of VMID" to path (a new file),
// the fake VMM left running (paused, as the driver leaves it); a guest
// whose RAM is in a file has that file moved to vmm.MemPath(path).
func (f *Fake) Save(ctx context.Context, p *vmm.Process, path string) (vmm.Saved, error) {
	if err := f.record(Call{Op: "Save", VMID: p.VMID, Incoming: path}); err != nil {
		return vmm.Saved{}, err
	}
	if f.lookup(p) == nil {
		return vmm.Saved{}, vmm.ErrNotRunning
	}
	data := []byte("state of " + p.VMID)
	fh, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return vmm.Saved{}, err
	}
	_, err = fh.Write(data)
	if cerr := fh.Close(); err == nil {
		err = cerr
	}
	saved := vmm.Saved{Bytes: int64(len(data)), Files: []string{path}}
	if err == nil && p.MemoryFile != "" {
		if err = os.Rename(p.MemoryFile, vmm.MemPath(path)); err == nil {
			saved.Files = append(saved.Files, vmm.MemPath(path))
		}
	}
	return saved, err
}

// lookup returns the fake VMM p names, nil when p is not (or no longer) it.
func (f *Fake) lookup(p *vmm.Process) *proc {
	f.mu.Lock()
	defer f.mu.Unlock()
	pr := f.procs[p.VMID]
	if pr == nil || pr.p.PID != p.PID || pr.p.StartTime != p.StartTime {
		return nil
	}
	return pr
}

// Exit makes the VMM of vmID exit as ex (a crash, a kill from outside, a
// guest power-off). No-op when it is not running.
func (f *Fake) Exit(vmID string, ex vmm.Exit) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if pr := f.procs[vmID]; pr != nil {
		select {
		case <-pr.done:
		default:
			pr.exit = ex
			close(pr.done)
		}
	}
}

// Probe reports running, exited, or not-ours (a handle of an older VMM).
func (f *Fake) Probe(p *vmm.Process) (vmm.State, error) {
	if err := f.record(Call{Op: "Probe", VMID: p.VMID}); err != nil {
		return vmm.StateExited, err
	}
	return f.probe(p), nil
}

func (f *Fake) probe(p *vmm.Process) vmm.State {
	f.mu.Lock()
	pr := f.procs[p.VMID]
	f.mu.Unlock()
	if pr == nil {
		return vmm.StateExited
	}
	select {
	case <-pr.done:
		return vmm.StateExited
	default:
	}
	if pr.p.PID != p.PID || pr.p.StartTime != p.StartTime {
		return vmm.StateNotOurs
	}
	return vmm.StateRunning
}

// Adopt succeeds for a running fake VMM.
func (f *Fake) Adopt(ctx context.Context, p *vmm.Process) error {
	if err := f.record(Call{Op: "Adopt", VMID: p.VMID}); err != nil {
		return err
	}
	if s := f.probe(p); s != vmm.StateRunning {
		return fmt.Errorf("%w: %s", vmm.ErrNotRunning, s)
	}
	return nil
}

// Wait blocks until Exit, Stop or Kill ends the fake VMM.
func (f *Fake) Wait(ctx context.Context, p *vmm.Process) (vmm.Exit, error) {
	if err := f.record(Call{Op: "Wait", VMID: p.VMID}); err != nil {
		return vmm.Exit{}, err
	}
	pr := f.lookup(p)
	if pr == nil {
		return vmm.Exit{}, nil
	}
	select {
	case <-pr.done:
		return pr.exit, nil
	case <-ctx.Done():
		return vmm.Exit{}, ctx.Err()
	}
}

// Stop ends the fake VMM with StopExit.
func (f *Fake) Stop(ctx context.Context, p *vmm.Process, timeout time.Duration) error {
	if err := f.record(Call{Op: "Stop", VMID: p.VMID, Timeout: timeout}); err != nil {
		return err
	}
	if f.lookup(p) != nil {
		f.Exit(p.VMID, f.StopExit)
	}
	return nil
}

// Kill ends the fake VMM as if by SIGKILL; idempotent.
func (f *Fake) Kill(ctx context.Context, p *vmm.Process) error {
	if err := f.record(Call{Op: "Kill", VMID: p.VMID}); err != nil {
		return err
	}
	// An intent-only handle (PID 0) kills whatever carries the VM's tag,
	// as the real drivers do.
	if p.PID == 0 || f.lookup(p) != nil {
		f.Exit(p.VMID, vmm.Exit{Known: true, Signal: 9})
	}
	return nil
}
