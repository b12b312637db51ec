package netdev

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/host/sysctl"
)

const tunDevice = "/dev/net/tun"

// Manager creates, adopts and releases paddock's bridge and taps in one
// network namespace. It is safe for concurrent use; operations are serialised.
type Manager struct {
	cfg   Config
	alloc *Allocator
	ns    netns.NsHandle // target namespace; netns.None(): the caller's own

	mu      sync.Mutex
	h       *netlink.Handle
	tunPath string // /dev/net/tun; tests point it at a node of their own

	// testHookBeforePersist, when set, runs after a new tap is configured and
	// before it is made persistent; an error aborts the creation as a crash
	// at that point would.
	testHookBeforePersist func(name string) error
}

var _ Interface = (*Manager)(nil)

// New returns a Manager for cfg working in the network namespace ns. Pass
// netns.None() for the namespace of the calling process (the daemon); tests
// pass a namespace of their own. The caller keeps ownership of ns, which must
// stay open until Close. Creating taps in a namespace other than the current
// one needs CAP_SYS_ADMIN too (setns to open /dev/net/tun there).
func New(cfg Config, ns netns.NsHandle) (*Manager, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	alloc, err := NewAllocator(cfg.Subnet)
	if err != nil {
		return nil, err
	}
	var h *netlink.Handle
	if ns.IsOpen() {
		h, err = netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	} else {
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	}
	if err != nil {
		return nil, fmt.Errorf("open netlink handle: %w", err)
	}
	return &Manager{cfg: cfg, alloc: alloc, ns: ns, h: h, tunPath: tunDevice}, nil
}

// Close releases the netlink handle. Devices stay.
func (m *Manager) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.h != nil {
		m.h.Close()
		m.h = nil
	}
	return nil
}

// Config returns the effective configuration (defaults applied).
func (m *Manager) Config() Config { return m.cfg }

// Allocator returns the guest address allocator of the configured subnet.
func (m *Manager) Allocator() *Allocator { return m.alloc }

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

// linkByName returns the link called name, or nil if there is none.
func (m *Manager) linkByName(name string) (netlink.Link, error) {
	l, err := m.h.LinkByName(name)
	if isNotFound(err) {
		return nil, nil
	}
	return l, err
}

// EnsureBridge creates the bridge if it does not exist, and makes sure it is
// tagged, has the gateway address (and no other IPv4 address), the configured
// MTU and is up. An existing link of that name that is not paddock's bridge is
// ErrNotOurs; a subnet overlapping another link's address is ErrSubnetConflict.
func (m *Manager) EnsureBridge(ctx context.Context) (*Bridge, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.h == nil {
		return nil, ErrClosed
	}
	return m.ensureBridge()
}

