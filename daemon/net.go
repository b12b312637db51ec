package daemon

import (
	"context"
	"log/slog"
	"net/netip"

	"github.com/paddock-vm/paddock/actors"
	"github.com/paddock-vm/paddock/config"
	"github.com/paddock-vm/paddock/host/netfilter"
	"github.com/paddock-vm/paddock/host/passt"
	"github.com/paddock-vm/paddock/host/portcheck"
	"github.com/paddock-vm/paddock/host/resolvconf"
	"github.com/paddock-vm/paddock/netspec"
	"github.com/vishvananda/netns"
)

// guestDNS is the guests' nameservers: vm.dns, else the host's upstream
// ones (resolvconf.HostNameservers), read once at start-up and logged with
// where they came from. None is logged as a warning, not fatal: guests
// then resolve nothing by name.
func guestDNS(log *slog.Logger, cfg *config.Config) []netip.Addr {
	ns, err := cfg.VM.Nameservers()
	if err == nil && len(ns) > 0 {
		log.Info("guest nameservers", "dns", ns, "from", "vm.dns")
		return ns
	}
	ns, from, err := resolvconf.HostNameservers(resolvconf.SystemFile, resolvconf.ResolvedFile)
	switch {
	case err != nil:
		log.Warn("guests get no nameserver: the host's resolver configuration is unreadable (set vm.dns)", "err", err)
	case len(ns) == 0:
		log.Warn("guests get no nameserver: the host lists none a guest can reach (set vm.dns)", "file", from)
	default:
		log.Info("guest nameservers", "dns", ns, "from", from)
	}
	return ns
}

// netFacts is what a VM's ports and network are checked against on create
// and set: the addresses of paddockd's own network namespace, the
// unprivileged port floor, and the networks offered (bridge when it is the
// configured default, user always: passt needs no capability).
func netFacts(cfg *config.Config) actors.NetFacts {
	networks := []string{netspec.User}
	if cfg.VM.Network == "bridge" {
		networks = append(networks, netspec.Bridge)
	}
	return func(admin bool) (netspec.Facts, error) {
		return netspec.HostFacts(admin, networks)
	}
}

// packetRules sets up paddock's nftables tables for bridge mode (NAT,
// isolation, the gateway's services) and gives VMs their per-VM rules.
// When they cannot be made, bridged VMs do not start, naming why: a
// guest without its rules could reach and spoof every other one.
func (d *Daemon) packetRules(ctx context.Context, log *slog.Logger, cfg *config.Config, h *actors.Host) {
	access, _ := cfg.VM.HostAccessRules() // validated with the config
	nf, err := netfilter.New(netfilter.Config{Bridge: cfg.VM.Bridge, Subnet: h.Alloc.Subnet(), Gateway: h.Alloc.Gateway(),
		NAT: cfg.VM.NAT == "on", HostAccess: access}, netns.None())
	var res netfilter.BaseResult
	if err == nil {
		res, err = nf.EnsureBase(ctx)
	}
	if err != nil {
		h.RulesErr = err
		log.Error("packet rules unavailable: VMs on the bridge will not start", "err", err)
		return
	}
	if res.ForwardingEnabled {
		log.Info("enabled IPv4 forwarding (net.ipv4.ip_forward = 1) so bridged VMs reach beyond the host", "nat", cfg.VM.NAT)
	}
	h.Rules = nf
	h.CheckPorts = checkHostPorts
}

// checkHostPorts refuses a bridged VM's published port that a listener on
// the host holds: the DNAT would take its traffic.
func checkHostPorts(ctx context.Context, vm netfilter.VM) error {
	var c portcheck.Checker
	for _, p := range vm.Ports {
		if err := c.Check(ctx, p); err != nil {
			return err
		}
	}
	return nil
}

// userNetworks offers user-mode networking when passt is installed; its
// absence is said once here, and again by each start that needs it.
func (d *Daemon) userNetworks(log *slog.Logger, cfg *config.Config, h *actors.Host) {
	if err := passt.Check(passt.DefaultBinary); err != nil {
		h.PasstErr = err
		if cfg.VM.Network == "user" {
			log.Error("user-mode networking unavailable: VMs will not start", "err", err)
		} else {
			log.Info("user-mode networking unavailable", "err", err)
		}
		return
	}
	h.Passt = passt.Runner{}
	owner := d.owner
	h.FindPassts = func() ([]passt.Found, error) { return passt.Find(owner) }
}
