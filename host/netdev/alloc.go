package netdev

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
)

// Allocator hands out static guest addresses from an IPv4 subnet. It holds no
// state: the caller persists each VM's address (in vm.json) and passes the set
// of addresses in use to Allocate.
//
// In a subnet N/L the network address N, the gateway N+1 (the bridge) and the
// broadcast address are never handed out; the guest range is N+2 .. bcast-1.
type Allocator struct {
	subnet netip.Prefix
	first  uint32 // first guest address
	size   uint32 // number of guest addresses
}

// NewAllocator returns an allocator over subnet, which must be IPv4 with a
// prefix length of 8..30 (a /30 has room for one guest).
func NewAllocator(subnet netip.Prefix) (*Allocator, error) {
	if !subnet.IsValid() || !subnet.Addr().Is4() {
		return nil, fmt.Errorf("%w: subnet %v: must be IPv4", ErrInvalidConfig, subnet)
	}
	if b := subnet.Bits(); b < 8 || b > 30 {
		return nil, fmt.Errorf("%w: subnet %v: prefix length must be 8..30", ErrInvalidConfig, subnet)
	}
	subnet = subnet.Masked()
	n := u32(subnet.Addr())
	return &Allocator{subnet: subnet, first: n + 2, size: uint32(1)<<(32-subnet.Bits()) - 3}, nil
}

func u32(a netip.Addr) uint32 { b := a.As4(); return binary.BigEndian.Uint32(b[:]) }

func addr4(v uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// Subnet returns the (masked) guest subnet.
func (a *Allocator) Subnet() netip.Prefix { return a.subnet }

// Gateway returns the gateway address: the subnet's first host, held by the bridge.
func (a *Allocator) Gateway() netip.Addr { return addr4(u32(a.subnet.Addr()) + 1) }

// GatewayPrefix returns the gateway with the subnet's prefix length, the
// address to put on the bridge (10.77.0.1/16).
func (a *Allocator) GatewayPrefix() netip.Prefix {
	return netip.PrefixFrom(a.Gateway(), a.subnet.Bits())
}

// Size returns how many guest addresses the subnet holds.
func (a *Allocator) Size() int { return int(a.size) }

// Usable reports whether addr may be given to a guest: inside the subnet and
// neither the network, the gateway nor the broadcast address.
func (a *Allocator) Usable(addr netip.Addr) bool {
	if !addr.Is4() || !a.subnet.Contains(addr) {
		return false
	}
	v := u32(addr)
	return v >= a.first && v < a.first+a.size
}

// Allocate returns the address for vmID: the guest address picked by a hash
// of the id, or if that one is taken the next free one after it (wrapping
// around), so a VM tends to get the same address every time it is
// (re)allocated. taken holds the addresses of all other VMs; addresses in it
// outside the guest range are ignored. ErrExhausted when none is free.
func (a *Allocator) Allocate(vmID string, taken map[netip.Addr]bool) (netip.Addr, error) {
	if err := ValidVMID(vmID); err != nil {
		return netip.Addr{}, err
	}
	start := uint32(hash64(vmID) % uint64(a.size))
	for i := uint32(0); i < a.size; i++ {
		addr := addr4(a.first + (start+i)%a.size)
		if !taken[addr] {
			return addr, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("allocate address for VM %s in %v (%d addresses): %w", vmID, a.subnet, a.size, ErrExhausted)
}

// Guest returns the guest network settings for addr; mtu 0 means the kernel
// default (no paddock.mtu argument).
func (a *Allocator) Guest(addr netip.Addr, mtu int) (GuestNet, error) {
	if !a.Usable(addr) {
		return GuestNet{}, fmt.Errorf("%w: %v is not a guest address of %v", ErrInvalidConfig, addr, a.subnet)
	}
	return GuestNet{Addr: netip.PrefixFrom(addr, a.subnet.Bits()), Gateway: a.Gateway(), MTU: mtu}, nil
}

// GuestNet is a guest's network configuration, passed on its kernel command
// line and read by paddock-agent.
type GuestNet struct {
	Addr    netip.Prefix // 10.77.4.2/16
	Gateway netip.Addr   // 10.77.0.1
	MTU     int          // 0: kernel default
}

// KernelArgs returns the kernel command line arguments paddock-agent reads:
// paddock.ip=ADDR/LEN, paddock.gw=GW and, when MTU is set, paddock.mtu=N.
func (g GuestNet) KernelArgs() []string {
	args := []string{"paddock.ip=" + g.Addr.String(), "paddock.gw=" + g.Gateway.String()}
	if g.MTU > 0 {
		args = append(args, "paddock.mtu="+strconv.Itoa(g.MTU))
	}
	return args
}
