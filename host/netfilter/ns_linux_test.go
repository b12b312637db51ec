package netfilter

// Test harness: private network namespaces joined by veth pairs, and small
// servers and clients that run inside them. Every device and rule a test
// makes lives in a namespace the test created; the host's own namespace is
// only read (to prove nothing changed there).

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/internal/netnstest"
	"github.com/paddock-vm/paddock/internal/testenv"
)

// testNS is a private network namespace created by a test.
type testNS struct {
	name  string
	ns    netns.NsHandle
	h     *netlink.Handle
	ident string // "net:[inode]"
}

// hostTables lists the nftables tables of the test process's own namespace
// (read only), to prove a test changed nothing there.
func hostTables(t testing.TB) string {
	t.Helper()
	out, err := exec.Command(nftPath(t), "list", "tables").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list tables: %v: %s", err, out)
	}
	return string(out)
}

func nftPath(t testing.TB) string {
	t.Helper()
	return testenv.RequireTool(t, "nft", "nftables")
}

func requireRoot(t testing.TB) {
	t.Helper()
	testenv.RequireRoot(t, "creates network namespaces (CAP_SYS_ADMIN) and nftables rules in them (CAP_NET_ADMIN)")
}

// newNS creates a network namespace; at cleanup the namespace must be gone
// (no thread or descriptor of this process refers to it any more), which
// takes every device and rule in it along.
func newNS(t testing.TB, name string) *testNS {
	t.Helper()
	requireRoot(t)
	type res struct {
		ns  netns.NsHandle
		err error
	}
	ch := make(chan res, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			ch <- res{-1, err}
			return
		}
		defer orig.Close()
		ns, err := netns.New()
		if err != nil {
			ch <- res{-1, err}
			return
		}
		if err := netns.Set(orig); err != nil {
			ns.Close()
			ch <- res{-1, fmt.Errorf("return to the original namespace: %w", err)}
			return // the thread stays locked and is discarded
		}
		runtime.UnlockOSThread()
		ch <- res{ns, nil}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatalf("create network namespace %s: %v", name, r.err)
	}
	ident, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", int(r.ns)))
	if err != nil {
		t.Fatal(err)
	}
	h, err := netlink.NewHandleAt(r.ns)
	if err != nil {
		r.ns.Close()
		t.Fatalf("netlink handle in %s: %v", name, err)
	}
	tns := &testNS{name: name, ns: r.ns, h: h, ident: ident}
	t.Cleanup(func() {
		h.Close()
		r.ns.Close()
		deadline := time.Now().Add(5 * time.Second)
		for {
			refs := netnstest.Refs(ident)
			if len(refs) == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("namespace %s (%s) still referenced by %v", name, ident, refs)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	if err := tns.setUp("lo"); err != nil {
		t.Fatal(err)
	}
	return tns
}

// run calls fn on a thread inside the namespace; sockets fn opens stay in it.
func (tns *testNS) run(fn func() error) error { return netnstest.Run(tns.ns, fn) }

// nft runs the nft binary inside the namespace.
func (tns *testNS) nft(t testing.TB, stdin string, args ...string) string {
	t.Helper()
	bin := nftPath(t)
	var out []byte
	err := tns.run(func() error {
		cmd := exec.Command(bin, args...)
		cmd.Stdin = strings.NewReader(stdin)
		var err error
		out, err = cmd.CombinedOutput()
		return err
	})
	if err != nil {
		t.Fatalf("nft %s in %s: %v: %s", strings.Join(args, " "), tns.name, err, out)
	}
	return string(out)
}

func (tns *testNS) link(name string) (netlink.Link, error) {
	l, err := tns.h.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("%s: link %s: %w", tns.name, name, err)
	}
	return l, nil
}

func (tns *testNS) setUp(name string) error {
	l, err := tns.link(name)
	if err != nil {
		return err
	}
	return tns.h.LinkSetUp(l)
}

func (tns *testNS) addAddr(name, cidr string) error {
	l, err := tns.link(name)
	if err != nil {
		return err
	}
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		return err
	}
	return tns.h.AddrAdd(l, a)
}

func (tns *testNS) delAddr(name, cidr string) error {
	l, err := tns.link(name)
	if err != nil {
		return err
	}
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		return err
	}
	return tns.h.AddrDel(l, a)
}

func (tns *testNS) addRoute(dst, gw string) error {
	r := &netlink.Route{Gw: net.ParseIP(gw)}
	if dst != "default" {
		_, n, err := net.ParseCIDR(dst)
		if err != nil {
			return err
		}
		r.Dst = n
	}
	return tns.h.RouteAdd(r)
}

// veth joins a and b with a veth pair named aName in a and bName in b.
func veth(a *testNS, aName string, b *testNS, bName string) error {
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: aName}, PeerName: bName, PeerNamespace: netlink.NsFd(int(b.ns))}
	if err := a.h.LinkAdd(v); err != nil {
		return fmt.Errorf("veth %s/%s: %w", aName, bName, err)
	}
	if err := a.setUp(aName); err != nil {
		return err
	}
	return b.setUp(bName)
}

