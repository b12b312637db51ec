package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

func (c *cli) newPingCommand() *cobra.Command {
	return c.oneVMStats("ping", "Round trip to a VM's agent", func(s api.VMStats) error {
		if s.Health == "unreachable" {
			return fmt.Errorf("%s: agent unreachable: %s", termField(s.VMName), termField(s.HealthReason))
		}
		return c.show(map[string]any{"vm": s.VMName, "rtt_ms": s.PingMS}, func() error {
			return say(c.out, "%s: agent answered in %.2f ms", s.VMName, s.PingMS)
		})
	})
}
