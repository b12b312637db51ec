package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

func (c *cli) newImagePruneCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "prune", Short: "Remove every image no VM uses", Args: exactly(0, "no arguments")}
	return query(c, cmd, func(ctx context.Context, cl *api.Client, _ []string) ([]string, error) {
		return cl.PruneImages(ctx)
	}, func(removed []string) error {
		for _, d := range removed {
			if err := say(c.out, "%s removed", d); err != nil {
				return err
			}
		}
		return nil
	})
}