func (m *Manager) ensureBridge() (*Bridge, error) {
	name := m.cfg.Bridge
	wantMAC := BridgeMAC(name)
	created := false
	link, err := m.linkByName(name)
	if err != nil {
		return nil, fmt.Errorf("look up bridge %s: %w", name, err)
	}
	if link == nil {
		if err := m.checkSubnet(0); err != nil {
			return nil, err
		}
		attrs := netlink.NewLinkAttrs()
		attrs.Name = name
		attrs.HardwareAddr = wantMAC
		if m.cfg.MTU > 0 {
			attrs.MTU = m.cfg.MTU
		}
		err := m.h.LinkAdd(&netlink.Bridge{LinkAttrs: attrs})
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("create bridge %s: %w", name, err)
		}
		created = err == nil
		if link, err = m.h.LinkByName(name); err != nil {
			return nil, fmt.Errorf("look up bridge %s: %w", name, err)
		}
	}
	a := link.Attrs()
	if link.Type() != "bridge" {
		return nil, fmt.Errorf("bridge %s: a %s link of that name exists: %w", name, link.Type(), ErrNotOurs)
	}
	switch {
	case a.Alias == BridgeAlias:
	case a.Alias == "" && bytes.Equal(a.HardwareAddr, wantMAC):
		// Created by us, interrupted before it was tagged: adopt.
	default:
		return nil, fmt.Errorf("bridge %s (alias %q, mac %s): %w", name, a.Alias, a.HardwareAddr, ErrNotOurs)
	}
	if a.Alias != BridgeAlias {
		if err := m.h.LinkSetAlias(link, BridgeAlias); err != nil {
			return nil, fmt.Errorf("tag bridge %s: %w", name, err)
		}
	}
	if !created {
		if err := m.checkSubnet(a.Index); err != nil {
			return nil, err
		}
	}
	if m.cfg.MTU > 0 && a.MTU != m.cfg.MTU {
		if err := m.h.LinkSetMTU(link, m.cfg.MTU); err != nil {
			return nil, fmt.Errorf("set mtu of bridge %s: %w", name, err)
		}
	}
	gw := m.alloc.GatewayPrefix()
	addrs, err := m.h.AddrList(link, netlink.FAMILY_V4)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, fmt.Errorf("list addresses of bridge %s: %w", name, err)
	}
	have := false
	for _, ad := range addrs {
		p, ok := prefixOf(ad.IPNet)
		switch {
		case ok && p == gw:
			have = true
		case ok:
			// A stale address (the subnet was changed): the bridge is ours.
			if err := m.h.AddrDel(link, &ad); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
				return nil, fmt.Errorf("remove stale address %v from bridge %s: %w", p, name, err)
			}
		}
	}
	if !have {
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: gw.Addr().AsSlice(), Mask: net.CIDRMask(gw.Bits(), 32)}}
		if err := m.h.AddrReplace(link, addr); err != nil {
			return nil, fmt.Errorf("add address %v to bridge %s: %w", gw, name, err)
		}
	}
	if a.Flags&net.FlagUp == 0 {
		if err := m.h.LinkSetUp(link); err != nil {
			return nil, fmt.Errorf("set bridge %s up: %w", name, err)
		}
	}
	for _, sc := range bridgeSysctls {
		if _, _, err := sysctl.Ensure(m.ns, "net/ipv4/conf/"+name+"/"+sc.key, sc.value); err != nil {
			return nil, fmt.Errorf("bridge %s: %w", name, err)
		}
	}
	mtu := a.MTU
	if m.cfg.MTU > 0 {
		mtu = m.cfg.MTU
	}
	return &Bridge{Name: name, Ifindex: a.Index, MAC: a.HardwareAddr, Gateway: gw, MTU: mtu, Created: created}, nil
}

// bridgeSysctls are the bridge's IPv4 settings isolation relies on (see the
// package documentation).
var bridgeSysctls = []struct{ key, value string }{
	{"proxy_arp_pvlan", "1"},
	{"send_redirects", "0"},
	{"route_localnet", "1"},
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	ip, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(ip.Unmap(), ones), true
}

// checkSubnet fails when an IPv4 address on a link other than skipIndex
// overlaps the guest subnet.
func (m *Manager) checkSubnet(skipIndex int) error {
	addrs, err := m.h.AddrList(nil, netlink.FAMILY_V4)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return fmt.Errorf("list addresses: %w", err)
	}
	for _, ad := range addrs {
		if ad.LinkIndex == skipIndex && skipIndex != 0 {
			continue
		}
		if p, ok := prefixOf(ad.IPNet); ok && p.Overlaps(m.cfg.Subnet) {
			return fmt.Errorf("subnet %v overlaps %v on link index %d: %w", m.cfg.Subnet, p, ad.LinkIndex, ErrSubnetConflict)
		}
	}
	return nil
}

