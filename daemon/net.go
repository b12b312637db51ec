package daemon

import (
	"log/slog"
	"net/netip"

	"github.com/paddock-vm/paddock/actors"
	"github.com/paddock-vm/paddock/config"
	"github.com/paddock-vm/paddock/host/resolvconf"
	"github.com/paddock-vm/paddock/netspec"
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
