package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

func (c *cli) newKillCommand() *cobra.Command {
	return c.vmsCommand("kill", "Stop VMs at once, without a clean guest shutdown", "killed", func(ctx context.Context, cl *api.Client, ref string) (any, error) {
		return cl.Stop(ctx, ref, true)
	})
}
