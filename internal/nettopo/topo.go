//go:build linux

// Package nettopo builds, in network namespaces it creates itself, the
// topology the VM networking acceptance tests and the network bench run in,
// around the namespace paddockd runs in (the "daemon" namespace, e.g. the
// one e2e's newNetns makes). The host's own namespace is never touched.
//
//	client ns                  daemon ns (paddockd, paddock0, VMs)          uplink ns ("the internet")
//	eth0 203.0.113.2 ── veth ── ntcl0 203.0.113.1
//	default via 203.0.113.1     ntup0 198.51.100.2 ── veth ── eth0 198.51.100.1
//	                            default via 198.51.100.1      lo 192.0.2.1: HTTP :80, DNS :53/udp, sink :5001
//
// The uplink knows no route but its link: a packet from a VM's private
// address gets no reply unless the daemon namespace masquerades it, as on
// the internet. The HTTP server tells each client the address it saw
// (GET /ip), so a test proves masquerade by reading HostUplinkIP there.
//
// Servers are in-process goroutines whose sockets were made on an OS thread
// that entered the namespace (Netns.Do): a socket stays in the namespace it
// was made in, whatever thread serves it, and no child process is left to
// reap. Links in the daemon namespace are named "nt*", never "pdk-", so the
// e2e leak count (which counts "pdk-" links as paddock's taps) ignores them.
package nettopo

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/paddock-vm/paddock/internal/testenv"
)

// Addresses of the topology (documentation ranges of RFC 5737, so nothing
// real is ever addressed).
var (
	UplinkIP        = netip.MustParseAddr("192.0.2.1")    // the servers ("the internet")
	UplinkGatewayIP = netip.MustParseAddr("198.51.100.1") // the uplink's end of the link
	HostUplinkIP    = netip.MustParseAddr("198.51.100.2") // the daemon ns toward the uplink: what masquerade shows
	HostClientIP    = netip.MustParseAddr("203.0.113.1")  // the daemon ns toward the client: where published ports are reached
	ClientIP        = netip.MustParseAddr("203.0.113.2")
)

// Ports and names the uplink serves.
const (
	HTTPPort = 80
	DNSPort  = 53
	SinkPort = 5001
	// DNSName is the one name the resolver knows; it resolves to UplinkIP.
	DNSName = "uplink.paddock.test"

	uplinkLink = "ntup0" // in the daemon ns
	clientLink = "ntcl0" // in the daemon ns
)

// Topology is the uplink and client namespaces wired to a daemon namespace,
// with the uplink's servers running.
type Topology struct {
	Daemon, Uplink, Client *Netns
	HTTP                   *HTTPServer
	DNS                    *Resolver
	Sink                   *Sink
}

// New builds the topology around the named daemon namespace for one test:
// it needs root, and t's cleanup tears it down and fails t on a leak.
func New(t testing.TB, daemonNS string) *Topology {
	t.Helper()
	testenv.RequireRoot(t, "network namespaces and veth links")
	top, err := Build(daemonNS)
	if err != nil {
		t.Fatalf("network topology around %s: %v", daemonNS, err)
	}
	t.Cleanup(func() {
		if err := top.Close(); err != nil {
			t.Errorf("network topology teardown: %v", err)
		}
	})
	return top
}

// Build wires the topology to daemonNS, which must have no default route
// and no "ntup0"/"ntcl0" links yet. On error nothing of it is left. Close
// undoes it; New is Build+Close for a test.
func Build(daemonNS string) (top *Topology, err error) {
	d, err := OpenNetns(daemonNS)
	if err != nil {
		return nil, err
	}
	top = &Topology{Daemon: d}
	defer func() {
		if err != nil {
			err = errors.Join(err, top.Close())
			top = nil
		}
	}()
	if top.Uplink, err = NewNetns("pdknt-up"); err != nil {
		return top, err
	}
	if top.Client, err = NewNetns("pdknt-cl"); err != nil {
		return top, err
	}
	up := pair{inner: top.Uplink, innerIP: UplinkGatewayIP, outer: d, outerName: uplinkLink, outerIP: HostUplinkIP}
	if err := up.wire(); err != nil {
		return top, err
	}
	cl := pair{inner: top.Client, innerIP: ClientIP, outer: d, outerName: clientLink, outerIP: HostClientIP}
	if err := cl.wire(); err != nil {
		return top, err
	}
	// The daemon ns reaches "the internet" through the uplink; the client
	// reaches everything through the daemon ns.
	if err := defaultRoute(d, uplinkLink, UplinkGatewayIP); err != nil {
		return top, err
	}
	if err := defaultRoute(top.Client, "eth0", HostClientIP); err != nil {
		return top, err
	}
	lo, err := top.Uplink.h.LinkByName("lo")
	if err != nil {
		return top, fmt.Errorf("uplink lo: %w", err)
	}
	if err := top.Uplink.h.AddrAdd(lo, &netlink.Addr{IPNet: prefix(UplinkIP, 32)}); err != nil {
		return top, fmt.Errorf("add %s to the uplink: %w", UplinkIP, err)
	}
	if top.HTTP, err = StartHTTP(top.Uplink, netip.AddrPortFrom(UplinkIP, HTTPPort)); err != nil {
		return top, err
	}
	if top.DNS, err = StartResolver(top.Uplink, netip.AddrPortFrom(UplinkIP, DNSPort), DNSName, UplinkIP); err != nil {
		return top, err
	}
	if top.Sink, err = StartSink(top.Uplink, netip.AddrPortFrom(UplinkIP, SinkPort)); err != nil {
		return top, err
	}
	return top, nil
}

