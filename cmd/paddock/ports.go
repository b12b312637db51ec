package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

func (c *cli) newPortsCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "ports VM", Short: "Listening TCP ports of a VM, probed from outside: https, http or tcp, with a URL", Args: exactly(1, "one VM")}
	cmd.RunE = func(_ *cobra.Command, a []string) error {
		return c.statsOf(a[0], false, func(st []api.VMStats) error {
			ps := []api.Port{}
			if len(st) > 0 && st[0].Ports != nil {
				ps = st[0].Ports
			}
			return c.show(ps, func() error {
				return table(c.out, "PORT\tSCHEME\tURL\tPROCESS", ps, portRow)
			})
		})
	}
	return cmd
}

func portRow(p api.Port) []string {
	return []string{fmt.Sprint(p.Port), p.Scheme, orDash(p.URL), strings.TrimSpace(orDash(p.Process) + " " + pidText(p.PID))}
}

func pidText(pid int) string {
	if pid == 0 {
		return ""
	}
	return fmt.Sprintf("(pid %d)", pid)
}
