// Package netdev manages paddock's host network devices: one bridge shared by
// all VMs and one tap per VM, plus the static guest IPv4 address plan.
//
// # Ownership tags
//
// Every link paddock creates carries an interface alias (IFLA_IFALIAS, shown
// by `ip link` as "alias"):
//
//	paddock:bridge        the bridge (Config.Bridge, "paddock0" by default)
//	paddock:vm:<vmID>     the tap of VM <vmID>, named TapName(vmID)
//
// The tag is how paddock recognises its own objects after a crash: ListOwned
// returns every tagged link so the daemon's orphan sweep can release taps that
// belong to no known VM, and ReleaseTap refuses (ErrNotOurs) to delete a link
// whose tag does not name the VM the tap name was derived from. paddock never
// deletes an untagged link.
//
// # Crash safety
//
// A tap is created non-persistent (it lives only while paddock holds its
// /dev/net/tun descriptor), then tagged, configured and attached to the
// bridge, and only then made persistent (TUNSETPERSIST). A kill -9 at any
// point before that closes the descriptor and the kernel removes the tap, so
// a persistent paddock tap always carries its tag. The bridge cannot be tagged
// at creation time (the kernel ignores IFLA_IFALIAS in RTM_NEWLINK), so it is
// created with a deterministic MAC address derived from its name (BridgeMAC);
// an untagged bridge of the configured name whose MAC is that marker is a
// bridge whose creation was interrupted, and EnsureBridge adopts and tags it.
//
// # Addresses
//
// The bridge holds the gateway address, the first host of Config.Subnet. Each
// VM gets a static address from the Allocator (deterministic from its id,
// persisted by the caller) and learns it from the kernel command line
// (GuestNet.KernelArgs: paddock.ip, paddock.gw, paddock.mtu). The default
// subnet is 10.77.0.0/16: it avoids the defaults of podman (10.88.0.0/16,
// 10.89.x.0/24), Docker (172.17.0.0/16 and its 172.16/12 and 192.168/16
// pools), libvirt (192.168.122.0/24), Kubernetes (10.244.0.0/16,
// 10.96.0.0/12), Parallels (10.211.55.0/24), AWS default VPCs (172.31.0.0/16)
// and CGNAT/Tailscale (100.64.0.0/10). EnsureBridge refuses (ErrSubnetConflict)
// to use a subnet that overlaps an address on any other link. IPv4 only.
//
// # Isolation
//
// Every tap is an isolated bridge port (IFLA_BRPORT_ISOLATED): the bridge
// forwards nothing from one tap to another, only to and from the host. The
// bridge has proxy_arp_pvlan=1 (the host answers a guest's ARP for another
// guest, so guest-to-guest traffic, if any, is routed through the host's
// forward chain, where host/netfilter decides), send_redirects=0 (the host
// never tells a guest to go direct) and route_localnet=1 (published ports
// reached on 127.0.0.1 are forwarded out of the bridge; host/netfilter drops
// 127.0.0.0/8 arriving from guests). NAT, published ports, anti-spoofing and
// the host's input filter live in host/netfilter.
//
// # Privileges
//
// Only CAP_NET_ADMIN in the network namespace is needed, plus read-write
// access to /dev/net/tun (mode 0666 on most distributions; some minimal
// images ship it 0600, which then also needs the file's owner or
// CAP_DAC_OVERRIDE). Taps are owned by the VMM's uid/gid (TUNSETOWNER,
// TUNSETGROUP) so an unprivileged VMM can attach to its own tap and to no other.
package netdev

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/paddock-vm/paddock/errdefs"
)

// Defaults.
const (
	// DefaultBridge is the bridge name used when Config.Bridge is empty.
	DefaultBridge = "paddock0"
	// TapPrefix starts every tap name.
	TapPrefix = "pdk-"
	// AliasPrefix starts the alias of every link paddock owns.
	AliasPrefix = "paddock:"
	// BridgeAlias is the alias of paddock's bridge.
	BridgeAlias = AliasPrefix + "bridge"
	// TapAliasPrefix starts the alias of a VM's tap; the VM id follows.
	TapAliasPrefix = AliasPrefix + "vm:"

	// maxIfName is IFNAMSIZ-1.
	maxIfName = 15
	// maxVMID bounds VM ids so that the alias stays well under IFALIASZ.
	maxVMID = 64
)

// DefaultSubnet is the guest subnet used when Config.Subnet is not set (see the
// package documentation for why this one).
var DefaultSubnet = netip.MustParsePrefix("10.77.0.0/16")

