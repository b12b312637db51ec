package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

func (c *cli) newImageRmCommand() *cobra.Command {
	var force bool
	cmd := &cobra.Command{Use: "rm IMAGE...", Aliases: []string{"remove"}, Short: "Remove images no VM uses (--force: even then)", Args: atLeast(1, "image")}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "remove even if VMs use it")
	return c.eachCommand(cmd, "removed", func(ctx context.Context, cl *api.Client, ref string) (any, error) {
		removed, err := cl.RemoveImage(ctx, ref, force)
		return map[string]any{"image": ref, "removed": removed}, err
	})
}
