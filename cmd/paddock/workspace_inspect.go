package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

func (c *cli) newWorkspaceInspectCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "inspect WORKSPACE", Short: "Show a workspace: size, used, owner, source, uid:gid of its files, created, snapshots", Args: exactly(1, "one workspace")}
	return query(c, cmd, func(ctx context.Context, cl *api.Client, a []string) (*api.Workspace, error) {
		return cl.InspectWorkspace(ctx, a[0])
	}, c.workspaceFields)
}
