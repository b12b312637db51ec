package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

func (c *cli) newRmCommand() *cobra.Command {
	var force bool
	cmd := c.vmsCommand("rm", "Delete VMs", "deleted", func(ctx context.Context, cl *api.Client, ref string) (any, error) {
		return nil, cl.Delete(ctx, ref, force)
	})
	cmd.Aliases = []string{"delete"}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "stop a running VM first")
	return cmd
}