// AcquireTap returns the tap of vmID, creating it if needed: a persistent
// tap (single queue, vnet_hdr) named TapName(vmID), owned by owner, tagged
// "paddock:vm:<vmID>", with MAC HostMAC(vmID), attached to the bridge (created
// on demand) and up. If the tap already exists with this VM's tag it is
// adopted and repaired (bridge, MTU, up, owner). If the name is used by any
// other link the result is ErrNameTaken.
func (m *Manager) AcquireTap(ctx context.Context, vmID string, owner Owner) (*Tap, error) {
	if err := ValidVMID(vmID); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.h == nil {
		return nil, ErrClosed
	}
	br, err := m.ensureBridge()
	if err != nil {
		return nil, err
	}
	name := TapName(vmID)
	tap := &Tap{Name: name, MAC: GuestMAC(vmID), HostMAC: HostMAC(vmID), Alias: TapAlias(vmID), VMID: vmID, Bridge: br.Name}
	for attempt := 0; ; attempt++ {
		link, err := m.linkByName(name)
		if err != nil {
			return nil, fmt.Errorf("look up tap %s: %w", name, err)
		}
		if link != nil {
			if err := m.adoptTap(link, tap, br, owner); err != nil {
				return nil, err
			}
			return tap, nil
		}
		err = m.createTap(tap, br, owner)
		if errors.Is(err, unix.EBUSY) && attempt == 0 {
			continue // appeared meanwhile: look again
		}
		if err != nil {
			return nil, err
		}
		return tap, nil
	}
}

func (m *Manager) adoptTap(link netlink.Link, tap *Tap, br *Bridge, owner Owner) error {
	a := link.Attrs()
	tt, isTun := link.(*netlink.Tuntap)
	if a.Alias != tap.Alias || !isTun || tt.Mode != netlink.TUNTAP_MODE_TAP {
		return fmt.Errorf("tap %s for VM %s: a %s link with alias %q exists: %w", tap.Name, tap.VMID, link.Type(), a.Alias, ErrNameTaken)
	}
	tap.Ifindex = a.Index
	tap.Adopted = true
	if ownerDiffers(tt, owner) {
		if err := m.setTapOwner(tap.Name, owner); err != nil {
			return err
		}
	}
	return m.configureTap(link, tap, br)
}

// ownerDiffers compares the requested owner with the one the kernel reports.
// Only requested ids count: the kernel cannot unset an id once set, and
// netlink reports an unset id as 0, like root.
func ownerDiffers(tt *netlink.Tuntap, o Owner) bool {
	return o.UID >= 0 && tt.Owner != uint32(o.UID) || o.GID >= 0 && tt.Group != uint32(o.GID)
}

// configureTap sets alias, MAC, MTU, master and up where they differ.
func (m *Manager) configureTap(link netlink.Link, tap *Tap, br *Bridge) error {
	a := link.Attrs()
	if a.Alias != tap.Alias {
		if err := m.h.LinkSetAlias(link, tap.Alias); err != nil {
			return fmt.Errorf("tag tap %s: %w", tap.Name, err)
		}
	}
	if !bytes.Equal(a.HardwareAddr, tap.HostMAC) {
		if err := m.h.LinkSetHardwareAddr(link, tap.HostMAC); err != nil {
			return fmt.Errorf("set mac of tap %s: %w", tap.Name, err)
		}
	}
	if m.cfg.MTU > 0 && a.MTU != m.cfg.MTU {
		if err := m.h.LinkSetMTU(link, m.cfg.MTU); err != nil {
			return fmt.Errorf("set mtu of tap %s: %w", tap.Name, err)
		}
	}
	if a.MasterIndex != br.Ifindex {
		if err := m.h.LinkSetMasterByIndex(link, br.Ifindex); err != nil {
			return fmt.Errorf("attach tap %s to bridge %s: %w", tap.Name, br.Name, err)
		}
	}
	// Isolated: the bridge forwards nothing between taps. Set every time
	// (the flag is not in a plain link dump); setting it again is harmless.
	if err := m.h.LinkSetIsolated(link, true); err != nil {
		return fmt.Errorf("isolate bridge port %s: %w", tap.Name, err)
	}
	if a.Flags&net.FlagUp == 0 {
		if err := m.h.LinkSetUp(link); err != nil {
			return fmt.Errorf("set tap %s up: %w", tap.Name, err)
		}
	}
	return nil
}

