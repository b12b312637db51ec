package main

import (
	"bytes"
	"errors"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/paddock-vm/paddock/agent"
	"github.com/paddock-vm/paddock/guestboot"
	"github.com/paddock-vm/paddock/internal/testwait"
)

// recordSys records what the identity step changes, in order; fail makes
// the named change fail.
type recordSys struct {
	mu    sync.Mutex // network and etc run at the same time
	calls []string
	fail  string
	clock int64
	seed  []byte
	net   *guestboot.BootArgs
	mac   net.HardwareAddr
}

func (r *recordSys) do(name string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, name)
	if r.fail == name {
		return errors.New(name + " refused")
	}
	return nil
}
func (r *recordSys) SetClock(ns int64) error       { r.clock = ns; return r.do("clock") }
func (r *recordSys) Reseed(seed []byte) error      { r.seed = seed; return r.do("entropy") }
func (r *recordSys) SetHostname(name string) error { return r.do("hostname " + name) }
func (r *recordSys) Readdress(cfg *guestboot.BootArgs, mac net.HardwareAddr) error {
	c := *cfg
	r.net, r.mac = &c, mac
	return r.do("network")
}
func (r *recordSys) WriteEtc(cfg *guestboot.BootArgs) error { return r.do("etc") }

func templateState(sys *recordSys) *initState {
	return &initState{
		cfg:     &guestboot.BootArgs{Hostname: "tmpl", IfName: "eth0", OnExit: guestboot.OnExitKeep},
		image:   &imageConfig{Template: true, Cmd: []string{"sleep", "60"}},
		spawner: &agent.LocalSpawner{Reaper: agent.NewReaper(false)},
		sys:     sys,
	}
}

func goodIdentity() agent.IdentityRequest {
	return agent.IdentityRequest{TimeNS: time.Now().UnixNano(), Seed: bytes.Repeat([]byte{7}, 32), Hostname: "web1",
		MAC: "02:50:00:00:00:09", IPs: []string{"10.77.0.9/16"}, Gateways: []string{"10.77.0.1"}, DNS: []string{"10.77.0.1"},
		Config: []byte(`{"Cmd":["sh","-c","exit 0"],"Env":["A=1"],"User":"65534"}`)}
}

// The identity step changes the clock, then the entropy, hostname,
// network and /etc, in that order, and only then starts the VM's own
// entrypoint (not the template's) with its env and user; the hello says
// the new hostname.
func TestIdentityOrderAndEntrypoint(t *testing.T) {
	sys := &recordSys{}
	s := templateState(sys)
	req := goodIdentity()
	r, err := s.identity(req)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"clock", "entropy", "hostname web1", "etc", "network"} // the last two sorted
	got := append([]string(nil), sys.calls...)
	if len(got) == len(want) {
		slices.Sort(got[3:]) // network and etc run at the same time
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("calls %v, want %v (network and etc in either order)", sys.calls, want)
	}
	if len(r.Phases) != len(want) || r.Phases[0].Name != "identity_clock" {
		t.Fatalf("phases %+v", r.Phases)
	}
	if sys.clock != req.TimeNS || !bytes.Equal(sys.seed, req.Seed) || sys.mac.String() != req.MAC {
		t.Fatalf("clock %d seed %x mac %s", sys.clock, sys.seed, sys.mac)
	}
	if sys.net.Hostname != "web1" || len(sys.net.IPs) != 1 || sys.net.IPs[0].String() != "10.77.0.9/16" ||
		len(sys.net.Gateways) != 1 || len(sys.net.DNS) != 1 || sys.net.IfName != "eth0" {
		t.Fatalf("network %+v", sys.net)
	}
	if h := s.hello(); h.Hostname != "web1" {
		t.Fatalf("hello hostname %q", h.Hostname)
	}
	if env := s.defaultEnv(); len(env) != 1 || env[0] != "A=1" {
		t.Fatalf("default env %v", env)
	}
	if s.spawner.DefaultUser != "65534" {
		t.Fatalf("default user %q", s.spawner.DefaultUser)
	}
	testwait.For(t, "the VM's entrypoint to run and exit", 5*time.Second, func() bool {
		st := s.health().Main
		return st.State == "exited" && len(st.Argv) == 3 && st.Argv[2] == "exit 0"
	})
	if _, err := s.identity(req); err == nil || !strings.Contains(err.Error(), "already") {
		t.Fatalf("a second identity: %v", err)
	}
}

