// Package netfilter programs paddock's packet rules for bridge-mode VMs:
// NAT, published ports, anti-spoofing and isolation. It is the only part of
// paddock that touches netfilter, and it touches only paddock's own tables,
// over netlink (google/nftables; no nft binary at run time):
//
//	table inet   <Config.Table>   nat and filter chains (L3)
//	table bridge <Config.Table>   anti-spoofing at the bridge ports (L2; ARP
//	                              cannot be matched from inet)
//
// # Ownership
//
// Every rule carries a comment (NFTNL_UDATA_RULE_COMMENT, shown by `nft list`)
// naming its owner: "paddock:base" for the rules EnsureBase keeps, and
// "paddock:vm:<vmID>" for a VM's rules. A VM's rules are replaced or removed
// as one atomic batch; rules are compared with what the kernel holds first, so
// applying unchanged rules changes nothing (a daemon restart leaves `nft -a
// list table` identical, handles included). Rules without a paddock comment
// are never deleted from a chain that stays.
//
// # Layout
//
// Base chains hold base rules only; VM rules live in regular chains the base
// chains jump to, so neither kind ever has to be ordered against the other:
//
//	inet prerouting   nat dstnat      jump published
//	inet output       nat dstnat      jump published (host-originated, 127.0.0.1 too)
//	inet postrouting  nat srcnat      masquerade the subnet out of any other iface
//	                                  (NAT only); masquerade 127.0.0.0/8 out of the bridge
//	inet input        filter          from the bridge: replies, HostAccess on the
//	                                  gateway, nothing else (127.0.0.0/8 dropped)
//	inet forward      filter          to the bridge: replies and DNAT only;
//	                                  bridge to bridge: jump groups, then drop;
//	                                  from the bridge: egress only with NAT
//	inet published    (VM)            DNAT per published port
//	inet groups       (VM)            ip saddr <vm> jump grp-<hash of group>
//	inet grp-<hash>   (VM)            ip daddr <member> accept, one per member
//	bridge prerouting filter          frames from a tap (TapPrefix): jump antispoof, drop
//	bridge antispoof  (VM)            per tap: its MAC with its IPv4 address, or
//	                                  Ethernet/IPv4 ARP with its MAC and address;
//	                                  anything else from the tap is dropped
//
// A frame from a tap with no VM rules is dropped, so a tap is dead
// until ApplyVM. Guest-to-guest traffic never crosses the bridge directly
// (netdev makes taps isolated ports and the bridge proxy-ARPs for the subnet),
// it is routed through the host's forward chain, where only members of the
// same shared group pass; anti-spoofing is what makes "ip saddr" trustworthy
// there. A group chain is created with its first member and deleted with its
// last.
//
// The chains' policies are accept and every rule is scoped to the bridge, so
// traffic that does not involve paddock's bridge is not affected. A drop in
// another table (a FORWARD policy of drop set by another tool) still drops:
// netfilter gives every table its say.
//
// # Sysctls
//
// EnsureBase sets net.ipv4.ip_forward=1 in its namespace and reports when it
// changed it (the daemon logs it). netdev sets the bridge's own settings
// (proxy_arp_pvlan, send_redirects, route_localnet) and isolated ports.
//
// # Privileges
//
// CAP_NET_ADMIN in the network namespace.
package netfilter

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/paddock-vm/paddock/errdefs"
	"github.com/paddock-vm/paddock/netspec"
)

// Defaults.
const (
	// DefaultTable names paddock's tables when Config.Table is empty.
	DefaultTable = "paddock"
	// DefaultTapPrefix is netdev.TapPrefix.
	DefaultTapPrefix = "pdk-"
)

// Ownership tags, stored as each rule's comment.
const (
	// TagPrefix starts every tag.
	TagPrefix = "paddock:"
	// BaseTag marks the rules EnsureBase keeps.
	BaseTag = TagPrefix + "base"
	// VMTagPrefix starts a VM's tag; the VM id follows.
	VMTagPrefix = TagPrefix + "vm:"
)

// VMTag returns the tag of a VM's rules.
func VMTag(vmID string) string { return VMTagPrefix + vmID }

