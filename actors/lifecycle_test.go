package actors

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/guestboot"
	"github.com/paddock-vm/paddock/host/netdev/netdevtest"
	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/host/vmm/vmmtest"
	"github.com/paddock-vm/paddock/imaging/imagetest"
	"github.com/paddock-vm/paddock/state"
)

// lifecycleEnv is a tree over the fakes, with one VM "v" created.
type lifecycleEnv struct {
	*harness
	host *Host
	vm   *state.VM
}

func newLifecycle(t *testing.T, mod func(*Host, *fakes)) *lifecycleEnv {
	t.Helper()
	dir := t.TempDir()
	imagetest.Seed(t, dir, "alpine")
	host, fk := fakeHost(t, dir)
	if mod != nil {
		mod(host, fk)
	}
	h := startOn(t, dir, host, fk)
	return &lifecycleEnv{harness: h, host: host, vm: h.mustCreate(t, admin, "v")}
}

// startAsync sends a start and returns where its answer arrives.
func (e *lifecycleEnv) startAsync(t *testing.T) <-chan error {
	ch := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, err := e.sys.Request(ctx, &StartVM{Caller: admin, Ref: "v", Received: time.Now()})
		ch <- err
	}()
	return ch
}

func (e *lifecycleEnv) get(t *testing.T) state.VM {
	t.Helper()
	r, err := e.do(t, &GetVM{Caller: admin, Ref: "v"})
	if err != nil {
		t.Fatal(err)
	}
	return *r.VM
}

// waitFor polls cond (the fakes are asynchronous to the test).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// stoppedClean checks that the VM is stopped and nothing of it is held.
func (e *lifecycleEnv) stoppedClean(t *testing.T, when string) {
	t.Helper()
	if vm := e.get(t); vm.Status != state.StatusStopped {
		t.Fatalf("%s: %s (%s)", when, vm.Status, vm.Reason)
	}
	e.noLeaks(t)
}

// noLeaks checks that nothing of the VM is held on the host: no tap, no
// running VMM, no active disk, no handle, an empty runtime mirror.
func (e *lifecycleEnv) noLeaks(t *testing.T) {
	t.Helper()
	if taps := e.fk.net.Taps(); len(taps) != 0 {
		t.Errorf("taps left: %v", taps)
	}
	if run := e.fk.vmm.Running(); len(run) != 0 {
		t.Errorf("VMMs left running: %v", run)
	}
	if rules := e.fk.rules.held(); len(rules) != 0 {
		t.Errorf("packet rules left: %v", rules)
	}
	if run := e.fk.passt.live(); len(run) != 0 {
		t.Errorf("passt left running: %v", run)
	}
	if st := e.fk.disk.State(); strings.Contains(st, " active") {
		t.Errorf("disk left active: %s", st)
	}
	hs, err := e.store.LoadHandles(e.vm.ID)
	if err != nil || len(hs.Items) != 0 {
		t.Errorf("handles left: %+v %v", hs, err)
	}
	if vm, err := e.store.Load(e.vm.ID); err == nil && (vm.Runtime.VMM != nil || vm.Runtime.Tap != nil) {
		t.Errorf("runtime mirror not cleared: %+v", vm.Runtime)
	}
}

func TestBootAndStop(t *testing.T) {
	e := newLifecycle(t, nil)
	if err := <-e.startAsync(t); err != nil {
		t.Fatal(err)
	}
	vm := e.get(t)
	if vm.Status != state.StatusRunning || vm.Runtime.VMM == nil || vm.Runtime.Tap == nil || len(vm.Disk) == 0 {
		t.Fatalf("after start: %+v", vm)
	}
	if taps := e.fk.net.Taps(); len(taps) != 1 {
		t.Fatalf("taps: %v", taps)
	}
	// The start's report names every step taken, in order, and is kept.
	var steps []string
	if vm.LastBoot != nil {
		for _, s := range vm.LastBoot.Steps {
			steps = append(steps, s.Name)
			if s.MS < 0 {
				t.Errorf("step %s took %v ms", s.Name, s.MS)
			}
		}
	}
	if got := strings.Join(steps, " "); got != "api record prepare seed tap rules disk workspaces vmm agent" {
		t.Errorf("last boot steps: %q", got)
	}
	if _, err := e.do(t, &StopVM{Caller: admin, Ref: "v"}); err != nil {
		t.Fatal(err)
	}
	e.stoppedClean(t, "after stop")
	// The disk outlives the stop; the next start activates it again.
	if st := e.fk.disk.State(); !strings.HasSuffix(st, " inactive") {
		t.Fatalf("disk after stop: %q", st)
	}
	if err := <-e.startAsync(t); err != nil {
		t.Fatal(err)
	}
	if calls := strings.Join(e.fk.disk.Calls(), "\n"); !strings.Contains(calls, "activate") {
		t.Fatalf("second start did not activate the kept disk: %s", calls)
	}
	if _, err := e.do(t, &DeleteVM{Caller: admin, Ref: "v", Force: true}); err != nil {
		t.Fatal(err)
	}
	if st := e.fk.disk.State(); st != "" {
		t.Fatalf("disk after delete: %q", st)
	}
	e.noLeaks(t)
}

