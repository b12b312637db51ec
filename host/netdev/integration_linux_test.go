package netdev

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/paddock-vm/paddock/host/sysctl"
)

const (
	vmA = "0123456789abcdef01234567"
	vmB = "fedcba9876543210fedcba98"
)

func newManager(t *testing.T, tns *testNS, cfg Config) *Manager {
	t.Helper()
	m, err := New(cfg, tns.ns)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func mustLink(t *testing.T, tns *testNS, name string) netlink.Link {
	t.Helper()
	l, err := tns.h.LinkByName(name)
	if err != nil {
		t.Fatalf("link %s: %v", name, err)
	}
	return l
}

func absent(t *testing.T, tns *testNS, name string) {
	t.Helper()
	if _, err := tns.h.LinkByName(name); !isNotFound(err) {
		t.Errorf("link %s: want absent, got err=%v", name, err)
	}
}

// addVeth creates an untagged (or tagged with alias) veth pair in the namespace.
func addVeth(t *testing.T, tns *testNS, name, peer, alias string) netlink.Link {
	t.Helper()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	if err := tns.h.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: peer}); err != nil {
		t.Fatalf("add veth %s: %v", name, err)
	}
	l := mustLink(t, tns, name)
	if alias != "" {
		if err := tns.h.LinkSetAlias(l, alias); err != nil {
			t.Fatal(err)
		}
	}
	return l
}

func checkTap(t *testing.T, tns *testNS, tap *Tap, br *Bridge, owner Owner) {
	t.Helper()
	l := mustLink(t, tns, tap.Name)
	tt, ok := l.(*netlink.Tuntap)
	if !ok {
		t.Fatalf("%s is a %s", tap.Name, l.Type())
	}
	a := l.Attrs()
	switch {
	case a.Index != tap.Ifindex:
		t.Errorf("%s: ifindex %d, Tap says %d", tap.Name, a.Index, tap.Ifindex)
	case a.Alias != TapAlias(tap.VMID) || tap.Alias != a.Alias:
		t.Errorf("%s: alias %q", tap.Name, a.Alias)
	case a.MasterIndex != br.Ifindex:
		t.Errorf("%s: master %d, bridge is %d", tap.Name, a.MasterIndex, br.Ifindex)
	case a.Flags&net.FlagUp == 0:
		t.Errorf("%s: not up", tap.Name)
	case tt.Mode != netlink.TUNTAP_MODE_TAP:
		t.Errorf("%s: mode %v", tap.Name, tt.Mode)
	case tt.NonPersist:
		t.Errorf("%s: not persistent", tap.Name)
	case tt.Flags&netlink.TUNTAP_MULTI_QUEUE != 0:
		t.Errorf("%s: multi-queue", tap.Name)
	case tt.Flags&netlink.TUNTAP_VNET_HDR == 0:
		t.Errorf("%s: no vnet_hdr", tap.Name)
	case tt.Flags&netlink.TUNTAP_NO_PI == 0:
		t.Errorf("%s: packet info on", tap.Name)
	case tt.Owner != uint32(owner.UID) || tt.Group != uint32(owner.GID):
		t.Errorf("%s: owner %d:%d, want %v", tap.Name, tt.Owner, tt.Group, owner)
	case a.HardwareAddr.String() != HostMAC(tap.VMID).String() || tap.HostMAC.String() != a.HardwareAddr.String():
		t.Errorf("%s: mac %v", tap.Name, a.HardwareAddr)
	case tap.MAC.String() != GuestMAC(tap.VMID).String():
		t.Errorf("%s: guest mac %v", tap.Name, tap.MAC)
	case tap.Name != TapName(tap.VMID) || tap.Bridge != br.Name:
		t.Errorf("tap %+v", tap)
	}
	if pi, err := tns.h.LinkGetProtinfo(l); err != nil || !pi.Isolated {
		t.Errorf("%s: bridge port not isolated (%v, %v)", tap.Name, pi, err)
	}
}

