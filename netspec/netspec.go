// Package netspec is a VM's network spec as a user writes it: the ports it
// publishes on the host (-p [HOSTIP:]HOSTPORT:GUESTPORT[/tcp|/udp]) and the
// network it joins (--network bridge|user|shared:GROUP). It parses and
// prints both, and Validate is the one place a spec is checked, with the
// host's facts (its addresses, the unprivileged port floor) passed in, so
// the CLI, the daemon and tests agree on every rule and every message.
//
// The package uses the standard library only.
package netspec

import (
	"cmp"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
)

// Protocols a port mapping may name.
const (
	TCP = "tcp"
	UDP = "udp"
)

// Network modes. A VM's Network is "" (the daemon's default, vm.network),
// one of these, or SharedPrefix+GROUP.
const (
	Bridge = "bridge"
	User   = "user"
	// SharedPrefix starts a bridge-mode network whose VMs (of one owner)
	// may reach each other: "shared:GROUP".
	SharedPrefix = "shared:"
)

// MaxPorts bounds the mappings of one VM (each is a rule, or a passt
// forward, on the host).
const MaxPorts = 128

// PortMapping publishes a guest port on the host.
type PortMapping struct {
	// HostIP is the host address the port is published on; the zero Addr
	// is every local address (0.0.0.0 is read as the zero Addr).
	HostIP    netip.Addr `json:"host_ip"`
	HostPort  uint16     `json:"host_port"`
	GuestPort uint16     `json:"guest_port"`
	Proto     string     `json:"proto"` // TCP or UDP
}

// Wildcard reports whether m is published on every local address.
func (m PortMapping) Wildcard() bool { return !m.HostIP.IsValid() }

// String is the -p form: [HOSTIP:]HOSTPORT:GUESTPORT/PROTO.
func (m PortMapping) String() string {
	s := fmt.Sprintf("%d:%d/%s", m.HostPort, m.GuestPort, cmp.Or(m.Proto, TCP))
	if m.HostIP.IsValid() {
		s = m.HostIP.String() + ":" + s
	}
	return s
}

// HostString is the host side: [HOSTIP:]HOSTPORT/PROTO.
func (m PortMapping) HostString() string {
	s := fmt.Sprintf("%d/%s", m.HostPort, cmp.Or(m.Proto, TCP))
	if m.HostIP.IsValid() {
		s = m.HostIP.String() + ":" + s
	}
	return s
}

// Overlaps reports whether a and b claim the same host port: same protocol
// and port, and the same address or either on every address.
func Overlaps(a, b PortMapping) bool {
	return a.Proto == b.Proto && a.HostPort == b.HostPort &&
		(a.Wildcard() || b.Wildcard() || a.HostIP == b.HostIP)
}

// ParsePort reads the -p form [HOSTIP:]HOSTPORT:GUESTPORT[/tcp|/udp]. The
// protocol defaults to tcp; HOSTIP is an IPv4 address (0.0.0.0: every
// address). The error names s.
func ParsePort(s string) (PortMapping, error) {
	var m PortMapping
	bad := func(format string, args ...any) error {
		return fmt.Errorf("port mapping %q: %s (want [HOSTIP:]HOSTPORT:GUESTPORT[/tcp|/udp], e.g. 8080:80)", s, fmt.Sprintf(format, args...))
	}
	rest, proto, hasProto := strings.Cut(s, "/")
	switch {
	case !hasProto:
		m.Proto = TCP
	case proto == TCP || proto == UDP:
		m.Proto = proto
	default:
		return m, bad("protocol %q is not tcp or udp", proto)
	}
	// An IPv6 HOSTIP is bracketed; refuse it plainly rather than misread
	// its colons.
	if strings.HasPrefix(rest, "[") {
		return m, bad("HOSTIP must be an IPv4 address (guests have IPv4 addresses only)")
	}
	parts := strings.Split(rest, ":")
	var host, guest string
	switch len(parts) {
	case 2:
		host, guest = parts[0], parts[1]
	case 3:
		a, err := netip.ParseAddr(parts[0])
		if err != nil {
			return m, bad("HOSTIP %q is not an IPv4 address", parts[0])
		}
		if !a.Is4() {
			return m, bad("HOSTIP %q must be an IPv4 address (guests have IPv4 addresses only)", parts[0])
		}
		if !a.IsUnspecified() {
			m.HostIP = a
		}
		host, guest = parts[1], parts[2]
	default:
		if len(parts) > 3 {
			return m, bad("HOSTIP must be an IPv4 address (guests have IPv4 addresses only)")
		}
		return m, bad("missing GUESTPORT")
	}
	var err error
	if m.HostPort, err = parsePortNumber("HOSTPORT", host); err != nil {
		return m, bad("%v", err)
	}
	if m.GuestPort, err = parsePortNumber("GUESTPORT", guest); err != nil {
		return m, bad("%v", err)
	}
	return m, nil
}

func parsePortNumber(what, s string) (uint16, error) {
	if strings.Contains(s, "-") && s != "-" && !strings.HasPrefix(s, "-") {
		return 0, fmt.Errorf("%s %q: port ranges are not supported; give one -p per port", what, s)
	}
	if s == "" {
		return 0, fmt.Errorf("%s is empty", what)
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, fmt.Errorf("%s %q is not a number", what, s)
		}
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("%s %s is out of range (1-65535)", what, s)
	}
	return uint16(n), nil
}

var groupRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$`)

// ParseNetwork splits a network name into its mode (Bridge or User; ""
// for the daemon's default) and, for shared:GROUP, the group. Shared
// networks are bridge networks.
func ParseNetwork(s string) (mode, group string, err error) {
	switch s {
	case "", Bridge, User:
		return s, "", nil
	}
	if g, ok := strings.CutPrefix(s, SharedPrefix); ok {
		if !groupRE.MatchString(g) {
			return "", "", fmt.Errorf("network %q: group %q must be 1-32 lowercase letters, digits or '-', starting and ending with a letter or digit", s, g)
		}
		return Bridge, g, nil
	}
	return "", "", fmt.Errorf("network %q is not bridge, user or shared:GROUP", s)
}

// Facts are what Validate needs to know about the host and the caller.
type Facts struct {
	// HostAddrs are the addresses of the daemon's network namespace; a
	// HOSTIP must be one of them. nil skips the check.
	HostAddrs []netip.Addr
	// UnprivilegedPortStart is net.ipv4.ip_unprivileged_port_start: host
	// ports below it are for admins only.
	UnprivilegedPortStart int
	// Admin: the caller may publish privileged ports.
	Admin bool
	// Networks are the modes the daemon offers (Bridge, User); nil skips
	// the check.
	Networks []string
}

// Validate checks a VM's ports and network: ValidateNetwork, then
// ValidatePorts. The first problem is returned, naming the value.
func Validate(ports []PortMapping, network string, f Facts) error {
	if err := ValidateNetwork(network, f); err != nil {
		return err
	}
	return ValidatePorts(ports, f)
}

// ValidateNetwork checks that network is a network name and one the daemon
// offers.
func ValidateNetwork(network string, f Facts) error {
	mode, _, err := ParseNetwork(network)
	if err != nil {
		return err
	}
	if mode != "" && f.Networks != nil && !contains(f.Networks, mode) {
		if len(f.Networks) == 0 {
			return fmt.Errorf("network %q: this daemon runs VMs without a network (vm.network = \"none\")", network)
		}
		return fmt.Errorf("network %q: this daemon offers %s only", network, strings.Join(f.Networks, ", "))
	}
	return nil
}

// ValidatePorts checks every mapping is well-formed, no host port is
// claimed twice (the same address, or every address and one of them),
// every HOSTIP is the host's, and no port is privileged unless f.Admin.
func ValidatePorts(ports []PortMapping, f Facts) error {
	if len(ports) > MaxPorts {
		return fmt.Errorf("%d port mappings: at most %d per VM", len(ports), MaxPorts)
	}
	for i, p := range ports {
		if err := checkOne(p, f); err != nil {
			return err
		}
		for _, q := range ports[:i] {
			if Overlaps(p, q) {
				if p.HostIP == q.HostIP {
					return fmt.Errorf("port mapping %s: host port %s is published twice", p, p.HostString())
				}
				return fmt.Errorf("port mapping %s: host port %d/%s is already published by %s (every address includes the other)", p, p.HostPort, p.Proto, q)
			}
		}
	}
	return nil
}

func checkOne(p PortMapping, f Facts) error {
	switch {
	case p.Proto != TCP && p.Proto != UDP:
		return fmt.Errorf("port mapping %s: protocol %q is not tcp or udp", p, p.Proto)
	case p.HostPort == 0:
		return fmt.Errorf("port mapping %s: HOSTPORT 0 is out of range (1-65535)", p)
	case p.GuestPort == 0:
		return fmt.Errorf("port mapping %s: GUESTPORT 0 is out of range (1-65535)", p)
	}
	if p.HostIP.IsValid() {
		a := p.HostIP
		switch {
		case a.Zone() != "" || !a.Is4():
			return fmt.Errorf("port mapping %s: HOSTIP %s must be an IPv4 address (guests have IPv4 addresses only)", p, a)
		case a.IsUnspecified():
			return fmt.Errorf("port mapping %s: write every address as no HOSTIP, not %s", p, a)
		case f.HostAddrs != nil && !contains(f.HostAddrs, a):
			return fmt.Errorf("port mapping %s: HOSTIP %s is not an address of this host", p, a)
		}
	}
	if int(p.HostPort) < f.UnprivilegedPortStart && !f.Admin {
		return fmt.Errorf("port mapping %s: host port %d is privileged (below net.ipv4.ip_unprivileged_port_start = %d): publishing it needs CAP_NET_BIND_SERVICE, which paddock grants admins only", p, p.HostPort, f.UnprivilegedPortStart)
	}
	return nil
}

// HostIPsPresent refuses ports one of whose HOSTIPs is not among addrs:
// the start-time check of a VM whose ports were valid when set, on a host
// that may since have lost the address.
func HostIPsPresent(ports []PortMapping, addrs []netip.Addr) error {
	for _, p := range ports {
		if p.HostIP.IsValid() && !contains(addrs, p.HostIP) {
			return fmt.Errorf("port mapping %s: HOSTIP %s is no longer an address of this host (change it with paddock set -p while the VM is stopped)", p, p.HostIP)
		}
	}
	return nil
}

func contains[T comparable](s []T, v T) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// Service is one protocol and port: a host service bridge VMs may reach on
// their gateway (vm.host_access).
type Service struct {
	Proto string // TCP or UDP
	Port  uint16
}

func (s Service) String() string { return fmt.Sprintf("%s/%d", s.Proto, s.Port) }