// A failure at any step of a boot releases what the earlier steps made
// and leaves the VM in error, with the step named.
func TestBootRollbackAtEveryStep(t *testing.T) {
	boom := errors.New("injected failure")
	for _, tc := range []struct {
		step   string
		inject func(*Host, *fakes)
		want   string
	}{
		{"kit", func(h *Host, _ *fakes) { h.Kit = func(string) (*Kit, error) { return nil, boom } }, "injected failure"},
		{"tap", func(_ *Host, f *fakes) { f.net.FailNext(netdevtest.OpAcquireTap, boom) }, "tap: "},
		{"disk", func(_ *Host, f *fakes) { f.disk.FailNext("create", boom) }, "disk: "},
		{"vmm", func(_ *Host, f *fakes) { f.vmm.Err["Start"] = boom }, "vmm: "},
		{"agent", func(h *Host, f *fakes) { h.StartTimeout = 300 * time.Millisecond; f.setAgent("silent") }, "guest agent did not answer"},
	} {
		t.Run(tc.step, func(t *testing.T) {
			e := newLifecycle(t, tc.inject)
			err := <-e.startAsync(t)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrInvalidState) {
				t.Fatalf("start: %v, want an error with %q", err, tc.want)
			}
			vm := e.get(t)
			if vm.Status != state.StatusError || !strings.Contains(vm.Reason, tc.want) {
				t.Fatalf("after the failed start: %s (%s)", vm.Status, vm.Reason)
			}
			e.noLeaks(t)
		})
	}
}

// A forced stop cuts a boot that hangs short: at the VMM's start (a VMM
// that never answers) and at the agent's hello.
func TestForceStopDuringHungBoot(t *testing.T) {
	for _, where := range []string{"vmm", "agent"} {
		t.Run(where, func(t *testing.T) {
			e := newLifecycle(t, func(h *Host, f *fakes) {
				h.StartTimeout = 10 * time.Minute
				if where == "vmm" {
					f.vmm.StartHook = func(ctx context.Context, _ vmm.Spec) error { <-ctx.Done(); return ctx.Err() }
				} else {
					f.setAgent("silent")
				}
			})
			started := e.startAsync(t)
			waitFor(t, "the boot to reach "+where, func() bool {
				for _, c := range e.fk.vmm.Calls() {
					if c.Op == "Start" {
						return where == "vmm" || len(e.fk.vmm.Running()) == 1
					}
				}
				return false
			})
			t0 := time.Now()
			if _, err := e.do(t, &StopVM{Caller: admin, Ref: "v", Force: true}); err != nil {
				t.Fatalf("force stop: %v", err)
			}
			took := time.Since(t0)
			t.Logf("force stop during a boot hung at %s returned after %v", where, took)
			if took >= e.host.StartTimeout {
				t.Fatal("the forced stop waited for the boot's deadline")
			}
			if err := <-started; err == nil || !strings.Contains(err.Error(), "cut short") {
				t.Fatalf("the start's answer: %v", err)
			}
			e.stoppedClean(t, "after the forced stop")
		})
	}
}

