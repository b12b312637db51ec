package config

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/paddock-vm/paddock/netspec"
)

// MaxNameservers is how many nameservers a resolv.conf may usefully list:
// the C library reads the first three (MAXNS).
const MaxNameservers = 3

// Nameservers reads vm.dns: at most MaxNameservers addresses a guest can
// reach (none loopback or unspecified). Empty means the host's (HostDNS).
func (v VM) Nameservers() ([]netip.Addr, error) {
	if len(v.DNS) > MaxNameservers {
		return nil, fmt.Errorf("%d nameservers: a guest's resolver reads at most %d", len(v.DNS), MaxNameservers)
	}
	out := make([]netip.Addr, 0, len(v.DNS))
	for _, s := range v.DNS {
		a, err := netip.ParseAddr(s)
		switch {
		case err != nil || a.Zone() != "":
			return nil, fmt.Errorf("%q is not an IP address", s)
		case a.IsLoopback() || a.IsUnspecified():
			return nil, fmt.Errorf("%s is not reachable from a guest (a loopback or unspecified address); give the upstream nameservers", a)
		}
		out = append(out, a.Unmap())
	}
	return out, nil
}

// HostAccessRules reads vm.host_access: "tcp/PORT" or "udp/PORT" entries,
// each once.
func (v VM) HostAccessRules() ([]netspec.Service, error) {
	out := make([]netspec.Service, 0, len(v.HostAccess))
	for _, e := range v.HostAccess {
		proto, port, ok := strings.Cut(e, "/")
		if !ok || proto != "tcp" && proto != "udp" {
			return nil, fmt.Errorf("%q is not tcp/PORT or udp/PORT", e)
		}
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil || n == 0 || port[0] == '+' || port[0] == '0' {
			return nil, fmt.Errorf("%q: port %q is not 1-65535", e, port)
		}
		h := netspec.Service{Proto: proto, Port: uint16(n)}
		for _, o := range out {
			if o == h {
				return nil, fmt.Errorf("%q is listed twice", e)
			}
		}
		out = append(out, h)
	}
	return out, nil
}
