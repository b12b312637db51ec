package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

func (c *cli) newWorkspaceRmCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "rm WORKSPACE...", Aliases: []string{"remove"}, Short: "Remove workspaces, their volumes and snapshots (layers a clone still uses stay until it goes)", Args: atLeast(1, "workspace")}
	return c.eachCommand(cmd, "removed", func(ctx context.Context, cl *api.Client, ref string) (any, error) {
		return cl.RemoveWorkspace(ctx, ref)
	})
}
