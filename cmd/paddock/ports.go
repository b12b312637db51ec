package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

// portEntry is one line of ports: a guest port the VM listens on, a port it
// publishes on the host, or both. Its JSON is the discovered port's fields
// (api.Port) plus the mapping and the URL to open from outside the host.
type portEntry struct {
	api.Port
	Published *api.PortMapping `json:"published,omitempty"`
	HostURL   string           `json:"host_url,omitempty"`
}

func (c *cli) newPortsCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "ports VM", Short: "A VM's published ports beside the TCP ports it listens on (probed: https, http or tcp), with URLs", Args: exactly(1, "one VM")}
	cmd.RunE = func(_ *cobra.Command, a []string) error {
		return c.call(func(ctx context.Context, cl *api.Client) error {
			vm, err := cl.Get(ctx, a[0])
			if err != nil {
				return err
			}
			var found []api.Port
			// A stopped VM's published ports still show; with none, asking
			// for figures says it is not running.
			if vm.Status == "running" || len(vm.Spec.Ports) == 0 {
				err := cl.Stats(ctx, api.StatsIn{VM: vm.ID}, false, func(st []api.VMStats) error {
					if len(st) > 0 {
						found = st[0].Ports
					}
					return nil
				})
				if err != nil {
					return err
				}
			}
			ps := portEntries(vm.Spec.Ports, found, hostAddress)
			return c.show(ps, func() error {
				return table(c.out, "HOST\tGUEST\tSCHEME\tURL\tPROCESS", ps, portRow)
			})
		})
	}
	return cmd
}

// portEntries lists each published mapping (with the guest's listener on
// its port, when there is one), then each listener nothing publishes.
// host gives the host's address for a mapping on every address.
func portEntries(published []api.PortMapping, found []api.Port, host func() string) []portEntry {
	out := []portEntry{}
	type key struct {
		proto string
		port  int
	}
	used := map[key]bool{}
	for i := range published {
		m := published[i]
		e := portEntry{Published: &m, Port: api.Port{Proto: m.Proto, Port: m.GuestPort}}
		for _, p := range found {
			if p.Proto == m.Proto && p.Port == m.GuestPort {
				e.Port, used[key{p.Proto, p.Port}] = p, true
			}
		}
		addr := m.HostIP
		if addr == "" || addr == "0.0.0.0" {
			addr = host()
		}
		e.HostURL = hostURL(e.Scheme, m.Proto, net.JoinHostPort(addr, strconv.Itoa(m.HostPort)))
		out = append(out, e)
	}
	for _, p := range found {
		if !used[key{p.Proto, p.Port}] {
			out = append(out, portEntry{Port: p})
		}
	}
	return out
}

// hostURL is what a user opens: the guest's scheme (as probed) on the
// host's address and port.
func hostURL(scheme, proto, hostPort string) string {
	switch {
	case proto == "udp":
		return "udp://" + hostPort
	case scheme == "http" || scheme == "https":
		return scheme + "://" + hostPort + "/"
	}
	return "tcp://" + hostPort
}

// hostAddress is the host's address others reach it on: the source
// address of its route out (found without sending a packet), else its
// name.
func hostAddress() string {
	if c, err := net.Dial("udp4", "192.0.2.1:9"); err == nil {
		defer c.Close()
		if ua, ok := c.LocalAddr().(*net.UDPAddr); ok {
			if a, ok := netip.AddrFromSlice(ua.IP); ok && !a.Unmap().IsLoopback() {
				return a.Unmap().String()
			}
		}
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "127.0.0.1"
}

func portRow(p portEntry) []string {
	host, url := "-", orDash(p.URL)
	if m := p.Published; m != nil {
		ip := m.HostIP
		if ip == "" {
			ip = "0.0.0.0"
		}
		host, url = fmt.Sprintf("%s:%d/%s", ip, m.HostPort, m.Proto), p.HostURL
	}
	return []string{host, fmt.Sprintf("%d/%s", p.Port.Port, p.Proto), orDash(p.Scheme), url,
		strings.TrimSpace(orDash(p.Process) + " " + pidText(p.PID))}
}

func pidText(pid int) string {
	if pid == 0 {
		return ""
	}
	return fmt.Sprintf("(pid %d)", pid)
}