// TestLifecycle drives the real Manager through the whole contract inside a
// private network namespace.
func TestLifecycle(t *testing.T) {
	tns := newNS(t)
	ctx := context.Background()
	m := newManager(t, tns, Config{MTU: 1400})

	// EnsureBridge, twice: created once, same link, tagged, addressed, up.
	br, err := m.EnsureBridge(ctx)
	if err != nil {
		t.Fatalf("EnsureBridge: %v", err)
	}
	br2, err := m.EnsureBridge(ctx)
	if err != nil {
		t.Fatalf("EnsureBridge again: %v", err)
	}
	if !br.Created || br2.Created || br2.Ifindex != br.Ifindex || br.Name != "paddock0" {
		t.Fatalf("EnsureBridge not idempotent: %+v then %+v", br, br2)
	}
	bl := mustLink(t, tns, "paddock0")
	if bl.Type() != "bridge" || bl.Attrs().Alias != BridgeAlias || bl.Attrs().Flags&net.FlagUp == 0 ||
		bl.Attrs().MTU != 1400 || bl.Attrs().HardwareAddr.String() != BridgeMAC("paddock0").String() {
		t.Errorf("bridge: type %s alias %q flags %v mtu %d mac %v", bl.Type(), bl.Attrs().Alias, bl.Attrs().Flags, bl.Attrs().MTU, bl.Attrs().HardwareAddr)
	}
	addrs, err := tns.h.AddrList(bl, netlink.FAMILY_V4)
	if err != nil || len(addrs) != 1 || addrs[0].IPNet.String() != "10.77.0.1/16" || br.Gateway.String() != "10.77.0.1/16" {
		t.Errorf("bridge addresses %v (%v), Gateway %v", addrs, err, br.Gateway)
	}

	// The bridge's IPv4 settings that isolation relies on.
	for key, want := range map[string]string{"proxy_arp_pvlan": "1", "send_redirects": "0", "route_localnet": "1"} {
		if got, err := sysctl.Get(tns.ns, "net/ipv4/conf/paddock0/"+key); err != nil || got != want {
			t.Errorf("bridge sysctl %s = %q (%v), want %s", key, got, err, want)
		}
	}

	// Two VMs.
	ownA, ownB := Owner{UID: 65534, GID: 65534}, Owner{UID: 65533, GID: 65533}
	tapA, err := m.AcquireTap(ctx, vmA, ownA)
	if err != nil {
		t.Fatalf("AcquireTap A: %v", err)
	}
	tapB, err := m.AcquireTap(ctx, vmB, ownB)
	if err != nil {
		t.Fatalf("AcquireTap B: %v", err)
	}
	if tapA.Adopted || tapB.Adopted || tapA.Name != "pdk-0123456789a" {
		t.Errorf("new taps: %+v %+v", tapA, tapB)
	}
	checkTap(t, tns, tapA, br, ownA)
	checkTap(t, tns, tapB, br, ownB)
	if mustLink(t, tns, tapA.Name).Attrs().MTU != 1400 {
		t.Errorf("tap mtu %d", mustLink(t, tns, tapA.Name).Attrs().MTU)
	}

	// Again: adopted, same device.
	again, err := m.AcquireTap(ctx, vmA, ownA)
	if err != nil || !again.Adopted || again.Ifindex != tapA.Ifindex {
		t.Fatalf("AcquireTap A again: %+v %v", again, err)
	}
	// Adoption repairs what drifted: not isolated, detached and down.
	if err := tns.h.LinkSetIsolated(mustLink(t, tns, tapB.Name), false); err != nil {
		t.Fatal(err)
	}
	if err := tns.h.LinkSetNoMaster(mustLink(t, tns, tapB.Name)); err != nil {
		t.Fatal(err)
	}
	if err := tns.h.LinkSetDown(mustLink(t, tns, tapB.Name)); err != nil {
		t.Fatal(err)
	}
	if again, err = m.AcquireTap(ctx, vmB, ownB); err != nil || !again.Adopted {
		t.Fatalf("AcquireTap B again: %+v %v", again, err)
	}
	checkTap(t, tns, again, br, ownB)

	// The VMM's uid can attach to its own tap without privileges; another
	// unprivileged uid cannot.
	hd := newHelperDir(t)
	if out, err := hd.attachAs(tns, tapA.Name, 65534, 65534); err != nil || !strings.HasPrefix(out, helperOKMessage) {
		t.Errorf("uid 65534 attach to its tap %s: %v: %s", tapA.Name, err, out)
	}
	if out, err := hd.attachAs(tns, tapA.Name, 65533, 65533); err == nil || !strings.Contains(out, "EPERM") {
		t.Errorf("uid 65533 attach to foreign tap %s: want EPERM, got %v: %s", tapA.Name, err, out)
	}
	if out, err := hd.attachAs(tns, tapB.Name, 65533, 65533); err != nil || !strings.HasPrefix(out, helperOKMessage) {
		t.Errorf("uid 65533 attach to its tap %s: %v: %s", tapB.Name, err, out)
	}
	// The tap survived the VMM closing it (persistent).
	mustLink(t, tns, tapA.Name)

	// Probe.
	if ex, ours, err := m.ProbeTap(tapA.Name); !ex || !ours || err != nil {
		t.Errorf("ProbeTap A: %v %v %v", ex, ours, err)
	}
	if ex, ours, err := m.ProbeTap("pdk-none"); ex || ours || err != nil {
		t.Errorf("ProbeTap none: %v %v %v", ex, ours, err)
	}

	// Foreign links: an untagged one holding a VM's tap name, and one
	// carrying a paddock tap tag but not being a tap.
	foreignName := TapName("foreignvm")
	addVeth(t, tns, foreignName, "pdkt-peer0", "")
	fake := addVeth(t, tns, TapName("fakevm"), "pdkt-peer1", TapAlias("fakevm"))
	if _, err := m.AcquireTap(ctx, "foreignvm", NoOwner); !errors.Is(err, ErrNameTaken) {
		t.Errorf("AcquireTap over a foreign link: %v", err)
	}
	for _, name := range []string{foreignName, fake.Attrs().Name, "pdkt-peer0", "paddock0"} {
		if err := m.ReleaseTap(ctx, name, 0); !errors.Is(err, ErrNotOurs) {
			t.Errorf("ReleaseTap(%s): %v, want ErrNotOurs", name, err)
		}
		mustLink(t, tns, name)
	}
	if ex, ours, _ := m.ProbeTap(foreignName); !ex || ours {
		t.Errorf("ProbeTap foreign: %v %v", ex, ours)
	}

	// ListOwned: the bridge, both taps, and the impostor flagged invalid.
	owned, err := m.ListOwned(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, o := range owned {
		got = append(got, fmt.Sprintf("%s %s %s valid=%v", o.Kind, o.Name, o.VMID, o.Valid))
	}
	slices.Sort(got)
	want := []string{
		"bridge paddock0  valid=true",
		"tap " + tapA.Name + " " + vmA + " valid=true",
		"tap " + tapB.Name + " " + vmB + " valid=true",
		"tap " + fake.Attrs().Name + " fakevm valid=false",
	}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("ListOwned:\n got %q\nwant %q", got, want)
	}

	// Release A twice (second: not found is success); B by ifindex only.
	for i := range 2 {
		if err := m.ReleaseTap(ctx, tapA.Name, tapA.Ifindex); err != nil {
			t.Errorf("ReleaseTap A #%d: %v", i+1, err)
		}
	}
	absent(t, tns, tapA.Name)
	if err := m.ReleaseBridge(ctx, ""); !errors.Is(err, ErrBridgeBusy) {
		t.Errorf("ReleaseBridge with a port: %v", err)
	}
	if err := m.ReleaseTap(ctx, "", tapB.Ifindex); err != nil {
		t.Errorf("ReleaseTap B by ifindex: %v", err)
	}
	absent(t, tns, tapB.Name)
	if err := m.ReleaseTap(ctx, "", tapB.Ifindex); err != nil {
		t.Errorf("ReleaseTap B by ifindex again: %v", err)
	}
	// Release works under a cancelled context (teardown must not be skipped).
	tapA, err = m.AcquireTap(ctx, vmA, ownA)
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := m.AcquireTap(cctx, vmB, ownB); !errors.Is(err, context.Canceled) {
		t.Errorf("AcquireTap with cancelled ctx: %v", err)
	}
	if err := m.ReleaseTap(cctx, tapA.Name, tapA.Ifindex); err != nil {
		t.Errorf("ReleaseTap with cancelled ctx: %v", err)
	}
	absent(t, tns, tapA.Name)

	// Clean up the foreign links (the test's own) and the bridge.
	for _, name := range []string{foreignName, fake.Attrs().Name} {
		if err := tns.h.LinkDel(mustLink(t, tns, name)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 2 {
		if err := m.ReleaseBridge(ctx, ""); err != nil {
			t.Errorf("ReleaseBridge #%d: %v", i+1, err)
		}
	}
	owned, err = m.ListOwned(ctx)
	if err != nil || len(owned) != 0 {
		t.Errorf("ListOwned at the end: %v %v", owned, err)
	}
	links, _ := tns.h.LinkList()
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, TapPrefix) {
			t.Errorf("pdk- link %s remains", l.Attrs().Name)
		}
	}
}

