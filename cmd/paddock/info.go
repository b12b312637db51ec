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
		rows := [][2]string{
			{"version", in.Version},
			{"uptime", (time.Duration(in.Uptime) * time.Second).Round(time.Second).String()},
			{"health", orDash(string(in.Health))},
			{"vms", fmt.Sprintf("%d (%d running, %d stopped, %d created, %d error)", in.VMs.Total, in.VMs.Running, in.VMs.Stopped, in.VMs.Created, in.VMs.Error)},
			{"state dir", in.StateDir},
			{"runtime dir", in.RuntimeDir},
			{"socket", in.Socket},
		}
		if in.Cgroup != "" {
			rows = append(rows, [2]string{"cgroup", in.Cgroup})
		}
		if in.Launcher != "" {
			rows = append(rows, [2]string{"VMM launcher", in.Launcher})
		}
		for _, p := range in.Problems {
			rows = append(rows, [2]string{"problem", p})
		}
		fields(c.out, rows)
		return nil
	})
}
