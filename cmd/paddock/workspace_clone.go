package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

func (c *cli) newWorkspaceCloneCommand() *cobra.Command {
	var snapshot string
	cmd := &cobra.Command{Use: "clone SOURCE NEW", Short: "Make workspace NEW from a snapshot of SOURCE (its current state by default): instant, sharing what is unchanged", Args: exactly(2, "a source workspace and a new name")}
	cmd.Flags().StringVar(&snapshot, "snapshot", "", "clone this snapshot of SOURCE instead of its current state")
	return query(c, cmd, func(ctx context.Context, cl *api.Client, a []string) (*api.Workspace, error) {
		return cl.CloneWorkspace(ctx, api.CloneWorkspaceIn{Workspace: a[0], Name: a[1], Snapshot: snapshot})
	}, c.workspaceFields)
}
