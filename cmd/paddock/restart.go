package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

func (c *cli) newRestartCommand() *cobra.Command {
	return c.vmsCommand("restart", "Stop and start VMs", "restarted", func(ctx context.Context, cl *api.Client, ref string) (any, error) {
		if _, err := cl.Stop(ctx, ref, false); err != nil {
			return nil, err
		}
		return cl.Start(ctx, ref)
	})
}