// createTap creates the tap non-persistent, configures it and only then makes
// it persistent, so a crash at any earlier point leaves nothing behind.
func (m *Manager) createTap(tap *Tap, br *Bridge, owner Owner) error {
	fd, err := m.openTun()
	if err != nil {
		return fmt.Errorf("create tap %s: open %s: %w", tap.Name, m.tunPath, err)
	}
	defer unix.Close(fd) // a non-persistent tap disappears with it
	ifr, err := unix.NewIfreq(tap.Name)
	if err != nil {
		return fmt.Errorf("create tap %s: %w", tap.Name, err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR | unix.IFF_TUN_EXCL)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return fmt.Errorf("create tap %s: TUNSETIFF: %w", tap.Name, err)
	}
	if err := setOwner(fd, owner); err != nil {
		return fmt.Errorf("create tap %s: %w", tap.Name, err)
	}
	link, err := m.h.LinkByName(tap.Name)
	if err != nil {
		return fmt.Errorf("create tap %s: look up: %w", tap.Name, err)
	}
	tap.Ifindex = link.Attrs().Index
	if err := m.configureTap(link, tap, br); err != nil {
		return fmt.Errorf("create %w", err)
	}
	if m.testHookBeforePersist != nil {
		if err := m.testHookBeforePersist(tap.Name); err != nil {
			return fmt.Errorf("create tap %s: %w", tap.Name, err)
		}
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
		return fmt.Errorf("create tap %s: TUNSETPERSIST: %w", tap.Name, err)
	}
	return nil
}

// setOwner sets the ids of o that are not negative (the kernel cannot unset one).
func setOwner(fd int, o Owner) error {
	if o.UID >= 0 {
		if err := unix.IoctlSetInt(fd, unix.TUNSETOWNER, o.UID); err != nil {
			return fmt.Errorf("TUNSETOWNER %d: %w", o.UID, err)
		}
	}
	if o.GID >= 0 {
		if err := unix.IoctlSetInt(fd, unix.TUNSETGROUP, o.GID); err != nil {
			return fmt.Errorf("TUNSETGROUP %d: %w", o.GID, err)
		}
	}
	return nil
}

// setTapOwner re-attaches to an existing persistent tap to change its owner.
// It fails with EBUSY while a VMM has the tap open.
func (m *Manager) setTapOwner(name string, owner Owner) error {
	fd, err := m.openTun()
	if err != nil {
		return fmt.Errorf("set owner of tap %s: open %s: %w", name, m.tunPath, err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return fmt.Errorf("set owner of tap %s: attach: %w", name, err)
	}
	if err := setOwner(fd, owner); err != nil {
		return fmt.Errorf("set owner of tap %s: %w", name, err)
	}
	return nil
}

// openTun opens /dev/net/tun in the target namespace: a tun device is created
// in the namespace of the task that opened the descriptor.
func (m *Manager) openTun() (int, error) {
	open := func() (int, error) { return unix.Open(m.tunPath, unix.O_RDWR|unix.O_CLOEXEC, 0) }
	if !m.ns.IsOpen() {
		return open()
	}
	type result struct {
		fd  int
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{-1, fmt.Errorf("get current netns: %w", err)}
			return
		}
		defer orig.Close()
		if err := netns.Set(m.ns); err != nil {
			runtime.UnlockOSThread()
			ch <- result{-1, fmt.Errorf("enter netns: %w", err)}
			return
		}
		fd, err := open()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		} // else the thread stays locked and is discarded when this goroutine ends
		ch <- result{fd, err}
	}()
	r := <-ch
	return r.fd, r.err
}

// ReleaseTap deletes the tap called name (or, when name is empty, the link
// with index ifindex). A missing link is success. A link that is not a tap
// tagged for the VM its name belongs to is refused with ErrNotOurs and left
// alone. When both are given and the tap's index differs from ifindex (it was
// re-created since ifindex was recorded) the tap is still the VM's and is
// deleted. Release does not give up on a cancelled ctx: callers tear down
// under context.WithoutCancel anyway, and the work is a few netlink calls.
func (m *Manager) ReleaseTap(_ context.Context, name string, ifindex int) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.h == nil {
		return ErrClosed
	}
	var link netlink.Link
	var err error
	switch {
	case name != "":
		link, err = m.linkByName(name)
	case ifindex > 0:
		link, err = m.h.LinkByIndex(ifindex)
		if isNotFound(err) {
			link, err = nil, nil
		}
	default:
		return fmt.Errorf("release tap: no name or ifindex")
	}
	if err != nil {
		return fmt.Errorf("release tap %s (ifindex %d): look up: %w", name, ifindex, err)
	}
	if link == nil {
		return nil
	}
	a := link.Attrs()
	if !isOurTap(link) {
		return fmt.Errorf("release tap %s: %s link with alias %q: %w", a.Name, link.Type(), a.Alias, ErrNotOurs)
	}
	// Delete by index: a link re-created under the same name meanwhile gets
	// a new index and is not touched.
	if err := m.h.LinkDel(&netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Index: a.Index}}); err != nil && !isNotFound(err) {
		return fmt.Errorf("release tap %s: delete: %w", a.Name, err)
	}
	return nil
}