// A crash before the tap is made persistent leaves nothing behind: the
// descriptor closes and the kernel removes the tap.
func TestCrashBeforePersist(t *testing.T) {
	tns := newNS(t)
	ctx := context.Background()
	m := newManager(t, tns, Config{})
	crash := errors.New("simulated crash")
	var seen bool
	m.testHookBeforePersist = func(name string) error {
		// At this point the tap exists, is tagged and attached...
		l, err := tns.h.LinkByName(name)
		seen = err == nil && l.Attrs().Alias == TapAlias(vmA)
		return crash
	}
	if _, err := m.AcquireTap(ctx, vmA, NoOwner); !errors.Is(err, crash) {
		t.Fatalf("AcquireTap: %v", err)
	}
	if !seen {
		t.Error("tap was not visible and tagged before persisting")
	}
	absent(t, tns, TapName(vmA)) // ...and gone after the "crash".
	m.testHookBeforePersist = nil
	tap, err := m.AcquireTap(ctx, vmA, NoOwner)
	if err != nil || tap.Adopted {
		t.Fatalf("AcquireTap after crash: %+v %v", tap, err)
	}
	if err := m.ReleaseTap(ctx, tap.Name, tap.Ifindex); err != nil {
		t.Fatal(err)
	}
	if err := m.ReleaseBridge(ctx, ""); err != nil {
		t.Fatal(err)
	}
}

