package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

func (c *cli) newWorkspaceLsCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "ls", Aliases: []string{"list"}, Short: "List your workspaces (every user's, for an admin)", Args: exactly(0, "no arguments")}
	return query(c, cmd, func(ctx context.Context, cl *api.Client, _ []string) ([]api.Workspace, error) {
		return cl.ListWorkspaces(ctx)
	}, func(wss []api.Workspace) error {
		return table(c.out, "NAME\tID\tSTATUS\tSIZE\tUSED\tFILES\tSOURCE\tCREATED", wss, func(w api.Workspace) []string {
			return []string{w.Name, short(w.ID), w.Status, humanBytes(w.Size), humanBytes(w.Used), itoa(w.UID) + ":" + itoa(w.GID), orDash(w.Source), ago(w.Created)}
		})
	})
}
