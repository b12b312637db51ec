//go:build linux

package nettopo

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/paddock-vm/paddock/internal/testenv"
)

// daemonNS stands for the namespace e2e runs paddockd in: a fresh one
// with lo up, deleted at the end.
func daemonNS(t *testing.T) *Netns {
	t.Helper()
	testenv.RequireRoot(t, "network namespaces and veth links")
	d, err := NewNetns("pdknt-d")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Error(err)
		}
		if err := CheckGone(d.Name); err != nil {
			t.Error(err)
		}
	})
	return d
}

// httpIn is an HTTP client whose connections are made inside n.
func httpIn(n *Netns) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: n.Dial, DisableKeepAlives: true}}
}

func get(t *testing.T, c *http.Client, url string) (string, error) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if resp.StatusCode != http.StatusOK {
		return string(b), errors.New(resp.Status)
	}
	return string(b), err
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestTopology(t *testing.T) {
	d := daemonNS(t)
	top := New(t, d.Name)
	c := httpIn(top.Daemon)

	t.Run("uplink sees the daemon's address", func(t *testing.T) {
		body, err := get(t, c, top.URL("/ip"))
		if err != nil || strings.TrimSpace(body) != HostUplinkIP.String() {
			t.Fatalf("GET /ip from the daemon ns: %q %v, want %s", body, err, HostUplinkIP)
		}
		if !slices.Contains(top.HTTP.Seen(), HostUplinkIP) {
			t.Errorf("Seen %v lacks %s", top.HTTP.Seen(), HostUplinkIP)
		}
	})

	t.Run("bytes", func(t *testing.T) {
		body, err := get(t, c, top.URL("/bytes?n=1000003"))
		if err != nil || len(body) != 1000003 || strings.Trim(body, "\x00") != "" {
			t.Fatalf("GET /bytes?n=1000003: %d bytes, %v", len(body), err)
		}
		for _, bad := range []string{"-1", "x", "99999999999"} {
			if _, err := get(t, c, top.URL("/bytes?n="+bad)); err == nil || !strings.Contains(err.Error(), "400") {
				t.Errorf("GET /bytes?n=%s: %v, want 400", bad, err)
			}
		}
	})

	t.Run("resolver", func(t *testing.T) {
		r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return top.Daemon.Dial(ctx, "udp", netip.AddrPortFrom(UplinkIP, DNSPort).String())
		}}
		ctx := ctxT(t, 10*time.Second)
		ips, err := r.LookupNetIP(ctx, "ip4", DNSName+".")
		if err != nil || len(ips) != 1 || ips[0].Unmap() != UplinkIP {
			t.Fatalf("lookup %s: %v %v", DNSName, ips, err)
		}
		_, err = r.LookupNetIP(ctx, "ip4", "nowhere.paddock.test.")
		var de *net.DNSError
		if !errors.As(err, &de) || !de.IsNotFound {
			t.Errorf("lookup of an unknown name: %v, want not found", err)
		}
		if a := top.DNS.Asked(); !slices.Contains(a, DNSName) || !slices.Contains(a, "nowhere.paddock.test") {
			t.Errorf("Asked %v", a)
		}
	})

	t.Run("client reaches the daemon ns", func(t *testing.T) {
		ln, err := top.Daemon.Listen("tcp", "0.0.0.0:18080")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		// Both of the daemon ns's addresses, as a user would try them.
		for _, ip := range []netip.Addr{HostClientIP, HostUplinkIP} {
			peer := make(chan net.Addr, 1)
			go func() {
				s, err := ln.Accept()
				if err != nil {
					peer <- nil
					return
				}
				peer <- s.RemoteAddr()
				s.Write([]byte("hi"))
				s.Close()
			}()
			ctx := ctxT(t, 10*time.Second)
			cl, err := top.Client.Dial(ctx, "tcp", netip.AddrPortFrom(ip, 18080).String())
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(cl)
			cl.Close()
			if err != nil || string(b) != "hi" {
				t.Fatalf("read from %s: %q %v", ip, b, err)
			}
			if p := <-peer; p == nil || !strings.HasPrefix(p.String(), ClientIP.String()+":") {
				t.Errorf("the daemon ns saw %v, want %s", p, ClientIP)
			}
		}
	})

	t.Run("sink", func(t *testing.T) {
		ctx := ctxT(t, 30*time.Second)
		const n = 8 << 20
		cn, err := top.Daemon.Dial(ctx, "tcp", netip.AddrPortFrom(UplinkIP, SinkPort).String())
		if err != nil {
			t.Fatal(err)
		}
		defer cn.Close()
		if err := Send(ctx, cn, n); err != nil {
			t.Fatal(err)
		}
		res, err := top.Sink.Next(ctx)
		if err != nil || res.Bytes != n || res.Peer.Addr() != HostUplinkIP || res.BytesPerSec() <= 0 {
			t.Fatalf("sink: %+v %v", res, err)
		}
		t.Logf("daemon ns -> uplink sink: %v", res)
	})
}

