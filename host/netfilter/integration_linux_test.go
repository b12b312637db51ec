package netfilter

import (
	"context"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/host/netdev"
	"github.com/paddock-vm/paddock/netspec"
)

// The topology: a "host" namespace with paddock's bridge (made by netdev),
// three "guest" namespaces attached to it through veth pairs standing for
// taps, an "uplink" namespace standing for the internet (a server on a
// TEST-NET-2 address routed through it) and a "client" namespace on
// another host interface.
const (
	testTable  = "pdktest"
	testBridge = "pdkbr0"
	hostUplink = "192.0.2.1"     // the host's address towards the uplink
	hostClient = "203.0.113.1"   // the host's address towards the client
	clientAddr = "203.0.113.2"   // the client
	internet   = "198.51.100.80" // the uplink's server
	gateway    = "10.77.0.1"
)

// blocked is how long a connection that should get nothing is given.
const blocked = 1500 * time.Millisecond

type guest struct {
	ns  *testNS
	vm  VM
	mac net.HardwareAddr
}

type topology struct {
	host, uplink, client *testNS
	a, b, c              *guest
	cfg                  Config
}

func newTopology(t *testing.T) *topology {
	t.Helper()
	requireRoot(t)
	nftPath(t)
	hostBefore := hostTables(t)
	t.Cleanup(func() {
		if after := hostTables(t); after != hostBefore {
			t.Errorf("the test process's own namespace's tables changed:\n%s\nnow:\n%s", hostBefore, after)
		}
	})
	tp := &topology{host: newNS(t, "host"), uplink: newNS(t, "uplink"), client: newNS(t, "client")}
	fail := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	subnet := netip.MustParsePrefix("10.77.0.0/16")
	nm, err := netdev.New(netdev.Config{Bridge: testBridge, Subnet: subnet}, tp.host.ns)
	fail(err)
	t.Cleanup(func() { nm.Close() })
	br, err := nm.EnsureBridge(context.Background())
	fail(err)

	// Uplink: the host routes 198.51.100.0/24 to it; it has no route back
	// to the guests' subnet, so only masqueraded traffic gets answers.
	fail(veth(tp.host, "up0", tp.uplink, "eth0"))
	fail(tp.host.addAddr("up0", hostUplink+"/24"))
	fail(tp.uplink.addAddr("eth0", "192.0.2.2/24"))
	fail(tp.uplink.addAddr("lo", internet+"/32"))
	fail(tp.host.addRoute("198.51.100.0/24", "192.0.2.2"))
	// Client: its default route is the host.
	fail(veth(tp.host, "cl0", tp.client, "eth0"))
	fail(tp.host.addAddr("cl0", hostClient+"/24"))
	fail(tp.client.addAddr("eth0", clientAddr+"/24"))
	fail(tp.client.addRoute("default", hostClient))

	mk := func(name string, ip string, group string) *guest {
		g := &guest{ns: newNS(t, "guest-"+name)}
		tap := "pdk-" + name
		fail(veth(tp.host, tap, g.ns, "eth0"))
		l, err := tp.host.link(tap)
		fail(err)
		fail(tp.host.h.LinkSetMasterByIndex(l, br.Ifindex))
		fail(tp.host.h.LinkSetIsolated(l, true)) // what netdev does for taps
		gl, err := g.ns.link("eth0")
		fail(err)
		g.mac = gl.Attrs().HardwareAddr
		fail(g.ns.addAddr("eth0", ip+"/16"))
		fail(g.ns.addRoute("default", gateway))
		g.vm = VM{ID: "vm-" + name, Tap: tap, MAC: g.mac, IP: netip.MustParseAddr(ip), Group: group}
		whoami(t, g.ns, "0.0.0.0:8080", "guest-"+name)
		return g
	}
	tp.a = mk("a", "10.77.0.10", "uid1000:web")
	tp.b = mk("b", "10.77.0.11", "")
	tp.c = mk("c", "10.77.0.12", "uid1000:web")
	tp.cfg = Config{Table: testTable, Bridge: testBridge, Subnet: subnet, Gateway: br.Gateway.Addr(), NAT: true,
		HostAccess: []netspec.Service{{Proto: "tcp", Port: 5353}}}
	return tp
}

func (tp *topology) manager(t *testing.T, cfg Config) *Manager {
	t.Helper()
	m, err := New(cfg, tp.host.ns)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// tables is paddock's two tables as nft prints them, handles included.
func (tp *topology) tables(t *testing.T) string {
	t.Helper()
	return tp.host.nft(t, "", "-a", "list", "table", "inet", testTable) +
		tp.host.nft(t, "", "-a", "list", "table", "bridge", testTable)
}

func mustOK(t *testing.T, what string, got string, err error, want string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if !strings.HasPrefix(got, want) {
		t.Fatalf("%s: got %q, want %q...", what, got, want)
	}
}

func mustBlock(t *testing.T, what string, got string, err error) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: got through (%q)", what, got)
	}
}