// A bridge whose creation was interrupted before tagging is recognised by
// its marker MAC and adopted; a bridge of that name without it is not ours.
func TestBridgeOwnership(t *testing.T) {
	tns := newNS(t)
	ctx := context.Background()
	m := newManager(t, tns, Config{Bridge: "pdkbr0", Subnet: netip.MustParsePrefix("192.168.77.0/24")})

	attrs := netlink.NewLinkAttrs()
	attrs.Name = "pdkbr0"
	attrs.HardwareAddr = BridgeMAC("pdkbr0")
	if err := tns.h.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
		t.Fatal(err)
	}
	br, err := m.EnsureBridge(ctx)
	if err != nil || br.Created {
		t.Fatalf("adopt interrupted bridge: %+v %v", br, err)
	}
	if l := mustLink(t, tns, "pdkbr0"); l.Attrs().Alias != BridgeAlias || l.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("adopted bridge: alias %q flags %v", l.Attrs().Alias, l.Attrs().Flags)
	}
	// A stale address from an earlier subnet is replaced.
	stale := &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(192, 168, 76, 1), Mask: net.CIDRMask(24, 32)}}
	if err := tns.h.AddrAdd(mustLink(t, tns, "pdkbr0"), stale); err != nil {
		t.Fatal(err)
	}
	if _, err := m.EnsureBridge(ctx); err != nil {
		t.Fatal(err)
	}
	addrs, _ := tns.h.AddrList(mustLink(t, tns, "pdkbr0"), netlink.FAMILY_V4)
	if len(addrs) != 1 || addrs[0].IPNet.String() != "192.168.77.1/24" {
		t.Errorf("addresses after subnet change: %v", addrs)
	}
	if err := m.ReleaseBridge(ctx, ""); err != nil {
		t.Fatal(err)
	}

	// Not ours: a plain bridge of that name, and a veth of that name.
	attrs = netlink.NewLinkAttrs()
	attrs.Name = "pdkbr0"
	if err := tns.h.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.EnsureBridge(ctx); !errors.Is(err, ErrNotOurs) {
		t.Errorf("EnsureBridge over a foreign bridge: %v", err)
	}
	if _, err := m.AcquireTap(ctx, vmA, NoOwner); !errors.Is(err, ErrNotOurs) {
		t.Errorf("AcquireTap with a foreign bridge: %v", err)
	}
	if err := m.ReleaseBridge(ctx, ""); !errors.Is(err, ErrNotOurs) {
		t.Errorf("ReleaseBridge of a foreign bridge: %v", err)
	}
	if err := tns.h.LinkDel(mustLink(t, tns, "pdkbr0")); err != nil {
		t.Fatal(err)
	}
	addVeth(t, tns, "pdkbr0", "pdkt-peer2", BridgeAlias)
	if _, err := m.EnsureBridge(ctx); !errors.Is(err, ErrNotOurs) {
		t.Errorf("EnsureBridge over a veth: %v", err)
	}
	if err := tns.h.LinkDel(mustLink(t, tns, "pdkbr0")); err != nil {
		t.Fatal(err)
	}
	absent(t, tns, TapName(vmA))
}

