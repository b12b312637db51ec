package netspec

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// UnprivilegedPortStartFile is the sysctl the privileged-port rule follows.
const UnprivilegedPortStartFile = "/proc/sys/net/ipv4/ip_unprivileged_port_start"

// HostAddrs lists the addresses of the calling process's network namespace
// (the daemon's): those a HOSTIP may name.
func HostAddrs() ([]netip.Addr, error) {
	as, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("list the host's addresses: %w", err)
	}
	out := make([]netip.Addr, 0, len(as))
	for _, a := range as {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out, nil
}

// UnprivilegedPortStart reads net.ipv4.ip_unprivileged_port_start; where it
// cannot be read the kernel's historic floor, 1024, applies.
func UnprivilegedPortStart() int {
	b, err := os.ReadFile(UnprivilegedPortStartFile)
	if err != nil {
		return 1024
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n < 0 || n > 65536 {
		return 1024
	}
	return n
}

// HostFacts gathers Facts from the daemon's own network namespace, for a
// caller who is (admin) or is not an admin; networks are the modes the
// daemon offers.
func HostFacts(admin bool, networks []string) (Facts, error) {
	addrs, err := HostAddrs()
	if err != nil {
		return Facts{}, err
	}
	return Facts{HostAddrs: addrs, UnprivilegedPortStart: UnprivilegedPortStart(), Admin: admin, Networks: networks}, nil
}
