package actors

import (
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/agent"
	"github.com/paddock-vm/paddock/host/disk"
	"github.com/paddock-vm/paddock/host/netdev"
	"github.com/paddock-vm/paddock/host/netdev/netdevtest"
	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/host/vmm/vmmtest"
)

// fakes are the recording fakes behind a test Host: the lifecycle runs
// against them exactly as against the real facilities.
type fakes struct {
	vmm   *vmmtest.Fake
	net   *netdevtest.Fake
	disk  *disk.Fake
	rules *fakeRules
	passt *fakePasst

	mu sync.Mutex
	// agent says how the fake guest agent behaves: "ok" (answers hello,
	// powers off on shutdown), "silent" (never answers), "deaf" (answers,
	// ignores shutdown).
	agent   string
	clients []*agent.Client
	// identities are the identity steps the fake guests took.
	identities []agent.IdentityRequest
}

func (f *fakes) setAgent(how string) { f.mu.Lock(); f.agent = how; f.mu.Unlock() }

// fakeHost is a Host over the recording fakes.
func fakeHost(t *testing.T, dir string) (*Host, *fakes) {
	t.Helper()
	f := &fakes{vmm: vmmtest.New(), disk: disk.NewFake("fake"), rules: &fakeRules{}, passt: &fakePasst{}, agent: "ok"}
	subnet := netip.MustParsePrefix("10.99.0.0/24")
	f.net = netdevtest.New(netdev.Config{Bridge: "pdktest0", Subnet: subnet})
	alloc, err := netdev.NewAllocator(subnet)
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(dir, "base.ext4")
	if err := os.WriteFile(base, []byte("base"), 0o644); err != nil {
		t.Fatal(err)
	}
	h := &Host{
		Net: f.net, Alloc: alloc, Rules: f.rules, Passt: f.passt, Disks: f.disk, DiskOpts: disk.Options{Dir: filepath.Join(dir, "vms")},
		VMM: f.vmm, Accel: vmm.AccelTCG, RunDir: filepath.Join(dir, "run"),
		Kit:          func(string) (*Kit, error) { return &Kit{Kernel: "/kit/vmlinux", Initrd: "/kit/initrd"}, nil },
		Image:        func(string) (string, []byte, error) { return base, []byte(`{"config":{"Cmd":["/bin/sh"]}}`), nil },
		StartTimeout: 5 * time.Second, StopTimeout: 2 * time.Second, ReleaseTimeout: 5 * time.Second,
	}
	h.DialAgent = func(ctx context.Context, p *vmm.Process) (*agent.Client, error) {
		f.mu.Lock()
		how := f.agent
		f.mu.Unlock()
		if how == "silent" {
			<-ctx.Done()
			return nil, ctx.Err()
		}
		hc, gc := net.Pipe()
		srv := agent.NewServer(agent.ServerConfig{AgentVersion: "fake",
			Identity: func(req agent.IdentityRequest) (agent.IdentityReply, error) {
				f.mu.Lock()
				f.identities = append(f.identities, req)
				f.mu.Unlock()
				return agent.IdentityReply{}, nil
			},
			Health: func() agent.Health { return agent.Health{Status: "ok"} },
			Shutdown: func(bool) {
				if how == "ok" {
					f.vmm.Exit(p.VMID, vmm.Exit{Known: true})
				}
			}})
		go srv.ServeConn(context.Background(), gc)
		c, err := agent.NewClient(ctx, hc, &agent.ClientOptions{RequestTimeout: time.Second})
		if err != nil {
			return nil, err
		}
		f.mu.Lock()
		f.clients = append(f.clients, c)
		f.mu.Unlock()
		return c, nil
	}
	t.Cleanup(func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, c := range f.clients {
			c.Close()
		}
	})
	return h, f
}
