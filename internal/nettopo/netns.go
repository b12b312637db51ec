//go:build linux

package nettopo

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// NetnsDir is where iproute2 names network namespaces (ip netns add).
const NetnsDir = "/run/netns"

// Netns is a named network namespace: one this package created (Close
// deletes it) or one it was handed (Close only releases the handles).
type Netns struct {
	Name  string
	owned bool
	h     *netlink.Handle

	mu sync.RWMutex // ns: Do may still be entering it (a dial abandoned by its caller) when Close runs
	ns netns.NsHandle
}

var errClosed = errors.New("closed")

// NewNetns creates a fresh named namespace "<prefix>-<8 hex>" with lo up.
// The caller closes it; CheckGone then proves it is gone.
func NewNetns(prefix string) (*Netns, error) {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	name := prefix + "-" + hex.EncodeToString(b)
	if len(name) > 64 {
		return nil, fmt.Errorf("namespace name %q too long", name)
	}
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %v: %s", name, err, out)
	}
	n, err := open(name, true)
	if err != nil {
		_ = exec.Command("ip", "netns", "del", name).Run()
		return nil, err
	}
	lo, err := n.h.LinkByName("lo")
	if err == nil {
		err = n.h.LinkSetUp(lo)
	}
	if err != nil {
		n.Close()
		return nil, fmt.Errorf("lo up in %s: %w", name, err)
	}
	return n, nil
}

// OpenNetns opens an existing named namespace (e.g. the one the e2e harness
// runs paddockd in). Close does not delete it.
func OpenNetns(name string) (*Netns, error) { return open(name, false) }

func open(name string, owned bool) (*Netns, error) {
	h, err := netns.GetFromName(name)
	if err != nil {
		return nil, fmt.Errorf("open namespace %s: %w", name, err)
	}
	nh, err := netlink.NewHandleAt(h)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("netlink in namespace %s: %w", name, err)
	}
	return &Netns{Name: name, owned: owned, ns: h, h: nh}, nil
}

// Path is the namespace's bind mount, for nsenter --net=PATH.
func (n *Netns) Path() string { return filepath.Join(NetnsDir, n.Name) }

// Handle is a netlink handle working inside the namespace.
func (n *Netns) Handle() *netlink.Handle { return n.h }

// Close releases the handles and, for a namespace NewNetns made, deletes
// it. Sockets made in it must be closed first: a socket keeps a namespace
// alive after its name is gone.
func (n *Netns) Close() error {
	if n.h != nil {
		n.h.Close()
		n.h = nil
	}
	n.mu.Lock()
	if n.ns.IsOpen() {
		n.ns.Close()
	}
	n.ns = netns.None()
	n.mu.Unlock()
	if !n.owned {
		return nil
	}
	n.owned = false
	if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns del %s: %v: %s", n.Name, err, out)
	}
	return nil
}

// CheckGone reports an error when a namespace called name still exists.
func CheckGone(name string) error {
	if _, err := os.Stat(filepath.Join(NetnsDir, name)); err == nil {
		return fmt.Errorf("namespace %s leaked", name)
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// Do runs fn on an OS thread that has entered the namespace. The thread
// stays locked and dies with its goroutine, so no other goroutine ever runs
// in the namespace by accident. Sockets fn makes belong to the namespace
// for their whole life, whatever thread later uses them.
func (n *Netns) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		n.mu.RLock()
		err := errClosed
		if n.ns.IsOpen() {
			err = netns.Set(n.ns)
		}
		n.mu.RUnlock()
		if err != nil {
			errc <- fmt.Errorf("enter namespace %s: %w", n.Name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Listen makes a listening socket inside the namespace.
func (n *Netns) Listen(network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := n.Do(func() (err error) { ln, err = net.Listen(network, addr); return })
	if err != nil {
		return nil, fmt.Errorf("listen %s %s in %s: %w", network, addr, n.Name, err)
	}
	return ln, nil
}

// ListenPacket makes a packet socket inside the namespace.
func (n *Netns) ListenPacket(network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := n.Do(func() (err error) { pc, err = net.ListenPacket(network, addr); return })
	if err != nil {
		return nil, fmt.Errorf("listen %s %s in %s: %w", network, addr, n.Name, err)
	}
	return pc, nil
}

// Dial connects from inside the namespace; ctx bounds the connect.
func (n *Netns) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s %s from %s: %w", network, addr, n.Name, err)
	}
	return c, nil
}

// Command is exec.CommandContext run inside the namespace (via nsenter).
func (n *Netns) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + n.Path(), "--", name}, args...)...)
}

// Sysctl writes a per-namespace sysctl (key like "net.ipv4.ip_forward").
func (n *Netns) Sysctl(key, value string) error {
	p := filepath.Join("/proc/sys", filepath.FromSlash(replaceDots(key)))
	return n.Do(func() error {
		// /proc/sys/net follows the namespace of the thread that opens it.
		if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
			return fmt.Errorf("sysctl %s=%s in %s: %w", key, value, n.Name, err)
		}
		return nil
	})
}

func replaceDots(key string) string {
	b := []byte(key)
	for i := range b {
		if b[i] == '.' {
			b[i] = '/'
		}
	}
	return string(b)
}