// TestNATSemantics: a stand-in for a guest (a namespace behind the daemon
// ns on a private subnet) gets nothing back from the uplink until the
// daemon ns masquerades it, and then the uplink sees the daemon's address.
func TestNATSemantics(t *testing.T) {
	d := daemonNS(t)
	nft := testenv.RequireTool(t, "nft", "nftables")
	top := New(t, d.Name)
	g, err := NewNetns("pdknt-g")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := errors.Join(g.Close(), CheckGone(g.Name)); err != nil {
			t.Error(err)
		}
	})
	guestIP, gwIP := netip.MustParseAddr("10.99.0.2"), netip.MustParseAddr("10.99.0.1")
	if err := (pair{inner: g, innerIP: guestIP, outer: top.Daemon, outerName: "ntg0", outerIP: gwIP}).wire(); err != nil {
		t.Fatal(err)
	}
	// ntg0 goes with g; still, delete it first so Close finds nothing of it.
	t.Cleanup(func() {
		if l, err := top.Daemon.Handle().LinkByName("ntg0"); err == nil {
			_ = top.Daemon.Handle().LinkDel(l)
		}
	})
	if err := defaultRoute(g, "eth0", gwIP); err != nil {
		t.Fatal(err)
	}
	if err := top.Daemon.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	gc := httpIn(g)
	gc.Timeout = 3 * time.Second

	if body, err := get(t, gc, top.URL("/ip")); err == nil {
		t.Fatalf("without NAT the uplink answered a private address: %q", body)
	}
	if slices.Contains(top.HTTP.Seen(), guestIP) {
		t.Fatalf("without NAT the uplink served %s", guestIP)
	}

	rules := `table ip nettopo_test {
	chain post {
		type nat hook postrouting priority srcnat;
		ip saddr 10.99.0.0/24 oifname "ntup0" masquerade
	}
}
`
	cmd := top.Daemon.Command(ctxT(t, 10*time.Second), nft, "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft in %s: %v %s", top.Daemon.Name, err, out)
	}
	gc.Timeout = 10 * time.Second
	body, err := get(t, gc, top.URL("/ip"))
	if err != nil || strings.TrimSpace(body) != HostUplinkIP.String() {
		t.Fatalf("with masquerade: %q %v, want the uplink to see %s", body, err, HostUplinkIP)
	}
}