// URL is http://192.0.2.1<path> on the uplink's HTTP server.
func (t *Topology) URL(path string) string {
	return fmt.Sprintf("http://%s%s", netip.AddrPortFrom(UplinkIP, HTTPPort), path)
}

// Close stops the servers, deletes the links it made in the daemon
// namespace (and so their peers), deletes the uplink and client namespaces,
// then checks that none of it is left: a leak is an error.
func (t *Topology) Close() error {
	var errs []error
	// Each Close is nil-safe: a failed Build leaves some of them unset.
	errs = append(errs, t.HTTP.Close(), t.DNS.Close(), t.Sink.Close())
	var names []string
	for _, n := range []*Netns{t.Uplink, t.Client} {
		if n != nil {
			names = append(names, n.Name)
		}
	}
	if t.Daemon != nil && t.Daemon.h != nil {
		for _, name := range []string{uplinkLink, clientLink} {
			if l, err := t.Daemon.h.LinkByName(name); err == nil {
				if err := t.Daemon.h.LinkDel(l); err != nil {
					errs = append(errs, fmt.Errorf("delete %s in %s: %w", name, t.Daemon.Name, err))
				}
			}
		}
		// Check before the handle goes: the deletions are synchronous.
		for _, name := range []string{uplinkLink, clientLink} {
			if _, err := t.Daemon.h.LinkByName(name); err == nil {
				errs = append(errs, fmt.Errorf("link %s leaked in %s", name, t.Daemon.Name))
			}
		}
	}
	for _, n := range []*Netns{t.Uplink, t.Client, t.Daemon} {
		if n != nil {
			errs = append(errs, n.Close())
		}
	}
	for _, name := range names {
		errs = append(errs, CheckGone(name))
	}
	t.HTTP, t.DNS, t.Sink, t.Uplink, t.Client, t.Daemon = nil, nil, nil, nil, nil, nil
	return errors.Join(errs...)
}

// pair is a veth link between two namespaces: "eth0" with innerIP/24 in
// inner, outerName with outerIP/24 in outer, both up.
type pair struct {
	inner     *Netns
	innerIP   netip.Addr
	outer     *Netns
	outerName string
	outerIP   netip.Addr
}

func (p pair) wire() error {
	a := netlink.NewLinkAttrs()
	a.Name = p.outerName
	p.inner.mu.RLock()
	v := &netlink.Veth{LinkAttrs: a, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(p.inner.ns))}
	defer p.inner.mu.RUnlock()
	if err := p.outer.h.LinkAdd(v); err != nil {
		return fmt.Errorf("veth %s (%s) - eth0 (%s): %w", p.outerName, p.outer.Name, p.inner.Name, err)
	}
	for _, end := range []struct {
		ns   *Netns
		name string
		ip   netip.Addr
	}{{p.outer, p.outerName, p.outerIP}, {p.inner, "eth0", p.innerIP}} {
		l, err := end.ns.h.LinkByName(end.name)
		if err != nil {
			return fmt.Errorf("%s in %s: %w", end.name, end.ns.Name, err)
		}
		if err := end.ns.h.AddrAdd(l, &netlink.Addr{IPNet: prefix(end.ip, 24)}); err != nil {
			return fmt.Errorf("address %s on %s in %s: %w", end.ip, end.name, end.ns.Name, err)
		}
		if err := end.ns.h.LinkSetUp(l); err != nil {
			return fmt.Errorf("%s up in %s: %w", end.name, end.ns.Name, err)
		}
	}
	return nil
}

func defaultRoute(n *Netns, dev string, gw netip.Addr) error {
	l, err := n.h.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("%s in %s: %w", dev, n.Name, err)
	}
	r := &netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.IP(gw.AsSlice())}
	if err := n.h.RouteAdd(r); err != nil {
		return fmt.Errorf("default route via %s in %s (has it one already?): %w", gw, n.Name, err)
	}
	return nil
}

func prefix(ip netip.Addr, bits int) *net.IPNet {
	return &net.IPNet{IP: net.IP(ip.AsSlice()), Mask: net.CIDRMask(bits, 32)}
}