// Refused: a guest not booted as a template, and requests that would
// leave a clone half-identified or sharing the template's randomness —
// before anything is changed.
func TestIdentityRefused(t *testing.T) {
	for _, tc := range []struct {
		name   string
		edit   func(*agent.IdentityRequest)
		state  func(*initState)
		refuse string
	}{
		{"not a template", nil, func(s *initState) { s.image.Template = false }, "not booted as a template"},
		{"no seed", func(r *agent.IdentityRequest) { r.Seed = nil }, nil, "seed of 0 bytes"},
		{"short seed", func(r *agent.IdentityRequest) { r.Seed = r.Seed[:31] }, nil, "seed of 31 bytes"},
		{"huge seed", func(r *agent.IdentityRequest) { r.Seed = make([]byte, 513) }, nil, "seed of 513 bytes"},
		{"no time", func(r *agent.IdentityRequest) { r.TimeNS = 0 }, nil, "no time"},
		{"no hostname", func(r *agent.IdentityRequest) { r.Hostname = "" }, nil, "hostname"},
		{"multicast MAC", func(r *agent.IdentityRequest) { r.MAC = "03:00:00:00:00:01" }, nil, "not a unicast"},
		{"bad address", func(r *agent.IdentityRequest) { r.IPs = []string{"10.77.0.9"} }, nil, "address"},
		{"bad gateway", func(r *agent.IdentityRequest) { r.Gateways = []string{"gw"} }, nil, "gateway"},
		{"mounts", func(r *agent.IdentityRequest) {
			r.Config = []byte(`{"Cmd":["true"],"PaddockMounts":[{"device":"/dev/vdc","path":"/w","fstype":"ext4"}]}`)
		}, nil, "no volumes"},
		{"bad config", func(r *agent.IdentityRequest) { r.Config = []byte(`{"Restart":"sometimes"}`) }, nil, "config"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sys := &recordSys{}
			s := templateState(sys)
			if tc.state != nil {
				tc.state(s)
			}
			req := goodIdentity()
			if tc.edit != nil {
				tc.edit(&req)
			}
			_, err := s.identity(req)
			if err == nil || !strings.Contains(err.Error(), tc.refuse) {
				t.Fatalf("got %v, want an error saying %q", err, tc.refuse)
			}
			if len(sys.calls) != 0 || s.main != nil {
				t.Fatalf("a refused identity changed %v (main %v)", sys.calls, s.main)
			}
		})
	}
}

// A step that fails stops the step there: the entrypoint does not start.
func TestIdentityStepFails(t *testing.T) {
	sys := &recordSys{fail: "network"}
	s := templateState(sys)
	_, err := s.identity(goodIdentity())
	if err == nil || !strings.Contains(err.Error(), "network: network refused") {
		t.Fatalf("got %v", err)
	}
	// etc runs beside network; the failure still ends the step there.
	if strings.Join(sys.calls[:3], ",") != "clock,entropy,hostname web1" || !slices.Contains(sys.calls, "network") || s.main != nil {
		t.Fatalf("calls %v, main %v", sys.calls, s.main)
	}
}

// Steps marked beside run at the same time as the next: here the first
// waits for the second to have started, which would never happen one
// after the other. The steps after the pair wait for both.
func TestIdentityStepsBeside(t *testing.T) {
	started := make(chan struct{})
	var mu sync.Mutex
	var order []string
	note := func(s string) { mu.Lock(); order = append(order, s); mu.Unlock() }
	steps := []identityStep{
		{name: "a", beside: true, do: func(identitySys, *identityPlan) error {
			select {
			case <-started:
			case <-time.After(30 * time.Second): // only a hang's bound
				return errors.New("b never started beside a")
			}
			note("a")
			return nil
		}},
		{name: "b", do: func(identitySys, *identityPlan) error { close(started); note("b"); return nil }},
		{name: "c", do: func(identitySys, *identityPlan) error { note("c"); return nil }},
	}
	phases, err := runIdentitySteps(steps, nil, &identityPlan{})
	if err != nil {
		t.Fatal(err)
	}
	if len(phases) != 3 || phases[0].Name != "identity_a" || phases[1].Name != "identity_b" || phases[2].Name != "identity_c" {
		t.Fatalf("phases %+v", phases)
	}
	if len(order) != 3 || order[2] != "c" {
		t.Fatalf("order %v: c must come after both a and b", order)
	}
}

// A netlink dump the kernel reports interrupted is run again, up to a
// bound; any other error, or success, ends it.
func TestDumpRetried(t *testing.T) {
	cases := []struct {
		name      string
		interrupt int // dumps interrupted before one succeeds
		wantCalls int
		wantErr   error
	}{
		{"clean", 0, 1, nil},
		{"interrupted twice", 2, 3, nil},
		{"always interrupted", 1000, 20, netlink.ErrDumpInterrupted},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			calls := 0
			out, err := dumpRetried(func() ([]int, error) {
				calls++
				if calls <= c.interrupt {
					return []int{1}, netlink.ErrDumpInterrupted
				}
				return []int{1, 2}, nil
			})
			if calls != c.wantCalls || !errors.Is(err, c.wantErr) || (err == nil && len(out) != 2) {
				t.Fatalf("calls %d err %v out %v; want %d calls, err %v", calls, err, out, c.wantCalls, c.wantErr)
			}
		})
	}
}
