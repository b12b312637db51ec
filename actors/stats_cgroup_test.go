package actors

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/agent"
	"github.com/paddock-vm/paddock/host/cgroup"
	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/state"
)

// fakeVMMCgroup makes a directory standing in for a VMM's cgroup with the
// given accounting files.
func fakeVMMCgroup(t *testing.T, vmID string, files map[string]string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), vmm.Tag(vmID))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// The VMM's figures come from its cgroup where the file is there, and from
// /proc per figure where not (no cgroup, no memory controller).
func TestReadVMMUsage(t *testing.T) {
	const id = "vm1"
	both := fakeVMMCgroup(t, id, map[string]string{"cpu.stat": "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n", "memory.current": "73400320\n"})
	cpuOnly := fakeVMMCgroup(t, id, map[string]string{"cpu.stat": "usage_usec 1000\n"})
	for _, tc := range []struct {
		name             string
		pid              int
		cg               string
		cpuFrom, memFrom string
		cpuUsec          uint64
		memory           int64 // -1: any positive figure
	}{
		{"cgroup with both files", os.Getpid(), both, "cgroup", "cgroup", 2500000, 73400320},
		{"no memory controller: memory from /proc", os.Getpid(), cpuOnly, "cgroup", "proc", 1000, -1},
		{"no cgroup", os.Getpid(), "", "proc", "proc", 0, -1},
		{"cgroup gone", os.Getpid(), filepath.Join(t.TempDir(), "paddock-gone"), "proc", "proc", 0, -1},
		{"cgroup, VMM pid gone", 1 << 30, both, "cgroup", "cgroup", 2500000, 73400320},
		{"nothing", 1 << 30, "", "", "", 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := readVMMUsage(tc.pid, tc.cg)
			if u.cpuFrom != tc.cpuFrom || u.memFrom != tc.memFrom || u.haveCPU != (tc.cpuFrom != "") {
				t.Fatalf("sources cpu %q mem %q (have %v), want %q %q", u.cpuFrom, u.memFrom, u.haveCPU, tc.cpuFrom, tc.memFrom)
			}
			if tc.cpuFrom == "cgroup" && u.cpuUsec != tc.cpuUsec {
				t.Errorf("cpu %d µs, want %d", u.cpuUsec, tc.cpuUsec)
			}
			if tc.memory >= 0 && u.memory != tc.memory || tc.memory < 0 && u.memory <= 0 {
				t.Errorf("memory %d, want %d", u.memory, tc.memory)
			}
		})
	}
}

// vmWithHandle is a running VM whose vm.json mirrors a VMM handle.
func vmWithHandle(t *testing.T, id string, p vmm.Process) state.VM {
	t.Helper()
	raw, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return state.VM{ID: id, Name: id, Status: state.StatusRunning,
		Runtime: state.Runtime{VMM: &state.VMMRuntime{PID: p.PID, StartTime: p.StartTime, Handle: raw}}}
}

func TestVMMCgroupFromHandle(t *testing.T) {
	for _, tc := range []struct {
		name string
		p    vmm.Process
		want string
	}{
		{"own cgroup", vmm.Process{VMID: "vm1", PID: 7, Cgroup: "/cg/paddock.service/paddock-vm1"}, "/cg/paddock.service/paddock-vm1"},
		{"another VM's cgroup", vmm.Process{VMID: "vm1", PID: 7, Cgroup: "/cg/paddock.service/paddock-vm2"}, ""},
		{"no cgroup", vmm.Process{VMID: "vm1", PID: 7}, ""},
		{"handle of another VM", vmm.Process{VMID: "vm2", PID: 7, Cgroup: "/cg/paddock.service/paddock-vm1"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vm := vmWithHandle(t, "vm1", tc.p)
			if got := vmmCgroup(vm.Runtime.VMM, "vm1"); got != tc.want {
				t.Errorf("vmmCgroup = %q, want %q", got, tc.want)
			}
		})
	}
}