// The stop ladder: the agent powers the guest off; a guest whose agent
// ignores it gets the driver's ACPI ladder (Stop with a grace period);
// force kills at once.
func TestStopLadder(t *testing.T) {
	for _, tc := range []struct {
		name       string
		agent      string
		force      bool
		wantStop   bool // the driver's ladder ran (Stop with a grace period)
		wantNoKill bool
	}{
		{"agent powers off", "ok", false, false, false},
		{"agent ignores it: ACPI", "deaf", false, true, true},
		{"force", "ok", true, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newLifecycle(t, func(h *Host, f *fakes) { f.setAgent(tc.agent) })
			if err := <-e.startAsync(t); err != nil {
				t.Fatal(err)
			}
			before := len(e.fk.vmm.Calls())
			if _, err := e.do(t, &StopVM{Caller: admin, Ref: "v", Force: tc.force}); err != nil {
				t.Fatal(err)
			}
			var stops []vmmtest.Call
			for _, c := range e.fk.vmm.Calls()[before:] {
				if c.Op == "Stop" {
					stops = append(stops, c)
				}
			}
			if tc.wantStop != (len(stops) == 1 && stops[0].Timeout > 0) {
				t.Fatalf("driver Stop calls: %+v (want the ACPI ladder: %v)", stops, tc.wantStop)
			}
			e.stoppedClean(t, "after stop")
		})
	}
}

// A VMM that ends by itself: at each phase of the VM's life.
func TestVMMExit(t *testing.T) {
	for _, tc := range []struct {
		name       string
		phase      string // running or boot
		exit       vmm.Exit
		wantStatus state.Status
		wantReason string
	}{
		{"guest powers off", "running", vmm.Exit{Known: true}, state.StatusStopped, "powered off"},
		{"VMM crashes", "running", vmm.Exit{Known: true, Signal: 11}, state.StatusError, "signal 11"},
		{"re-adopted VMM ends", "running", vmm.Exit{}, state.StatusStopped, "status unknown"},
		{"VMM dies during boot", "boot", vmm.Exit{Known: true, Code: 1}, state.StatusError, "exited during boot"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newLifecycle(t, func(h *Host, f *fakes) {
				if tc.phase == "boot" {
					h.StartTimeout = 10 * time.Minute
					f.setAgent("silent")
				}
			})
			started := e.startAsync(t)
			if tc.phase == "running" {
				if err := <-started; err != nil {
					t.Fatal(err)
				}
			} else {
				waitFor(t, "the VMM to start", func() bool { return len(e.fk.vmm.Running()) == 1 })
			}
			e.fk.vmm.Exit(e.vm.ID, tc.exit)
			if tc.phase == "boot" {
				if err := <-started; err == nil || !strings.Contains(err.Error(), tc.wantReason) {
					t.Fatalf("start: %v", err)
				}
			}
			waitFor(t, "the VM to settle", func() bool { return e.get(t).Status == tc.wantStatus })
			if vm := e.get(t); !strings.Contains(vm.Reason, tc.wantReason) {
				t.Fatalf("reason %q, want %q", vm.Reason, tc.wantReason)
			}
			e.noLeaks(t)
		})
	}
}