// Errors. Every error returned by this package wraps one of these or an
// errno/netlink error with context.
var (
	// ErrNotOurs: the link exists but does not carry paddock's tag for the
	// object asked for; paddock will not modify or delete it.
	ErrNotOurs = errdefs.New(errdefs.ErrFailedPrecondition, "link is not paddock's")
	// ErrNameTaken: the tap name of a VM is used by another link (a foreign
	// one, or the tap of another VM whose id shares the same prefix).
	ErrNameTaken = errdefs.New(errdefs.ErrAlreadyExists, "tap name already used by another link")
	// ErrExhausted: no free guest address is left in the subnet.
	ErrExhausted = errdefs.New(errdefs.ErrUnavailable, "guest subnet exhausted")
	// ErrSubnetConflict: the guest subnet overlaps an address on another link.
	ErrSubnetConflict = errdefs.New(errdefs.ErrInvalidArgument, "guest subnet overlaps an address already in use")
	// ErrInvalidVMID: the VM id is empty, too long or has characters other
	// than ASCII letters, digits, '_', '.' and '-'.
	ErrInvalidVMID = errdefs.New(errdefs.ErrInvalidArgument, "invalid VM id")
	// ErrInvalidConfig: the configuration is unusable.
	ErrInvalidConfig = errdefs.New(errdefs.ErrInvalidArgument, "invalid network configuration")
	// ErrBridgeBusy: ReleaseBridge was asked to delete a bridge that still
	// has ports.
	ErrBridgeBusy = errdefs.New(errdefs.ErrFailedPrecondition, "bridge still has ports")
	// ErrClosed: the Manager was closed.
	ErrClosed = errdefs.New(errdefs.ErrUnavailable, "netdev manager closed")
)

// Config is the host network configuration.
type Config struct {
	// Bridge is the bridge name ("paddock0" when empty).
	Bridge string
	// Subnet is the guest IPv4 subnet (DefaultSubnet when invalid/zero). The
	// bridge takes its first host address; prefix length must be 8..30.
	Subnet netip.Prefix
	// MTU of the bridge and taps; 0 leaves the kernel default (1500).
	MTU int
}

// WithDefaults returns c with empty fields set to their defaults and the
// subnet masked (10.77.3.4/16 becomes 10.77.0.0/16).
func (c Config) WithDefaults() Config {
	if c.Bridge == "" {
		c.Bridge = DefaultBridge
	}
	if !c.Subnet.IsValid() {
		c.Subnet = DefaultSubnet
	}
	c.Subnet = c.Subnet.Masked()
	return c
}

// Validate checks c after applying defaults.
func (c Config) Validate() error {
	c = c.WithDefaults()
	if err := validIfName(c.Bridge); err != nil {
		return fmt.Errorf("%w: bridge: %v", ErrInvalidConfig, err)
	}
	if strings.HasPrefix(c.Bridge, TapPrefix) {
		return fmt.Errorf("%w: bridge name %q uses the tap prefix %q", ErrInvalidConfig, c.Bridge, TapPrefix)
	}
	if _, err := NewAllocator(c.Subnet); err != nil {
		return err
	}
	if c.MTU != 0 && (c.MTU < 68 || c.MTU > 65535) {
		return fmt.Errorf("%w: mtu %d not in 68..65535", ErrInvalidConfig, c.MTU)
	}
	return nil
}

func validIfName(s string) error {
	if s == "" || len(s) > maxIfName {
		return fmt.Errorf("interface name %q must be 1-%d bytes", s, maxIfName)
	}
	if s == "." || s == ".." {
		return fmt.Errorf("interface name %q is reserved", s)
	}
	for _, r := range s {
		if r <= ' ' || r == '/' || r == ':' || r >= 0x7f {
			return fmt.Errorf("interface name %q has a forbidden character %q", s, r)
		}
	}
	return nil
}

// Interface is what the VM actor and the daemon's orphan sweep need. *Manager
// implements it; netdevtest.Fake is a recording fake.
type Interface interface {
	// EnsureBridge creates the bridge if needed (idempotent) and returns it.
	EnsureBridge(ctx context.Context) (*Bridge, error)
	// AcquireTap creates (or adopts) the tap of vmID, attached to the bridge.
	AcquireTap(ctx context.Context, vmID string, owner Owner) (*Tap, error)
	// ReleaseTap deletes a tap; "not found" is success, a link that is not
	// the tagged tap of the VM its name belongs to is ErrNotOurs.
	ReleaseTap(ctx context.Context, name string, ifindex int) error
	// ProbeTap reports whether a link of that name exists and is paddock's tap.
	ProbeTap(name string) (exists, ours bool, err error)
	// ListOwned lists every link carrying paddock's tag.
	ListOwned(ctx context.Context) ([]Owned, error)
}

// Owner is who may attach to a tap without CAP_NET_ADMIN: the VMM's uid and
// gid. A negative value leaves that id unset. When both are set, the attaching
// process needs both (kernel rule).
type Owner struct {
	UID int
	GID int
}

// NoOwner leaves the tap usable only with CAP_NET_ADMIN. An id, once set on
// a tap, cannot be unset again (kernel rule); it can be changed.
var NoOwner = Owner{UID: -1, GID: -1}

func (o Owner) String() string { return fmt.Sprintf("%d:%d", o.UID, o.GID) }

// Bridge describes paddock's bridge.
type Bridge struct {
	Name    string
	Ifindex int
	MAC     net.HardwareAddr
	// Gateway is the bridge's address with the subnet's prefix length
	// (10.77.0.1/16).
	Gateway netip.Prefix
	MTU     int
	// Created is true when this call created the bridge.
	Created bool
}