// TestBridgeMode drives the real Manager in the topology: egress through
// NAT, published ports from outside, from the host's address and from
// 127.0.0.1, isolation between guests and groups, anti-spoofing, the host's
// input filter, idempotence, a base change that leaves VM rules alone,
// release, and a foreign table left byte-identical.
func TestBridgeMode(t *testing.T) {
	tp := newTopology(t)
	ctx := context.Background()

	// A foreign table in the same namespace, with a rule on the same hook.
	tp.host.nft(t, `table inet canary {
	chain input {
		type filter hook input priority 10; policy accept;
		tcp dport 1 counter accept comment "canary"
	}
}
table bridge canary {
	chain pre {
		type filter hook prerouting priority -100;
	}
}
`, "-f", "-")
	canary := tp.host.nft(t, "", "-a", "list", "table", "inet", "canary") + tp.host.nft(t, "", "-a", "list", "table", "bridge", "canary")

	m := tp.manager(t, tp.cfg)
	res, err := m.EnsureBase(ctx)
	if err != nil {
		t.Fatalf("EnsureBase: %v", err)
	}
	if !res.RulesChanged || !res.ForwardingEnabled {
		t.Errorf("first EnsureBase: %+v, want rules written and forwarding enabled", res)
	}
	tp.a.vm.Ports = []netspec.PortMapping{{HostPort: 18080, GuestPort: 8080, Proto: "tcp"}}
	tp.b.vm.Ports = []netspec.PortMapping{{HostIP: netip.MustParseAddr(hostClient), HostPort: 18081, GuestPort: 8080, Proto: "tcp"}}
	for _, g := range []*guest{tp.a, tp.b, tp.c} {
		if changed, err := m.ApplyVM(ctx, g.vm); err != nil || !changed {
			t.Fatalf("ApplyVM %s: %v (changed %v)", g.vm.ID, err, changed)
		}
	}

	whoami(t, tp.uplink, internet+":80", "uplink")
	whoami(t, tp.host, gateway+":9999", "gateway-private")
	whoami(t, tp.host, gateway+":5353", "gateway-allowed")
	udp := newUDPLog(t, tp.uplink, internet+":5000")

	t.Run("egress is masqueraded", func(t *testing.T) {
		got, err := ask(tp.a.ns, "", internet+":80", 10*time.Second)
		mustOK(t, "guest a -> uplink", got, err, "uplink "+hostUplink+":")
	})
	t.Run("published port", func(t *testing.T) {
		got, err := ask(tp.client, "", hostClient+":18080", 10*time.Second)
		mustOK(t, "client -> host:18080", got, err, "guest-a "+clientAddr+":")
		got, err = ask(tp.host, "", hostUplink+":18080", 10*time.Second)
		mustOK(t, "host -> its own address:18080", got, err, "guest-a ")
		got, err = ask(tp.host, "", "127.0.0.1:18080", 10*time.Second)
		mustOK(t, "host -> 127.0.0.1:18080", got, err, "guest-a "+gateway+":")
		// b's port is published on one host address only.
		got, err = ask(tp.client, "", hostClient+":18081", 10*time.Second)
		mustOK(t, "client -> host:18081", got, err, "guest-b "+clientAddr+":")
		got, err = ask(tp.host, "", hostUplink+":18081", blocked)
		mustBlock(t, "host -> another address:18081", got, err)
	})
	t.Run("guests are isolated unless in one group", func(t *testing.T) {
		got, err := ask(tp.a.ns, "", "10.77.0.12:8080", 10*time.Second)
		mustOK(t, "a -> c (same group)", got, err, "guest-c 10.77.0.10:")
		if err := ping(tp.c.ns, "10.77.0.10", 10*time.Second); err != nil {
			t.Errorf("c pings a (same group): %v", err)
		}
		got, err = ask(tp.a.ns, "", "10.77.0.11:8080", blocked)
		mustBlock(t, "a -> b", got, err)
		got, err = ask(tp.b.ns, "", "10.77.0.12:8080", blocked)
		mustBlock(t, "b -> c", got, err)
		if err := ping(tp.a.ns, "10.77.0.11", blocked); err == nil {
			t.Errorf("a pings b: got a reply")
		}
		if err := ping(tp.b.ns, "10.77.0.10", blocked); err == nil {
			t.Errorf("b pings a: got a reply")
		}
	})
	t.Run("host input", func(t *testing.T) {
		got, err := ask(tp.host, "", gateway+":9999", 10*time.Second)
		mustOK(t, "host -> its gateway listener", got, err, "gateway-private")
		got, err = ask(tp.a.ns, "", gateway+":9999", blocked)
		mustBlock(t, "guest -> gateway listener", got, err)
		got, err = ask(tp.a.ns, "", hostUplink+":9999", blocked)
		mustBlock(t, "guest -> host's other address", got, err)
		got, err = ask(tp.a.ns, "", gateway+":5353", 10*time.Second)
		mustOK(t, "guest -> host access tcp/5353", got, err, "gateway-allowed")
		if err := ping(tp.a.ns, gateway, 10*time.Second); err != nil {
			t.Errorf("guest pings its gateway: %v", err)
		}
		if err := ping(tp.a.ns, hostUplink, blocked); err == nil {
			t.Errorf("guest pings the host's other address: got a reply")
		}
	})
	t.Run("spoofing gets nothing through", func(t *testing.T) {
		g := tp.a
		// Another guest's address and a foreign one, added in the guest.
		for _, ip := range []string{"10.77.0.11", "10.77.0.99"} {
			if err := g.ns.addAddr("eth0", ip+"/32"); err != nil {
				t.Fatal(err)
			}
			if err := sendUDP(g.ns, ip, internet+":5000", "spoofed-ip-"+ip); err != nil {
				t.Fatal(err)
			}
			if err := g.ns.delAddr("eth0", ip+"/32"); err != nil {
				t.Fatal(err)
			}
		}
		// A foreign MAC.
		l, err := g.ns.link("eth0")
		if err != nil {
			t.Fatal(err)
		}
		foreign := net.HardwareAddr{0x02, 0x66, 0x6f, 0x72, 0x65, 0x69}
		if err := g.ns.h.LinkSetHardwareAddr(l, foreign); err != nil {
			t.Fatal(err)
		}
		if err := sendUDP(g.ns, "", internet+":5000", "spoofed-mac"); err != nil {
			t.Fatal(err)
		}
		if err := g.ns.h.LinkSetHardwareAddr(l, g.mac); err != nil {
			t.Fatal(err)
		}
		// Sent after the spoofed ones: once it has arrived, they would have.
		if err := sendUDP(g.ns, "", internet+":5000", "honest"); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		got, err := udp.waitFor(wctx, "honest")
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range got {
			if strings.HasPrefix(d, "spoofed") {
				t.Errorf("a spoofed datagram got through: %q", d)
			}
		}
		if want := "honest from " + hostUplink; !slices.Contains(got, want) {
			t.Errorf("uplink got %q, want %q", got, want)
		}

		// ARP: a request claiming b's address with a's MAC must not teach
		// the host that b is at a; an honest one, sent after, does teach it.
		bIP, aIP, gw := tp.b.vm.IP, tp.a.vm.IP, netip.MustParseAddr(gateway)
		for _, ip := range []netip.Addr{aIP, bIP} {
			if err := tp.host.delNeigh(testBridge, ip); err != nil {
				t.Fatal(err)
			}
		}
		if err := sendARPRequest(g.ns, "eth0", g.mac, bIP, gw); err != nil {
			t.Fatal(err)
		}
		if err := sendARPRequest(g.ns, "eth0", foreign, aIP, gw); err != nil {
			t.Fatal(err)
		}
		if err := sendARPRequest(g.ns, "eth0", g.mac, aIP, gw); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			mac, err := tp.host.neighMAC(testBridge, aIP)
			if err != nil {
				t.Fatal(err)
			}
			if mac.String() == g.mac.String() {
				break
			}
			if mac != nil {
				t.Fatalf("the host learned %v for %v from a spoofed ARP request", mac, aIP)
			}
			if time.Now().After(deadline) {
				t.Fatalf("the honest ARP request never reached the host")
			}
			time.Sleep(20 * time.Millisecond)
		}
		if mac, err := tp.host.neighMAC(testBridge, bIP); err != nil || mac.String() == g.mac.String() {
			t.Errorf("the host believes %v is at %v (%v): spoofed ARP got through", bIP, mac, err)
		}
	})

	t.Run("idempotent", func(t *testing.T) {
		before := tp.tables(t)
		for _, g := range []*guest{tp.a, tp.b, tp.c} {
			if changed, err := m.ApplyVM(ctx, g.vm); err != nil || changed {
				t.Errorf("ApplyVM %s again: changed %v, %v", g.vm.ID, changed, err)
			}
		}
		// A restarted daemon: a new Manager.
		m2 := tp.manager(t, tp.cfg)
		if res, err := m2.EnsureBase(ctx); err != nil || res.RulesChanged || res.ForwardingEnabled {
			t.Errorf("EnsureBase after restart: %+v, %v", res, err)
		}
		if after := tp.tables(t); after != before {
			t.Errorf("tables changed by re-applying the same rules:\n%s\nafter:\n%s", before, after)
		}
		if n := strings.Count(before, `comment "paddock:vm:vm-a"`); n != 6 {
			t.Errorf("vm-a has %d rules, want 6 (3 anti-spoofing, 1 DNAT, 2 group): \n%s", n, before)
		}
	})

	t.Run("a changed base leaves VM rules alone", func(t *testing.T) {
		vmLines := func(s string) []string {
			var out []string
			for _, l := range strings.Split(s, "\n") {
				if strings.Contains(l, "paddock:vm:") {
					out = append(out, strings.TrimSpace(l))
				}
			}
			return out
		}
		before := vmLines(tp.tables(t))
		noNAT := tp.cfg
		noNAT.NAT = false
		m3 := tp.manager(t, noNAT)
		if res, err := m3.EnsureBase(ctx); err != nil || !res.RulesChanged {
			t.Fatalf("EnsureBase without NAT: %+v, %v", res, err)
		}
		if after := vmLines(tp.tables(t)); !slices.Equal(before, after) {
			t.Errorf("VM rules changed with the base:\n%s\nafter:\n%s", strings.Join(before, "\n"), strings.Join(after, "\n"))
		}
		got, err := ask(tp.a.ns, "", internet+":80", blocked)
		mustBlock(t, "guest -> uplink without NAT", got, err)
		got, err = ask(tp.client, "", hostClient+":18080", 10*time.Second)
		mustOK(t, "client -> host:18080 without NAT", got, err, "guest-a "+clientAddr+":")
		if res, err := m.EnsureBase(ctx); err != nil || !res.RulesChanged {
			t.Fatalf("EnsureBase with NAT again: %+v, %v", res, err)
		}
		got, err = ask(tp.a.ns, "", internet+":80", 10*time.Second)
		mustOK(t, "guest a -> uplink with NAT again", got, err, "uplink "+hostUplink+":")
	})

	t.Run("release", func(t *testing.T) {
		ids, err := m.ListVMs(ctx)
		if err != nil || !slices.Equal(ids, []string{"vm-a", "vm-b", "vm-c"}) {
			t.Fatalf("ListVMs: %v, %v", ids, err)
		}
		for _, g := range []*guest{tp.a, tp.c} {
			if err := m.ReleaseVM(ctx, g.vm.ID); err != nil {
				t.Fatalf("ReleaseVM %s: %v", g.vm.ID, err)
			}
			if ok, err := m.ProbeVM(ctx, g.vm.ID); ok || err != nil {
				t.Errorf("ProbeVM %s after release: %v, %v", g.vm.ID, ok, err)
			}
			if err := m.ReleaseVM(ctx, g.vm.ID); err != nil {
				t.Errorf("ReleaseVM %s again: %v", g.vm.ID, err)
			}
		}
		tables := tp.tables(t)
		if strings.Contains(tables, "vm-a") || strings.Contains(tables, "vm-c") || strings.Contains(tables, groupChainPrefix) {
			t.Errorf("released VMs left rules or their group chain:\n%s", tables)
		}
		if ok, err := m.ProbeVM(ctx, "vm-b"); !ok || err != nil {
			t.Errorf("ProbeVM vm-b: %v, %v", ok, err)
		}
		got, err := ask(tp.client, "", hostClient+":18080", blocked)
		mustBlock(t, "client -> released VM's port", got, err)
		got, err = ask(tp.a.ns, "", internet+":80", blocked)
		mustBlock(t, "released guest's tap", got, err)
		got, err = ask(tp.client, "", hostClient+":18081", 10*time.Second)
		mustOK(t, "client -> host:18081 (b stays)", got, err, "guest-b ")
		if err := m.ReleaseVM(ctx, "vm-b"); err != nil {
			t.Fatal(err)
		}
		if ids, err := m.ListVMs(ctx); err != nil || len(ids) != 0 {
			t.Errorf("ListVMs after releasing all: %v, %v", ids, err)
		}
		if n := regexp.MustCompile(`comment "paddock:vm:`).FindAllStringIndex(tp.tables(t), -1); len(n) != 0 {
			t.Errorf("%d VM rules left", len(n))
		}
	})

	after := tp.host.nft(t, "", "-a", "list", "table", "inet", "canary") + tp.host.nft(t, "", "-a", "list", "table", "bridge", "canary")
	if after != canary {
		t.Errorf("the canary tables changed:\n%s\nafter:\n%s", canary, after)
	}
}
