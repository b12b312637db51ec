package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

func (c *cli) newHealthCommand() *cobra.Command {
	return c.oneVMStats("health", "Whether a VM is healthy, degraded or unreachable, and why", func(s api.VMStats) error {
		v := map[string]any{"vm": s.VMName, "health": s.Health, "reason": s.HealthReason, "main": s.Main, "main_exit": s.MainExit,
			"clock_skew_ms": s.ClockSkewMS, "root_writable": s.RootWritable, "ping_ms": s.PingMS}
		return c.show(v, func() error {
			_, err := fmt.Fprintln(c.out, healthLine(s))
			return err
		})
	})
}

func healthLine(s api.VMStats) string {
	line := safef("%s: %s", s.VMName, s.Health)
	if s.HealthReason != "" {
		line += safef(" (%s)", s.HealthReason)
	}
	if s.Main != "" {
		line += safef("; main process %s", s.Main)
		if s.MainExit != "" {
			line += safef(", %s", s.MainExit)
		}
	}
	if s.RootWritable != nil {
		line += fmt.Sprintf("; root writable %v; clock skew %.0f ms", *s.RootWritable, s.ClockSkewMS)
	}
	return line
}