// TestBusyboxCommands runs the guest's commands (GuestSend, GuestServe,
// wget, nslookup) with the host's static busybox in the topology: the same
// binary the e2e and bench images carry.
func TestBusyboxCommands(t *testing.T) {
	d := daemonNS(t)
	bb := testenv.RequireTool(t, "busybox", "busybox-static")
	top := New(t, d.Name)
	ctx := ctxT(t, 60*time.Second)
	// PATH as in the guest: busybox applets only.
	path := t.TempDir()
	for _, a := range []string{"sh", "dd", "nc", "cat", "kill", "wget", "nslookup"} {
		if err := os.Symlink(bb, filepath.Join(path, a)); err != nil {
			t.Fatal(err)
		}
	}
	command := func(n *Netns, args ...string) *exec.Cmd {
		c := n.Command(ctx, bb, args...)
		c.Env = []string{"PATH=" + path}
		return c
	}
	run := func(n *Netns, args ...string) (string, error) {
		out, err := command(n, args...).CombinedOutput()
		return string(out), err
	}

	if out, err := run(top.Daemon, "wget", "-q", "-O", "-", top.URL("/ip")); err != nil || strings.TrimSpace(out) != HostUplinkIP.String() {
		t.Errorf("busybox wget /ip: %q %v", out, err)
	}
	if out, err := run(top.Daemon, "nslookup", DNSName, UplinkIP.String()); err != nil || !strings.Contains(out, "Address: "+UplinkIP.String()) {
		t.Errorf("busybox nslookup: %q %v", out, err)
	}

	const n = 4 << 20
	send := GuestSend(n)
	if out, err := run(top.Daemon, append([]string{send[0]}, send[1:]...)...); err != nil {
		t.Fatalf("%q: %v %s", send, err, out)
	}
	res, err := top.Sink.Next(ctx)
	if err != nil || res.Bytes != n {
		t.Fatalf("sink after GuestSend: %+v %v", res, err)
	}

	// GuestServe in the daemon ns, fetched from the client: the shape of
	// the published-port figure. A prober connects first, sends a line and
	// takes a few bytes, as paddockd's port discovery may (HEAD / ...); the
	// client still gets all.
	srv := command(top.Daemon, GuestServe(18081, n)...)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Wait() }()
	addr := netip.AddrPortFrom(HostClientIP, 18081).String()
	for {
		p, err := top.Client.Dial(ctx, "tcp", addr)
		if err == nil {
			_, err = io.WriteString(p, "HEAD / HTTP/1.1\r\n")
		}
		if err == nil {
			_, err = io.ReadFull(p, make([]byte, 10))
			p.Close()
		}
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("prober: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	got, err := Fetch(ctx, top.Client, addr)
	if err != nil || got.Bytes != n {
		t.Errorf("Fetch from GuestServe: %+v %v", got, err)
	}
	if out, err := run(top.Daemon, GuestServeStop(18081)...); err != nil {
		t.Errorf("GuestServeStop: %v %s", err, out)
	}
	select {
	case <-served: // killed by TERM: the exit status says so, nothing to check
	case <-ctx.Done():
		t.Fatal("GuestServe did not end after GuestServeStop")
	}
}

func TestVethReference(t *testing.T) {
	testenv.RequireRoot(t, "network namespaces and veth links")
	before := netnsNames(t)
	const n = 64 << 20
	res, err := VethReference(ctxT(t, 60*time.Second), n)
	if err != nil {
		t.Fatal(err)
	}
	if res.Bytes != n || res.Elapsed <= 0 || res.Peer.Addr() != refSenderIP {
		t.Fatalf("reference: %+v", res)
	}
	t.Logf("veth reference: %v", res)
	if after := netnsNames(t); !slices.Equal(before, after) {
		t.Errorf("namespaces before %v, after %v", before, after)
	}
}

// TestCloseLeavesNothing builds, uses and closes a topology, then looks for
// anything of it in the daemon ns and among the named namespaces; and a
// Build that fails half way leaves nothing either.
func TestCloseLeavesNothing(t *testing.T) {
	d := daemonNS(t)
	before := netnsNames(t)
	top, err := Build(d.Name)
	if err != nil {
		t.Fatal(err)
	}
	names := []string{top.Uplink.Name, top.Client.Name}
	if _, err := get(t, httpIn(top.Daemon), top.URL("/ip")); err != nil {
		t.Fatal(err)
	}
	if err := top.Close(); err != nil {
		t.Fatal(err)
	}
	if err := top.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	for _, name := range names {
		if _, err := os.Stat(filepath.Join(NetnsDir, name)); err == nil {
			t.Errorf("namespace %s left", name)
		}
	}
	if after := netnsNames(t); !slices.Equal(before, after) {
		t.Errorf("namespaces before %v, after %v", before, after)
	}
	assertBare(t, d)

	// A second Build after Close works: the names and the route are free.
	top, err = Build(d.Name)
	if err != nil {
		t.Fatal(err)
	}
	if err := top.Close(); err != nil {
		t.Fatal(err)
	}

	// Half way: the daemon ns already has a default route.
	// (a veth pair: this kernel may have no dummy links)
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "ntdum0"}, PeerName: "ntdum1"}
	if err := d.Handle().LinkAdd(v); err != nil {
		t.Fatal(err)
	}
	l, _ := d.Handle().LinkByName("ntdum0")
	if err := d.Handle().LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	def := &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}
	if err := d.Handle().RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: def, Scope: netlink.SCOPE_LINK}); err != nil {
		t.Fatal(err)
	}
	if _, err := Build(d.Name); err == nil || !strings.Contains(err.Error(), "default route") {
		t.Fatalf("Build over a default route: %v", err)
	}
	if err := d.Handle().LinkDel(l); err != nil {
		t.Fatal(err)
	}
	if after := netnsNames(t); !slices.Equal(before, after) {
		t.Errorf("after a failed Build: namespaces before %v, after %v", before, after)
	}
	assertBare(t, d)
}

// assertBare fails unless d holds only lo and no routes.
func assertBare(t *testing.T, d *Netns) {
	t.Helper()
	links, err := d.Handle().LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if l.Attrs().Name != "lo" {
			t.Errorf("link %s left in %s", l.Attrs().Name, d.Name)
		}
	}
	routes, err := d.Handle().RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if len(routes) != 0 {
		t.Errorf("routes left in %s: %v", d.Name, routes)
	}
}

// netnsNames lists this package's namespaces (pdknt-*).
func netnsNames(t *testing.T) []string {
	t.Helper()
	ents, err := os.ReadDir(NetnsDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "pdknt-") {
			names = append(names, e.Name())
		}
	}
	return names
}
