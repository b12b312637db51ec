package actors

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/paddock-vm/paddock/guestboot"
	"github.com/paddock-vm/paddock/host/netdev"
	"github.com/paddock-vm/paddock/host/netfilter"
	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/imaging"
	"github.com/paddock-vm/paddock/imaging/imagetest"
	"github.com/paddock-vm/paddock/netspec"
	"github.com/paddock-vm/paddock/state"
)

var webPort = netspec.PortMapping{HostPort: 18080, GuestPort: 8080, Proto: netspec.TCP}

// What each network mode hands the host: a bridged VM its tap and its
// rules (anti-spoofing for its own MAC and address, its ports, its owner's
// group), a user-mode VM a passt with its ports and a stream to it; the
// guest's command line carries the address it configures; a stop leaves
// nothing.
func TestNetworkSteps(t *testing.T) {
	for _, tc := range []struct {
		name, network string
		check         func(t *testing.T, e *lifecycleEnv, spec vmm.Spec, args guestboot.BootArgs)
	}{
		{"bridge", "", func(t *testing.T, e *lifecycleEnv, spec vmm.Spec, args guestboot.BootArgs) {
			r, ok := e.fk.rules.held()[e.vm.ID]
			if !ok || spec.Tap == nil || spec.Stream != nil {
				t.Fatalf("rules %v, tap %v, stream %v", ok, spec.Tap, spec.Stream)
			}
			if r.Tap != spec.Tap.Name || r.MAC.String() != netdev.GuestMAC(e.vm.ID).String() || r.IP.String()+"/24" != e.vm.Net.IP ||
				len(r.Ports) != 1 || r.Ports[0] != webPort || r.Group != "" {
				t.Errorf("rules %+v for tap %s, VM %+v", r, spec.Tap.Name, e.vm.Net)
			}
			if len(e.fk.passt.live()) != 0 {
				t.Errorf("a bridged VM got a passt")
			}
		}},
		{"shared group", "shared:g1", func(t *testing.T, e *lifecycleEnv, _ vmm.Spec, _ guestboot.BootArgs) {
			if r := e.fk.rules.held()[e.vm.ID]; r.Group != "0:g1" {
				t.Errorf("group %q, want the owner's 0:g1", r.Group)
			}
		}},
		{"user", "user", func(t *testing.T, e *lifecycleEnv, spec vmm.Spec, args guestboot.BootArgs) {
			live := e.fk.passt.live()
			if len(live) != 1 || spec.Stream == nil || spec.Stream.Socket != live[0] || spec.Tap != nil {
				t.Fatalf("passt %v, stream %+v, tap %+v", live, spec.Stream, spec.Tap)
			}
			if len(e.fk.rules.held()) != 0 {
				t.Errorf("a user-mode VM got packet rules")
			}
			if len(args.IPs) != 1 || args.IPs[0] != userAddr || args.Gateways[0] != userGateway {
				t.Errorf("guest address %v via %v", args.IPs, args.Gateways)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var spec vmm.Spec
			e := newLifecycle(t, func(_ *Host, fk *fakes) {
				fk.vmm.SetStartHook(func(_ context.Context, s vmm.Spec) error { spec = s; return nil })
			})
			ports := []netspec.PortMapping{webPort}
			change := RunChange{Ports: &ports}
			if tc.network != "" {
				change.Network = &tc.network
			}
			if _, err := e.do(t, &SetVM{Caller: admin, Ref: "v", RunChange: change}); err != nil {
				t.Fatal(err)
			}
			if err := <-e.startAsync(t); err != nil {
				t.Fatal(err)
			}
			args, err := guestboot.Parse(spec.Cmdline)
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, e, spec, args)
			if vm := e.get(t); (vm.Runtime.Rules != nil) != (tc.network != "user") || (len(vm.Runtime.Passt) > 0) != (tc.network == "user") {
				t.Errorf("runtime mirror: rules %+v passt %s", vm.Runtime.Rules, vm.Runtime.Passt)
			}
			if _, err := e.do(t, &StopVM{Caller: admin, Ref: "v"}); err != nil {
				t.Fatal(err)
			}
			e.noLeaks(t)
		})
	}
}