// isOurTap reports whether link is a tap tagged for the VM its name belongs to.
func isOurTap(link netlink.Link) bool {
	tt, ok := link.(*netlink.Tuntap)
	if !ok || tt.Mode != netlink.TUNTAP_MODE_TAP {
		return false
	}
	_, ok = tapTagFor(link.Attrs().Alias, link.Attrs().Name)
	return ok
}

// ProbeTap reports whether a link called name exists and whether it is
// paddock's tap (a tap tagged for the VM its name belongs to).
func (m *Manager) ProbeTap(name string) (exists, ours bool, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.h == nil {
		return false, false, ErrClosed
	}
	link, err := m.linkByName(name)
	if err != nil {
		return false, false, fmt.Errorf("probe tap %s: %w", name, err)
	}
	if link == nil {
		return false, false, nil
	}
	return true, isOurTap(link), nil
}

// ListOwned returns every link carrying a "paddock:" tag, in the kernel's
// order. The orphan sweep releases the KindTap entries
// whose VMID is not a known VM (and that are Valid); the bridge is listed too.
func (m *Manager) ListOwned(ctx context.Context) ([]Owned, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.h == nil {
		return nil, ErrClosed
	}
	var links []netlink.Link
	var err error
	for range 5 {
		links, err = m.h.LinkList()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []Owned
	for _, l := range links {
		a := l.Attrs()
		kind, id, ok := ParseAlias(a.Alias)
		if !ok {
			continue
		}
		o := Owned{Kind: kind, Name: a.Name, Ifindex: a.Index, VMID: id, Alias: a.Alias, Type: l.Type()}
		switch kind {
		case KindTap:
			o.Valid = isOurTap(l)
		case KindBridge:
			o.Valid = l.Type() == "bridge"
		}
		out = append(out, o)
	}
	return out, nil
}

// ReleaseBridge deletes paddock's bridge called name (Config.Bridge when
// empty) — for uninstalling, or for a bridge left behind by a renamed
// configuration. Missing is success; a link that is not paddock's bridge is
// ErrNotOurs; a bridge that still has ports is ErrBridgeBusy.
func (m *Manager) ReleaseBridge(_ context.Context, name string) error {
	if name == "" {
		name = m.cfg.Bridge
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.h == nil {
		return ErrClosed
	}
	link, err := m.linkByName(name)
	if err != nil {
		return fmt.Errorf("release bridge %s: look up: %w", name, err)
	}
	if link == nil {
		return nil
	}
	a := link.Attrs()
	ours := a.Alias == BridgeAlias || (a.Alias == "" && bytes.Equal(a.HardwareAddr, BridgeMAC(name)))
	if link.Type() != "bridge" || !ours {
		return fmt.Errorf("release bridge %s: %s link with alias %q: %w", name, link.Type(), a.Alias, ErrNotOurs)
	}
	links, err := m.h.LinkList()
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return fmt.Errorf("release bridge %s: list links: %w", name, err)
	}
	for _, l := range links {
		if l.Attrs().MasterIndex == a.Index {
			return fmt.Errorf("release bridge %s: port %s: %w", name, l.Attrs().Name, ErrBridgeBusy)
		}
	}
	if err := m.h.LinkDel(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Index: a.Index}}); err != nil && !isNotFound(err) {
		return fmt.Errorf("release bridge %s: delete: %w", name, err)
	}
	return nil
}
