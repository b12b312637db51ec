package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

func (c *cli) newInfoCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "info", Short: "Show the daemon's status", Args: exactly(0, "no arguments")}
	return query(c, cmd, func(ctx context.Context, cl *api.Client, _ []string) (*api.InfoOut, error) {
		return cl.Info(ctx)
	}, func(in *api.InfoOut) error {
		fmt.Fprintf(c.out, "version:     %s\nuptime:      %s\nhealth:      %s\nvms:         %d (%d running, %d stopped, %d created, %d error)\nstate dir:   %s\nruntime dir: %s\nsocket:      %s\n",
			in.Version, (time.Duration(in.Uptime) * time.Second).Round(time.Second), orDash(string(in.Health)), in.VMs.Total, in.VMs.Running, in.VMs.Stopped, in.VMs.Created, in.VMs.Error, in.StateDir, in.RuntimeDir, in.Socket)
		if in.Cgroup != "" {
			fmt.Fprintf(c.out, "cgroup:      %s\n", termSafe(in.Cgroup))
		}
		for _, p := range in.Problems {
			fmt.Fprintf(c.out, "problem:     %s\n", termSafe(p))
		}
		return nil
	})
}