// Errors. Every error this package returns wraps one of these or a netlink
// error with context.
var (
	// ErrNoNFTables: the kernel lacks nf_tables or a part paddock's rules
	// need.
	ErrNoNFTables = errdefs.New(errdefs.ErrUnavailable, "nftables is not available in this kernel (paddock needs nf_tables with the inet and bridge families, nat, masquerade, fib and conntrack: modules nf_tables, nft_chain_nat, nft_masq, nft_fib_inet, nft_ct, nf_tables_bridge)")
	// ErrInvalidConfig: the configuration is unusable.
	ErrInvalidConfig = errdefs.New(errdefs.ErrInvalidArgument, "invalid packet filter configuration")
	// ErrInvalidVM: a VM's network description is unusable (the value is
	// named in the error).
	ErrInvalidVM = errdefs.New(errdefs.ErrInvalidArgument, "invalid VM network settings")
)

// Config describes the host side of bridge mode.
type Config struct {
	// Table names paddock's two tables (inet and bridge); DefaultTable when
	// empty. Tests use their own.
	Table string
	// Bridge is the name of paddock's bridge (netdev.Config.Bridge).
	Bridge string
	// TapPrefix starts the name of every tap (DefaultTapPrefix when empty):
	// frames from an interface of that name with no VM rules are dropped.
	TapPrefix string
	// Subnet is the guests' IPv4 subnet; Gateway, the bridge's address in it.
	Subnet  netip.Prefix
	Gateway netip.Addr
	// NAT masquerades the subnet out of every interface but the bridge and
	// lets guests' traffic out; without it guests get only replies and
	// published-port traffic.
	NAT bool
	// HostAccess lists what guests may reach on the gateway address besides
	// replies (vm.host_access, e.g. a DNS server).
	HostAccess []netspec.Service
}

// VM is what ApplyVM programs for one VM.
type VM struct {
	// ID is the VM id (1-64 bytes of [A-Za-z0-9_.-]).
	ID string
	// Tap is the VM's bridge port; MAC and IP, the guest's addresses.
	Tap string
	MAC net.HardwareAddr
	IP  netip.Addr
	// Group, when set, lets this VM reach (and be reached by) the other VMs
	// of the same group; the caller scopes it (e.g. "<uid>:<name>").
	Group string
	// Ports are the published ports.
	// Ports are the published ports (a zero HostIP: every local address).
	Ports []netspec.PortMapping
}

const (
	maxIfName = 15 // IFNAMSIZ-1
	maxVMID   = 64
	maxGroup  = 128
)

// WithDefaults returns c with the table name defaulted and the subnet masked.
func (c Config) WithDefaults() Config {
	if c.Table == "" {
		c.Table = DefaultTable
	}
	if c.TapPrefix == "" {
		c.TapPrefix = DefaultTapPrefix
	}
	c.Subnet = c.Subnet.Masked()
	return c
}

// Validate checks c after defaults.
func (c Config) Validate() error {
	c = c.WithDefaults()
	if err := validName(c.Table, 64); err != nil {
		return fmt.Errorf("%w: table: %v", ErrInvalidConfig, err)
	}
	if err := validIfName(c.Bridge); err != nil {
		return fmt.Errorf("%w: bridge: %v", ErrInvalidConfig, err)
	}
	if err := validName(c.TapPrefix, maxIfName-1); err != nil {
		return fmt.Errorf("%w: tap prefix: %v", ErrInvalidConfig, err)
	}
	if strings.HasPrefix(c.Bridge, c.TapPrefix) {
		return fmt.Errorf("%w: bridge name %q starts with the tap prefix %q", ErrInvalidConfig, c.Bridge, c.TapPrefix)
	}
	if !c.Subnet.IsValid() || !c.Subnet.Addr().Is4() || c.Subnet.Bits() < 8 || c.Subnet.Bits() > 30 {
		return fmt.Errorf("%w: subnet %v: want an IPv4 prefix of length 8..30", ErrInvalidConfig, c.Subnet)
	}
	if !c.Gateway.Is4() || !c.Subnet.Contains(c.Gateway) || c.Gateway == c.Subnet.Addr() {
		return fmt.Errorf("%w: gateway %v is not a host address in %v", ErrInvalidConfig, c.Gateway, c.Subnet)
	}
	seen := map[netspec.Service]bool{}
	for _, a := range c.HostAccess {
		if a.Proto != "tcp" && a.Proto != "udp" || a.Port == 0 {
			return fmt.Errorf("%w: host access %q: want tcp/PORT or udp/PORT with PORT 1-65535", ErrInvalidConfig, a.String())
		}
		if seen[a] {
			return fmt.Errorf("%w: host access %s listed twice", ErrInvalidConfig, a)
		}
		seen[a] = true
	}
	return nil
}

