package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

func (c *cli) newStopCommand() *cobra.Command {
	var force bool
	cmd := c.vmsCommand("stop", "Stop VMs", "stopped", func(ctx context.Context, cl *api.Client, ref string) (any, error) {
		return cl.Stop(ctx, ref, force)
	})
	cmd.Flags().BoolVarP(&force, "force", "f", false, "stop even a VM that is still starting")
	return cmd
}
