package actors

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"

	"github.com/paddock-vm/paddock/host/netfilter"
	"github.com/paddock-vm/paddock/host/passt"
)

// fakeRules records each VM's packet rules as netfilter would hold them.
type fakeRules struct {
	mu   sync.Mutex
	vms  map[string]netfilter.VM
	fail error // ApplyVM's error, when set
}

func (f *fakeRules) ApplyVM(_ context.Context, vm netfilter.VM) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return false, f.fail
	}
	if f.vms == nil {
		f.vms = map[string]netfilter.VM{}
	}
	f.vms[vm.ID] = vm
	return true, nil
}

func (f *fakeRules) ProbeVM(_ context.Context, id string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.vms[id]
	return ok, nil
}

func (f *fakeRules) ReleaseVM(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.vms, id)
	return nil
}

func (f *fakeRules) ListVMs(context.Context) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Sorted(maps.Keys(f.vms)), nil
}

func (f *fakeRules) held() map[string]netfilter.VM {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.vms)
}

// fakePasst records running passt processes by socket.
type fakePasst struct {
	mu      sync.Mutex
	running map[string]passt.Spec // socket → spec
	pid     int
}

func (f *fakePasst) Start(_ context.Context, s passt.Spec) (*passt.Process, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.running == nil {
		f.running = map[string]passt.Spec{}
	}
	sock := passtSocket(s.RunDir)
	if _, ok := f.running[sock]; ok {
		return nil, errors.New("fake passt: socket already served")
	}
	f.pid++
	f.running[sock] = s
	return &passt.Process{VMID: s.VMID, PID: 40000 + f.pid, Socket: sock, RunDir: s.RunDir, Cgroup: s.Cgroup}, nil
}

func (f *fakePasst) Probe(p *passt.Process) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.running[p.Socket]
	return ok, nil
}

func (f *fakePasst) Stop(_ context.Context, p *passt.Process) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.running, p.Socket)
	return nil
}

func (f *fakePasst) live() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Sorted(maps.Keys(f.running))
}