// whoami is a TCP server that answers each connection with its name and the
// peer's address, then closes it.
func whoami(t testing.TB, tns *testNS, addr, name string) {
	t.Helper()
	var ln net.Listener
	if err := tns.run(func() (err error) { ln, err = net.Listen("tcp4", addr); return err }); err != nil {
		t.Fatalf("listen on %s in %s: %v", addr, tns.name, err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s %s\n", name, c.RemoteAddr())
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
}

// ask connects from tns to addr (from local, when set) and returns the
// server's answer ("name peer"). Failures to connect end within timeout.
func ask(tns *testNS, local, addr string, timeout time.Duration) (string, error) {
	var line string
	err := tns.run(func() error {
		d := net.Dialer{Timeout: timeout}
		if local != "" {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
		}
		c, err := d.Dial("tcp4", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
			return err
		}
		line, err = bufio.NewReader(c).ReadString('\n')
		return err
	})
	return strings.TrimSpace(line), err
}

// udpLog is a UDP server recording every datagram: payload and source.
type udpLog struct {
	mu  sync.Mutex
	got []string
	c   net.PacketConn
}

func newUDPLog(t testing.TB, tns *testNS, addr string) *udpLog {
	t.Helper()
	l := &udpLog{}
	if err := tns.run(func() (err error) { l.c, err = net.ListenPacket("udp4", addr); return err }); err != nil {
		t.Fatalf("listen udp %s in %s: %v", addr, tns.name, err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 1500)
		for {
			n, from, err := l.c.ReadFrom(buf)
			if err != nil {
				return
			}
			l.mu.Lock()
			l.got = append(l.got, fmt.Sprintf("%s from %s", buf[:n], from.(*net.UDPAddr).IP))
			l.mu.Unlock()
		}
	}()
	t.Cleanup(func() { l.c.Close(); wg.Wait() })
	return l
}

// waitFor waits until a datagram starting with payload arrived, and returns
// everything received so far.
func (l *udpLog) waitFor(ctx context.Context, payload string) ([]string, error) {
	for {
		l.mu.Lock()
		got := append([]string(nil), l.got...)
		l.mu.Unlock()
		for _, g := range got {
			if strings.HasPrefix(g, payload+" ") {
				return got, nil
			}
		}
		select {
		case <-ctx.Done():
			return got, fmt.Errorf("datagram %q never arrived (got %q)", payload, got)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// sendUDP sends payload from tns (from local, when set) to addr.
func sendUDP(tns *testNS, local, addr, payload string) error {
	return tns.run(func() error {
		var la *net.UDPAddr
		if local != "" {
			la = &net.UDPAddr{IP: net.ParseIP(local)}
		}
		ra, err := net.ResolveUDPAddr("udp4", addr)
		if err != nil {
			return err
		}
		c, err := net.DialUDP("udp4", la, ra)
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte(payload))
		return err
	})
}

// ping sends one ICMP echo request from tns to dst and waits up to timeout
// for the reply.
func ping(tns *testNS, dst string, timeout time.Duration) error {
	return tns.run(func() error {
		c, err := net.ListenPacket("ip4:icmp", "0.0.0.0")
		if err != nil {
			return err
		}
		defer c.Close()
		id := uint16(os.Getpid())
		msg := []byte{8, 0, 0, 0, byte(id >> 8), byte(id), 0, 1, 'p', 'd', 'k'}
		binary.BigEndian.PutUint16(msg[2:], icmpChecksum(msg))
		if _, err := c.WriteTo(msg, &net.IPAddr{IP: net.ParseIP(dst)}); err != nil {
			return err
		}
		if err := c.SetReadDeadline(time.Now().Add(timeout)); err != nil {
			return err
		}
		buf := make([]byte, 1500)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return fmt.Errorf("no echo reply from %s: %w", dst, err)
			}
			if n >= 8 && buf[0] == 0 && from.String() == dst && binary.BigEndian.Uint16(buf[4:]) == id {
				return nil
			}
		}
	})
}

func icmpChecksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

// sendARPRequest broadcasts, from tns's interface ifname, an ARP request
// for target claiming sender IP spa and hardware address sha.
func sendARPRequest(tns *testNS, ifname string, sha net.HardwareAddr, spa, target netip.Addr) error {
	l, err := tns.link(ifname)
	if err != nil {
		return err
	}
	bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	frame := append([]byte{}, bcast...)
	frame = append(frame, sha...)
	frame = append(frame, 0x08, 0x06)                // ARP
	frame = append(frame, 0, 1, 0x08, 0, 6, 4, 0, 1) // Ethernet/IPv4, request
	s, t := spa.As4(), target.As4()
	frame = append(frame, sha...)
	frame = append(frame, s[:]...)
	frame = append(frame, 0, 0, 0, 0, 0, 0)
	frame = append(frame, t[:]...)
	return tns.run(func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ARP)))
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		sa := &unix.SockaddrLinklayer{Ifindex: l.Attrs().Index, Protocol: htons(unix.ETH_P_ARP), Halen: 6}
		copy(sa.Addr[:], bcast)
		return unix.Sendto(fd, frame, 0, sa)
	})
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// neighMAC returns the MAC the namespace's neighbour table holds for ip on
// link, or nil.
func (tns *testNS) neighMAC(link string, ip netip.Addr) (net.HardwareAddr, error) {
	l, err := tns.link(link)
	if err != nil {
		return nil, err
	}
	ns, err := tns.h.NeighList(l.Attrs().Index, netlink.FAMILY_V4)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, err
	}
	for _, n := range ns {
		if a, ok := netip.AddrFromSlice(n.IP); ok && a.Unmap() == ip && len(n.HardwareAddr) == 6 {
			return n.HardwareAddr, nil
		}
	}
	return nil, nil
}

func (tns *testNS) delNeigh(link string, ip netip.Addr) error {
	l, err := tns.link(link)
	if err != nil {
		return err
	}
	err = tns.h.NeighDel(&netlink.Neigh{LinkIndex: l.Attrs().Index, Family: netlink.FAMILY_V4, IP: ip.AsSlice()})
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	return err
}
