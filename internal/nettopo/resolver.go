//go:build linux

package nettopo

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
)

// Resolver is a UDP DNS server for one name (dnsAnswer): the "configured
// DNS" a guest resolves through. It records every name asked (Asked), so a
// test can prove the guest used it.
type Resolver struct {
	pc   net.PacketConn
	done chan struct{}

	mu    sync.Mutex
	asked []string
}

// StartResolver serves on addr (UDP) inside n; name resolves to ip.
func StartResolver(n *Netns, addr netip.AddrPort, name string, ip netip.Addr) (*Resolver, error) {
	pc, err := n.ListenPacket("udp", addr.String())
	if err != nil {
		return nil, err
	}
	r := &Resolver{pc: pc, done: make(chan struct{})}
	name = strings.TrimSuffix(strings.ToLower(name), ".")
	go func() {
		defer close(r.done)
		buf := make([]byte, 512) // plain DNS over UDP: longer queries are cut, then refused as malformed
		for {
			n, from, err := pc.ReadFrom(buf)
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err != nil {
				continue
			}
			reply, asked := dnsAnswer(buf[:n], name, ip)
			if asked != "" {
				r.mu.Lock()
				r.asked = append(r.asked, asked)
				r.mu.Unlock()
			}
			if reply != nil {
				_, _ = pc.WriteTo(reply, from)
			}
		}
	}()
	return r, nil
}

// Asked returns every question name received so far (lower case, no
// trailing dot).
func (r *Resolver) Asked() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.asked...)
}

// Close stops the server and waits for it. Nil-safe.
func (r *Resolver) Close() error {
	if r == nil {
		return nil
	}
	err := r.pc.Close()
	<-r.done
	return err
}
