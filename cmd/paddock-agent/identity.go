package main

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/agent"
	"github.com/paddock-vm/paddock/guestboot"
)

// A guest resumed from a template snapshot is, until the identity step,
// a copy of the template's guest: its clock stopped when the snapshot was
// taken, its entropy pool and CRNG state the same as every other clone's,
// its MAC, address and hostname the template's. The step gives it its own,
// in an order where each part can rely on the ones before it (the clock
// before anything logs or stamps; the CRNG before anything draws from it;
// the network before the entrypoint), and only then starts the entrypoint.

// identitySys is what the identity step changes in the guest: the kernel
// in the agent, a recorder in tests.
type identitySys interface {
	SetClock(unixNS int64) error
	Reseed(seed []byte) error
	SetHostname(name string) error
	Readdress(cfg *guestboot.BootArgs, mac net.HardwareAddr) error
	WriteEtc(cfg *guestboot.BootArgs) error
}

// identityPlan is a checked IdentityRequest.
type identityPlan struct {
	req   agent.IdentityRequest
	mac   net.HardwareAddr
	net   guestboot.BootArgs // the boot's, with the new hostname and addresses
	image *imageConfig
}

// planIdentity checks req against the boot's settings; nothing is changed.
func planIdentity(req agent.IdentityRequest, boot *guestboot.BootArgs) (*identityPlan, error) {
	p := &identityPlan{req: req, net: *boot}
	if n := len(req.Seed); n < agent.MinIdentitySeed || n > agent.MaxIdentitySeed {
		return nil, fmt.Errorf("seed of %d bytes (want %d to %d)", n, agent.MinIdentitySeed, agent.MaxIdentitySeed)
	}
	if req.TimeNS <= 0 {
		return nil, errors.New("no time to set the clock to")
	}
	if req.Hostname == "" || len(req.Hostname) > 64 {
		return nil, fmt.Errorf("hostname %q: want 1 to 64 bytes", req.Hostname)
	}
	p.net.Hostname = req.Hostname
	if req.MAC != "" {
		mac, err := net.ParseMAC(req.MAC)
		if err != nil || len(mac) != 6 || mac[0]&1 != 0 {
			return nil, fmt.Errorf("MAC %q: not a unicast Ethernet address", req.MAC)
		}
		p.mac = mac
	}
	p.net.IPs, p.net.Gateways, p.net.DNS = nil, nil, nil
	for _, s := range req.IPs {
		a, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("address %q: %w", s, err)
		}
		p.net.IPs = append(p.net.IPs, a)
	}
	for _, s := range req.Gateways {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("gateway %q: %w", s, err)
		}
		p.net.Gateways = append(p.net.Gateways, a)
	}
	for _, s := range req.DNS {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("DNS server %q: %w", s, err)
		}
		p.net.DNS = append(p.net.DNS, a)
	}
	if len(req.Config) > 0 {
		c, err := parseImageConfig(req.Config)
		if err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		if len(c.Mounts) > 0 {
			return nil, errors.New("config: a VM resumed from a template has no volumes to mount")
		}
		p.image = c
	}
	return p, nil
}

// identityStep is one part of the identity step, in order.
type identityStep struct {
	name string
	do   func(sys identitySys, p *identityPlan) error
	// beside: the step runs at the same time as the next one, both done
	// before the step after (they touch different things; under TCG each
	// costs tens of ms of a resume).
	beside bool
}

var identitySteps = []identityStep{
	{name: "clock", do: func(sys identitySys, p *identityPlan) error { return sys.SetClock(p.req.TimeNS) }},
	{name: "entropy", do: func(sys identitySys, p *identityPlan) error { return sys.Reseed(p.req.Seed) }},
	{name: "hostname", do: func(sys identitySys, p *identityPlan) error { return sys.SetHostname(p.net.Hostname) }},
	{name: "network", do: func(sys identitySys, p *identityPlan) error { return sys.Readdress(&p.net, p.mac) }, beside: true},
	{name: "etc", do: func(sys identitySys, p *identityPlan) error { return sys.WriteEtc(&p.net) }},
}

// runIdentitySteps runs steps in order (a step marked beside together with
// the next), each timed as a phase; the first failure, by step order, ends
// it.
func runIdentitySteps(steps []identityStep, sys identitySys, p *identityPlan) ([]agent.Phase, error) {
	var phases []agent.Phase
	run := func(st identityStep) (agent.Phase, error) {
		ph := agent.Phase{Name: "identity_" + st.name, StartNS: agent.BootTimeNS()}
		err := st.do(sys, p)
		ph.EndNS = agent.BootTimeNS()
		if err != nil {
			err = fmt.Errorf("%s: %w", st.name, err)
		}
		return ph, err
	}
	for i := 0; i < len(steps); i++ {
		group := steps[i : i+1]
		if steps[i].beside && i+1 < len(steps) {
			group = steps[i : i+2]
			i++
		}
		phs, errs := make([]agent.Phase, len(group)), make([]error, len(group))
		var wg sync.WaitGroup
		for j := range group[1:] {
			wg.Add(1)
			go func() {
				defer wg.Done()
				phs[j+1], errs[j+1] = run(group[j+1])
			}()
		}
		phs[0], errs[0] = run(group[0])
		wg.Wait()
		phases = append(phases, phs...)
		for _, err := range errs {
			if err != nil {
				return phases, err
			}
		}
	}
	return phases, nil
}

