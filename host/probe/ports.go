package probe

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"
)

// Port is one listening socket as the guest agent reports it.
type Port struct {
	Proto   string // "tcp" or "tcp6" (any trailing 4 or 6 is ignored by Dedupe)
	IP      netip.Addr
	Port    uint16
	PID     int // 0 when unknown
	Process string
}

// Dedupe collapses listeners on the same protocol and port into one entry:
// a service bound to 0.0.0.0 and :: (or to several specific addresses) is
// one port to the user. The entry kept is the widest bind: 0.0.0.0, then ::,
// then a specific non-loopback address, then loopback (lowest address first
// within a kind), so an entry whose IP is loopback is reachable only from
// inside the guest. Its PID and Process are filled from another entry of the
// group when it has none. Ports in hidden (the agent's own) and port 0 are
// dropped. The result is sorted by port, then protocol, and Proto is
// normalised ("tcp6" becomes "tcp"). ports is not modified.
func Dedupe(ports []Port, hidden ...uint16) []Port {
	type key struct {
		proto string
		port  uint16
	}
	best := make(map[key]Port, len(ports))
	for _, p := range ports {
		if p.Port == 0 || slices.Contains(hidden, p.Port) {
			continue
		}
		p.Proto = normProto(p.Proto)
		p.IP = p.IP.Unmap()
		k := key{p.Proto, p.Port}
		cur, seen := best[k]
		if !seen {
			best[k] = p
			continue
		}
		if wider(p, cur) {
			p, cur = cur, p
		}
		// cur is kept; borrow the owner from p if cur has none.
		if cur.PID == 0 && cur.Process == "" {
			cur.PID, cur.Process = p.PID, p.Process
		}
		best[k] = cur
	}
	out := make([]Port, 0, len(best))
	for _, p := range best {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b Port) int {
		return cmp.Or(cmp.Compare(a.Port, b.Port), strings.Compare(a.Proto, b.Proto))
	})
	return out
}

func normProto(s string) string {
	s = strings.ToLower(strings.TrimSpace(s))
	s = strings.TrimRight(s, "46")
	if s == "" {
		s = "tcp"
	}
	return s
}

// bindRank orders bind addresses from widest (0) to narrowest.
func bindRank(a netip.Addr) int {
	switch {
	case a == netip.IPv4Unspecified():
		return 0
	case a == netip.IPv6Unspecified():
		return 1
	case !a.IsValid():
		return 4
	case a.IsLoopback():
		return 3
	default:
		return 2
	}
}

// wider reports whether a's bind should be kept over b's.
func wider(a, b Port) bool {
	if ra, rb := bindRank(a.IP), bindRank(b.IP); ra != rb {
		return ra < rb
	}
	return a.IP.Less(b.IP)
}