// A restarted daemon reconciles each state a crash can leave: a running
// VMM still there is re-adopted (agent reconnected), a gone one is torn
// down, a boot cut short at any step is torn down.
func TestReconcile(t *testing.T) {
	for _, tc := range []struct {
		name       string
		setup      func(t *testing.T, e *lifecycleEnv)
		wantStatus state.Status
		wantReason string
	}{
		{"running, VMM alive", func(t *testing.T, e *lifecycleEnv) {
			if err := <-e.startAsync(t); err != nil {
				t.Fatal(err)
			}
		}, state.StatusRunning, ""},
		{"running, VMM gone", func(t *testing.T, e *lifecycleEnv) {
			if err := <-e.startAsync(t); err != nil {
				t.Fatal(err)
			}
			e.sys.Shutdown() // the daemon is gone before the VMM ends
			time.Sleep(100 * time.Millisecond)
			e.fk.vmm.Exit(e.vm.ID, vmm.Exit{Known: true})
		}, state.StatusStopped, "while paddockd was not running"},
		{"boot cut at the VMM (intent recorded)", func(t *testing.T, e *lifecycleEnv) {
			e.host.StartTimeout = 10 * time.Minute
			e.fk.vmm.StartHook = func(ctx context.Context, _ vmm.Spec) error { <-ctx.Done(); return ctx.Err() }
			e.startAsync(t)
			waitFor(t, "the VMM start", func() bool { return len(e.fk.vmm.Calls()) > 0 })
		}, state.StatusStopped, "start interrupted"},
		{"boot cut at the agent (VMM live)", func(t *testing.T, e *lifecycleEnv) {
			e.host.StartTimeout = 10 * time.Minute
			e.fk.setAgent("silent")
			e.startAsync(t)
			waitFor(t, "the VMM", func() bool { return len(e.fk.vmm.Running()) == 1 })
		}, state.StatusStopped, "start interrupted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newLifecycle(t, nil)
			tc.setup(t, e)
			e.sys.Shutdown()
			e.fk.vmm.SetStartHook(nil)
			e.fk.setAgent("ok")
			e.harness = startOn(t, e.dir, e.host, e.fk)
			vm := e.get(t)
			if vm.Status != tc.wantStatus || !strings.Contains(vm.Reason, tc.wantReason) {
				t.Fatalf("after restart: %s (%s), want %s (%s)", vm.Status, vm.Reason, tc.wantStatus, tc.wantReason)
			}
			if tc.wantStatus == state.StatusRunning {
				waitFor(t, "the agent to reconnect", func() bool {
					ctx, cancel := context.WithTimeout(context.Background(), time.Second)
					defer cancel()
					r, err := e.sys.Agent(ctx, admin, "v")
					return err == nil && r.Agent != nil
				})
				if _, err := e.do(t, &StopVM{Caller: admin, Ref: "v"}); err != nil {
					t.Fatal(err)
				}
			}
			e.noLeaks(t)
		})
	}
}

// A panic in a resource child restarts only that child: the VM keeps
// running, its VMM's end is still noticed, and stop releases everything.
func TestPanicInResourceChild(t *testing.T) {
	for _, kind := range append(append([]string(nil), resourceKinds...), KindAgent) {
		t.Run(kind, func(t *testing.T) {
			e := newLifecycle(t, nil)
			if err := <-e.startAsync(t); err != nil {
				t.Fatal(err)
			}
			e.sys.sys.Root.Send(e.sys.Manager, &crashVM{Ref: "v", Kind: kind})
			if err := e.sys.Ping(context.Background()); err != nil {
				t.Fatal(err)
			}
			if vm := e.get(t); vm.Status != state.StatusRunning {
				t.Fatalf("after the %s child's panic: %s (%s)", kind, vm.Status, vm.Reason)
			}
			if kind == KindVMM {
				// The restarted child follows the live VMM again.
				time.Sleep(50 * time.Millisecond)
				e.fk.vmm.Exit(e.vm.ID, vmm.Exit{Known: true})
				waitFor(t, "the VMM's end to be noticed", func() bool { return e.get(t).Status == state.StatusStopped })
			} else if _, err := e.do(t, &StopVM{Caller: admin, Ref: "v"}); err != nil {
				t.Fatal(err)
			}
			e.noLeaks(t)
		})
	}
}

