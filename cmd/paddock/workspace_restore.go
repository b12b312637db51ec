package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

func (c *cli) newWorkspaceRestoreCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "restore WORKSPACE SNAPSHOT", Short: "Bring a detached workspace back to SNAPSHOT (what was written since is dropped)", Args: exactly(2, "a workspace and a snapshot name")}
	return query(c, cmd, func(ctx context.Context, cl *api.Client, a []string) (*api.Workspace, error) {
		return cl.RestoreWorkspace(ctx, a[0], a[1])
	}, c.workspaceFields)
}