// Without its rules a bridged VM does not start (it could reach and spoof
// every other guest); the reason is said and nothing is left.
func TestBridgedVMNeedsItsRules(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Host, *fakes)
		want string
	}{
		{"rules unavailable", func(h *Host, _ *fakes) { h.Rules, h.RulesErr = nil, errors.New("nftables missing") }, "packet rules unavailable"},
		{"apply fails", func(_ *Host, fk *fakes) { fk.rules.fail = errors.New("netlink: no buffer space") }, "no buffer space"},
		{"port held on the host", func(h *Host, _ *fakes) {
			h.CheckPorts = func(context.Context, netfilter.VM) error {
				return errors.New(`host port 18080/tcp is already in use by process "nginx"`)
			}
		}, "nginx"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newLifecycle(t, tc.mod)
			if err := <-e.startAsync(t); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("start: %v, want %q", err, tc.want)
			}
			if vm := e.get(t); vm.Status != state.StatusError {
				t.Errorf("status %s", vm.Status)
			}
			e.noLeaks(t)
		})
	}
}

// A host port one VM publishes is refused to another, naming the holder
// as the caller may know it.
func TestPublishedPortTaken(t *testing.T) {
	e := newLifecycle(t, nil)
	ports := []netspec.PortMapping{webPort}
	if _, err := e.do(t, &SetVM{Caller: admin, Ref: "v", RunChange: RunChange{Ports: &ports}}); err != nil {
		t.Fatal(err)
	}
	_, err := e.do(t, &CreateVM{Caller: admin, Name: "w", Image: "alpine", RunChange: RunChange{Ports: &ports}})
	if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "your VM v") {
		t.Fatalf("create over a taken port: %v", err)
	}
	e.mustCreate(t, admin, "w")
	if _, err := e.do(t, &SetVM{Caller: admin, Ref: "w", RunChange: RunChange{Ports: &ports}}); err == nil || !strings.Contains(err.Error(), "your VM v") {
		t.Fatalf("set over a taken port: %v", err)
	}
}

// Rules of a VM that no longer exists are swept at start-up; a known
// VM's are kept.
func TestOrphanRulesSwept(t *testing.T) {
	e := newLifecycle(t, nil)
	ctx := context.Background()
	for _, id := range []string{"0123456789abcdef01234567", e.vm.ID} {
		if _, err := e.fk.rules.ApplyVM(ctx, netfilter.VM{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	e.sys.Shutdown()
	e2 := startOn(t, e.dir, e.host, e.fk)
	if _, err := e2.do(t, &GetVM{Caller: admin, Ref: "v"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the orphan's rules to go", func() bool { return len(e.fk.rules.held()) == 1 })
	if _, ok := e.fk.rules.held()[e.vm.ID]; !ok {
		t.Errorf("the known VM's rules were swept: %v", e.fk.rules.held())
	}
}

// A VM publishing on a host address the host has lost since its ports were
// set is refused at start, naming the address, and nothing is acquired.
func TestStartRefusesLostHostIP(t *testing.T) {
	dir := t.TempDir()
	imagetest.Seed(t, dir, "alpine")
	host, fk := fakeHost(t, dir)
	var mu sync.Mutex
	addrs := []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("192.0.2.5")}
	h := &harness{dir: dir, fk: fk}
	startTree(t, h, func(d *Deps, _ *imaging.Store) {
		d.Host = host
		d.NetFacts = func(admin bool) (netspec.Facts, error) {
			mu.Lock()
			defer mu.Unlock()
			return netspec.Facts{HostAddrs: slices.Clone(addrs), UnprivilegedPortStart: 1024, Admin: admin, Networks: []string{netspec.Bridge}}, nil
		}
	})
	p := []netspec.PortMapping{{HostIP: netip.MustParseAddr("192.0.2.5"), HostPort: 18080, GuestPort: 80, Proto: netspec.TCP}}
	if _, err := h.do(t, &CreateVM{Caller: admin, Name: "v", Image: "alpine", RunChange: RunChange{Ports: &p}}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	addrs = addrs[:1]
	mu.Unlock()
	_, err := h.do(t, &StartVM{Caller: admin, Ref: "v"})
	if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "192.0.2.5") {
		t.Fatalf("start after the address went: %v", err)
	}
	r, err := h.do(t, &GetVM{Caller: admin, Ref: "v"})
	if err != nil {
		t.Fatal(err)
	}
	if r.VM.Status != state.StatusCreated {
		t.Errorf("VM %s after the refused start, want created", r.VM.Status)
	}
	(&lifecycleEnv{harness: h, host: host, vm: r.VM}).noLeaks(t)
}
