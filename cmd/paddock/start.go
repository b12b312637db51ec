package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

// vmsCommand is a command that acts on each VM it is given.
func (c *cli) vmsCommand(use, short, done string, fn func(context.Context, *api.Client, string) (any, error)) *cobra.Command {
	return c.eachCommand(&cobra.Command{Use: use + " VM...", Short: short, Args: atLeast(1, "VM name or id")}, done, fn)
}

func (c *cli) newStartCommand() *cobra.Command {
	return c.vmsCommand("start", "Start VMs", "started", func(ctx context.Context, cl *api.Client, ref string) (any, error) {
		return cl.Start(ctx, ref)
	})
}
