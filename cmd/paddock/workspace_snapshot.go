package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

func (c *cli) newWorkspaceSnapshotCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "snapshot WORKSPACE SNAPSHOT", Short: "Freeze a detached workspace's current state as SNAPSHOT (instant; restore or clone it later)", Args: exactly(2, "a workspace and a snapshot name")}
	return query(c, cmd, func(ctx context.Context, cl *api.Client, a []string) (*api.Workspace, error) {
		return cl.SnapshotWorkspace(ctx, a[0], a[1])
	}, c.workspaceFields)
}