// Validate checks v against c (which must be valid).
func (v VM) Validate(c Config) error {
	c = c.WithDefaults()
	if err := ValidVMID(v.ID); err != nil {
		return err
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: VM %s: %s", ErrInvalidVM, v.ID, fmt.Sprintf(format, args...))
	}
	if err := validIfName(v.Tap); err != nil {
		return bad("tap: %v", err)
	}
	if !strings.HasPrefix(v.Tap, c.TapPrefix) || v.Tap == c.TapPrefix {
		return bad("tap %q does not start with the tap prefix %q", v.Tap, c.TapPrefix)
	}
	if len(v.MAC) != 6 || v.MAC[0]&1 != 0 {
		return bad("MAC %q is not a unicast Ethernet address", v.MAC.String())
	}
	bcast := lastAddr(c.Subnet)
	if !v.IP.Is4() || !c.Subnet.Contains(v.IP) || v.IP == c.Subnet.Addr() || v.IP == bcast || v.IP == c.Gateway {
		return bad("address %v is not a guest address in %v (gateway %v)", v.IP, c.Subnet, c.Gateway)
	}
	if len(v.Group) > maxGroup {
		return bad("group name longer than %d bytes", maxGroup)
	}
	type key struct {
		proto string
		port  uint16
	}
	byPort := map[key]netspec.PortMapping{}
	for _, p := range v.Ports {
		switch {
		case p.Proto != "tcp" && p.Proto != "udp":
			return bad("published port %s: protocol %q: want tcp or udp", p, p.Proto)
		case p.HostPort == 0 || p.GuestPort == 0:
			return bad("published port %s: ports must be 1-65535", p)
		case p.HostIP.IsValid() && !p.HostIP.Is4():
			return bad("published port %s: host address %v is not IPv4", p, p.HostIP)
		}
		k := key{p.Proto, p.HostPort}
		if q, dup := byPort[k]; dup && (!q.HostIP.IsValid() || !p.HostIP.IsValid() || q.HostIP == p.HostIP) {
			return bad("published ports %s and %s both claim host port %d/%s", q, p, p.HostPort, p.Proto)
		}
		byPort[k] = p
	}
	return nil
}

// ValidVMID checks a VM id: 1-64 bytes of ASCII letters, digits, '_', '.' and
// '-' (netdev's rule, so one id works for both).
func ValidVMID(id string) error {
	if id == "" || len(id) > maxVMID {
		return fmt.Errorf("%w: VM id %q: must be 1-%d bytes", ErrInvalidVM, id, maxVMID)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-'
		if !ok {
			return fmt.Errorf("%w: VM id %q: character %q", ErrInvalidVM, id, c)
		}
	}
	return nil
}

// ParseTag returns the VM id of a VM tag; ok is false for any other string.
func ParseTag(tag string) (vmID string, ok bool) {
	id, found := strings.CutPrefix(tag, VMTagPrefix)
	if !found || ValidVMID(id) != nil {
		return "", false
	}
	return id, true
}

func validIfName(s string) error {
	if s == "" || len(s) > maxIfName {
		return fmt.Errorf("interface name %q must be 1-%d bytes", s, maxIfName)
	}
	return validName(s, maxIfName)
}

func validName(s string, max int) error {
	if s == "" || len(s) > max {
		return fmt.Errorf("name %q must be 1-%d bytes", s, max)
	}
	for _, r := range s {
		if r <= ' ' || r == '/' || r == ':' || r == '"' || r >= 0x7f {
			return fmt.Errorf("name %q has a forbidden character %q", s, r)
		}
	}
	return nil
}

// lastAddr is the broadcast address of an IPv4 prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