// collect takes the VMM's CPU time and memory from the cgroup its handle
// names, and its rate from two figures of that source.
func TestStatsFromCgroup(t *testing.T) {
	cg := fakeVMMCgroup(t, "vm1", map[string]string{"cpu.stat": "usage_usec 2500000\n", "memory.current": "73400320\n"})
	a := newStatsActor(StatsDeps{Log: slog.New(slog.DiscardHandler),
		Agent: func(context.Context, string) (*agent.Client, error) { return nil, errors.New("no agent here") },
	}).(*statsActor)
	vm := vmWithHandle(t, "vm1", vmm.Process{VMID: "vm1", PID: os.Getpid(), Cgroup: cg})
	e := a.collect(context.Background(), vm, statsEntry{})
	if h := e.out.Host; h.CPUSeconds != 2.5 || h.RSS != 73400320 || h.CPURate != 0 {
		t.Fatalf("first figures %+v", h)
	}
	if err := os.WriteFile(filepath.Join(cg, "cpu.stat"), []byte("usage_usec 3500000\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	prev := *e
	prev.at = e.at.Add(-2 * time.Second) // the previous poll, 2s (plus the test's time) before
	e2 := a.collect(context.Background(), vm, prev)
	if h := e2.out.Host; h.CPUSeconds != 3.5 || h.CPURate <= 0 || h.CPURate > 0.5 {
		t.Fatalf("second figures %+v: want 1s of CPU over 2s or a little more", h)
	}
	// the cgroup's cpu.stat gone: /proc's figure, and no rate across sources
	if err := os.Remove(filepath.Join(cg, "cpu.stat")); err != nil {
		t.Fatal(err)
	}
	e3 := a.collect(context.Background(), vm, *e2)
	if e3.cpuFrom != "proc" || e3.out.Host.CPURate != 0 {
		t.Fatalf("after cpu.stat went: from %q, rate %v", e3.cpuFrom, e3.out.Host.CPURate)
	}
}

// The VMM's cgroup limits follow the VM's spec and the host's margins.
func TestVMMLimits(t *testing.T) {
	for _, tc := range []struct {
		name string
		h    Host
		spec state.Spec
		want cgroup.Limits
	}{
		{"configured", Host{VMMMemoryOverhead: 256 << 20, VMMPIDs: 256}, state.Spec{CPUs: 2, Memory: 512 << 20},
			cgroup.Limits{MemoryMax: 768 << 20, CPUs: 2, PIDsMax: 258}},
		{"no margins: cpu.max only", Host{}, state.Spec{CPUs: 4, Memory: 1 << 30}, cgroup.Limits{CPUs: 4}},
		{"spec without figures", Host{VMMMemoryOverhead: 256 << 20, VMMPIDs: 256}, state.Spec{}, cgroup.Limits{PIDsMax: 257}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.h.vmmLimits(tc.spec); got != tc.want {
				t.Errorf("vmmLimits = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// With a delegated cgroup, a start asks the driver for the VMM's cgroup
// below it with the VM's limits, and the intent recorded before the start
// names that cgroup, so that a crash between its creation and the pid's
// record leaves it to the intent's release.
func TestVMMCgroupSpec(t *testing.T) {
	specs := make(chan vmm.Spec, 1)
	e := newLifecycle(t, func(h *Host, f *fakes) {
		h.Cgroup, h.VMMMemoryOverhead, h.VMMPIDs = "/cg/paddock.service", 256<<20, 256
		f.vmm.StartHook = func(_ context.Context, s vmm.Spec) error { specs <- s; return nil }
	})
	if err := <-e.startAsync(t); err != nil {
		t.Fatal(err)
	}
	s := <-specs
	want := cgroup.Limits{MemoryMax: e.vm.Spec.Memory + 256<<20, CPUs: e.vm.Spec.CPUs, PIDsMax: 256 + e.vm.Spec.CPUs}
	if s.Cgroup != "/cg/paddock.service" || s.Limits != want {
		t.Fatalf("spec cgroup %q limits %+v, want %+v", s.Cgroup, s.Limits, want)
	}
	intent := vmmStep{drv: e.fk.vmm}.Plan(&bootPlan{vmID: e.vm.ID, runDir: "/run/x", vmm: s})
	if intent.PID != 0 || intent.Cgroup != "/cg/paddock.service/"+vmm.Tag(e.vm.ID) {
		t.Fatalf("intent %+v", intent)
	}
	if p := (vmmStep{drv: e.fk.vmm}).Plan(&bootPlan{vmID: e.vm.ID, runDir: "/run/x"}); p.Cgroup != "" {
		t.Fatalf("intent without a delegated cgroup names %q", p.Cgroup)
	}
}

// The start-up sweep removes VMM cgroups of VMs the daemon does not know
// from its delegated cgroup, and leaves its VMs' and anything not named
// like a VMM cgroup alone.
func TestSweepOrphanCgroups(t *testing.T) {
	parent := t.TempDir()
	e := newLifecycle(t, func(h *Host, _ *fakes) { h.Cgroup = parent })
	for _, name := range []string{vmm.Tag(e.vm.ID), vmm.Tag("ghost"), cgroup.SupervisorLeaf, "other"} {
		if err := os.Mkdir(filepath.Join(parent, name), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	e.sys.Shutdown()
	e.harness = startOn(t, e.dir, e.host, e.fk)
	for name, kept := range map[string]bool{vmm.Tag(e.vm.ID): true, vmm.Tag("ghost"): false, cgroup.SupervisorLeaf: true, "other": true} {
		if _, err := os.Stat(filepath.Join(parent, name)); (err == nil) != kept {
			t.Errorf("%s: kept %v, want %v", name, err == nil, kept)
		}
	}
}

// The start-up sweep kills VMMs of VMs the daemon does not know only when
// they are provably its own; a lookalike of another daemon (same paths in
// another mount namespace, another uid) is left running, and a VMM of a
// known VM is its actor's business.
func TestSweepOrphanVMMs(t *testing.T) {
	e := newLifecycle(t, nil)
	found := []vmm.Found{
		{Process: &vmm.Process{VMID: e.vm.ID, PID: 7001}, Ours: true, Why: "its API socket is this daemon's very file"},
		{Process: &vmm.Process{VMID: "ghost", PID: 7002}, Ours: true, Why: "its API socket is this daemon's very file"},
		{Process: &vmm.Process{VMID: "lookalike", PID: 7003}, Why: "its API socket is another file: another mount namespace's"},
		{Process: &vmm.Process{VMID: "stranger", PID: 7004}, Why: "it runs as uid 1001, this daemon as 1000"},
	}
	e.sys.Shutdown()
	e.host.FindVMMs = func() ([]vmm.Found, error) { return found, nil }
	before := len(e.fk.vmm.Calls())
	e.harness = startOn(t, e.dir, e.host, e.fk)
	killed := map[string]bool{}
	for _, c := range e.fk.vmm.Calls()[before:] {
		if c.Op == "Kill" {
			killed[c.VMID] = true
		}
	}
	for id, want := range map[string]bool{e.vm.ID: false, "ghost": true, "lookalike": false, "stranger": false} {
		if killed[id] != want {
			t.Errorf("VMM of %s killed: %v, want %v", id, killed[id], want)
		}
	}
}