// A guest subnet overlapping an address on another link is refused.
func TestSubnetConflict(t *testing.T) {
	tns := newNS(t)
	ctx := context.Background()
	m := newManager(t, tns, Config{Subnet: netip.MustParsePrefix("10.77.0.0/16")})
	v := addVeth(t, tns, "pdkt-v0", "pdkt-v1", "")
	if err := tns.h.AddrAdd(v, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(10, 77, 3, 1), Mask: net.CIDRMask(24, 32)}}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.EnsureBridge(ctx); !errors.Is(err, ErrSubnetConflict) {
		t.Errorf("EnsureBridge: %v, want ErrSubnetConflict", err)
	}
	absent(t, tns, "paddock0")
	if err := tns.h.LinkDel(v); err != nil {
		t.Fatal(err)
	}
}

// The daemon uses the namespace it runs in (netns.None()). Exercise that
// path on a thread that sits in the test namespace, so nothing can reach the
// host's namespace.
func TestCurrentNamespace(t *testing.T) {
	tns := newNS(t)
	ctx := context.Background()
	err := tns.run(func() error {
		cur, err := netns.Get()
		if err != nil {
			return err
		}
		defer cur.Close()
		if !cur.Equal(tns.ns) {
			return fmt.Errorf("helper thread is not in the test namespace")
		}
		m, err := New(Config{}, netns.None())
		if err != nil {
			return err
		}
		defer m.Close()
		tap, err := m.AcquireTap(ctx, vmB, Owner{UID: 1000, GID: -1})
		if err != nil {
			return err
		}
		if _, err := tns.h.LinkByName(tap.Name); err != nil {
			return fmt.Errorf("tap not in the test namespace: %v", err)
		}
		if err := m.ReleaseTap(ctx, tap.Name, tap.Ifindex); err != nil {
			return err
		}
		return m.ReleaseBridge(ctx, "")
	})
	if err != nil {
		t.Fatal(err)
	}
}
