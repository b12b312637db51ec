package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

func (c *cli) newImageRmCommand() *cobra.Command {
	var force, public bool
	cmd := &cobra.Command{Use: "rm IMAGE...", Aliases: []string{"remove"}, Short: "Remove your images no VM of yours uses (--force: even then)", Args: atLeast(1, "image")}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "remove even if VMs use it")
	cmd.Flags().BoolVar(&public, "public", false, "remove the public name, not your own (admins only)")
	return c.eachCommand(cmd, "removed", func(ctx context.Context, cl *api.Client, ref string) (any, error) {
		removed, err := cl.RemoveImage(ctx, api.RemoveImageIn{Image: ref, Force: force, Public: public})
		return map[string]any{"image": ref, "removed": removed}, err
	})
}