// identity applies req once, in a guest booted as a template, then starts
// the VM's entrypoint. A failed step fails the whole (the host then stops
// the VM: a half-identified clone must not run).
func (s *initState) identity(req agent.IdentityRequest) (agent.IdentityReply, error) {
	s.mu.Lock()
	switch {
	case s.identified:
		s.mu.Unlock()
		return agent.IdentityReply{}, errors.New("this guest has its identity already")
	case s.image == nil || !s.image.Template:
		s.mu.Unlock()
		return agent.IdentityReply{}, errors.New("this guest was not booted as a template")
	}
	s.identified = true
	boot := *s.cfg
	s.mu.Unlock()
	p, err := planIdentity(req, &boot)
	if err != nil {
		return agent.IdentityReply{}, err
	}
	var r agent.IdentityReply
	if r.Phases, err = runIdentitySteps(identitySteps, s.sys, p); err != nil {
		return r, err
	}
	s.mu.Lock()
	next := p.net
	s.cfg = &next
	if p.image != nil {
		s.image = p.image
	}
	img := s.image
	s.mu.Unlock()
	s.spawner.SetDefaultUser(img.user())
	if len(img.argv()) > 0 {
		m := newMainProc(s)
		s.mu.Lock()
		s.main = m
		s.mu.Unlock()
		m.start()
	}
	return r, nil
}

// kernelIdentity is identitySys on the guest's kernel.
type kernelIdentity struct{}

func (kernelIdentity) SetClock(unixNS int64) error {
	ts := unix.NsecToTimespec(unixNS)
	return unix.ClockSettime(unix.CLOCK_REALTIME, &ts)
}

// Reseed credits seed to the input pool (RNDADDENTROPY, as rngd does) and
// forces a CRNG reseed from it (RNDRESEEDCRNG), so what /dev/urandom and
// getrandom give from now on differs between clones.
func (kernelIdentity) Reseed(seed []byte) error {
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	buf := make([]byte, 8+len(seed))
	*(*int32)(unsafe.Pointer(&buf[0])) = int32(len(seed) * 8)
	*(*int32)(unsafe.Pointer(&buf[4])) = int32(len(seed))
	copy(buf[8:], seed)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&buf[0]))); e != 0 {
		return fmt.Errorf("RNDADDENTROPY: %w", e)
	}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDRESEEDCRNG, 0); e != 0 {
		return fmt.Errorf("RNDRESEEDCRNG: %w", e)
	}
	return nil
}

func (kernelIdentity) SetHostname(name string) error { return unix.Sethostname([]byte(name)) }

// Readdress gives the interface its MAC, drops the template's addresses
// and routes on it, and configures the VM's as at boot.
func (kernelIdentity) Readdress(cfg *guestboot.BootArgs, mac net.HardwareAddr) error {
	if len(cfg.IPs) == 0 && mac == nil && cfg.IfName != "" {
		// No device and none asked for, seen without netlink: a netlink
		// lookup was 25-90 ms of a resumed TCG guest's identity step.
		if _, err := os.Lstat(filepath.Join("/sys/class/net", cfg.IfName)); errors.Is(err, fs.ErrNotExist) {
			return nil
		}
	}
	link, err := netlink.LinkByName(cfg.IfName)
	if err != nil {
		if len(cfg.IPs) == 0 && mac == nil {
			return nil // no network device, none asked for
		}
		return fmt.Errorf("%s: %w", cfg.IfName, err)
	}
	if mac != nil {
		if err := netlink.LinkSetHardwareAddr(link, mac); err != nil {
			// A driver without live address change wants the link down.
			if derr := netlink.LinkSetDown(link); derr != nil {
				return fmt.Errorf("%s MAC %s: %w", cfg.IfName, mac, err)
			}
			if err := netlink.LinkSetHardwareAddr(link, mac); err != nil {
				return fmt.Errorf("%s MAC %s: %w", cfg.IfName, mac, err)
			}
		}
	}
	routes, err := dumpRetried(func() ([]netlink.Route, error) { return netlink.RouteList(link, netlink.FAMILY_ALL) })
	if err != nil {
		return fmt.Errorf("%s routes: %w", cfg.IfName, err)
	}
	for _, r := range routes {
		if r.Protocol != unix.RTPROT_KERNEL {
			_ = netlink.RouteDel(&r)
		}
	}
	addrs, err := dumpRetried(func() ([]netlink.Addr, error) { return netlink.AddrList(link, netlink.FAMILY_ALL) })
	if err != nil {
		return fmt.Errorf("%s addresses: %w", cfg.IfName, err)
	}
	for _, a := range addrs {
		if a.IP.IsLinkLocalUnicast() {
			continue
		}
		if err := netlink.AddrDel(link, &a); err != nil {
			return fmt.Errorf("%s drop %s: %w", cfg.IfName, a.IPNet, err)
		}
	}
	return setupNetwork(cfg)
}

// dumpRetried runs a netlink dump again while the kernel says it was
// interrupted (NLM_F_DUMP_INTR: the table changed meanwhile, as the MAC
// change just made IPv6 renew the link's addresses): a partial list
// would leave the template's addresses or routes behind.
func dumpRetried[T any](dump func() ([]T, error)) ([]T, error) {
	for i := 0; ; i++ {
		out, err := dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) || i == 19 {
			return out, err
		}
		time.Sleep(time.Duration(i+1) * time.Millisecond)
	}
}

func (kernelIdentity) WriteEtc(cfg *guestboot.BootArgs) error {
	if cfg.NoEtc {
		return nil
	}
	return writeEtc(cfg)
}