// Tap describes a VM's tap.
type Tap struct {
	Name    string
	Ifindex int
	// MAC is the address to give the guest's virtio-net device (GuestMAC).
	MAC net.HardwareAddr
	// HostMAC is the tap's own (host side) address (HostMAC).
	HostMAC net.HardwareAddr
	// Alias is the ownership tag, "paddock:vm:<vmID>".
	Alias string
	VMID  string
	// Bridge is the name of the bridge the tap is attached to.
	Bridge string
	// Adopted is true when the tap already existed (with our tag for this
	// VM) and was adopted instead of created.
	Adopted bool
}

// Kind is the kind of a paddock-owned link.
type Kind string

// Kinds of owned links.
const (
	KindTap     Kind = "tap"
	KindBridge  Kind = "bridge"
	KindUnknown Kind = "unknown" // a "paddock:" tag this version does not know
)

// Owned is a link carrying paddock's tag, as found by ListOwned.
type Owned struct {
	Kind    Kind
	Name    string
	Ifindex int
	// VMID is the VM the tap belongs to (KindTap only).
	VMID  string
	Alias string
	// Type is the kernel link type ("tuntap", "bridge", ...).
	Type string
	// Valid is false when the link carries a paddock tag but is not what the
	// tag claims (a tap tag on a non-tap link or on a link whose name is not
	// TapName(VMID)); ReleaseTap refuses such links, so the sweep should only
	// report them.
	Valid bool
}

// ValidVMID checks that id can be used as a VM id here: 1-64 bytes of ASCII
// letters, digits, '_', '.' and '-' (paddock's own ids are 24 hex digits).
func ValidVMID(id string) error {
	if id == "" || len(id) > maxVMID {
		return fmt.Errorf("%w: %q: must be 1-%d bytes", ErrInvalidVMID, id, maxVMID)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-'
		if !ok {
			return fmt.Errorf("%w: %q: character %q", ErrInvalidVMID, id, c)
		}
	}
	return nil
}

// TapName returns the tap name of a VM: "pdk-" followed by the first 11 bytes
// of its id (15 bytes at most, the kernel's limit). Ids that ValidVMID rejects
// get the first 11 hex digits of their SHA-256 instead, so the result is
// always a valid interface name.
func TapName(vmID string) string {
	const n = maxIfName - len(TapPrefix)
	s := vmID
	if ValidVMID(vmID) != nil {
		sum := sha256.Sum256([]byte(vmID))
		s = fmt.Sprintf("%x", sum[:])
	}
	if len(s) > n {
		s = s[:n]
	}
	return TapPrefix + s
}

// TapAlias returns the ownership tag of a VM's tap.
func TapAlias(vmID string) string { return TapAliasPrefix + vmID }

// ParseAlias parses an ownership tag. ok is false when alias is not paddock's.
// For KindTap, vmID is the VM the tap belongs to.
func ParseAlias(alias string) (kind Kind, vmID string, ok bool) {
	switch {
	case !strings.HasPrefix(alias, AliasPrefix):
		return "", "", false
	case alias == BridgeAlias:
		return KindBridge, "", true
	case strings.HasPrefix(alias, TapAliasPrefix):
		id := alias[len(TapAliasPrefix):]
		if ValidVMID(id) != nil {
			return KindUnknown, "", true
		}
		return KindTap, id, true
	default:
		return KindUnknown, "", true
	}
}

// tapTagFor reports whether alias is the tag of the VM whose tap is called name.
func tapTagFor(alias, name string) (vmID string, ok bool) {
	kind, id, isOurs := ParseAlias(alias)
	if !isOurs || kind != KindTap || TapName(id) != name {
		return "", false
	}
	return id, true
}

// macFrom derives a unicast, locally administered MAC from a domain and key.
func macFrom(domain, key string) net.HardwareAddr {
	sum := sha256.Sum256([]byte(domain + "\x00" + key))
	mac := make(net.HardwareAddr, 6)
	copy(mac, sum[:6])
	mac[0] = mac[0]&^0x01 | 0x02
	return mac
}

// GuestMAC returns the MAC address for the guest side (virtio-net device) of
// a VM: derived from its id, unicast, locally administered.
func GuestMAC(vmID string) net.HardwareAddr { return macFrom("paddock-guest", vmID) }

// HostMAC returns the MAC address of a VM's tap (host side). Its first byte is
// 0xfe (as libvirt does), so it never equals a guest MAC and a bridge without
// a fixed address would never adopt it.
func HostMAC(vmID string) net.HardwareAddr {
	mac := macFrom("paddock-host", vmID)
	mac[0] = 0xfe
	return mac
}

// BridgeMAC returns the fixed MAC address of paddock's bridge of that name.
// A fixed address keeps the bridge's MAC stable as taps come and go, and it
// marks a bridge whose creation was interrupted before it could be tagged.
func BridgeMAC(name string) net.HardwareAddr {
	mac := macFrom("paddock-bridge", name)
	mac[0] = 0x02
	return mac
}

// hash64 is the allocator's hash of a VM id.
func hash64(vmID string) uint64 {
	sum := sha256.Sum256([]byte("paddock-ip\x00" + vmID))
	return binary.BigEndian.Uint64(sum[:8])
}