// The boot hands the driver a command line the agent parses back to what
// the VM is (guestboot owns the format; the driver adds the channel), and a
// seed the agent reads.
func TestBootContract(t *testing.T) {
	var got vmm.Spec
	e := newLifecycle(t, func(_ *Host, fk *fakes) {
		fk.vmm.SetStartHook(func(_ context.Context, spec vmm.Spec) error { got = spec; return nil })
	})
	if err := <-e.startAsync(t); err != nil {
		t.Fatal(err)
	}
	vm := e.get(t)
	args, err := guestboot.Parse(got.Cmdline)
	if err != nil {
		t.Fatalf("cmdline %q: %v", got.Cmdline, err)
	}
	if args.Root != "/dev/vda" || args.Hostname != "v" || args.Config != "/dev/vdb" {
		t.Errorf("cmdline %q: root, hostname or config wrong: %+v", got.Cmdline, args)
	}
	if args.Serial != "" || args.Vsock != 0 {
		t.Errorf("cmdline %q names the agent's channel; that is the driver's word", got.Cmdline)
	}
	if len(args.IPs) != 1 || args.IPs[0].String() != vm.Net.IP || len(args.Gateways) != 1 || args.Gateways[0].String() != vm.Net.Gateway {
		t.Errorf("cmdline %q: address not the VM's %s via %s", got.Cmdline, vm.Net.IP, vm.Net.Gateway)
	}
	if len(got.Disks) != 2 {
		t.Fatalf("disks: %+v", got.Disks)
	}
	f, err := os.Open(got.Disks[1].Path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cfg, err := guestboot.ReadSeed(f)
	if err != nil || !json.Valid(cfg) {
		t.Fatalf("seed %s: %v (%q)", got.Disks[1].Path, err, cfg)
	}
}

// Every crash point the step tables list is reached by a boot and a stop,
// in the listed order: a listed point the code never passes would make
// e2e/TestCrashPoints prove nothing for it.
func TestFailpointsReached(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	failpointHook = func(name string) { mu.Lock(); seen = append(seen, name); mu.Unlock() }
	t.Cleanup(func() { failpointHook = nil })
	t.Logf("crash points: %s", strings.Join(FailpointNames, " "))
	reached := map[string]bool{}
	// A bridged VM acquires the tap and its rules, a user-mode VM its passt;
	// a stop releases every kind (what a crash may have left).
	for _, tc := range []struct{ network, without string }{{"bridge", KindPasst}, {"user", KindTap + "|" + KindRules}} {
		mu.Lock()
		seen = nil
		mu.Unlock()
		e := newLifecycle(t, func(h *Host, _ *fakes) { h.DefaultNetwork = tc.network })
		if err := <-e.startAsync(t); err != nil {
			t.Fatal(err)
		}
		if _, err := e.do(t, &StopVM{Caller: admin, Ref: "v"}); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		got := slices.Clone(seen)
		mu.Unlock()
		skip := regexp.MustCompile(`^acquire-(` + tc.without + `)-`)
		want := slices.DeleteFunc(slices.Clone(FailpointNames), skip.MatchString)
		if !slices.Equal(got, want) {
			t.Fatalf("%s: reached %v\nwanted  %v", tc.network, got, want)
		}
		for _, p := range got {
			reached[p] = true
		}
		e.noLeaks(t)
	}
	for _, p := range FailpointNames {
		if !reached[p] {
			t.Errorf("crash point %s is never reached", p)
		}
	}
}

// A forced delete that arrives while a stop is still tearing down takes
// that teardown over: the earlier callers get their own
// answer (not the delete's success), the VM is gone and nothing is held.
func TestForcedDeleteJoinsTeardown(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mod     func(*Host, *fakes)
		begin   func(e *lifecycleEnv, t *testing.T) <-chan error
		wantErr string
	}{
		{
			name: "stop in flight",
			mod:  func(h *Host, f *fakes) { h.StopTimeout = 10 * time.Minute; f.setAgent("deaf") },
			begin: func(e *lifecycleEnv, t *testing.T) <-chan error {
				if err := <-e.startAsync(t); err != nil {
					t.Fatal(err)
				}
				ch := make(chan error, 1)
				go func() {
					ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
					defer cancel()
					_, err := e.sys.Request(ctx, &StopVM{Caller: admin, Ref: "v"})
					ch <- err
				}()
				waitFor(t, "the stop to begin", func() bool { return e.get(t).Status == state.StatusStopping })
				return ch
			},
			wantErr: "being deleted",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newLifecycle(t, tc.mod)
			first := tc.begin(e, t)
			if _, err := e.do(t, &DeleteVM{Caller: admin, Ref: "v", Force: true}); err != nil {
				t.Fatalf("forced delete: %v", err)
			}
			if err := <-first; err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("the first caller's answer: %v (want %q)", err, tc.wantErr)
			}
			if _, err := e.do(t, &GetVM{Caller: admin, Ref: "v"}); !errors.Is(err, ErrNotFound) {
				t.Fatalf("after the delete: %v", err)
			}
			e.noLeaks(t)
		})
	}
}

// A guest names its phases: what reaches the VM's record is short and
// printable.
func TestGuestPhaseName(t *testing.T) {
	for in, want := range map[string]string{
		"modules":               "modules",
		"switch_root":           "switch_root",
		"a\x1b[31mb":            "a??31mb",
		"ünï":                   "?n?",
		strings.Repeat("x", 40): strings.Repeat("x", 32),
		"mounts2-late\n":        "mounts2-late?",
	} {
		if got := guestPhaseName(in); got != want {
			t.Errorf("guestPhaseName(%q) = %q, want %q", in, got, want)
		}
	}
}
